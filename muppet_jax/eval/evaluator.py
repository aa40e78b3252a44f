"""Held-out evaluation of a run: every task's examples -> compiled steps on the mesh -> metrics.

For each task of the run, the evaluation split (in stored order, the first `data.eval_examples`
examples; -1 = all), read through `streams.eval_examples` with the dataset's evaluation mapper,
is laid out in the training sub-batch shapes by an evaluation builder
(`SubBatchBuilder(..., evaluation=True)`: the device arrays of training, plus host-side
`SubBatch.meta` per example slot). The sub-batches run D at a time (D = devices on the mesh's
`data` axis, one sub-batch per device, `[1, D, ...]` global batches as in training), through
one compiled program per kind:
  classification, multiple choice, span   the eval step (`step.make_eval_step`, one program
                                          for all tasks of these families);
  summarization                           beam search (`generate.make_generate_step`), each
                                          device decoding its own sub-batch.
and are scored (`metrics.py`) as the datasets' official scripts do:
  classification     the dataset's metric (accuracy, MCC, F1/accuracy, CB's accuracy and
                     macro-F1) on predicted classes; MultiRC: F1a over all answer options and
                     EM, the fraction of questions whose options are all predicted right
                     (options grouped by the `group` its mapper emits, carried in `meta`);
  multiple choice    accuracy;
  span               per question, the best-scoring span over ALL its windows (a long context
                     has more windows than a sub-batch has rows: they continue in the next
                     sub-batches): the device returns each window's best span (start <= end,
                     both among the window's context tokens, at most `eval.max_answer_length`
                     tokens) and its score (start + end logit); the host keeps the question's
                     best window, cuts the answer out of the original context with the
                     tokenizer's character offsets, and compares it with all gold answers
                     (SQuAD / ReCoRD / MRQA EM and F1; DROP's number-aware EM and F1 against
                     its structured golds). Every question counts once, also one whose answer
                     is in no window (its evaluation mapper keeps it, with its gold texts);
  summarization      ROUGE-1/2/L/Lsum of the generated summaries (`config.eval` settings)
                     against the raw reference summaries (untokenized, untruncated).
Every task also reports `examples`, the number of questions / examples scored. Every process
builds the same sub-batches and feeds its own devices' positions of the global batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from muppet_jax import objective
from muppet_jax import sharding
from muppet_jax import step as step_lib
from muppet_jax.data import batching
from muppet_jax.data import streams
from muppet_jax.data import tasks
from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.data.features import Family
from muppet_jax.eval import generate as generate_lib
from muppet_jax.eval import metrics as metrics_lib


@dataclasses.dataclass
class TaskEvaluation:
  """One task's evaluation.

  Attributes:
    metrics: the metric's keys (`metrics.py`) plus `examples`; classification also reports
      `accuracy`.
    predictions: per example (question for span tasks), in split order: {'id': its position
      in the evaluation split, 'prediction': class id / answer text / summary, 'gold': label /
      gold answers / reference summary} (MultiRC adds 'group').
  """

  metrics: dict[str, float]
  predictions: list[dict[str, Any]]


class Evaluator:
  """Evaluates every task of a run with one compiled eval step (and one generation program)."""

  def __init__(self, *, graphdef: nnx.GraphDef, data, config: ml_collections.ConfigDict,
               layout: sharding.MeshLayout, settings: objective.ObjectiveSettings,
               hf_config=None):
    """Args:
      graphdef: the model's structure, `nnx.split(model, nnx.Param, ...)`.
      data: the run's `build.DataSetup` (tokenizer, tasks, shapes).
      config: the run's config (`data.eval_examples`, `data.tfds_data_dir`, `data.span_stride`,
        `model.type`, `eval.*` generation settings).
      layout: the mesh; sub-batches run `layout.data_size` at a time.
      settings: the objective's settings (`max_answer_length` for span decoding).
      hf_config: the backbone's `transformers` config (generation's special token ids);
        needed when the run has summarization tasks.
    """
    self.data = data
    self.layout = layout
    self.max_examples = int(config.data.eval_examples)
    self.data_dir = config.data.tfds_data_dir or None
    self.builder = batching.SubBatchBuilder(
        data.shape, data.vocab, data.task_table, model_type=config.model.type,
        span_stride=config.data.span_stride, evaluation=True)
    self._step = jax.jit(step_lib.make_eval_step(graphdef, data.task_table, settings,
                                                 layout.mesh),
                         in_shardings=(None, None, layout.batch_sharding))
    self._generate = None
    if data.task_table.has_family(Family.SUMMARIZATION):
      generation = generate_lib.GenerationConfig.from_config(config.eval, hf_config)
      self._generate = jax.jit(
          generate_lib.make_generate_step(graphdef, generation, layout.mesh),
          in_shardings=(None, None, layout.batch_sharding))

  def examples(self, task_name: str) -> Iterator[dict[str, Any]]:
    """The task's evaluation examples: the first `data.eval_examples` (-1: all)."""
    limit = self.max_examples if self.max_examples > 0 else -1
    return streams.eval_examples(task_name, limit=limit, data_dir=self.data_dir)

  def sub_batches(self, task_name: str,
                  examples: Iterable[dict[str, Any]]) -> list[batching.SubBatch]:
    """`examples` laid out by the evaluation builder (with `meta`)."""
    stream = self.builder.stream(task_name, examples)
    out = []
    while (sub := self.builder.build(stream)).num_examples:
      out.append(sub)
    return out

  def _on_mesh(self, fn: Callable[..., Any], params, rest,
               subs: Sequence[batching.SubBatch]) -> list[Any]:
    """`fn(params, rest, batch)` over `subs`, D at a time ([1, D] batches, the last padded
    with empty sub-batches); each sub-batch's output (numpy, leading axes dropped)."""
    devices = self.layout.data_size
    arrays = [s.arrays for s in subs]
    empty = {k: np.zeros_like(v) for k, v in arrays[0].items()}
    empty['task_id'], empty['family_id'] = arrays[0]['task_id'], arrays[0]['family_id']
    outputs = []
    for start in range(0, len(arrays), devices):
      group = arrays[start:start + devices]
      real = len(group)
      group = group + [empty] * (devices - real)
      local = {k: np.stack([group[d][k] for d in self.layout.local_data_indices])[None]
               for k in group[0]}
      out = fn(params, rest, sharding.global_batch(self.layout, local))
      out = multihost_utils.process_allgather(out, tiled=True)
      outputs.extend(jax.tree.map(lambda x, d=d: np.asarray(x)[0, d], out)
                     for d in range(real))
    return outputs

  def evaluate_task(self, params, rest, task_name: str,
                    examples: Iterable[dict[str, Any]] | None = None) -> TaskEvaluation | None:
    """One task's metrics and predictions (None if it has no evaluation example).

    Args:
      params, rest: the model's state (`nnx.split(model, nnx.Param, ...)`), replicated.
      task_name: a task of the run.
      examples: family examples to evaluate instead of the task's evaluation split.
    """
    subs = self.sub_batches(task_name, self.examples(task_name) if examples is None else examples)
    if not subs:
      logging.warning('task %s has no evaluation examples', task_name)
      return None
    record = tasks.record_for_task(task_name)
    if record.family == Family.SUMMARIZATION:
      generated = self._on_mesh(self._generate, params, rest, subs)
      return score_summaries(subs, generated, self.data.vocab)
    return score(record, subs, self._on_mesh(self._step, params, rest, subs))

  def evaluate(self, params, rest) -> dict[str, TaskEvaluation]:
    """Every task's metrics and predictions, in task order."""
    results = {}
    for name in self.data.task_names:
      result = self.evaluate_task(params, rest, name)
      if result is not None:
        results[name] = result
    return results

  def run(self, params, rest) -> dict[str, dict[str, float]]:
    """Metrics per task name (see the module docstring)."""
    return {name: r.metrics for name, r in self.evaluate(params, rest).items()}


