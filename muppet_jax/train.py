"""The MUPPET training loop, top to bottom.

  1. Mesh        devices -> (data, model) mesh; S = grad_accum x data slots per update.
  2. Data        tokenizer, the mixture's tasks and their TaskTable, this host's input pipeline.
  3. State       the model (random init or `model.init_from`), optimizer, train state.
  4. Restore     the newest checkpoint in the workdir, if any (params, optimizer, RNG, input).
  5. Compile     the train step, jitted once with explicit shardings and donated state.
  6. Train       step, log, checkpoint, evaluate; SIGTERM saves a checkpoint and stops.
  7. Finish      final checkpoint and evaluation (held-out metrics per task are printed).

`run(config, workdir)` is what `main.py` and notebooks call.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from muppet_jax import build
from muppet_jax import checkpoint as checkpoint_lib
from muppet_jax import evaluation
from muppet_jax import finetune
from muppet_jax import metrics_log
from muppet_jax import objective
from muppet_jax import optim
from muppet_jax import sharding
from muppet_jax import step as step_lib
from muppet_jax.data import batching
from muppet_jax.data import pipeline as pipeline_lib
from muppet_jax.data import sampler as sampler_lib
from muppet_jax.data import tasks


@dataclasses.dataclass
class RunResult:
  """What a finished (or preempted) run reports."""

  step: int  # Updates done.
  preempted: bool  # Stopped by SIGTERM after saving a checkpoint.
  losses: list[float]  # The logged (window-averaged) losses, in order.
  eval_metrics: dict[str, dict[str, float]]  # Final held-out metrics per task.


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps (no work inside the handler)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. some notebook runners): no handler.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint after this step')
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _config_record(config: ml_collections.ConfigDict, data: build.DataSetup) -> dict:
  record = json.loads(config.to_json_best_effort())
  record['tasks'] = list(data.task_names)
  return record


def make_pipeline(config, data: build.DataSetup, layout: sharding.MeshLayout
                  ) -> pipeline_lib.InputPipeline:
  """This host's input pipeline: slots s = a * D + d for its devices d, every a."""
  accum, devices = config.train.grad_accum, layout.data_size
  local_slots = [a * devices + d for a in range(accum) for d in layout.local_data_indices]
  builder = batching.SubBatchBuilder(
      data.shape, data.vocab, data.task_table, model_type=config.model.type,
      span_stride=config.data.span_stride)
  sampler = sampler_lib.TaskSampler(data.rates, seed=config.seed,
                                    strategy=config.data.batching)

  def stream_factory(task_name: str, shard_index: int, num_shards: int):
    if config.finetune.train_fraction < 1.0:
      return finetune.fraction_stream(task_name, config.finetune.train_fraction,
                                      seed=config.seed, shard_index=shard_index,
                                      num_shards=num_shards)
    return tasks.family_examples(
        task_name, 'train', shuffle=True, seed=config.seed, shard_index=shard_index,
        num_shards=num_shards, repeat=True, shuffle_buffer_size=config.data.shuffle_buffer)

  return pipeline_lib.InputPipeline(
      data.task_names, data.rates, data.task_table, builder, sampler,
      stream_factory=stream_factory, slots=local_slots, num_slots=accum * devices,
      seed=config.seed)


