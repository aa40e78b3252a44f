"""A run's record in its workdir, and whether a training command may resume the run there.

`WORKDIR/config.json` holds the run's resolved config (every field), its task list (`tasks`, in
task-id order) and `history`: one entry per start that resumed the run with changed fields,
`{"step": 400, "time": "2026-01-31T12:00:00", "changed": {"train.steps": [400, 800]}}`. Each
checkpoint keeps the record it was written with (`checkpoint.py`); config.json is written only
once a start has passed the checks below and restored its checkpoint.

Before a training command writes anything into a workdir that holds a run (a checkpoint, or a
config.json), `check_resume` compares the command's config with that run's record (the newest
checkpoint's, else config.json) on every field that decides what a checkpoint holds or how the
run's input is laid out (`INCOMPATIBLE`): the model's type, shape and source, the tokenizer,
the tasks (mixture, task selection, the task list itself: the heads follow from it) and the
sub-batch layout. Any difference stops the command with one `IncompatibleRunError` line that
names every difference; the workdir is left byte-for-byte as it was (main.py checks before it
opens the log file). Every other change is allowed and recorded in config.json's history
(`write_config`): bookkeeping (`BOOKKEEPING`: steps, logging, checkpoint cadence, evaluation,
where the data lives, the mesh) silently, anything else (learning rate, dropout, seed, ...)
with a warning that it changes the training from the resumed step on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import logging
from etils import epath

from muppet_jax import checkpoint as checkpoint_lib
from muppet_jax import config_lib

CONFIG_FILENAME = 'config.json'

# Fields that decide what a checkpoint holds (model, heads) or how the run reads its input (the
# tasks of the pipeline position, the sub-batch layout): another value cannot resume the run.
INCOMPATIBLE = (
    'model.type', 'model.init_from', 'model.hidden_size', 'model.num_layers',
    'model.num_heads', 'model.intermediate_size', 'model.max_position_embeddings',
    'model.vocab_size', 'model.vocab_multiple', 'model.scan_layers', 'data.tokenizer',
    'data.mixture', 'data.num_tasks', 'data.required_tasks', 'data.excluded_tasks', 'data.subset_seed',
    'data.rows', 'data.length', 'data.max_examples', 'data.max_choices',
    'data.decoder_length', 'data.span_stride', 'finetune.from_workdir',
    # The dropout generator's key has another shape (threefry: 2 words, rbg: 4) in the state.
    'train.rng_impl')
# The model's shape fields: they make the model only when model.init_from is empty.
_SHAPE = ('model.hidden_size', 'model.num_layers', 'model.num_heads', 'model.intermediate_size',
          'model.max_position_embeddings')
# A fine-tuning run's model and tokenizer are its finetune.from_workdir run's (`finetune.adopt`).
_ADOPTED = ('model.type', 'model.init_from', 'data.tokenizer', 'model.vocab_size',
            'model.vocab_multiple') + _SHAPE
# Only choose among the mixture's tasks when data.num_tasks selects some.
_SELECTION = ('data.required_tasks', 'data.subset_seed')
# Changes that leave what the run computes as it was (prefixes).
BOOKKEEPING = ('train.steps', 'train.log_every', 'train.eval_every', 'train.checkpoint_every',
               'train.keep_checkpoints', 'train.profile', 'eval.', 'data.eval_examples',
               'data.num_workers', 'data.tfds_data_dir', 'mesh.', 'compile.', 'distributed.',
               'model.remat')


class IncompatibleRunError(checkpoint_lib.IncompatibleCheckpointError):
  """The workdir holds a run that this command cannot resume; nothing in it was changed."""


@dataclasses.dataclass(frozen=True)
class SavedRun:
  """A workdir's run as its record describes it."""

  record: dict  # The config record (JSON), with 'tasks'.
  source: str  # Where it was read: 'checkpoint 400' or 'config.json (no checkpoint yet)'.


def flatten(record: dict, prefix: str = '') -> dict[str, Any]:
  """{'train': {'steps': 4}} -> {'train.steps': 4}, without 'tasks' and 'history'."""
  flat = {}
  for key, value in record.items():
    if not prefix and key in ('tasks', 'history'):
      continue
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _with_defaults(flat: dict[str, Any]) -> dict[str, Any]:
  """A saved record's fields, with fields added since it was written at their defaults."""
  defaults = flatten(json.loads(config_lib.default().to_json_best_effort()))
  return {**defaults, **flat}


def read_config_json(workdir: str) -> dict | None:
  """WORKDIR/config.json, or None if it is missing or unreadable."""
  path = epath.Path(os.fspath(workdir)) / CONFIG_FILENAME
  try:
    record = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) and 'model' in record else None


def saved_run(workdir: str) -> SavedRun | None:
  """The run a workdir holds: its newest checkpoint's record, else config.json; None if the
  workdir holds no run (missing, empty, or only what a refused command could leave)."""
  if not epath.Path(os.fspath(workdir)).is_dir():
    return None
  saved = checkpoint_lib.read_config_record(workdir)
  if saved is not None:
    return SavedRun(record=saved.record, source=f'checkpoint {saved.step}')
  record = read_config_json(workdir)
  if record is not None:
    return SavedRun(record=record, source=f'{CONFIG_FILENAME} (no checkpoint yet)')
  return None


