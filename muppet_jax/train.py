"""The MUPPET training loop, top to bottom.

  0. Preflight   config values, model.init_from / data.tokenizer paths, a workdir that holds no
                 other run (`run_record`, nothing written), a writable workdir, every task's
                 splits prepared and their shards whole (offline, seconds); bad input is one
                 `errors.UserError`.
  1. Mesh        devices -> (data, model) mesh; S = grad_accum x data slots per update.
  2. Data        tokenizer, the mixture's tasks and their TaskTable, this host's input pipeline.
  3. State       the model (random init or `model.init_from`), optimizer, train state.
  4. Restore     the newest readable checkpoint in the workdir, if any (params, optimizer, RNG,
                 input); damaged newer ones are skipped with a warning and set aside. Only then
                 config.json (with its history of changes) and backbone_config.json are written.
  5. Compile     the train step, jitted once with explicit shardings and donated state.
  6. Train       step, log, checkpoint, evaluate; SIGTERM saves a checkpoint and stops (every
                 process at the same step in a multi-process run); a failed save stops the run
                 at the next step (`checkpoint.CheckpointSaveError`); a lost process stops the
                 others with one line (`multihost.watch_peers`).
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
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from muppet_jax import build
from muppet_jax import checkpoint as checkpoint_lib
from muppet_jax import config_lib
from muppet_jax import errors
from muppet_jax import finetune
from muppet_jax import metrics_log
from muppet_jax import multihost
from muppet_jax import objective
from muppet_jax import optim
from muppet_jax import rng as rng_lib
from muppet_jax import run_record
from muppet_jax import sharding
from muppet_jax import step as step_lib
from muppet_jax import workdir as workdir_lib
from muppet_jax.data import batching
from muppet_jax.data import pipeline as pipeline_lib
from muppet_jax.data import prepare
from muppet_jax.data import sampler as sampler_lib
from muppet_jax.data import streams
from muppet_jax.data.features import TaskTable
from muppet_jax.eval import evaluator as evaluator_lib
from muppet_jax.models import hf

# The run's resolved config, task list and history of changes (`run_record.write_config`).
CONFIG_FILENAME = run_record.CONFIG_FILENAME


@dataclasses.dataclass
class RunResult:
  """What a finished (or preempted) run reports."""

  step: int  # Updates done.
  preempted: bool  # Stopped by SIGTERM after saving a checkpoint.
  losses: list[float]  # The logged (window-averaged) losses, in order.
  eval_metrics: dict[str, dict[str, float]]  # Final held-out metrics per task.


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps (no work inside the handler).

  Single-process runs only. In a multi-process run JAX's preemption service has the signal
  (its handler is installed by `jax.distributed.initialize`): a notice on any process reaches
  all of them, and `Checkpointer.reached_preemption(step)` turns true on every process at the
  same step, where they all save. A Python handler here would take the signal from it and stop
  this process alone, out of step with the others.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() > 1:
      return self
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
                                    strategy=config.data.batching,
                                    total_steps=config.train.steps)
  factory = streams.TrainStreamFactory(
      data.task_names, seed=config.seed,
      data_dir=prepare.resolve_data_dir(config.data.tfds_data_dir),
      fraction=config.finetune.train_fraction,
      fraction_seed=config.finetune.get('fraction_seed', 0))
  return pipeline_lib.InputPipeline(
      data.task_names, data.task_table, builder, sampler, stream_factory=factory,
      slots=local_slots, num_slots=accum * devices, num_workers=config.data.num_workers)


def run(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
  """Trains (or resumes) the run described by `config` in `workdir`.

  In a multi-process run every process heartbeats (`multihost.watch_peers`): when one is lost,
  the others stop with one line naming it and the step instead of waiting in a collective.
  """
  with multihost.watch_peers(config.get('distributed')):
    return _run(config, workdir)


def _run(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
  workdir = os.fspath(workdir)

  # ----- 0. Preflight -------------------------------------------------------------------------
  # Bad config values and a model.init_from / data.tokenizer path that does not exist fail
  # first, with one `errors.UserError` each (no file, device or network touched yet).
  config_lib.validate(config)
  hf.check_source(config.model.init_from, 'model.init_from')
  if config.data.tokenizer not in ('', 'demo'):
    hf.check_source(config.data.tokenizer, 'data.tokenizer', need_config=False)
  # Before any mesh, model or thread: every task's train and validation splits must be prepared
  # (offline, seconds; training never downloads), otherwise one error lists them all with the
  # prepare command. Fine-tuning from a workdir adopts that run's model type later (2. Data),
  # so its task list is taken here without the encoder-only family check.
  tasks_config = config
  if config.finetune.from_workdir:
    tasks_config = config.copy_and_resolve_references()
    tasks_config.model.type = 'bart'
  task_names = build.run_tasks(tasks_config).names
  # A workdir that holds another run (another model, mixture, layout) is refused before
  # anything is written to it (`run_record`: one line naming every difference).
  run_record.check_resume(config, workdir, task_names)
  prepare.preflight(task_names, config.data.tfds_data_dir)
  _make_workdir(workdir)

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
  # Fine-tuning's epochs / warmup fraction -> train.steps, warmup, an evaluation every epoch.
  config = finetune.apply_schedule(config, data, accum * layout.data_size)
  pipeline = make_pipeline(config, data, layout)
  logging.info('%d tasks (share of the slots): %s', len(data.task_names), ', '.join(
      f'{n} {100 * r / sum(data.rates):.1f}%' for n, r in zip(data.task_names, data.rates)))

  # ----- 3. State -----------------------------------------------------------------------------
  model, hf_config = build.build_model(
      config, data, hf_config=pre_finetuned.hf_config if pre_finetuned else None)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if pre_finetuned is not None:
    params = finetune.transfer(params, pre_finetuned, data.task_table,
                               reuse_head=config.finetune.reuse_head)
  program = step_program(config, graphdef, data.task_table, data.vocab.vocab_size)
  settings = program.settings
  state = initial_state(config, params, rest, program.tx, program.rng_impl)
  state_sharding = state_shardings(layout, state, program.tx, bool(config.optim.shard_moments),
                                   bool(config.optim.shard_params))
  state = sharding.put_global(state, state_sharding)

  # ----- 4. Restore ---------------------------------------------------------------------------
  checkpointer = checkpoint_lib.Checkpointer(
      workdir, keep=config.train.keep_checkpoints, save_every=config.train.checkpoint_every,
      barrier_timeout_s=config.get('distributed', {}).get('barrier_timeout_s', 1200))
  config_record = _config_record(config, data)
  if checkpointer.latest_step() is not None:  # The newest readable one (damaged ones skipped).
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sharding)
    restored = checkpointer.restore(abstract, config_record)
    state = restored.state
    try:
      pipeline.restore(restored.data_state)
    except pipeline_lib.InputStateError as e:
      raise checkpoint_lib.IncompatibleCheckpointError(
          f'checkpoint {checkpointer.directory}/{restored.step}: {e}') from e
    logging.info('resumed from %s at step %d', checkpointer.directory, restored.step)
  start_step = int(state.step)
  # Only now, with the checkpoint restored, the workdir's records describe this command: the
  # resolved config (and the history of what changed on resume), the exact backbone (export
  # and fine-tuning rebuild the model from it).
  if jax.process_index() == 0:
    run_record.write_config(workdir, config_record, start_step)
    workdir_lib.save_backbone_config(workdir, hf_config)
  if start_step < config.train.steps:
    logging.info('training steps %d-%d (the first one compiles the train step)',
                 start_step + 1, config.train.steps)

  # ----- 5. Compile ---------------------------------------------------------------------------
  train_step = jit_train_step(program, layout, state_sharding)  # `--mode compile` compiles it.
  eval_runner = evaluator_lib.Evaluator(graphdef=graphdef, data=data, config=config,
                                        layout=layout, settings=settings, hf_config=hf_config)

  # ----- 6. Train -----------------------------------------------------------------------------
  logger = metrics_log.MetricsLogger(workdir, total_steps=config.train.steps,
                                     is_chief=jax.process_index() == 0, resume_step=start_step)
  # On CPU, collective programs dispatched back to back can time out in the rendezvous
  # (a known XLA CPU limitation): wait for each step there. Elsewhere, sync only at log steps.
  block_every_step = jax.default_backend() == 'cpu'
  losses, eval_metrics = [], {}
  window = _Window(len(data.task_names))
  preempted = False
  step = start_step
  profiler = Profiler(config.train.get('profile_steps', ''), workdir)
  # The pipeline's thread or worker processes stop when the loop ends, also on an error.
  with _Preemption() as preemption, pipeline, profiler:
    while step < config.train.steps:
      local = pipeline.next_batch(step)
      batch = sharding.global_batch(layout, _as_slots(local, accum))
      profiler.before(step + 1)
      state, metrics = train_step(state, batch)
      step += 1
      profiler.after(step, metrics.loss)
      multihost.set_step(step)  # What a lost-process line names (multi-process runs).
      if block_every_step:
        jax.block_until_ready(metrics.loss)
      window.add(metrics)
      if step == start_step + 1:  # Compiled and run once: the ETA counts steps from here.
        jax.block_until_ready(metrics.loss)
        logger.start_clock(step)
      checkpointer.poll()  # A failed asynchronous save stops the run here, naming the cause.
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
  checkpointer.wait()
  if not preempted:
    done = _evaluated_before(workdir, step, start_step)
    if done is not None:  # A finished run re-run: its final evaluation is already logged.
      eval_metrics = done
    else:
      eval_metrics = eval_runner.run(state.params, state.rest)
      logger.write(step, {'eval': eval_metrics})
    evaluator_lib.print_summary(eval_metrics, step)
    if jax.process_index() == 0:  # The best dev score of the run (what the paper reports).
      finetune.record_best(workdir)
  checkpointer.close()
  logger.close()
  return RunResult(step=step, preempted=preempted, losses=losses,
                   eval_metrics=eval_metrics)


class Profiler:
  """`train.profile_steps='first:last'`: a `jax.profiler` trace of those steps (device and
  host activity) in WORKDIR/profile/, for TensorBoard's profile plugin (XProf):
  `tensorboard --logdir WORKDIR/profile`. Each process traces its own host."""

  def __init__(self, steps: str, workdir: str):
    self.first = self.last = None
    if steps:
      self.first, self.last = (int(s) for s in steps.split(':'))
    self.directory = os.path.join(workdir, 'profile')
    self.active = False

  def before(self, step: int) -> None:
    """Called before update `step` (1-based) is dispatched."""
    if self.first is not None and step == self.first and not self.active:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, result: jax.Array) -> None:
    """Called after update `step` was dispatched; `result` is one of its outputs."""
    if self.active and step >= self.last:
      jax.block_until_ready(result)  # The trace must hold the last step's device work.
      self._stop()
      logging.info('profile of steps %d-%d written to %s (tensorboard --logdir %s)',
                   self.first, self.last, self.directory, self.directory)

  def _stop(self) -> None:
    jax.profiler.stop_trace()
    self.active = False

  def __enter__(self) -> 'Profiler':
    return self

  def __exit__(self, *exc) -> None:
    if self.active:  # The loop ended inside the window (preemption, error, last step).
      self._stop()


def _evaluated_before(workdir: str, step: int, start_step: int) -> dict | None:
  """The logged metrics of the evaluation at `step` when this invocation trained no step (a
  finished run started again), so that it is not evaluated and logged twice; else None.

  Process 0 reads metrics.jsonl (it writes it) and every process takes its answer: evaluation
  is a collective program, all processes must run it or none.
  """
  if step != start_step:
    return None
  found = workdir_lib.EvalRecord(step=None, metrics={})
  if jax.process_index() == 0:
    found = workdir_lib.read_eval_metrics(workdir, step)
  done = found.step == step
  if jax.process_count() > 1:
    done = bool(multihost_utils.broadcast_one_to_all(np.int32(done)))
  return found.metrics if done else None


def _make_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise errors.UserError(f'cannot create the workdir {workdir}: {e}; choose a writable '
                           '--workdir') from e
  if not os.access(workdir, os.W_OK):
    raise errors.UserError(f'the workdir {workdir} is not writable; choose a writable '
                           '--workdir or fix its permissions')


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


# --- Stages 3 (State) and 5 (Compile), shared with `--mode compile` (muppet_jax/compile/) ---


@dataclasses.dataclass(frozen=True)
class StepProgram:
  """Everything the train step is built from besides the state."""

  graphdef: nnx.GraphDef  # The model's static structure (`nnx.split(model, nnx.Param, ...)`).
  tx: optax.GradientTransformation  # `optim.build(config.optim, config.train.steps)`.
  schedule: optax.Schedule  # Learning rate per update (logged with the metrics).
  settings: objective.ObjectiveSettings  # Loss scaling, R3F, label smoothing.
  task_table: TaskTable  # The run's tasks: heads, families, class counts.
  rng_impl: str = 'threefry'  # The resolved `train.rng_impl` (rng.py).


def step_program(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                 task_table: TaskTable, vocab_size: int,
                 platform: str | None = None) -> StepProgram:
  """The optimizer, schedule and objective of `config` around the model graph `graphdef`.

  `vocab_size` is the tokenizer's (summarization logits beyond it are dropped). `platform`
  ('cpu', 'tpu', 'gpu'; default: this process's backend) resolves `train.rng_impl='auto'`.
  """
  return StepProgram(
      graphdef=graphdef, tx=optim.build(config.optim, config.train.steps),
      schedule=optim.learning_rate_schedule(config.optim, config.train.steps),
      settings=objective.ObjectiveSettings.from_config(config, vocab_size),
      task_table=task_table,
      rng_impl=rng_lib.resolve(config.train.get('rng_impl', 'threefry'),
                               platform or jax.default_backend()))


def initial_state(config: ml_collections.ConfigDict, params: nnx.State, rest: nnx.State,
                  tx: optax.GradientTransformation,
                  rng_impl: str = 'threefry') -> step_lib.TrainState:
  """The state before the first update. Under `jax.eval_shape` (with abstract `params` and
  `rest`) it is the abstract state that ahead-of-time compilation lowers with."""
  return step_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params),
      rng=rng_lib.base_key_data(config.seed + 2, rng_impl))


def state_shardings(layout: sharding.MeshLayout, state: step_lib.TrainState, tx,
                    shard_moments: bool, shard_params: bool = False) -> step_lib.TrainState:
  """Parameters from their logical axes (and over `data` too with `optim.shard_params`); the
  optimizer's moments like their parameters (and over `data` too with `optim.shard_moments`);
  everything else replicated. `state` may be concrete or abstract (only shapes are read)."""
  replicated = layout.replicated
  params = sharding.state_shardings(layout.mesh, state.params)
  if shard_params:
    params = jax.tree.map(lambda s, x: sharding.shard_over_data(s, x.shape), params,
                          state.params)
  return step_lib.TrainState(
      step=replicated, params=params,
      rest=jax.tree.map(lambda _: replicated, state.rest),
      opt_state=sharding.optimizer_state_shardings(tx, state.opt_state, params, replicated,
                                                   shard_moments=shard_moments),
      rng=replicated)


_state_sharding = state_shardings  # Old private name (tests).


def jit_train_step(program: StepProgram, layout: sharding.MeshLayout,
                   state_sharding: step_lib.TrainState):
  """The train step `(state, batch [A, D, ...]) -> (state, metrics)`, jitted with explicit
  shardings (state as `state_sharding`, batch over `data`, metrics replicated) and the state
  donated, so that its buffers are reused for the new state (no second copy in memory)."""
  step = step_lib.make_train_step(program.graphdef, program.tx, program.schedule,
                                  program.task_table, program.settings, layout.mesh,
                                  rng_impl=program.rng_impl,
                                  grad_specs=jax.tree.map(lambda s: s.spec, state_sharding.params))
  return jax.jit(step, in_shardings=(state_sharding, layout.batch_sharding),
                 out_shardings=(state_sharding, layout.replicated), donate_argnums=0)


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
