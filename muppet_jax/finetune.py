"""Fine-tuning as the paper and fairseq do it (paper section 4).

`configs/finetune.py:TASK` trains one task starting from `finetune.from_workdir`, the workdir of
a MUPPET run: the backbone and the shared multiple-choice and span heads are copied from its
newest checkpoint; with `finetune.reuse_head` the task's own classification head too (the
paper re-uses pre-finetuning heads for small datasets); otherwise the head starts fresh. A
Hugging Face directory (e.g. one written by `muppet_jax.export`, or a hub id) works through
`model.init_from` instead. The fine-tuning config's dropout rates apply in every case.

The schedule (`schedule`): `finetune.epochs` passes over the train split (fairseq's
`--max-epoch`), the number of updates per epoch measured by packing a sample of the split into
sub-batches as training will; warmup as a fraction of the updates (`finetune.warmup_fraction`,
fairseq's RoBERTa recipe: 6%); evaluation on the dev split after every epoch.
`finetune.train_fraction` trains on a seeded random fraction of the split's records (the
low-resource study, section 5.3; `streams.train_records`).

At the end of every run, `record_best` writes WORKDIR/best_eval.json: the best dev score over
the run's evaluations (what the paper reports) and when it was reached.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import jax
import ml_collections
import numpy as np
import transformers
from absl import logging
from flax import nnx

from muppet_jax import build
from muppet_jax import checkpoint as checkpoint_lib
from muppet_jax import errors
from muppet_jax import workdir as workdir_lib
from muppet_jax.data import batching
from muppet_jax.data import prepare
from muppet_jax.data import streams
from muppet_jax.data import tasks
from muppet_jax.data.features import Family, TaskTable
from muppet_jax.eval import metrics as metrics_lib

# The best evaluation of a run (`record_best`), next to metrics.jsonl.
BEST_EVAL = 'best_eval.json'
# Records packed to measure an epoch's updates (`schedule`): enough for a stable mean, seconds
# of tokenization.
_EPOCH_SAMPLE_RECORDS = 2_048


@dataclasses.dataclass
class PreFinetuned:
  """What fine-tuning takes from a pre-finetuned run."""

  workdir: str
  step: int
  params: dict[str, np.ndarray]  # '/'-joined parameter path -> array.
  tasks: list[str]  # The run's task names (task id order).
  hf_config: transformers.PretrainedConfig
  config: dict  # The run's saved config.


def load(workdir: str) -> PreFinetuned:
  """Reads the newest checkpoint of a pre-finetuned run (any device topology).

  Raises:
    workdir.WorkdirError: no checkpoint, no config record, or no backbone config.
  """
  saved = workdir_lib.read(workdir)
  hf_config = workdir_lib.checked_backbone_config(workdir, saved.config, saved.step)
  if hf_config is None:
    raise workdir_lib.WorkdirError(
        f'{os.path.join(workdir, workdir_lib.BACKBONE_CONFIG)} is missing: {workdir} was not '
        'written by muppet_jax.train (or by an older version); finetune.from_workdir must be '
        'the workdir of a pre-finetuning run')
  params = {checkpoint_lib.path_name(p): v for p, v in
            jax.tree_util.tree_flatten_with_path(saved.state['params'])[0]}
  return PreFinetuned(workdir=workdir, step=saved.step, params=params,
                      tasks=list(saved.task_names), hf_config=hf_config, config=saved.record)


def adopt(config: ml_collections.ConfigDict, pre: PreFinetuned) -> ml_collections.ConfigDict:
  """The fine-tuning config with the pre-finetuned run's model type and tokenizer.

  Also sets the dropout rates of `pre.hf_config` (the backbone fine-tuning builds) to the
  fine-tuning config's, so that `model.dropout` / `model.attention_dropout` (a hyperparameter
  of the paper's search) apply, not the pre-finetuning run's.
  """
  config = config.copy_and_resolve_references()
  for name, value in build.dropout_overrides(config).items():
    setattr(pre.hf_config, name, value)
  pre_model, pre_data = pre.config['model'], pre.config['data']
  config.model.type = pre_model['type']
  config.model.init_from = ''  # The backbone comes from the checkpoint.
  # The checkpoint's table has the pre-finetuned run's (padded) rows.
  config.model.vocab_multiple = pre_model.get('vocab_multiple', 0)
  tokenizer = pre_data['tokenizer'] or pre_model['init_from']
  if tokenizer == 'demo':  # The demo BPE is cached in the pre-finetuned workdir.
    from muppet_jax.data import demo  # pylint: disable=g-import-not-at-top
    tokenizer = demo.build_tokenizer(os.path.join(pre.workdir, 'tokenizer'))
  config.data.tokenizer = tokenizer
  return config


def transfer(params: nnx.State, pre: PreFinetuned, task_table: TaskTable, *,
             reuse_head: bool) -> nnx.State:
  """`params` with the backbone and shared heads (and optionally task heads) of `pre`.

  Classification heads are stacked `[heads, ...]`; with `reuse_head`, each task of this run
  that the pre-finetuned run also had gets its old row (classes beyond the task's own are
  masked anyway, so only the first `num_classes` columns matter).
  """
  pre_table_rows = _classification_rows(pre)
  reused, copied = [], 0

  def copy(path, value):
    nonlocal copied
    name = checkpoint_lib.path_name(path)
    if name.startswith('classification_heads/'):
      out = np.array(value)
      if reuse_head:
        for task_id, task in enumerate(task_table.names):
          row = int(task_table.head_index[task_id])
          if row >= 0 and task in pre_table_rows:
            old = pre.params[name][pre_table_rows[task]]
            out[row] = old[tuple(slice(0, d) for d in out[row].shape)]
            reused.append(task)
      return out.astype(value.dtype)
    if name not in pre.params:
      raise KeyError(f'parameter {name} is not in the pre-finetuned checkpoint of '
                     f'{pre.workdir}')
    old = pre.params[name]
    if old.shape != value.shape:
      raise ValueError(f'parameter {name}: pre-finetuned shape {old.shape} vs {value.shape}')
    copied += 1
    return old.astype(value.dtype)

  result = jax.tree_util.tree_map_with_path(copy, params)
  logging.info('fine-tuning from %s step %d: %d arrays copied; heads reused for %s',
               pre.workdir, pre.step, copied, sorted(set(reused)) or 'no task')
  return result


def _classification_rows(pre: PreFinetuned) -> dict[str, int]:
  """Task name -> row of its head in the pre-finetuned run's stacked classification heads."""
  rows = {}
  for task in pre.tasks:
    if tasks.record_for_task(task).family == Family.CLASSIFICATION:
      rows[task] = len(rows)
  return rows


