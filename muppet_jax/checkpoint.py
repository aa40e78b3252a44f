"""Orbax checkpoints of a run: train state, input-pipeline position and config.

Each checkpoint `WORKDIR/checkpoints/<step>/` holds three items:
  state   params, optimizer state, step and RNG (orbax StandardSave; sharded arrays welcome),
  data    the input pipeline's position (JSON), so a resumed run reads the same stream on,
  config  the run's config (JSON), checked against the current one on restore.
Orbax writes into a temporary directory and renames it when complete, so a checkpoint is
either whole or absent; saves are asynchronous (training continues while they are written).

Failures, each reported as one `errors.UserError` message that names the checkpoint:
- A save that fails (full disk, permissions) raises `CheckpointSaveError` as soon as the
  trainer polls it (`Checkpointer.poll`, every step), not at the next save; the earlier
  checkpoints are untouched (orbax only deletes old ones after a save succeeded).
- On restore, an unreadable newest checkpoint (damaged or truncated files) is skipped with a
  warning and the newest readable one is restored. The damaged ones are never deleted: they are
  moved out of orbax's way (its `max_to_keep` would delete them, and a new save of the same
  step would collide with them) to `WORKDIR/damaged_checkpoints/<step>`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from muppet_jax import errors
from muppet_jax import multihost

# Config sections that must match for a checkpoint to be restorable into the current model.
_MODEL_SHAPE_KEYS = ('type', 'hidden_size', 'num_layers', 'num_heads', 'intermediate_size',
                     'max_position_embeddings', 'vocab_size')


# Where unreadable checkpoints are moved (under the workdir), out of orbax's way.
DAMAGED_DIRNAME = 'damaged_checkpoints'


class IncompatibleCheckpointError(errors.UserError, ValueError):
  """The checkpoint was written by a different model (shapes or tasks differ)."""


class CheckpointError(errors.UserError):
  """No checkpoint can be read (missing, damaged), or one cannot be written."""


class NoCheckpointError(CheckpointError, FileNotFoundError):
  """There is no checkpoint (or none for the requested step)."""


class CheckpointSaveError(CheckpointError):
  """A checkpoint could not be written (full disk, permissions, ...)."""


@dataclasses.dataclass
class Restored:
  """What a restore returns."""

  step: int
  state: Any  # The train-state pytree, shaped like the abstract state given to `restore`.
  data_state: dict  # The input pipeline's position at that step.
  config: dict  # The config the checkpoint was written with.


class Checkpointer:
  """Saves and restores a run's checkpoints in `workdir/checkpoints`.

  Args (constructor):
    workdir: the run's directory.
    keep: checkpoints kept (orbax deletes the oldest after each successful save).
    save_every: steps between checkpoints (`should_save`).
    async_save: write in a background thread (the trainer calls `poll` every step).
    read_only: only read (export, fine-tuning): nothing is created or deleted.
    barrier_timeout_s: how long the processes of a multi-process run wait for each other at
      the barriers of an asynchronous save (`config.distributed.barrier_timeout_s`).
  """

  def __init__(self, workdir: str, *, keep: int, save_every: int, async_save: bool = True,
               read_only: bool = False, barrier_timeout_s: int = 1200):
    self.workdir = os.fspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    self.save_every = max(1, save_every)
    self._pending: int | None = None  # The step of the asynchronous save in flight.
    # Reading only: nothing created, nothing deleted (orbax's own `read_only` warns on every
    # use and only skips what these settings already rule out).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, save_interval_steps=max(1, save_every),
        create=not read_only, enable_async_checkpointing=async_save and not read_only,
        async_options=ocp.AsyncOptions(timeout_secs=int(barrier_timeout_s)))
    # Handlers named up front, so that a fresh process can read item metadata before restoring.
    try:
      self._manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={'state': ocp.StandardCheckpointHandler(),
                         'data': ocp.JsonCheckpointHandler(),
                         'config': ocp.JsonCheckpointHandler()})
    except OSError as e:
      raise CheckpointSaveError(f'cannot create the checkpoint directory {self.directory}: '
                                f'{_cause(e)}; use a writable --workdir') from e

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, config_json: str, *,
           force: bool = False) -> bool:
    """Starts saving `step` if it is on the save interval (or `force`); returns whether it
    started. The previous save is finished (and checked) first.

    Raises:
      CheckpointSaveError: this save or the previous one failed; the message names the
        checkpoint and the cause (e.g. '[Errno 28] No space left on device').
    """
    self.wait()
    try:
      started = self._manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              data=ocp.args.JsonSave(data_state),
              config=ocp.args.JsonSave(json.loads(config_json))),
          force=force)
    except Exception as e:  # pylint: disable=broad-except  (orbax wraps I/O errors variously)
      raise self._save_error(step, e) from e
    if started:
      self._pending = step
      if not self._manager.is_saving_in_progress():  # Synchronous save: already done.
        self.wait()
    return started

  def poll(self) -> None:
    """Finishes the pending asynchronous save if it is done (cheap; call every step).

    Raises:
      CheckpointSaveError: the save failed (the run should stop: see `save`).
    """
    if self._pending is not None and not self._manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Blocks until the pending save is on disk, logs it, and raises if it failed.

    Raises:
      CheckpointSaveError: the save failed.
    """
    step, self._pending = self._pending, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    if step is None:
      return
    path = os.path.join(self.directory, str(step))
    if jax.process_index() == 0 and not os.path.isdir(path):
      raise CheckpointSaveError(f"checkpoint {path} was not written (see the log file for "
                                f"orbax's error); the earlier checkpoints in {self.directory} "
                                'are intact: fix the cause and re-run the same command to resume')
    logging.info('checkpoint %d saved: %s', step, path)

  def _save_error(self, step: int | None, error: BaseException) -> CheckpointSaveError:
    where = os.path.join(self.directory, str(step)) if step is not None else self.directory
    earlier = [s for s in self._manager.all_steps() if step is None or s < step]
    kept = (f'checkpoint {max(earlier)} and earlier are intact' if earlier else
            'no earlier checkpoint exists')
    fix = 'free disk space or fix the permissions'
    if jax.process_count() > 1 and multihost.looks_like_lost_peer(error):
      # Not the disk: a collective or barrier of the save failed (the heartbeats name a lost
      # process first when there is one, `multihost.watch_peers`).
      fix = ('another process of the run failed or cannot be reached (see its log, '
             'WORKDIR/logs/train.process<i>.log)')
    return CheckpointSaveError(
        f'could not save checkpoint {where}: {_cause(error)}; {kept}: {fix}, then re-run the '
        'same command to resume')

  def should_save(self, step: int) -> bool:
    """Whether `step` is on the save interval (orbax's own rule also saves the first step)."""
    return step % self.save_every == 0

  def reached_preemption(self, step: int) -> bool:
    """True on every process once any process was told to stop (multi-host preemption sync)."""
    return self._manager.reached_preemption(step)

  def restore(self, abstract_state: Any, current_config: dict, step: int | None = None
              ) -> Restored:
    """Restores `step` (default: the newest readable) into the structure of `abstract_state`.

    Without `step`, checkpoints are tried newest first: one that cannot be read is reported
    with a warning that names it, and, once an older one was restored, moved to
    `WORKDIR/damaged_checkpoints/` (kept, never deleted).

    Raises:
      NoCheckpointError: there is no checkpoint (or not that step).
      CheckpointError: no checkpoint (or not `step`) could be read; the causes are named.
      IncompatibleCheckpointError: the checkpoint's model differs from the current one.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if step is not None:
      if step not in steps:
        raise NoCheckpointError(f'no checkpoint {step} in {self.directory} (steps there: '
                                f'{sorted(steps)})')
      try:
        return self._restore_step(step, abstract_state, current_config)
      except IncompatibleCheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointError(f'checkpoint {self.directory}/{step} cannot be read: '
                              f'{_cause(e)}') from e
    if not steps:
      raise NoCheckpointError(f'no checkpoint in {self.directory}')
    damaged = _stray_steps(self.directory, steps)  # Step directories orbax does not list.
    for s in steps:
      try:
        restored = self._restore_step(s, abstract_state, current_config)
      except IncompatibleCheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (any read error: damaged files)
        logging.warning('checkpoint %s/%d cannot be read (%s); trying the previous one',
                        self.directory, s, _cause(e))
        damaged.append(s)
        continue
      newer = sorted(d for d in damaged if d > s)
      if newer:
        moved = self._set_aside(newer)
        logging.warning('resumed from checkpoint %d instead of the newer unreadable %s, kept '
                        'in %s', s, ', '.join(map(str, newer)), ', '.join(moved))
      return restored
    raise CheckpointError(
        f'none of the checkpoints {sorted(steps)} in {self.directory} can be read (see the '
        'warnings above): restore a backup or start a new run in another --workdir')

  def _restore_step(self, step: int, abstract_state: Any, current_config: dict) -> Restored:
    meta = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    saved_config = meta['config']
    _check_model_config(saved_config, current_config, self.directory, step)
    _check_shapes(self._manager.item_metadata(step)['state'], abstract_state, self.directory,
                  step)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=ocp.args.JsonRestore()))
    return Restored(step=step, state=restored['state'], data_state=restored['data'],
                    config=saved_config)

  def _set_aside(self, steps: list[int]) -> list[str]:
    """Moves unreadable step directories to WORKDIR/damaged_checkpoints/ (primary process);
    returns where they went."""
    target_root = os.path.join(self.workdir, DAMAGED_DIRNAME)
    moved = []
    for step in steps:
      target = os.path.join(target_root, str(step))
      suffix = 1
      while os.path.exists(target):  # The same step was damaged before: keep both.
        target = os.path.join(target_root, f'{step}.{suffix}')
        suffix += 1
      moved.append(target)
      if jax.process_index() == 0:
        os.makedirs(target_root, exist_ok=True)
        shutil.move(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('muppet_jax_damaged_checkpoints_moved')
    self._manager.reload()
    return moved

  def close(self) -> None:
    """Finishes the pending save (raising `CheckpointSaveError` if it failed) and closes."""
    try:
      self.wait()
    finally:
      self._manager.close()


def _cause(error: BaseException) -> str:
  """The most specific description of a failure: the innermost OSError of the chain of causes
  (e.g. "[Errno 28] No space left on device: '...'"), else the innermost error (orbax and
  tensorstore wrap the useful message, e.g. 'OUT_OF_RANGE: Error reading ... in OCDBT database
  at local file ...: Requested byte range [...) is not valid for value of size ...')."""
  seen, chain, current = set(), [], error
  while current is not None and id(current) not in seen:
    seen.add(id(current))
    chain.append(current)
    current = current.__cause__ or current.__context__
  for e in reversed(chain):
    if isinstance(e, OSError) and e.errno is not None:
      return str(e)
  innermost = chain[-1]
  text = ' '.join(str(innermost).split())
  return f'{type(innermost).__name__}: {text[:400]}' if text else type(innermost).__name__


def _stray_steps(directory: str, listed: list[int]) -> list[int]:
  """Integer-named directories in `directory` that orbax does not list as checkpoints
  (incomplete metadata): they would collide with a new save of the same step."""
  try:
    names = os.listdir(directory)
  except OSError:
    return []
  return [int(n) for n in names
          if n.isdigit() and int(n) not in listed and os.path.isdir(os.path.join(directory, n))]


@dataclasses.dataclass(frozen=True)
class SavedRecord:
  """The config record saved with one checkpoint."""

  step: int
  record: dict  # The run's config as JSON, with its task list ('tasks').


def read_config_record(workdir: str) -> SavedRecord | None:
  """The config record of the newest complete checkpoint whose record can be read, without
  restoring anything: a JSON file read directly (no device, no barrier between processes, no
  write), for the checks that run before a command may touch the workdir. None: no
  checkpoint, or none with a readable record."""
  directory = os.path.join(os.fspath(workdir), 'checkpoints')
  if not epath.Path(directory).is_dir():
    return None
  checkpointer = Checkpointer(workdir, keep=1_000_000, save_every=1, async_save=False,
                              read_only=True)
  try:
    steps = sorted(checkpointer.all_steps(), reverse=True)
  finally:
    checkpointer._manager.close()  # pylint: disable=protected-access  (nothing pending)
  for step in steps:
    # Orbax's JSON item layout: <step>/<item>/metadata (what `JsonCheckpointHandler` writes).
    path = epath.Path(directory) / str(step) / 'config' / 'metadata'
    try:
      record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      logging.warning('the config record of checkpoint %s/%d cannot be read (%s); trying the '
                      'previous one', directory, step, e)
      continue
    if isinstance(record, dict):
      return SavedRecord(step=step, record=record)
  return None


def read_checkpoint(workdir: str, step: int | None = None) -> Restored:
  """Reads a run's checkpoint as host numpy arrays, whatever devices wrote it.

  For export and for fine-tuning from a pre-finetuned run: no abstract state is needed, and
  the device topology of the writing run does not matter. Nothing in the workdir changes.
  Without `step`, the newest readable checkpoint is read (an unreadable newer one is reported
  with a warning).

  Raises:
    NoCheckpointError: no checkpoint, or none for `step`.
    CheckpointError: the checkpoint(s) cannot be read; the causes are named.
  """
  directory = os.path.join(os.fspath(workdir), 'checkpoints')
  if not os.path.isdir(directory):
    raise NoCheckpointError(f'no checkpoints in {directory}: train first (python -m '
                            f'muppet_jax.main --config ... --workdir {workdir})')
  checkpointer = Checkpointer(workdir, keep=1_000_000, save_every=1, async_save=False,
                              read_only=True)
  manager = checkpointer._manager  # pylint: disable=protected-access
  try:
    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None and step not in steps:
      raise NoCheckpointError(f'no checkpoint {step} in {directory} (steps there: '
                              f'{sorted(steps)})')
    if not steps:
      raise NoCheckpointError(f'no checkpoint in {directory}: train first')
    for s in [step] if step is not None else steps:
      try:
        return _read_host(manager, s)
      except Exception as e:  # pylint: disable=broad-except  (any read error: damaged files)
        if step is not None:
          raise CheckpointError(f'checkpoint {directory}/{s} cannot be read: {_cause(e)}') from e
        logging.warning('checkpoint %s/%d cannot be read (%s); reading the previous one',
                        directory, s, _cause(e))
    raise CheckpointError(f'none of the checkpoints {sorted(steps)} in {directory} can be read '
                          '(see the warnings above)')
  finally:
    manager.close()


def _read_host(manager: ocp.CheckpointManager, step: int) -> Restored:
  """Checkpoint `step` with every array on this host's first device, then as numpy."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      manager.item_metadata(step)['state'],
      is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'))
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract),
      data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
  return Restored(step=step, state=jax.tree.map(_to_numpy, restored['state']),
                  data_state=restored['data'], config=restored['config'])


def _to_numpy(x) -> np.ndarray:
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # The model's RNG stream keys.
    x = jax.random.key_data(x)
  return np.asarray(x)


def _check_model_config(saved: dict, current: dict, directory: str, step: int) -> None:
  saved_model, current_model = saved.get('model', {}), current.get('model', {})
  diffs = [f'model.{k}: checkpoint {saved_model.get(k)!r} vs config {current_model.get(k)!r}'
           for k in _MODEL_SHAPE_KEYS if saved_model.get(k) != current_model.get(k)]
  saved_tasks = saved.get('tasks')
  if saved_tasks is not None and saved_tasks != current.get('tasks'):
    diffs.append(f'tasks: checkpoint {saved_tasks} vs run {current.get("tasks")}')
  if diffs:
    raise IncompatibleCheckpointError(
        f'checkpoint {directory}/{step} was written by another model; use a new workdir or '
        'the matching config:\n  ' + '\n  '.join(diffs))


def path_name(path) -> str:
  """'/'-joined names of a pytree path, the same for live state (attributes, named tuples,
  nnx.State) and for what orbax reads back (nested dicts)."""
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def _stored_shape(x) -> tuple[int, ...]:
  """Shape as stored: typed PRNG keys are stored as their raw key data."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return tuple(jax.eval_shape(jax.random.key_data, x).shape)
  return tuple(np.shape(x))


def _check_shapes(saved_tree: Any, abstract_state: Any, directory: str, step: int) -> None:
  """Compares leaf shapes before orbax would fail with a less readable error."""
  is_array = lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype')
  saved = {path_name(p): tuple(v.shape)
           for p, v in jax.tree_util.tree_flatten_with_path(saved_tree, is_leaf=is_array)[0]}
  wanted = {path_name(p): _stored_shape(v)
            for p, v in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
  missing = sorted(set(wanted) - set(saved))
  unexpected = sorted(set(saved) - set(wanted))
  mismatched = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
  if missing or unexpected or mismatched:
    lines = [f'missing in checkpoint: {k}' for k in missing[:5]]
    lines += [f'not in this model: {k}' for k in unexpected[:5]]
    lines += [f'{k}: checkpoint {saved[k]} vs model {wanted[k]}' for k in mismatched[:5]]
    raise IncompatibleCheckpointError(
        f'checkpoint {directory}/{step} does not fit this model '
        f'({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} shape '
        'mismatches):\n  ' + '\n  '.join(lines))
  logging.debug('checkpoint %s/%d matches the model (%d arrays)', directory, step, len(saved))
