"""Orbax checkpoints of a run: train state, input-pipeline position and config.

Each checkpoint `WORKDIR/checkpoints/<step>/` holds three items:
  state   params, optimizer state, step and RNG (orbax StandardSave; sharded arrays welcome),
  data    the input pipeline's position (JSON), so a resumed run reads the same stream on,
  config  the run's config (JSON), checked against the current one on restore.
Orbax writes into a temporary directory and renames it when complete, so a checkpoint is
either whole or absent; saves are asynchronous (training continues while they are written).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

# Config sections that must match for a checkpoint to be restorable into the current model.
_MODEL_SHAPE_KEYS = ('type', 'hidden_size', 'num_layers', 'num_heads', 'intermediate_size',
                     'max_position_embeddings', 'vocab_size')


class IncompatibleCheckpointError(ValueError):
  """The checkpoint was written by a different model (shapes or tasks differ)."""


@dataclasses.dataclass
class Restored:
  """What a restore returns."""

  step: int
  state: Any  # The train-state pytree, shaped like the abstract state given to `restore`.
  data_state: dict  # The input pipeline's position at that step.
  config: dict  # The config the checkpoint was written with.


class Checkpointer:
  """Saves and restores a run's checkpoints in `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, keep: int, save_every: int, async_save: bool = True):
    self.directory = os.path.join(os.fspath(workdir), 'checkpoints')
    self.save_every = max(1, save_every)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=max(1, save_every), create=True,
        enable_async_checkpointing=async_save)
    # Handlers named up front, so that a fresh process can read item metadata before restoring.
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': ocp.JsonCheckpointHandler(),
                       'config': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, config_json: str, *,
           force: bool = False) -> bool:
    """Saves if `step` is on the save interval (or `force`); returns whether it saved."""
    return self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(json.loads(config_json))),
        force=force)

  def should_save(self, step: int) -> bool:
    """Whether `step` is on the save interval (orbax's own rule also saves the first step)."""
    return step % self.save_every == 0

  def reached_preemption(self, step: int) -> bool:
    """True on every process once any process was told to stop (multi-host preemption sync)."""
    return self._manager.reached_preemption(step)

  def restore(self, abstract_state: Any, current_config: dict, step: int | None = None
              ) -> Restored:
    """Restores `step` (default: the latest) into the structure of `abstract_state`.

    Raises:
      FileNotFoundError: there is no checkpoint (or not that step).
      IncompatibleCheckpointError: the checkpoint's model differs from the current one.
    """
    step = self.latest_step() if step is None else step
    if step is None or step not in self._manager.all_steps():
      raise FileNotFoundError(f'no checkpoint {"" if step is None else step} in {self.directory}')
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

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def read_checkpoint(workdir: str, step: int | None = None) -> Restored:
  """Reads a run's checkpoint as host numpy arrays, whatever devices wrote it.

  For export and for fine-tuning from a pre-finetuned run: no abstract state is needed, and
  the device topology of the writing run does not matter.
  """
  checkpointer = Checkpointer(workdir, keep=1_000_000, save_every=1, async_save=False)
  manager = checkpointer._manager  # pylint: disable=protected-access
  step = checkpointer.latest_step() if step is None else step
  if step is None or step not in manager.all_steps():
    raise FileNotFoundError(
        f'no checkpoint {"" if step is None else step} in {checkpointer.directory} '
        f'(steps there: {sorted(manager.all_steps())})')
  # Every array onto this host's first device, then to numpy.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      manager.item_metadata(step)['state'],
      is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'))
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract),
      data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
  manager.close()
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
  logging.info('checkpoint %s/%d matches the model (%d arrays)', directory, step, len(saved))
