"""Per-task evaluation metrics, each computed as its dataset's official scoring code does.

Each `DatasetRecord.metric` (muppet_jax/data/catalogue.py) names one entry of `METRICS`:

| name          | datasets                  | keys returned                                  | primary       |
|---------------|---------------------------|------------------------------------------------|---------------|
| `accuracy`    | most classification, MC   | accuracy                                       | accuracy      |
| `mcc`         | CoLA                      | mcc                                            | mcc           |
| `f1_accuracy` | MRPC, QQP                 | accuracy, f1, f1_accuracy (their mean)         | f1_accuracy   |
| `cb`          | CB                        | accuracy, macro_f1, accuracy_macro_f1 (mean)   | acc..._f1     |
| `multirc`     | MultiRC                   | f1a, em, f1a_em (their mean)                   | f1a_em        |
| `squad`       | SQuAD v1.1, MRQA sets     | exact_match, f1                                | f1            |
| `record`      | ReCoRD                    | exact_match, f1                                | f1            |
| `drop`        | DROP                      | exact_match, f1 (number-aware, multi-span)     | f1            |
| `rouge`       | summarization             | rouge1, rouge2, rougeL, rougeLsum              | rougeLsum     |

Official sources (docs/METRICS.md has the table with what differs, and why): GLUE's scores
are scikit-learn's (accuracy, `f1_score`, `matthews_corrcoef`); SuperGLUE CB is the mean of
accuracy and the macro-F1 over its three classes, MultiRC F1 over all answer options and the
exact match per question (the SuperGLUE baselines, T5's `mean_multiclass_f1` /
`multirc_f1_over_all_answers`); SQuAD v1.1 `evaluate-v1.1.py`; ReCoRD's `evaluation.py`;
DROP's `drop_eval.py` (AllenNLP); ROUGE `rouge-score` with Porter stemming, sentences split as
`nltk.sent_tokenize` does (`sentences.py`). tests/test_evaluate.py checks each against a copy
of the official code (tests/reference/) on random and adversarial predictions.

Conventions:
- Every score is a fraction in [0, 1] (MCC in [-1, 1]), ROUGE included; multiply by 100 for
  the paper's tables. One scale everywhere means a chart or a model card never mixes 0.9 and 90.
- Metrics are pure Python/numpy: they run on the host after predictions have been fetched.
- Predictions are what the model decided (class ids, answer strings, summaries), not logits.
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

from muppet_jax.eval import sentences

# ------------------------------------------------------------------------------------------------
# Classification (labels are integer class ids).
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


def _f1_of_class(preds: np.ndarray, labs: np.ndarray, positive: int) -> float:
  """2 tp / (2 tp + fp + fn) for class `positive`; 0.0 when there is no true positive (also
  when the class never occurs, as scikit-learn's zero_division default)."""
  tp = int(np.sum((preds == positive) & (labs == positive)))
  fp = int(np.sum((preds == positive) & (labs != positive)))
  fn = int(np.sum((preds != positive) & (labs == positive)))
  if tp == 0:
    return 0.0
  return 2.0 * tp / (2.0 * tp + fp + fn)


def f1(predictions: Any, labels: Any, positive: int = 1) -> float:
  """Binary F1 of class `positive` (scikit-learn's `f1_score`, GLUE's MRPC/QQP F1)."""
  preds, labs = _as_int_pair(predictions, labels)
  return _f1_of_class(preds, labs, positive)


def macro_f1(predictions: Any, labels: Any, num_classes: int) -> float:
  """Unweighted mean over classes 0..num_classes-1 of each class's F1.

  Every class counts, also one that neither occurs nor is predicted (F1 0 there): scikit-learn's
  `f1_score(labels=range(num_classes), average='macro')`, as SuperGLUE's CB score (T5's
  `mean_multiclass_f1(num_classes=3)`) computes it.
  """
  preds, labs = _as_int_pair(predictions, labels)
  return float(np.mean([_f1_of_class(preds, labs, k) for k in range(num_classes)]))


def f1_accuracy(predictions: Any, labels: Any) -> dict[str, float]:
  """MRPC / QQP: binary F1 (positive class 1), accuracy and their mean (GLUE's average)."""
  acc = accuracy(predictions, labels)
  f = f1(predictions, labels)
  return {'accuracy': acc, 'f1': f, 'f1_accuracy': (acc + f) / 2.0}


def accuracy_macro_f1(predictions: Any, labels: Any, num_classes: int = 3) -> dict[str, float]:
  """SuperGLUE CB: accuracy, macro-F1 over the 3 classes, and their mean (the CB score)."""
  acc = accuracy(predictions, labels)
  f = macro_f1(predictions, labels, num_classes)
  return {'accuracy': acc, 'macro_f1': f, 'accuracy_macro_f1': (acc + f) / 2.0}


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
  f1a = _f1_of_class(preds, labs, 1)
  em = sum(all_correct.values()) / len(all_correct)
  return {'f1a': f1a, 'em': em, 'f1a_em': (f1a + em) / 2.0}


# ------------------------------------------------------------------------------------------------
# Extractive QA: SQuAD v1.1 and ReCoRD (official answer normalisation, max over gold answers).
# ------------------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r'\b(a|an|the)\b')


def normalize_answer(text: str) -> str:
  """The official SQuAD v1.1 normalisation (also ReCoRD's and MRQA's).

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
# DROP: number-aware EM/F1 over bags of spans (AllenNLP's official drop_eval.py).
# ------------------------------------------------------------------------------------------------


def _is_number(text: str) -> bool:
  """Whether Python's float() parses `text` (the official test: also '1e3', 'nan', '1_000')."""
  try:
    float(text)
  except ValueError:
    return False
  return True


def drop_normalize(text: str) -> str:
  """DROP's answer normalisation, token by token (tokens split at spaces and hyphens).

  Each token is lower-cased; punctuation is removed unless the token is a number; a number is
  written as Python writes its float ('3' -> '3.0', so '3' and '3.00' match); the articles
  a/an/the are removed. Empty tokens are dropped and the rest joined by single spaces.
  """
  parts = []
  for token in re.split(' |-', text):
    token = token.lower()
    if not _is_number(token):
      token = ''.join(ch for ch in token if ch not in _PUNCTUATION)
    if _is_number(token):
      token = str(float(token))
    token = ' '.join(_ARTICLES.sub(' ', token).split())
    if token.strip():
      parts.append(token)
  return ' '.join(parts).strip()


def _bag_f1(predicted: set[str], gold: set[str]) -> float:
  """Token-set F1 of one predicted span against one gold span (empty sets: precision or
  recall 1, as in the official script)."""
  common = len(gold & predicted)
  precision = common / len(predicted) if predicted else 1.0
  recall = common / len(gold) if gold else 1.0
  if precision == 0.0 and recall == 0.0:
    return 0.0
  return 2 * precision * recall / (precision + recall)


def _numbers_agree(gold: set[str], predicted: set[str]) -> bool:
  """A gold span with numbers only matches a predicted span that shares one of them."""
  gold_numbers = {w for w in gold if _is_number(w)}
  return not gold_numbers or bool(gold_numbers & {w for w in predicted if _is_number(w)})


@dataclasses.dataclass(frozen=True)
class DropScore:
  """One prediction against one gold answer."""

  exact_match: float
  f1: float


def drop_score(prediction: str | Sequence[str], gold: str | Sequence[str]) -> DropScore:
  """DROP EM and F1 of a prediction against one gold answer (each a span or a list of spans).

  EM: the normalised spans are equal as sets (and as many). F1: every gold span is paired with
  at most one predicted span by the assignment that maximises the summed span F1
  (`scipy.optimize.linear_sum_assignment`; a pair whose gold span holds numbers counts only if
  the predicted span shares one), the F1s are averaged over max(#gold, #predicted) spans, and
  rounded to 2 decimals, as the official script does.
  """
  from scipy import optimize  # pylint: disable=g-import-not-at-top

  predicted_spans = [prediction] if isinstance(prediction, str) else list(prediction)
  gold_spans = [gold] if isinstance(gold, str) else list(gold)
  predicted_norm = [drop_normalize(s) for s in predicted_spans]
  gold_norm = [drop_normalize(s) for s in gold_spans]
  exact = float(set(predicted_norm) == set(gold_norm) and len(predicted_norm) == len(gold_norm))
  predicted_bags = [set(s.split()) for s in predicted_norm]
  gold_bags = [set(s.split()) for s in gold_norm]
  scores = np.zeros((len(gold_bags), len(predicted_bags)))
  for g, gold_bag in enumerate(gold_bags):
    for p, predicted_bag in enumerate(predicted_bags):
      if _numbers_agree(gold_bag, predicted_bag):
        scores[g, p] = _bag_f1(predicted_bag, gold_bag)
  rows, cols = optimize.linear_sum_assignment(-scores)
  best = np.zeros(max(len(gold_bags), len(predicted_bags)))
  for row, col in zip(rows, cols):
    best[row] = max(best[row], scores[row, col])
  # np.round, as the official `round(np.mean(...), 2)` on a numpy float (half to even).
  return DropScore(exact_match=exact, f1=float(np.round(np.mean(best), 2)))


def _drop_golds(reference: Any) -> list[tuple[str, ...]]:
  """One question's gold answers as span tuples: a string (one single-span answer), or a list
  whose items are strings (single-span answers) or lists of strings (multi-span answers)."""
  if isinstance(reference, (str, bytes, np.str_, np.bytes_)):
    return [(_text(reference),)]
  golds = []
  for answer in reference:
    if isinstance(answer, (str, bytes, np.str_, np.bytes_)):
      golds.append((_text(answer),))
    else:
      golds.append(tuple(_text(s) for s in answer))
  return golds


def drop(predictions: Sequence[str | Sequence[str]],
         references: Sequence[Any]) -> dict[str, float]:
  """DROP exact match and F1: per question, the max over its gold answers, then the mean.

  A gold answer whose first span is blank does not count (the official script skips it); a
  question without any other gold answer scores 0 but is still counted.

  Args:
    predictions: per question, the predicted answer: a string, or a list of spans.
    references: per question, its gold answers (the released answer, then the validated
      ones): a list of answers, each a string or a list of spans (multi-span answers), as
      `drop_eval.answer_json_to_strings` flattens numbers ('3'), dates ('3 May 1995') and spans.
  """
  if len(predictions) != len(references):
    raise ValueError(f'{len(predictions)} predictions but {len(references)} references.')
  if not predictions:
    raise ValueError('No examples to score.')
  em_total = f1_total = 0.0
  for prediction, reference in zip(predictions, references):
    if not isinstance(prediction, str):
      prediction = [_text(s) for s in prediction]
    scores = [drop_score(prediction, gold) for gold in _drop_golds(reference)
              if gold and gold[0].strip()]
    em_total += max((s.exact_match for s in scores), default=0.0)
    f1_total += max((s.f1 for s in scores), default=0.0)
  n = len(predictions)
  return {'exact_match': em_total / n, 'f1': f1_total / n}


# ------------------------------------------------------------------------------------------------
# Summarization: ROUGE via the `rouge-score` package.
# ------------------------------------------------------------------------------------------------

ROUGE_TYPES = ('rouge1', 'rouge2', 'rougeL', 'rougeLsum')


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
    sentence_split: put both sides one sentence per line first, as the summarization
      literature does (`'\\n'.join(nltk.sent_tokenize(text))`, `sentences.one_per_line`,
      offline); it changes rougeLsum only.

  Returns:
    {rouge_type: mean F-measure}. A plain mean over examples: deterministic, unlike the
    bootstrap aggregator, whose mid value estimates the same mean.
  """
  # Imported here so that classification-only users need not load nltk.
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
      prediction = sentences.one_per_line(prediction)
      reference = sentences.one_per_line(reference)
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
    'cb': MetricSpec(accuracy_macro_f1, primary='accuracy_macro_f1'),
    'multirc': MetricSpec(multirc, primary='f1a_em', needs_groups=True),
    'squad': MetricSpec(squad, primary='f1', text=True),
    'record': MetricSpec(record, primary='f1', text=True),
    'drop': MetricSpec(drop, primary='f1', text=True),
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


def needs_groups(metric_name: str) -> bool:
  """Whether `compute` needs `groups=` (question ids) for this metric."""
  return _spec(metric_name).needs_groups


def compute(metric_name: str, predictions: Any, references: Any, **kw: Any) -> dict[str, float]:
  """Scores a whole eval set with the metric a `DatasetRecord.metric` names.

  Args:
    metric_name: one of `METRICS`.
    predictions: class ids (classification metrics) or strings (squad, record, drop, rouge).
    references: labels, gold answer lists (squad, record, drop) or reference summaries.
    **kw: metric options: `groups=` for multirc (required); rouge_types, use_stemmer,
      sentence_split for rouge.

  Returns:
    {key: value}, all values Python floats, fractions in [0, 1] (MCC in [-1, 1]).

  Raises:
    ValueError: unknown metric name, mismatched lengths, or no examples.
  """
  return _spec(metric_name).fn(predictions, references, **kw)
