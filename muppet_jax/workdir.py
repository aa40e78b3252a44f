"""Reloading a run from its workdir: the one place that knows how (eval mode, export, fine-tuning).

What a training run leaves in WORKDIR and what is read back from it:

  checkpoints/<step>/    state (params, optimizer, RNG), the input position, and the run's
                         config record: the config as JSON plus its task list (`tasks`, in
                         task-id order), written by `train.py` (`checkpoint.py`)
  backbone_config.json   the backbone's exact `transformers` config (`save_backbone_config`)
  tokenizer/             the cached demo tokenizer (`data.tokenizer='demo'`)
  metrics.jsonl          training and evaluation lines (`read_eval_metrics`)

`restore(workdir, step=None)` rebuilds the run exactly as `train.py` built it, from the saved
config record alone (the tokenizer, the task table in the checkpoint's order, the backbone
config, the model) and fills it with the checkpoint's parameters, read topology-free (any
device layout of the writing run), checking every array's shape. `read(workdir, step)` gives
the checkpoint's arrays and config without building a model (fine-tuning takes parameters by
name). Nothing here writes to the workdir, except `save_backbone_config`, which training calls.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import seqio
import transformers
from flax import nnx

from muppet_jax import build
from muppet_jax import checkpoint as checkpoint_lib
from muppet_jax import config_lib
from muppet_jax import errors
from muppet_jax.data import tasks
from muppet_jax.data import vocab as vocab_lib
from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.data.features import BatchShape, TaskTable
from muppet_jax.models import hf
from muppet_jax.models import muppet

# The backbone's `transformers` config, written by every run next to its checkpoints.
BACKBONE_CONFIG = 'backbone_config.json'
# The checkpoint directory under the workdir (`checkpoint.Checkpointer`).
CHECKPOINTS = 'checkpoints'


class WorkdirError(errors.UserError, ValueError):
  """The workdir cannot be reloaded: missing, no checkpoint, an unknown step, no config record.

  The message is one line naming the problem and what to do (the steps that exist).
  """


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints."""
  return os.path.join(os.fspath(workdir), CHECKPOINTS)


def available_steps(workdir: str) -> list[int]:
  """Steps of the complete checkpoints in `workdir` (sorted); [] if there are none."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return []
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=1_000_000, save_every=1,
                                             async_save=False, read_only=True)
  try:
    return sorted(int(s) for s in checkpointer.all_steps())
  finally:
    checkpointer.close()


def resolve_step(workdir: str, step: int | None = None) -> int:
  """`step` if the workdir has it, else (None) the newest step.

  Raises:
    WorkdirError: the workdir does not exist, has no checkpoint, or not `step` (the message
      lists the steps available).
  """
  workdir = os.fspath(workdir)
  if not os.path.isdir(workdir):
    raise WorkdirError(f'workdir {workdir} does not exist: pass the --workdir of a run')
  steps = available_steps(workdir)
  if not steps:
    raise WorkdirError(f'no checkpoints in {checkpoint_dir(workdir)}: train first '
                       f'(python -m muppet_jax.main --config ... --workdir {workdir})')
  if step is None:
    return steps[-1]
  if step not in steps:
    raise WorkdirError(f'no checkpoint for step {step} in {checkpoint_dir(workdir)}; '
                       f'available steps: {steps}')
  return step


def save_backbone_config(workdir: str, hf_config: transformers.PretrainedConfig) -> None:
  """Writes the backbone config next to the checkpoints (training does, on process 0)."""
  hf_config.to_json_file(os.path.join(os.fspath(workdir), BACKBONE_CONFIG))


def load_backbone_config(workdir: str) -> transformers.PretrainedConfig | None:
  """The backbone config the run wrote (`save_backbone_config`), or None if there is none."""
  path = os.path.join(os.fspath(workdir), BACKBONE_CONFIG)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return transformers.AutoConfig.for_model(**json.load(f))
  except (OSError, ValueError, TypeError, KeyError) as e:
    raise WorkdirError(f'{path} cannot be read ({type(e).__name__}: {e}); delete it: it is '
                       "rebuilt from the checkpoint's own config record") from e


def _backbone_differences(hf_config: transformers.PretrainedConfig,
                          config: ml_collections.ConfigDict) -> list[str]:
  """Where a saved backbone config contradicts the run's config record."""
  diffs = []
  if hf_config.model_type != config.model.type:
    diffs.append(f'model type {hf_config.model_type!r} vs {config.model.type!r}')
  elif not config.model.init_from:  # Random init: the shape comes from the record.
    # `transformers` maps these names onto BART's own (d_model, encoder_layers, ...).
    for name, key in (('hidden_size', 'hidden_size'), ('num_hidden_layers', 'num_layers'),
                      ('num_attention_heads', 'num_heads')):
      value = getattr(hf_config, name, None)
      if value is not None and value != config.model[key]:
        diffs.append(f'{name} {value} vs model.{key} {config.model[key]}')
  return diffs


