"""Per-task evaluation metrics: the standard metric of every dataset in the catalogue.

Each `DatasetRecord.metric` (muppet_jax/data/catalogue.py) names one entry of `METRICS`:

| name          | datasets                  | keys returned                          | primary     |
|---------------|---------------------------|----------------------------------------|-------------|
| `accuracy`    | most classification, MC   | accuracy                               | accuracy    |
| `mcc`         | CoLA                      | mcc                                    | mcc         |
| `f1_accuracy` | MRPC, QQP                 | accuracy, f1, f1_accuracy (their mean) | f1_accuracy |
| `multirc`     | MultiRC                   | f1a, em, f1a_em (their mean)           | f1a_em      |
| `squad`       | SQuAD-style extractive QA | exact_match, f1                        | f1          |
| `record`      | ReCoRD                    | exact_match, f1                        | f1          |
| `rouge`       | summarization             | rouge1, rouge2, rougeL, rougeLsum      | rougeLsum   |

Conventions:
- Every score is a fraction in [0, 1], ROUGE included (`rouge-score` reports fractions too).
  Multiply by 100 for the percentages of the paper's tables. One scale everywhere means a
  TensorBoard chart or a model card never mixes 0.9 and 90.
- Metrics are pure Python/numpy: they run on the host after predictions have been fetched from
  the devices, and need no jax.
- Predictions are what the model decided (class ids, answer strings, generated summaries), not
  logits: turning logits or spans into these belongs to the code that owns the model outputs.

Use `compute(name, predictions, references, **kw)` for a whole eval set at once, or
`MetricAccumulator(name)` to collect batches during the trainer's periodic evaluation.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
import string
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# ------------------------------------------------------------------------------------------------
# Classification metrics (labels are integer class ids).
# ------------------------------------------------------------------------------------------------


def _as_int_pair(predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
  """Flattens predictions and labels to 1-D int arrays of equal length."""
  preds = np.asarray(predictions).reshape(-1)
  labs = np.asarray(labels).reshape(-1)
  if preds.shape != labs.shape:
    raise ValueError(f'{preds.size} predictions but {labs.size} labels.')
  if preds.size == 0:
    raise ValueError('No examples to score.')
  return preds.astype(np.int64), labs.astype(np.int64)


def accuracy(predictions: Any, labels: Any) -> float:
  """Fraction of predictions equal to their label."""
  preds, labs = _as_int_pair(predictions, labels)
  return float(np.mean(preds == labs))


def matthews_corrcoef(predictions: Any, labels: Any) -> float:
  """Matthews correlation coefficient (CoLA), multi-class form; 0.0 where it is undefined.

  With the confusion matrix over K classes, t_k = times class k truly occurs, p_k = times it is
  predicted, c = correct predictions, s = examples:

    MCC = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2))

  For two classes this is (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)). When a factor of
  the denominator is 0 (every prediction, or every label, the same class) the correlation is
  undefined; like scikit-learn (and GLUE's reported scores) we return 0.
  """
  preds, labs = _as_int_pair(predictions, labels)
  classes, inverse = np.unique(np.concatenate([preds, labs]), return_inverse=True)
  k = len(classes)
  confusion = np.zeros((k, k), dtype=np.int64)
  np.add.at(confusion, (inverse[preds.size:], inverse[:preds.size]), 1)  # [true, pred]
  # Python ints: s^2 * s^2 overflows int64 beyond ~55k examples (QQP has 40k, MNLI 393k).
  t = [int(v) for v in confusion.sum(axis=1)]
  p = [int(v) for v in confusion.sum(axis=0)]
  c = int(np.trace(confusion))
  s = int(preds.size)
  numerator = c * s - sum(pk * tk for pk, tk in zip(p, t))
  denominator = (s * s - sum(pk * pk for pk in p)) * (s * s - sum(tk * tk for tk in t))
  if denominator == 0:
    return 0.0
  return float(numerator / math.sqrt(denominator))


def f1(predictions: Any, labels: Any, positive: int = 1) -> float:
  """Binary F1 of class `positive`: 2 tp / (2 tp + fp + fn); 0.0 when there is no true positive."""
  preds, labs = _as_int_pair(predictions, labels)
  tp = int(np.sum((preds == positive) & (labs == positive)))
  fp = int(np.sum((preds == positive) & (labs != positive)))
  fn = int(np.sum((preds != positive) & (labs == positive)))
  if tp == 0:
    return 0.0
  return 2.0 * tp / (2.0 * tp + fp + fn)


def f1_accuracy(predictions: Any, labels: Any) -> dict[str, float]:
  """MRPC / QQP: binary F1 (positive class 1), accuracy and their mean (GLUE's average)."""
  acc = accuracy(predictions, labels)
  f = f1(predictions, labels)
  return {'accuracy': acc, 'f1': f, 'f1_accuracy': (acc + f) / 2.0}


def _group_key(group: Any) -> Hashable:
  """A MultiRC question key: TFDS/HF `idx` dicts become (paragraph, question)."""
  if isinstance(group, Mapping):
    return (int(group['paragraph']), int(group['question']))
  if isinstance(group, np.ndarray):
    return tuple(group.reshape(-1).tolist())
  if isinstance(group, list):
    return tuple(group)
  if isinstance(group, np.generic):
    return group.item()
  return group


def _rows(values: Any) -> Iterable[Any]:
  """Iterates a batch of group ids: a list, a [N] or [N, k] array, or a dict of [N] arrays."""
  if isinstance(values, Mapping):  # TFDS batches idx as {'paragraph': [N], 'question': [N], ...}
    keys = list(values)
    columns = [np.asarray(values[k]).reshape(-1) for k in keys]
    return [dict(zip(keys, row)) for row in zip(*columns)]
  if isinstance(values, np.ndarray) or hasattr(values, '__array__'):
    array = np.asarray(values)
    return list(array) if array.ndim > 1 else array.tolist()
  return values


def multirc(predictions: Any, labels: Any, groups: Sequence[Any]) -> dict[str, float]:
  """SuperGLUE MultiRC: F1a over all answer options and per-question exact match.

  Args:
    predictions: 0/1 prediction per answer option (1 = the option is a correct answer).
    labels: 0/1 label per answer option.
    groups: per answer option, the question it belongs to: a (paragraph, question) pair, any
      hashable id, or the dataset's `idx` dict ({'paragraph', 'question', 'answer'}); also a
      [N, k] array or a batched `idx` dict of [N] arrays.

  Returns:
    f1a: binary F1 of class 1 over all answer options pooled together.
    em: fraction of questions whose answer options are all predicted correctly.
    f1a_em: their mean (SuperGLUE's MultiRC score).
  """
  preds, labs = _as_int_pair(predictions, labels)
  groups = list(_rows(groups))
  if len(groups) != preds.size:
    raise ValueError(f'{preds.size} predictions but {len(groups)} groups.')
  all_correct: dict[Hashable, bool] = {}
  for key, ok in zip(map(_group_key, groups), (preds == labs).tolist()):
    all_correct[key] = all_correct.get(key, True) and ok
  f1a = f1(preds, labs)
  em = sum(all_correct.values()) / len(all_correct)
  return {'f1a': f1a, 'em': em, 'f1a_em': (f1a + em) / 2.0}


# ------------------------------------------------------------------------------------------------
# Extractive QA: SQuAD v1.1 and ReCoRD (official answer normalisation, max over gold answers).
# ------------------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r'\b(a|an|the)\b')


def normalize_answer(text: str) -> str:
  """The official SQuAD v1.1 normalisation (also ReCoRD's).

  Lower-case, drop ASCII punctuation, replace the articles a/an/the by a space, then collapse
  whitespace. The order matters and follows the official script: punctuation goes before the
  article pass, so "the-cat" -> "thecat" keeps its letters.
  """
  text = text.lower()
  text = ''.join(ch for ch in text if ch not in _PUNCTUATION)
  text = _ARTICLES.sub(' ', text)
  return ' '.join(text.split())


def exact_match_score(prediction: str, gold: str) -> float:
  """1.0 when the normalised strings are equal."""
  return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
  """Token-level F1 between normalised answers (bag of tokens, as in the official script)."""
  pred_tokens = normalize_answer(prediction).split()
  gold_tokens = normalize_answer(gold).split()
  common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision = num_same / len(pred_tokens)
  recall = num_same / len(gold_tokens)
  return 2.0 * precision * recall / (precision + recall)


def _text(value: str | bytes) -> str:
  """TFDS yields UTF-8 bytes; the metrics work on str."""
  if isinstance(value, (bytes, np.bytes_)):
    return value.decode('utf-8')
  return str(value)


def _gold_list(gold: str | bytes | Sequence[str | bytes]) -> list[str]:
  if isinstance(gold, (str, bytes, np.str_, np.bytes_)):
    gold = [gold]
  golds = [_text(g) for g in gold]
  if not golds:
    raise ValueError('An example has no gold answer; SQuAD v1.1 / ReCoRD scoring needs one.')
  return golds


def squad(predictions: Sequence[str],
          references: Sequence[str | Sequence[str]]) -> dict[str, float]:
  """SQuAD v1.1 exact match and F1, each the max over an example's gold answers, then averaged.

  Args:
    predictions: one answer string per question (str or UTF-8 bytes).
    references: per question, its gold answers (a list of strings, or a single string).
  """
  if len(predictions) != len(references):
    raise ValueError(f'{len(predictions)} predictions but {len(references)} references.')
  if not predictions:
    raise ValueError('No examples to score.')
  em_total = f1_total = 0.0
  for prediction, gold in zip(predictions, references):
    prediction, golds = _text(prediction), _gold_list(gold)
    em_total += max(exact_match_score(prediction, g) for g in golds)
    f1_total += max(f1_score(prediction, g) for g in golds)
  n = len(predictions)
  return {'exact_match': em_total / n, 'f1': f1_total / n}


def record(predictions: Sequence[str],
           references: Sequence[str | Sequence[str]]) -> dict[str, float]:
  """SuperGLUE ReCoRD: the official script is SQuAD v1.1's EM/F1 (max over the gold entities)."""
  return squad(predictions, references)


# ------------------------------------------------------------------------------------------------
# Summarization: ROUGE via the `rouge-score` package.
# ------------------------------------------------------------------------------------------------

ROUGE_TYPES = ('rouge1', 'rouge2', 'rougeL', 'rougeLsum')

# Whitespace after sentence-final punctuation, optionally closed by a quote or bracket.
_SENTENCE_END = re.compile(r'(?<=[.!?])\s+|(?<=[.!?]["\')\]])\s+')


def split_sentences(text: str) -> str:
  """Puts one sentence per line, which rougeLsum needs (it splits on newlines only).

  Texts that already contain newlines (CNN/DM highlights are stored one per line) are kept as
  they are. Otherwise (generated summaries) split after sentence-final punctuation. This stands
  in for the `nltk.sent_tokenize` step of Hugging Face's summarization scripts, whose punkt model
  needs a download that offline hosts do not have.
  """
  text = text.strip()
  if '\n' in text:
    return text
  return '\n'.join(s for s in _SENTENCE_END.split(text) if s)


def rouge(predictions: Sequence[str], references: Sequence[str], *,
          rouge_types: Sequence[str] = ROUGE_TYPES, use_stemmer: bool = True,
          sentence_split: bool = True) -> dict[str, float]:
  """Mean ROUGE F-measures (fractions) over examples, `rouge-score` with Porter stemming.

  Args:
    predictions: generated summaries.
    references: reference summaries (one per prediction).
    rouge_types: any of rouge1..rouge9, rougeL (LCS over the whole text) and rougeLsum
      (summary-level LCS over newline-separated sentences, the number usually reported for
      CNN/DM).
    use_stemmer: Porter-stem tokens longer than 3 characters (the standard setting).
    sentence_split: apply `split_sentences` to both sides first (affects rougeLsum only).

  Returns:
    {rouge_type: mean F-measure}. A plain mean over examples: deterministic, unlike the
    bootstrap aggregator, whose mid value estimates the same mean.
  """
  # Imported here so that classification-only users (and tests) need not load nltk.
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top

  if len(predictions) != len(references):
    raise ValueError(f'{len(predictions)} predictions but {len(references)} references.')
  if not predictions:
    raise ValueError('No examples to score.')
  scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
  totals = dict.fromkeys(rouge_types, 0.0)
  for prediction, reference in zip(predictions, references):
    prediction, reference = _text(prediction), _text(reference)
    if sentence_split:
      prediction, reference = split_sentences(prediction), split_sentences(reference)
    scores = scorer.score(reference, prediction)  # rouge-score's order: (target, prediction).
    for key in rouge_types:
      totals[key] += scores[key].fmeasure
  return {key: total / len(predictions) for key, total in totals.items()}


# ------------------------------------------------------------------------------------------------
# Dispatcher.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MetricSpec:
  """One metric name of the catalogue.

  Attributes:
    fn: (predictions, references, **kw) -> {key: value}.
    primary: the key that summarises the task (model card, best-checkpoint selection).
    text: predictions/references are strings (QA, summarization) rather than class ids.
    needs_groups: `groups=` is required (MultiRC's question ids).
  """

  fn: Callable[..., dict[str, float]]
  primary: str
  text: bool = False
  needs_groups: bool = False


def _single(key: str, fn: Callable[[Any, Any], float]) -> Callable[..., dict[str, float]]:
  def wrapped(predictions: Any, references: Any) -> dict[str, float]:
    return {key: fn(predictions, references)}
  return wrapped


METRICS: dict[str, MetricSpec] = {
    'accuracy': MetricSpec(_single('accuracy', accuracy), primary='accuracy'),
    'mcc': MetricSpec(_single('mcc', matthews_corrcoef), primary='mcc'),
    'f1_accuracy': MetricSpec(f1_accuracy, primary='f1_accuracy'),
    'multirc': MetricSpec(multirc, primary='f1a_em', needs_groups=True),
    'squad': MetricSpec(squad, primary='f1', text=True),
    'record': MetricSpec(record, primary='f1', text=True),
    'rouge': MetricSpec(rouge, primary='rougeLsum', text=True),
}


def _spec(metric_name: str) -> MetricSpec:
  try:
    return METRICS[metric_name]
  except KeyError:
    raise ValueError(f'Unknown metric {metric_name!r}; known metrics: '
                     f'{", ".join(sorted(METRICS))}.') from None


def primary_key(metric_name: str) -> str:
  """The key of `compute`'s result that summarises a task with this metric."""
  return _spec(metric_name).primary


def compute(metric_name: str, predictions: Any, references: Any, **kw: Any) -> dict[str, float]:
  """Scores a whole eval set with the metric a `DatasetRecord.metric` names.

  Args:
    metric_name: one of `METRICS` ('accuracy', 'mcc', 'f1_accuracy', 'multirc', 'squad',
      'record', 'rouge').
    predictions: class ids (classification metrics) or strings (squad, record, rouge).
    references: labels, gold answer lists (squad, record) or reference summaries (rouge).
    **kw: metric options: `groups=` for multirc (required); rouge_types, use_stemmer,
      sentence_split for rouge.

  Returns:
    {key: value}, all values Python floats, fractions in [0, 1] (MCC in [-1, 1]).

  Raises:
    ValueError: unknown metric name, mismatched lengths, or no examples.
  """
  return _spec(metric_name).fn(predictions, references, **kw)


# ------------------------------------------------------------------------------------------------
# Streaming accumulation for the trainer's periodic evaluation.
# ------------------------------------------------------------------------------------------------


class MetricAccumulator:
  """Collects predictions batch by batch; `result()` scores everything seen so far.

  Keeps the raw predictions rather than running sums, because MultiRC's EM needs every answer
  option of a question (they may arrive in different batches) and EM/F1/ROUGE are per-example
  anyway; at `data.eval_examples` per task this is small.

  Multi-host: each process sees only its own examples. Either gather predictions to every
  process before `add` (e.g. `jax.experimental.multihost_utils.process_allgather`) or collect
  each process's accumulator and `merge` them on one host.

  Example:
    acc = MetricAccumulator(dataset_record.metric)
    for batch in eval_batches:
      acc.add(predicted_ids, batch['labels'], mask=batch['example_mask'])
    metrics = acc.result()  # {'accuracy': 0.87}

  Args:
    metric_name: a `METRICS` key (a `DatasetRecord.metric`).
    **kw: options forwarded to `compute` (e.g. rouge_types for 'rouge').
  """

  def __init__(self, metric_name: str, **kw: Any):
    self.metric_name = metric_name
    self._spec = _spec(metric_name)  # Fails now, not at the end of an eval loop.
    self._kw = kw
    self._predictions: list[Any] = []
    self._references: list[Any] = []
    self._groups: list[Any] = []

  def add(self, predictions: Any, references: Any, groups: Any = None,
          mask: Any = None) -> None:
    """Adds one batch.

    Args:
      predictions: [N] class ids, or N strings.
      references: [N] labels, N gold-answer lists, or N reference summaries.
      groups: [N] question ids (multirc only): pairs, ids, or `idx` dicts.
      mask: optional [N] bool, False for padding examples (the sub-batch's `example_mask`).
    """
    if self._spec.text:
      preds, refs = list(predictions), list(references)
    else:
      preds = np.asarray(predictions).reshape(-1).tolist()
      refs = np.asarray(references).reshape(-1).tolist()
    if len(preds) != len(refs):
      raise ValueError(f'{len(preds)} predictions but {len(refs)} references.')
    if self._spec.needs_groups:
      if groups is None:
        raise ValueError(f'Metric {self.metric_name!r} needs groups= (question ids).')
      grps = [_group_key(g) for g in _rows(groups)]
      if len(grps) != len(preds):
        raise ValueError(f'{len(preds)} predictions but {len(grps)} groups.')
    else:
      grps = []
    if mask is not None:
      keep = np.asarray(mask, dtype=bool).reshape(-1).tolist()
      if len(keep) != len(preds):
        raise ValueError(f'{len(preds)} predictions but a mask of {len(keep)}.')
      preds = [x for x, k in zip(preds, keep) if k]
      refs = [x for x, k in zip(refs, keep) if k]
      grps = [x for x, k in zip(grps, keep) if k] if grps else grps
    self._predictions.extend(preds)
    self._references.extend(refs)
    self._groups.extend(grps)

  def merge(self, other: MetricAccumulator) -> None:
    """Appends another accumulator's examples (e.g. from another process)."""
    if other.metric_name != self.metric_name:
      raise ValueError(f'Cannot merge {other.metric_name!r} into {self.metric_name!r}.')
    self._predictions.extend(other._predictions)  # pylint: disable=protected-access
    self._references.extend(other._references)  # pylint: disable=protected-access
    self._groups.extend(other._groups)  # pylint: disable=protected-access

  @property
  def count(self) -> int:
    """Examples added so far (after masking)."""
    return len(self._predictions)

  def reset(self) -> None:
    """Forgets every example (start of the next periodic evaluation)."""
    self._predictions.clear()
    self._references.clear()
    self._groups.clear()

  def result(self) -> dict[str, float]:
    """Scores all examples added so far; raises ValueError when there are none."""
    kw = dict(self._kw)
    if self._spec.needs_groups:
      kw['groups'] = self._groups
    return compute(self.metric_name, self._predictions, self._references, **kw)


# ------------------------------------------------------------------------------------------------
# Generation for summarization (beam search): NOT IMPLEMENTED HERE.
#
# Another engineer adds BART generation (issue 7 item 3) in its own module, e.g.
# `muppet_jax/generate.py`, with roughly:
#
#   generate(model, input_ids, attention_mask, *, beam_size, length_penalty, min_length,
#            max_length, no_repeat_ngram_size) -> int32 [B, max_length] token ids
#
# (settings from config; greedy decoding = beam_size 1, matching `transformers`' generate).
# This module stays model-free: the eval loop decodes the generated ids to text with the task's
# vocabulary and passes the strings to `compute('rouge', summaries, references)` or a
# `MetricAccumulator('rouge')`.
# ------------------------------------------------------------------------------------------------
