"""Fine-tuning from a pre-finetuned run (paper section 4).

`configs/finetune.py:TASK` trains one task starting from `finetune.from_workdir`, the workdir of
a MUPPET run: the backbone and the shared multiple-choice and span heads are copied from its
newest checkpoint; with `finetune.reuse_head` the task's own classification head too (the
paper re-uses pre-finetuning heads for small datasets); otherwise the head starts fresh.
`finetune.train_fraction` trains on the first fraction of the train split's records (the
low-resource study; `streams.train_records`). A Hugging Face directory (e.g. one written by `muppet_jax.export`) works through
`model.init_from` instead.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
import numpy as np
import transformers
from absl import logging
from flax import nnx

from muppet_jax import checkpoint as checkpoint_lib
from muppet_jax import workdir as workdir_lib
from muppet_jax.data import tasks
from muppet_jax.data.features import Family, TaskTable


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
  hf_config = workdir_lib.load_backbone_config(workdir)
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
  """The fine-tuning config with the pre-finetuned run's model type and tokenizer."""
  config = config.copy_and_resolve_references()
  pre_model, pre_data = pre.config['model'], pre.config['data']
  config.model.type = pre_model['type']
  config.model.init_from = ''  # The backbone comes from the checkpoint.
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
