"""Periodic held-out evaluation during training: predictions per task -> each task's metric.

For each task of the run, the evaluation split (first `data.eval_examples` examples, unshuffled)
is laid out in the training sub-batch shapes by an evaluation builder
(`SubBatchBuilder(..., evaluation=True)`: the device arrays of training, plus host-side
`SubBatch.meta` per example slot), predicted by the compiled eval step (`step.make_eval_step`,
one program for all tasks), and scored with `evaluate.py` as the datasets' official scripts do:
  classification     the dataset's metric (accuracy, MCC, F1/accuracy) on predicted classes;
                     MultiRC: F1a over all answer options and EM, the fraction of questions
                     whose options are all predicted right (options grouped by the `group` its
                     mapper emits, carried in `meta`);
  multiple choice    accuracy;
  span               SQuAD / ReCoRD EM and F1 per question: the device returns each window's
                     best span (start <= end, both among the window's context tokens, at most
                     `eval.max_answer_length` tokens) and its score (start + end logit); the
                     host keeps the question's best-scoring window, cuts the answer out of the
                     original context with the tokenizer's character offsets, and compares it
                     with all gold answers (max over them). Every question counts once, also
                     one whose answer lies outside the windows the model saw;
  summarization      ROUGE-1/2/L/Lsum of beam-search summaries (`generate.py`, config.eval)
                     against the raw reference summaries (untokenized, untruncated).
Every task also reports `examples`, the number of questions / examples scored.
Every process builds the same sub-batches and feeds its own devices' positions.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
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
from muppet_jax.data.catalogue import DatasetRecord
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
        span_stride=config.data.span_stride, evaluation=True)
    self._step = jax.jit(step_lib.make_eval_step(graphdef, data.task_table, settings,
                                                 layout.mesh),
                         in_shardings=(None, None, layout.batch_sharding))

  def _sub_batches(self, task_name: str) -> list[batching.SubBatch]:
    examples = tasks.family_examples(task_name, 'validation', shuffle=False, seed=0)
    if self.max_examples > 0:
      examples = itertools.islice(examples, self.max_examples)
    stream = self.builder.stream(task_name, examples)
    out = []
    while True:
      sub = self.builder.build(stream)
      if sub.num_examples == 0:
        return out
      out.append(sub)

  def _predict(self, params, rest,
               subs: list[batching.SubBatch]) -> list[objective.SlotPredictions]:
    """Predictions (numpy, `[E]` each) for `subs`, run D at a time ([1, D] batches; the last
    padded with empties)."""
    devices = self.layout.data_size
    arrays = [s.arrays for s in subs]
    empty = {k: np.zeros_like(v) for k, v in arrays[0].items()}
    empty['task_id'], empty['family_id'] = arrays[0]['task_id'], arrays[0]['family_id']
    preds = []
    for start in range(0, len(arrays), devices):
      group = arrays[start:start + devices]
      group = group + [empty] * (devices - len(group))
      local = {k: np.stack([group[d][k] for d in self.layout.local_data_indices])[None]
               for k in group[0]}
      out = self._step(params, rest, sharding.global_batch(self.layout, local))
      out = multihost_utils.process_allgather(out, tiled=True)
      preds.extend(jax.tree.map(lambda x, d=d: np.asarray(x)[0, d], out)
                   for d in range(len(arrays[start:start + devices])))
    return preds

  def run(self, params, rest) -> dict[str, dict[str, float]]:
    """Metrics per task name (see the module docstring)."""
    results = {}
    for name in self.data.task_names:
      subs = self._sub_batches(name)
      if not subs:
        logging.warning('task %s has no evaluation examples', name)
        continue
      record = tasks.record_for_task(name)
      if record.family == Family.SUMMARIZATION:
        model = nnx.merge(self.graphdef, params, rest)
        results[name] = generate_lib.summarize_and_score(model, self.data.vocab, subs,
                                                         self.generation)
        continue
      results[name] = score(record, subs, self._predict(params, rest, subs))
    return results


def score(record: DatasetRecord, subs: Sequence[batching.SubBatch],
          preds: Sequence[objective.SlotPredictions]) -> dict[str, float]:
  """One task's metrics from its evaluation sub-batches and their predictions.

  Args:
    record: the task's catalogue (or demo) record: family and metric.
    subs: the task's sub-batches, from an evaluation builder (with `meta`).
    preds: the eval step's predictions of each sub-batch, numpy `[E]` fields.

  Returns:
    The metric's keys (evaluate.py) plus `examples` (examples / questions scored);
    classification also reports `accuracy`.
  """
  if len(subs) != len(preds):
    raise ValueError(f'{len(subs)} sub-batches but {len(preds)} predictions')
  if any(s.meta is None for s in subs):
    raise ValueError(f'{record.task_name}: sub-batches without metadata; build them with '
                     'SubBatchBuilder(..., evaluation=True)')
  if record.family in (Family.CLASSIFICATION, Family.MULTIPLE_CHOICE):
    return _score_labels(record, subs, preds)
  if record.family == Family.SPAN:
    return _score_spans(record, subs, preds)
  raise ValueError(f'{record.task_name}: summarization is scored by generation, not here')


def _score_labels(record: DatasetRecord, subs: Sequence[batching.SubBatch],
                  preds: Sequence[objective.SlotPredictions]) -> dict[str, float]:
  """Classification / multiple choice: the predicted class of each example slot."""
  labels, predicted, groups = [], [], []
  for sub, pred in zip(subs, preds):
    slots = np.flatnonzero(sub.arrays['example_mask'])
    labels.append(sub.arrays['labels'][slots])
    predicted.append(np.asarray(pred.label)[slots])
    groups.extend(sub.meta[e].group for e in slots)
  labels, predicted = np.concatenate(labels), np.concatenate(predicted)
  metric = record.metric if record.family == Family.CLASSIFICATION else 'accuracy'
  kw = {}
  if evaluate.METRICS[metric].needs_groups:
    if not all(groups):
      raise ValueError(f'{record.task_name}: metric {metric!r} groups answer options by '
                       "question, but some examples have no 'group' (its mapper must emit "
                       'one; preprocessors.GROUPED)')
    kw['groups'] = groups
  scores = evaluate.compute(metric, predicted, labels, **kw)
  scores.setdefault('accuracy', evaluate.accuracy(predicted, labels))
  return {**scores, 'examples': float(len(labels))}


def _score_spans(record: DatasetRecord, subs: Sequence[batching.SubBatch],
                 preds: Sequence[objective.SlotPredictions]) -> dict[str, float]:
  """Extractive QA: per question, the best-scoring span over its windows vs all gold answers.

  A question without any scored window (no context token at all) predicts ''.
  """
  best: dict[int, tuple[float, str]] = {}  # question index -> (score, answer text)
  golds: dict[int, tuple[str, ...]] = {}
  for sub, pred in zip(subs, preds):
    for row in np.flatnonzero(sub.arrays['example_mask']):
      meta = sub.meta[row]
      golds.setdefault(meta.index, meta.answers)
      span_score = float(pred.span_score[row])
      if span_score == -np.inf:  # A window without context tokens: no candidate.
        continue
      if meta.index not in best or span_score > best[meta.index][0]:
        text = meta.span_text(int(pred.span_start[row]), int(pred.span_end[row]))
        best[meta.index] = (span_score, text)
  questions = sorted(golds)
  predicted = [best[q][1] if q in best else '' for q in questions]
  scores = evaluate.compute(record.metric, predicted, [golds[q] for q in questions])
  return {**scores, 'examples': float(len(questions))}


def print_summary(metrics: dict[str, dict[str, Any]], step: int) -> None:
  """Logs one line per task with its held-out metrics."""
  logging.info('held-out evaluation at step %d:', step)
  for name, scores in metrics.items():
    shown = ', '.join(f'{k} {v:.4f}' for k, v in scores.items() if k != 'examples')
    logging.info('  %-36s %s', name, shown)