def checked_backbone_config(workdir: str, config: ml_collections.ConfigDict,
                            step: int) -> transformers.PretrainedConfig | None:
  """`load_backbone_config`, checked against the config record of checkpoint `step`.

  Raises:
    WorkdirError: backbone_config.json describes another model than the checkpoint's record
      (it was overwritten by another command, e.g. by a version of train.py that wrote it
      before refusing to resume): one line naming the differences and the fix.
  """
  saved = load_backbone_config(workdir)
  if saved is None:
    return None
  diffs = _backbone_differences(saved, config)
  if diffs:
    path = os.path.join(os.fspath(workdir), BACKBONE_CONFIG)
    raise WorkdirError(
        f'{path} does not describe the model of checkpoint {checkpoint_dir(workdir)}/{step} '
        f'({"; ".join(diffs)}, backbone_config.json vs the checkpoint\'s config record): it '
        'was overwritten by another command: put back a copy of the original (export and '
        "--mode eval can also do without it: delete it and they rebuild it from the "
        "checkpoint's own config record)")
  return saved


def _fill_defaults(target: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict
                   ) -> None:
  """Adds keys the saved config lacks (written by an older version) from the defaults."""
  for key, value in defaults.items():
    if key not in target:
      target[key] = copy.deepcopy(value)
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(
        target[key], ml_collections.ConfigDict):
      _fill_defaults(target[key], value)


@dataclasses.dataclass
class RunRecord:
  """A run's saved config record, parsed."""

  config: ml_collections.ConfigDict  # The run's config (fields added since: their defaults).
  task_names: list[str]  # The run's tasks in task-id order.
  step: int | None = None  # The checkpoint it was read from (`read_record`).


def config_from_record(record: dict) -> RunRecord:
  """The run's config and task list from a saved config record (checkpoint or config.json)."""
  record = dict(record)
  record.pop('history', None)  # config.json's record of changes on resume (`run_record`).
  task_names = [str(t) for t in record.pop('tasks')]
  config = ml_collections.ConfigDict(record)
  _fill_defaults(config, config_lib.default())
  return RunRecord(config=config, task_names=task_names)


def _usable(record: Any, workdir: str, step: int) -> dict:
  if not isinstance(record, dict) or 'model' not in record or 'tasks' not in record:
    raise WorkdirError(f'checkpoint {checkpoint_dir(workdir)}/{step} has no usable config '
                       "record (expected the run's config with a 'tasks' list)")
  return record


def read_record(workdir: str, step: int | None = None) -> RunRecord:
  """The config record saved with checkpoint `step` (default: the newest), without reading
  its arrays: what a run's preflight needs (its tasks) before anything heavy.

  Raises:
    WorkdirError: no workdir, no checkpoint, no `step`, or no usable config record.
  """
  step = resolve_step(workdir, step)
  manager = ocp.CheckpointManager(
      checkpoint_dir(workdir),
      # create=False: nothing is created; (read_only=True would print orbax warnings).
      options=ocp.CheckpointManagerOptions(create=False),
      item_handlers={'config': ocp.JsonCheckpointHandler()})
  try:
    record = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  finally:
    manager.close()
  run = config_from_record(_usable(record['config'], workdir, step))
  run.step = step
  return run


@dataclasses.dataclass
class SavedRun:
  """A checkpoint as host arrays, with the run's config."""

  step: int
  config: ml_collections.ConfigDict  # `config_from_record` of the checkpoint's record.
  task_names: list[str]
  record: dict  # The raw config record.
  state: Any  # The train-state tree as saved: {'params': ..., 'rest': ..., ...} of numpy arrays.