def run(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
  """Trains (or resumes) the run described by `config` in `workdir`."""
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)

  # ----- 1. Mesh ------------------------------------------------------------------------------
  layout = sharding.make_mesh(config.mesh)
  accum = int(config.train.grad_accum)
  if accum < 1:
    raise ValueError(f'train.grad_accum must be >= 1, got {accum}')
  logging.info('mesh %s: %d slots per update (%d devices x %d accumulation steps)',
               dict(layout.mesh.shape), accum * layout.data_size, layout.data_size, accum)

  # ----- 2. Data ------------------------------------------------------------------------------
  pre_finetuned = None
  if config.finetune.from_workdir:  # Fine-tuning: the pre-finetuned run's model and tokenizer.
    pre_finetuned = finetune.load(config.finetune.from_workdir)
    config = finetune.adopt(config, pre_finetuned)
  data = build.setup_data(config, workdir)
  pipeline = make_pipeline(config, data, layout)
  logging.info('%d tasks: %s', len(data.task_names),
               ', '.join(f'{n} ({r:.3f})' for n, r in zip(data.task_names, data.rates)))

  # ----- 3. State -----------------------------------------------------------------------------
  model, hf_config = build.build_model(
      config, data, hf_config=pre_finetuned.hf_config if pre_finetuned else None)
  if jax.process_index() == 0:  # Export and fine-tuning rebuild the exact backbone from it.
    hf_config.to_json_file(os.path.join(workdir, finetune.BACKBONE_CONFIG))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if pre_finetuned is not None:
    params = finetune.transfer(params, pre_finetuned, data.task_table,
                               reuse_head=config.finetune.reuse_head)
  tx = optim.build(config.optim, config.train.steps)
  schedule = optim.learning_rate_schedule(config.optim, config.train.steps)
  settings = objective.ObjectiveSettings.from_config(config, data.vocab.vocab_size)
  state = step_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params),
      rng=jax.random.key_data(jax.random.key(config.seed + 2)))
  state_sharding = _state_sharding(layout, state, tx, bool(config.optim.shard_moments))
  state = sharding.put_global(state, state_sharding)

  # ----- 4. Restore ---------------------------------------------------------------------------
  checkpointer = checkpoint_lib.Checkpointer(
      workdir, keep=config.train.keep_checkpoints, save_every=config.train.checkpoint_every)
  config_record = _config_record(config, data)
  if checkpointer.latest_step() is not None:
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sharding)
    restored = checkpointer.restore(abstract, config_record)
    state = restored.state
    pipeline.restore(restored.data_state)
    logging.info('resumed from %s at step %d', checkpointer.directory, restored.step)
  start_step = int(state.step)

  # ----- 5. Compile ---------------------------------------------------------------------------
  train_step = jax.jit(
      step_lib.make_train_step(graphdef, tx, schedule, data.task_table, settings, layout.mesh),
      in_shardings=(state_sharding, layout.batch_sharding),
      out_shardings=(state_sharding, layout.replicated),
      donate_argnums=0)
  eval_runner = evaluation.Evaluator(graphdef=graphdef, data=data, config=config,
                                     layout=layout, settings=settings, hf_config=hf_config)

  # ----- 6. Train -----------------------------------------------------------------------------
  logger = metrics_log.MetricsLogger(workdir, total_steps=config.train.steps,
                                     is_chief=jax.process_index() == 0, resume_step=start_step)
  # On CPU, collective programs dispatched back to back can time out in the rendezvous
  # (DESIGN.md pitfall): wait for each step there. Elsewhere, sync only at log steps.
  block_every_step = jax.default_backend() == 'cpu'
  losses, eval_metrics = [], {}
  window = _Window(len(data.task_names))
  preempted = False
  step = start_step
  with _Preemption() as preemption:
    while step < config.train.steps:
      local = pipeline.next_batch(step)
      batch = sharding.global_batch(layout, _as_slots(local, accum))
      state, metrics = train_step(state, batch)
      step += 1
      if block_every_step:
        jax.block_until_ready(metrics.loss)
      window.add(metrics)
      if step % config.train.log_every == 0 or step == config.train.steps:
        record = window.flush(data.task_names)
        losses.append(record['loss'])
        _raise_if_not_finite(record, step)
        logger.write(step, record)
        logger.progress(step, record['loss'], record['tokens_per_s'])
      stop = preemption.requested or checkpointer.reached_preemption(step)
      if stop or step == config.train.steps or checkpointer.should_save(step):
        checkpointer.save(step, state, _global_pipeline_state(pipeline),
                          json.dumps(config_record), force=True)
      if stop:
        preempted = True
        break
      if config.train.eval_every and step % config.train.eval_every == 0 and \
          step < config.train.steps:
        eval_metrics = eval_runner.run(state.params, state.rest)
        logger.write(step, {'eval': eval_metrics})

  # ----- 7. Finish ----------------------------------------------------------------------------
  pipeline.close()
  checkpointer.wait()
  if not preempted:
    eval_metrics = eval_runner.run(state.params, state.rest)
    logger.write(step, {'eval': eval_metrics})
    evaluation.print_summary(eval_metrics, step)
  checkpointer.close()
  logger.close()
  return RunResult(step=step, preempted=preempted, losses=losses,
                   eval_metrics=eval_metrics)