# --- Schedule -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A fine-tuning run's updates, from its epochs and warmup fraction."""

  steps: int  # train.steps.
  warmup_steps: int  # optim.warmup_steps.
  eval_every: int  # train.eval_every: one epoch's updates (step-based runs: the config's).
  steps_per_epoch: int  # Updates of one pass over the split (0 for step-based runs).
  records: int  # Records of the (fractional) train split (0 for step-based runs).
  records_per_sub_batch: float  # Measured on a sample (0.0 for step-based runs).


def records_per_sub_batch(config: ml_collections.ConfigDict, data: build.DataSetup,
                          task_name: str, sample: int = _EPOCH_SAMPLE_RECORDS) -> float:
  """Mean train records that one sub-batch of `task_name` consumes, measured by building
  sub-batches from the first `sample` records of its (fractional, shuffled) training stream
  with the run's own tokenizer, shapes and packing: short sentences pack many per row, a long
  MRC context takes several windows, a RACE article gives one example per question."""
  record = tasks.record_for_task(task_name)
  fraction = float(config.finetune.train_fraction)
  data_dir = prepare.resolve_data_dir(config.data.tfds_data_dir)
  size = streams.train_split_size(record, data_dir=data_dir, fraction=fraction)
  examples = streams.train_stream(record, 0, 1, seed=config.seed, data_dir=data_dir,
                                  fraction=fraction,
                                  fraction_seed=config.finetune.fraction_seed)
  builder = batching.SubBatchBuilder(data.shape, data.vocab, data.task_table,
                                     model_type=config.model.type,
                                     span_stride=config.data.span_stride)
  stream = builder.stream(task_name, examples)
  target, built, consumed = min(size, sample), 0, 0
  while consumed < target:
    builder.build(stream)
    built += 1
    consumed = int(stream.position()['next_index'])
  return consumed / built


def schedule(config: ml_collections.ConfigDict, data: build.DataSetup,
             num_slots: int) -> Schedule:
  """The run's updates: `finetune.epochs` passes over the train split (0: `train.steps`) and
  `finetune.warmup_fraction` of them as warmup (-1: `optim.warmup_steps`).

  An epoch is ceil(records / (records per sub-batch x slots per update)) updates, as fairseq's
  ceil(examples / batch size).

  Raises:
    errors.ConfigError: `finetune.epochs` for a run of several tasks.
  """
  epochs = float(config.finetune.get('epochs', 0.0))
  fraction = float(config.finetune.get('warmup_fraction', -1.0))
  steps, eval_every = int(config.train.steps), int(config.train.eval_every)
  per_epoch, records, per_sub_batch = 0, 0, 0.0
  if epochs > 0:
    if len(data.task_names) != 1:
      raise errors.ConfigError(
          f'finetune.epochs={epochs:g} needs a run of one task (data.mixture = a task name), '
          f'this one has {len(data.task_names)}; use train.steps for multi-task runs')
    task = data.task_names[0]
    records = streams.train_split_size(
        tasks.record_for_task(task), fraction=float(config.finetune.train_fraction),
        data_dir=prepare.resolve_data_dir(config.data.tfds_data_dir))
    per_sub_batch = records_per_sub_batch(config, data, task)
    per_epoch = max(1, math.ceil(records / (per_sub_batch * num_slots)))
    steps = max(1, round(epochs * per_epoch))
    eval_every = per_epoch
  warmup = int(config.optim.warmup_steps) if fraction < 0 else round(fraction * steps)
  return Schedule(steps=steps, warmup_steps=warmup, eval_every=eval_every,
                  steps_per_epoch=per_epoch, records=records,
                  records_per_sub_batch=per_sub_batch)


