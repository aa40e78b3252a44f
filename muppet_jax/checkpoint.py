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
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('state', 'data', 'config'))

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


def _check_shapes(saved_tree: Any, abstract_state: Any, directory: str, step: int) -> None:
  """Compares leaf shapes before orbax would fail with a less readable error."""
  saved = {jax.tree_util.keystr(p): tuple(getattr(v, 'shape', ()) or ())
           for p, v in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
  wanted = {jax.tree_util.keystr(p): tuple(np.shape(v))
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