def _global_pipeline_state(pipeline: pipeline_lib.InputPipeline) -> dict:
  """The input position of every process (each holds only its own slots), merged."""
  state = pipeline.state()
  if jax.process_count() == 1:
    return state
  encoded = np.frombuffer(json.dumps(state).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.int32(encoded.size))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:encoded.size] = encoded
  gathered = multihost_utils.process_allgather(padded)
  states = [json.loads(bytes(row[:size]).decode()) for row, size in zip(gathered, sizes)]
  return pipeline_lib.merge_states(states)


def _state_sharding(layout: sharding.MeshLayout, state: step_lib.TrainState, tx,
                    shard_moments: bool):
  """Parameters from their logical axes; the optimizer's moments like their parameters (and
  over `data` too with `optim.shard_moments`); everything else replicated."""
  replicated = layout.replicated
  params = sharding.state_shardings(layout.mesh, state.params)
  return step_lib.TrainState(
      step=replicated, params=params,
      rest=jax.tree.map(lambda _: replicated, state.rest),
      opt_state=sharding.optimizer_state_shardings(tx, state.opt_state, params, replicated,
                                                   shard_moments=shard_moments),
      rng=replicated)


def _as_slots(local: dict[str, np.ndarray], accum: int) -> dict[str, np.ndarray]:
  """[A * D_local, ...] (slot order a-major) -> [A, D_local, ...]."""
  return {k: v.reshape((accum, -1) + v.shape[1:]) for k, v in local.items()}


class _Window:
  """Sums step metrics on device between log steps (no host sync in between)."""

  def __init__(self, num_tasks: int):
    self.num_tasks = num_tasks
    self._sum = None
    self._steps = 0
    self._start = time.time()
    self._last_lr = None

  def add(self, metrics: step_lib.StepMetrics) -> None:
    self._sum = metrics if self._sum is None else jax.tree.map(jnp.add, self._sum, metrics)
    self._last_lr = metrics.learning_rate
    self._steps += 1

  def flush(self, task_names) -> dict:
    totals = jax.device_get(self._sum)
    elapsed = max(time.time() - self._start, 1e-9)
    record = {
        'loss': float(totals.loss) / self._steps,
        'learning_rate': float(jax.device_get(self._last_lr)),
        'tokens_per_s': float(totals.tokens) / elapsed,
        'grad_norm': float(totals.grad_norm) / self._steps,
    }
    for i, name in enumerate(task_names):
      slots = float(totals.task_slots[i])
      if slots == 0:
        continue
      examples = float(totals.task_examples[i])
      entry = {
          'loss': float(totals.task_loss[i]) / slots,
          'unscaled_loss': float(totals.task_unscaled_loss[i]) / slots,
          'slots': slots,
          'examples': examples,
      }
      if float(totals.task_sym_kl[i]):
        entry['sym_kl'] = float(totals.task_sym_kl[i]) / slots
      if float(totals.task_correct[i]) and examples:
        entry['accuracy'] = float(totals.task_correct[i]) / examples
      record[name] = entry
    self._sum, self._steps, self._start = None, 0, time.time()
    return record


def _raise_if_not_finite(record: dict, step: int) -> None:
  if math.isfinite(record['loss']):
    return
  bad = [name for name, entry in record.items()
         if isinstance(entry, dict) and not math.isfinite(entry['loss'])]
  raise FloatingPointError(
      f'non-finite loss at step {step} (logged window); tasks with a non-finite loss: '
      f'{bad or "none identified"}. Lower optim.learning_rate, enable optim.clip_norm, or '
      'inspect these tasks with `python -m muppet_jax.data.inspect`.')