def read(workdir: str, step: int | None = None) -> SavedRun:
  """Reads checkpoint `step` (default: the newest) and its config, whatever devices wrote it.

  Raises:
    WorkdirError: no workdir, no checkpoint, no `step`, or no usable config record.
    checkpoint.CheckpointError: the checkpoint's files cannot be read.
  """
  workdir = os.fspath(workdir)
  requested = step
  step = resolve_step(workdir, step)
  # No step asked for: the newest readable checkpoint (a damaged newest one is skipped).
  restored = checkpoint_lib.read_checkpoint(workdir, requested)
  step = restored.step
  record = _usable(restored.config, workdir, step)
  run = config_from_record(record)
  return SavedRun(step=restored.step, config=run.config, task_names=run.task_names,
                  record=record, state=restored.state)


def data_setup(config: ml_collections.ConfigDict, workdir: str,
               task_names: list[str]) -> build.DataSetup:
  """The run's tokenizer and tasks, in the checkpoint's task order (as `build.setup_data`)."""
  vocab = vocab_lib.HFVocabulary(build.resolve_tokenizer(config, workdir))
  records = [tasks.record_for_task(name) for name in task_names]
  table = TaskTable.build(task_names, [int(r.family) for r in records],
                          [r.num_classes for r in records])
  mixture = config.data.mixture
  if mixture in seqio.TaskRegistry.names():  # A one-task run (fine-tuning).
    rates_by_name = {mixture: 1.0}
  else:
    try:
      rates_by_name = dict(tasks.mixture_tasks(mixture))
    except KeyError:  # The mixture is no longer registered: rates are informative only.
      rates_by_name = {}
  rates = tuple(float(rates_by_name.get(name, float('nan'))) for name in task_names)
  return build.DataSetup(vocab=vocab, task_names=tuple(task_names), rates=rates,
                         task_table=table, shape=BatchShape.from_config(config.data))


def hf_config_for(config: ml_collections.ConfigDict, data: build.DataSetup,
                  workdir: str | None = None, step: int | None = None) -> hf.HFConfig:
  """The backbone's `transformers` config: the one saved in `workdir` (checked against the
  config record of checkpoint `step`), else as `build.build_model` derives it from the config
  (`model.init_from`'s, or random init's)."""
  saved = checked_backbone_config(workdir, config, step) if workdir else None
  if saved is not None:
    return saved
  if config.model.init_from:
    hf_config = transformers.AutoConfig.from_pretrained(config.model.init_from)
    for name, value in build.dropout_overrides(config).items():
      setattr(hf_config, name, value)
    if hf_config.model_type != config.model.type:
      raise WorkdirError(f'model.init_from={config.model.init_from!r} is a '
                         f'{hf_config.model_type!r} checkpoint but model.type is '
                         f'{config.model.type!r}')
    return hf_config
  return build.random_init_hf_config(config, data)