def score(record: DatasetRecord, subs: Sequence[batching.SubBatch],
          preds: Sequence[objective.SlotPredictions]) -> TaskEvaluation:
  """A classification, multiple-choice or span task's evaluation from its sub-batches (of an
  evaluation builder, with `meta`) and the eval step's predictions of each (numpy, `[E]`)."""
  if len(subs) != len(preds):
    raise ValueError(f'{len(subs)} sub-batches but {len(preds)} predictions')
  if any(s.meta is None for s in subs):
    raise ValueError(f'{record.task_name}: sub-batches without metadata; build them with '
                     'SubBatchBuilder(..., evaluation=True)')
  if record.family in (Family.CLASSIFICATION, Family.MULTIPLE_CHOICE):
    return _score_labels(record, subs, preds)
  if record.family == Family.SPAN:
    return _score_spans(record, subs, preds)
  raise ValueError(f'{record.task_name}: summarization is scored by `score_summaries`')


def _score_labels(record: DatasetRecord, subs: Sequence[batching.SubBatch],
                  preds: Sequence[objective.SlotPredictions]) -> TaskEvaluation:
  """Classification / multiple choice: the predicted class of each example slot."""
  labels, predicted, groups, ids = [], [], [], []
  for sub, pred in zip(subs, preds):
    slots = np.flatnonzero(sub.arrays['example_mask'])
    labels.append(sub.arrays['labels'][slots])
    predicted.append(np.asarray(pred.label)[slots])
    groups.extend(sub.meta[e].group for e in slots)
    ids.extend(sub.meta[e].index for e in slots)
  labels, predicted = np.concatenate(labels), np.concatenate(predicted)
  metric = record.metric if record.family == Family.CLASSIFICATION else 'accuracy'
  kw = {}
  if metrics_lib.needs_groups(metric):
    if not all(groups):
      raise ValueError(f'{record.task_name}: metric {metric!r} groups answer options by '
                       "question, but some examples have no 'group' (its mapper must emit "
                       'one; mappers.GROUPED)')
    kw['groups'] = groups
  scores = metrics_lib.compute(metric, predicted, labels, **kw)
  scores.setdefault('accuracy', metrics_lib.accuracy(predicted, labels))
  predictions = [{'id': int(i), 'prediction': int(p), 'gold': int(g)}
                 for i, p, g in zip(ids, predicted, labels)]
  if kw:
    for entry, group in zip(predictions, groups):
      entry['group'] = group
  return TaskEvaluation({**scores, 'examples': float(len(labels))}, predictions)