def apply_schedule(config: ml_collections.ConfigDict, data: build.DataSetup,
                   num_slots: int) -> ml_collections.ConfigDict:
  """A copy of `config` with `schedule`'s train.steps, optim.warmup_steps, train.eval_every
  (`config` itself when neither `finetune.epochs` nor `finetune.warmup_fraction` is set)."""
  if not config.finetune.get('epochs', 0.0) and config.finetune.get('warmup_fraction', -1) < 0:
    return config
  plan = schedule(config, data, num_slots)
  config = config.copy_and_resolve_references()
  config.train.steps = plan.steps
  config.optim.warmup_steps = plan.warmup_steps
  config.train.eval_every = plan.eval_every
  if plan.steps_per_epoch:
    logging.info('schedule: %g epochs x %d updates (%d train records, %.1f per sub-batch, %d '
                 'slots per update) = %d updates, warmup %d; dev evaluation after every epoch',
                 config.finetune.epochs, plan.steps_per_epoch, plan.records,
                 plan.records_per_sub_batch, num_slots, plan.steps, plan.warmup_steps)
  else:
    logging.info('schedule: %d updates, warmup %d (%g of them)', plan.steps, plan.warmup_steps,
                 config.finetune.warmup_fraction)
  return config


# --- Best dev score -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BestEval:
  """The best of a run's evaluations (metrics.jsonl 'eval' lines)."""

  step: int  # The evaluation's step.
  score: float  # Its headline score (`headline`).
  metric: str  # What the score is: '<task> <key>' or 'mean primary over N tasks'.
  metrics: dict[str, dict[str, float]]  # That evaluation's metrics, per task.
  evaluations: list[tuple[int, float]]  # (step, headline score) of every evaluation, in order.


def headline(metrics: dict[str, dict[str, float]]) -> tuple[str, float]:
  """A run's one number for an evaluation: its task's primary metric (`metrics.primary_key`;
  accuracy, MCC, SQuAD F1 ...), or for several tasks the mean of their primary metrics."""
  values = {}
  for task, task_metrics in metrics.items():
    key = metrics_lib.primary_key(tasks.record_for_task(task).metric)
    values[task] = (key, float(task_metrics[key]))
  if len(values) == 1:
    (task, (key, value)), = values.items()
    return f'{task} {key}', value
  return (f'mean primary metric over {len(values)} tasks',
          float(np.mean([v for _, v in values.values()])))


def best_eval(workdir: str) -> BestEval | None:
  """The evaluation with the highest headline score in WORKDIR/metrics.jsonl (the earliest of
  equal ones), or None before the first evaluation."""
  path = os.path.join(os.fspath(workdir), 'metrics.jsonl')
  if not os.path.exists(path):
    return None
  evaluations = {}  # step -> metrics; a re-logged step (resumed run) keeps its last line.
  with open(path) as f:
    for line in f:
      try:
        entry = json.loads(line)
      except json.JSONDecodeError:  # A line cut by a crash.
        continue
      if isinstance(entry, dict) and 'eval' in entry:
        evaluations[int(entry['step'])] = entry['eval']
  best = None
  scored = []
  for step in sorted(evaluations):
    metric, score = headline(evaluations[step])
    scored.append((step, score))
    if best is None or score > best.score:
      best = BestEval(step=step, score=score, metric=metric, metrics=evaluations[step],
                      evaluations=[])
  return None if best is None else dataclasses.replace(best, evaluations=scored)


def record_best(workdir: str) -> BestEval | None:
  """Writes WORKDIR/best_eval.json (`best_eval`) and logs it; None without evaluations."""
  best = best_eval(workdir)
  if best is None:
    return None
  path = os.path.join(os.fspath(workdir), BEST_EVAL)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(dataclasses.asdict(best), f, indent=2)
  os.replace(tmp, path)
  logging.info('best dev score: %s %.4f at step %d (of %d evaluations)', best.metric,
               best.score, best.step, len(best.evaluations))
  return best