def fill(abstract: nnx.State, saved: Any, what: str, where: str) -> nnx.State:
  """`abstract` (a rebuilt model's state) with the values of the checkpoint's `saved` tree.

  Leaves are matched by their '/'-joined path (`checkpoint.path_name`), so the result does not
  depend on how orbax nests what it reads back. Shapes must match exactly.

  Raises:
    checkpoint.IncompatibleCheckpointError: arrays missing, unexpected or of another shape
      (the first few of each named).
  """
  saved_flat = {checkpoint_lib.path_name(p): v
                for p, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
  wanted = set()
  missing, mismatched = [], []

  def take(path, leaf):
    name = checkpoint_lib.path_name(path)
    wanted.add(name)
    if name not in saved_flat:
      missing.append(name)
      return leaf
    value = np.asarray(saved_flat[name])
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # RNG streams: raw key data.
      return jax.random.wrap_key_data(jnp.asarray(value))
    if value.shape != tuple(leaf.shape):
      mismatched.append(f'{name}: checkpoint {value.shape} vs model {tuple(leaf.shape)}')
      return leaf
    return jnp.asarray(value, leaf.dtype)

  filled = jax.tree_util.tree_map_with_path(take, abstract)
  unexpected = sorted(set(saved_flat) - wanted)
  if missing or mismatched or unexpected:
    lines = [f'missing in checkpoint: {what}/{k}' for k in missing[:5]]
    lines += [f'not in the rebuilt model: {what}/{k}' for k in unexpected[:5]]
    lines += [f'{what}/{k}' for k in mismatched[:5]]
    if any('word_embeddings' in k or 'shared' in k for k in mismatched):
      lines.append('(a different vocabulary size: the tokenizer found now is not the one the '
                   'run was trained with, e.g. a newer demo tokenizer; a run written by the '
                   f'current train.py records its backbone config in {BACKBONE_CONFIG})')
    raise checkpoint_lib.IncompatibleCheckpointError(
        f'checkpoint {where} does not fit the model rebuilt from its own config '
        f'({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} shape '
        'mismatches):\n  ' + '\n  '.join(lines))
  return filled


@dataclasses.dataclass
class RestoredRun:
  """A run's model at one checkpoint, rebuilt from the workdir alone."""

  model: muppet.MuppetModel  # With the checkpoint's parameters (on the default device).
  hf_config: hf.HFConfig  # The backbone's `transformers` config.
  config: ml_collections.ConfigDict  # The run's config (from the checkpoint's record).
  data: build.DataSetup  # Tokenizer and tasks in the checkpoint's task order.
  records: list[DatasetRecord]  # The tasks' catalogue (or demo) records, in task-id order.
  step: int


def restore(workdir: str, step: int | None = None) -> RestoredRun:
  """Rebuilds the run's model from its saved config and restores checkpoint `step`
  (`rebuild(workdir, read(workdir, step))`).

  Raises:
    WorkdirError: no workdir / checkpoint / `step` (the steps available are listed), no
      config record, or a tokenizer that does not fit the saved model.
    checkpoint.IncompatibleCheckpointError: the saved arrays do not fit the rebuilt model.
  """
  return rebuild(workdir, read(workdir, step))


def rebuild(workdir: str, saved: SavedRun) -> RestoredRun:
  """The run's tokenizer, tasks and model as `train.py` built them, with `saved`'s arrays."""
  workdir = os.fspath(workdir)
  config = saved.config
  data = data_setup(config, workdir, saved.task_names)
  hf_config = hf_config_for(config, data, workdir, saved.step)
  if data.vocab.vocab_size > hf_config.vocab_size:
    raise WorkdirError(f'the tokenizer {data.vocab.path} has {data.vocab.vocab_size} tokens but '
                       f'the model\'s vocabulary has {hf_config.vocab_size}: it is not the '
                       'tokenizer the run was trained with')

  # The model's structure only (no init compute or memory): the checkpoint fills the values.
  def structure():
    rngs = nnx.Rngs(params=config.seed, dropout=config.seed + 1)
    return muppet.build_model(config, hf_config, data.task_table, rngs=rngs)

  graphdef, params, rest = nnx.split(nnx.eval_shape(structure), nnx.Param, ...)
  where = f'{checkpoint_dir(workdir)}/{saved.step}'
  params = fill(params, saved.state['params'], 'params', where)
  rest = fill(rest, saved.state.get('rest', {}), 'rest', where)
  return RestoredRun(model=nnx.merge(graphdef, params, rest), hf_config=hf_config,
                     config=config, data=data,
                     records=[tasks.record_for_task(n) for n in saved.task_names],
                     step=saved.step)


@dataclasses.dataclass
class EvalRecord:
  """An evaluation line of metrics.jsonl."""

  step: int | None  # None: no evaluation found.
  metrics: dict[str, dict[str, float]]  # Per task name, its metrics.


def read_eval_metrics(workdir: str, max_step: int | None = None) -> EvalRecord:
  """The latest evaluation in `workdir/metrics.jsonl` at or before `max_step`."""
  path = os.path.join(os.fspath(workdir), 'metrics.jsonl')
  found = EvalRecord(step=None, metrics={})
  if not os.path.exists(path):
    return found
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        entry = json.loads(line)
      except json.JSONDecodeError:  # A line cut by a crash: skip it.
        continue
      if 'eval' not in entry:
        continue
      step = int(entry.get('step', -1))
      if max_step is not None and step > max_step:
        continue
      if found.step is None or step >= found.step:
        found = EvalRecord(step=step, metrics=entry['eval'])
  return found
