"""Periodic held-out evaluation during training: predictions per task -> each task's metric.

For each task of the run, the evaluation split (first `data.eval_examples` examples, unshuffled)
is laid out in the training sub-batch shapes, predicted by the compiled eval step
(`step.make_eval_step`, one program for all tasks), and scored with `evaluate.py`:
  classification     the dataset's metric (accuracy, MCC, F1/accuracy) on predicted classes;
                     MultiRC is scored with F1/accuracy here (its EM needs question groups);
  multiple choice    accuracy;
  span               SQuAD EM/F1 between the predicted and the gold answer text of each window
                     that contains the answer (window level: a cheap proxy during training);
  summarization      ROUGE-1/2/L/Lsum of beam-search summaries (`generate.py`, config.eval)
                     against the reference summaries (as tokenized, up to decoder_length).
Every process builds the same sub-batches and feeds its own devices' positions.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from flax import nnx

from muppet_jax import evaluate
from muppet_jax import generate as generate_lib
from muppet_jax import objective
from muppet_jax import sharding
from muppet_jax import step as step_lib
from muppet_jax.data import batching
from muppet_jax.data import tasks
from muppet_jax.data.features import Family


class Evaluator:
  """Evaluates every task of a run with one compiled eval step."""

  def __init__(self, *, graphdef: nnx.GraphDef, data, config: ml_collections.ConfigDict,
               layout: sharding.MeshLayout, settings: objective.ObjectiveSettings,
               hf_config=None):
    self.data = data
    self.graphdef = graphdef
    self.generation = None
    if data.task_table.has_family(Family.SUMMARIZATION):
      self.generation = generate_lib.GenerationConfig.from_config(config.eval, hf_config)
    self.layout = layout
    self.max_examples = int(config.data.eval_examples)
    self.builder = batching.SubBatchBuilder(
        data.shape, data.vocab, data.task_table, model_type=config.model.type,
        span_stride=config.data.span_stride)
    self._step = jax.jit(step_lib.make_eval_step(graphdef, data.task_table, settings,
                                                 layout.mesh),
                         in_shardings=(None, None, layout.batch_sharding))

  def _sub_batches(self, task_name: str) -> list[dict[str, np.ndarray]]:
    examples = tasks.family_examples(task_name, 'validation', shuffle=False, seed=0)
    if self.max_examples > 0:
      examples = itertools.islice(examples, self.max_examples)
    stream = self.builder.stream(task_name, examples)
    out = []
    while True:
      sub = self.builder.build(stream)
      if sub.num_examples == 0:
        return out
      out.append(sub.arrays)

  def _predict(self, params, rest, subs: list[dict[str, np.ndarray]]):
    """Predictions for `subs`, run D at a time ([1, D] batches; the last padded with empties)."""
    devices = self.layout.data_size
    empty = {k: np.zeros_like(v) for k, v in subs[0].items()}
    empty['task_id'], empty['family_id'] = subs[0]['task_id'], subs[0]['family_id']
    preds = []
    for start in range(0, len(subs), devices):
      group = subs[start:start + devices]
      group = group + [empty] * (devices - len(group))
      local = {k: np.stack([group[d][k] for d in self.layout.local_data_indices])[None]
               for k in group[0]}
      out = self._step(params, rest, sharding.global_batch(self.layout, local))
      out = multihost_utils.process_allgather(out, tiled=True)
      preds.extend(jax.tree.map(lambda x, d=d: np.asarray(x)[0, d], out)
                   for d in range(len(subs[start:start + devices])))
    return preds

  def run(self, params, rest) -> dict[str, dict[str, float]]:
    """Metrics per task name (see the module docstring)."""
    results = {}
    for name in self.data.task_names:
      subs = self._sub_batches(name)
      if not subs:
        logging.warning('task %s has no evaluation examples', name)
        continue
      if tasks.record_for_task(name).family == Family.SUMMARIZATION:
        model = nnx.merge(self.graphdef, params, rest)
        results[name] = generate_lib.summarize_and_score(model, self.data.vocab, subs,
                                                         self.generation)
        continue
      preds = self._predict(params, rest, subs)
      results[name] = self._score(name, subs, preds)
    return results

  def _score(self, name: str, subs, preds) -> dict[str, float]:
    record = tasks.record_for_task(name)
    family = record.family
    if family in (Family.CLASSIFICATION, Family.MULTIPLE_CHOICE):
      labels = np.concatenate([s['labels'][s['example_mask']] for s in subs])
      predicted = np.concatenate([p.label[s['example_mask']] for s, p in zip(subs, preds)])
      metric = record.metric if family == Family.CLASSIFICATION else 'accuracy'
      if metric == 'multirc':
        metric = 'f1_accuracy'
      scores = evaluate.compute(metric, predicted, labels)
      scores.setdefault('accuracy', evaluate.accuracy(predicted, labels))
      return {**scores, 'examples': float(len(labels))}
    if family == Family.SPAN:
      predicted_text, gold_text = [], []
      for s, p in zip(subs, preds):
        for row in range(s['input_ids'].shape[0]):
          if not s['example_mask'][row] or s['span_end'][row] == 0:
            continue  # No answer in this window.
          ids = s['input_ids'][row]
          predicted_text.append(ids[p.span_start[row]:p.span_end[row] + 1])
          gold_text.append(ids[s['span_start'][row]:s['span_end'][row] + 1])
      if not gold_text:
        return {'windows': 0.0}
      predicted_text = self.data.vocab.decode_batch(predicted_text)
      gold_text = self.data.vocab.decode_batch(gold_text)
      scores = evaluate.squad(predicted_text, [[g] for g in gold_text])
      return {**scores, 'windows': float(len(gold_text))}
    raise ValueError(f'{name}: summarization is scored by generation, not here')


def print_summary(metrics: dict[str, dict[str, Any]], step: int) -> None:
  """Logs one line per task with its held-out metrics."""
  logging.info('held-out evaluation at step %d:', step)
  for name, scores in metrics.items():
    shown = ', '.join(f'{k} {v:.4f}' for k, v in scores.items()
                      if k not in ('examples', 'windows', 'tokens'))
    logging.info('  %-36s %s', name, shown)