def _describe(value: Any) -> str:
  return repr(value) if value not in ('', None) else "''"


def _task_difference(saved: Sequence[str], current: Sequence[str]) -> str:
  added = [t for t in current if t not in saved]
  removed = [t for t in saved if t not in current]
  parts = [f'{len(saved)} in the workdir, {len(current)} in this command']
  if added:
    parts.append('new: ' + ', '.join(added[:5]) + (f' (+{len(added) - 5} more)'
                                                   if len(added) > 5 else ''))
  if removed:
    parts.append('gone: ' + ', '.join(removed[:5]) + (f' (+{len(removed) - 5} more)'
                                                      if len(removed) > 5 else ''))
  if not added and not removed:
    parts.append('in another order')
  return 'tasks: ' + ', '.join(parts)


def incompatible_differences(saved: dict, current: dict,
                             task_names: Sequence[str] | None = None) -> list[str]:
  """What keeps `current` (a config record) from resuming the run of `saved`, one item per
  field ('model.type: 'roberta' in the workdir, 'bart' in this command'); [] if nothing.

  Args:
    saved: the workdir's record.
    current: the command's config as JSON (before fine-tuning adopts its source's model).
    task_names: the command's task list, when known; compared with the saved 'tasks'.
  """
  old, new = _with_defaults(flatten(saved)), flatten(current)
  keys = list(INCOMPATIBLE)
  if new.get('finetune.from_workdir') or old.get('finetune.from_workdir'):
    keys = [k for k in keys if k not in _ADOPTED]
  elif old.get('model.init_from') and old.get('model.init_from') == new.get('model.init_from'):
    keys = [k for k in keys if k not in _SHAPE]  # The same pretrained model: its own shape.
  if old.get('data.num_tasks', -1) == -1 and new.get('data.num_tasks', -1) == -1:
    keys = [k for k in keys if k not in _SELECTION]  # Every task: nothing is chosen.
  diffs = [f'{k} {_describe(old.get(k))} in the workdir, {_describe(new.get(k))} in this command'
           for k in keys if k in new and old.get(k) != new.get(k)]
  saved_tasks = saved.get('tasks')
  if task_names is not None and saved_tasks is not None and list(saved_tasks) != list(task_names):
    diffs.append(_task_difference(list(saved_tasks), list(task_names)))
  return diffs


def check_resume(config: ml_collections.ConfigDict, workdir: str,
                 task_names: Sequence[str] | None = None) -> SavedRun | None:
  """Checks, writing nothing, that `config` may train in `workdir`.

  Returns:
    The run the workdir holds (None: a new run).

  Raises:
    IncompatibleRunError: the workdir holds a run this config cannot resume; the message names
      every difference (`incompatible_differences`) and the way out.
  """
  saved = saved_run(workdir)
  if saved is None:
    return None
  current = json.loads(config.to_json_best_effort())
  diffs = incompatible_differences(saved.record, current, task_names)
  if diffs:
    raise IncompatibleRunError(
        f'{workdir} holds another run ({saved.source}), which this command cannot resume: '
        + '; '.join(diffs) + '. Nothing in the workdir was changed: use a new --workdir for '
        f'this command, or resume that run with its own settings ({CONFIG_FILENAME} there)')
  return saved


def changes(previous: dict, record: dict) -> dict[str, list]:
  """Fields whose value differs between two records: {'train.steps': [old, new]}."""
  old, new = _with_defaults(flatten(previous)), flatten(record)
  return {k: [old.get(k), v] for k, v in sorted(new.items()) if old.get(k) != v}


def is_bookkeeping(key: str) -> bool:
  """Whether changing `key` on resume leaves what the run computes as it was."""
  return key.startswith(BOOKKEEPING)


def write_config(workdir: str, record: dict, step: int) -> dict:
  """Writes WORKDIR/config.json (atomically): `record` and the history of the previous
  config.json, plus an entry for what changed now (a run resumed at `step` with other
  settings). Changes outside `BOOKKEEPING` are logged as a warning. Returns what was written."""
  previous = read_config_json(workdir)
  history = list(previous.get('history', [])) if previous else []
  changed = changes(previous, record) if previous else {}
  if changed:
    history.append({'step': int(step), 'time': time.strftime('%Y-%m-%dT%H:%M:%S'),
                    'changed': changed})
    text = ', '.join(f'{k} {v[0]!r} -> {v[1]!r}' for k, v in changed.items())
    training = [k for k in changed if not is_bookkeeping(k)]
    if training:
      logging.warning('resumed at step %d with changed settings (recorded in %s): %s; %s '
                      'change%s the training from here on', step, CONFIG_FILENAME, text,
                      ', '.join(training), '' if len(training) > 1 else 's')
    else:
      logging.info('resumed at step %d with changed settings (recorded in %s): %s', step,
                   CONFIG_FILENAME, text)
  written = {**record, 'history': history}
  path = os.path.join(os.fspath(workdir), CONFIG_FILENAME)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(written, f, indent=2)
  os.replace(tmp, path)
  return written