def _golds(record: DatasetRecord, meta: batching.ExampleMeta) -> list[Any]:
  """A question's gold answers in the form its metric takes: DROP's structured answers (each
  a list of spans; each text of `answers` one single-span answer when the example has none),
  else the gold texts."""
  if record.metric == 'drop':
    return [list(g) for g in meta.gold_spans] or [[a] for a in meta.answers]
  return list(meta.answers)


def _score_spans(record: DatasetRecord, subs: Sequence[batching.SubBatch],
                 preds: Sequence[objective.SlotPredictions]) -> TaskEvaluation:
  """Extractive QA: per question, the best-scoring span over its windows vs all gold answers.

  A question without any scored window (no context token at all) predicts ''.
  """
  best: dict[int, tuple[float, str]] = {}  # question index -> (score, answer text)
  golds: dict[int, list[Any]] = {}
  for sub, pred in zip(subs, preds):
    for row in np.flatnonzero(sub.arrays['example_mask']):
      meta = sub.meta[row]
      if meta.index not in golds:
        golds[meta.index] = _golds(record, meta)
      span_score = float(pred.span_score[row])
      if span_score == -np.inf:  # A window without context tokens: no candidate.
        continue
      if meta.index not in best or span_score > best[meta.index][0]:
        text = meta.span_text(int(pred.span_start[row]), int(pred.span_end[row]))
        best[meta.index] = (span_score, text)
  questions = sorted(golds)
  predicted = [best[q][1] if q in best else '' for q in questions]
  references = [golds[q] for q in questions]
  scores = metrics_lib.compute(record.metric, predicted, references)
  predictions = [{'id': int(q), 'prediction': p, 'gold': g}
                 for q, p, g in zip(questions, predicted, references)]
  return TaskEvaluation({**scores, 'examples': float(len(questions))}, predictions)


def score_summaries(subs: Sequence[batching.SubBatch], generated: Sequence[np.ndarray],
                    vocab: Any) -> TaskEvaluation:
  """A summarization task's ROUGE from its sub-batches and the generated tokens of each.

  Args:
    subs: sub-batches of an evaluation builder (example e is row e; `meta` holds the raw
      reference summaries, untokenized and untruncated, as `rouge-score` expects them: not
      the decoder targets decoded back, which are cut at `data.decoder_length` tokens).
    generated: per sub-batch, `[R, max_length]` token ids (`generate.make_generate_step`).
    vocab: has `decode_batch(ids) -> list[str]` skipping special tokens (`HFVocabulary`).
  """
  if len(subs) != len(generated):
    raise ValueError(f'{len(subs)} sub-batches but {len(generated)} generations')
  summaries, references, ids = [], [], []
  for sub, tokens in zip(subs, generated):
    if sub.meta is None:
      raise ValueError('summaries are scored against the raw reference summaries: build the '
                       'sub-batches with SubBatchBuilder(..., evaluation=True)')
    rows = np.flatnonzero(np.asarray(sub.arrays['example_mask'])[:tokens.shape[0]])
    summaries.extend(vocab.decode_batch([tokens[r] for r in rows]))
    references.extend(sub.meta[r].reference for r in rows)
    ids.extend(sub.meta[r].index for r in rows)
  scores = metrics_lib.rouge(summaries, references)
  predictions = [{'id': int(i), 'prediction': s, 'gold': r}
                 for i, s, r in zip(ids, summaries, references)]
  return TaskEvaluation({**scores, 'examples': float(len(summaries))}, predictions)


def format_table(results: dict[str, dict[str, float]]) -> str:
  """One line per task: its metrics (fractions, 4 decimals) and the examples scored."""
  width = max([len(name) for name in results] + [4])
  lines = []
  for name, scores in results.items():
    shown = ', '.join(f'{k} {v:.4f}' for k, v in scores.items() if k != 'examples')
    lines.append(f'{name:<{width}}  {shown}  ({int(scores.get("examples", 0))} examples)')
  return '\n'.join(lines)


def print_summary(results: dict[str, dict[str, float]], step: int) -> None:
  """Logs the per-task table of a held-out evaluation."""
  logging.info('held-out evaluation at step %d:\n%s', step, format_table(results))
