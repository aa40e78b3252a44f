"""Each metric of muppet_jax/evaluate.py against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from muppet_jax import evaluate


# --- Classification --------------------------------------------------------------------------


def test_accuracy():
  assert evaluate.accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == 0.75
  assert evaluate.compute('accuracy', np.array([[2], [1]]), [2, 0]) == {'accuracy': 0.5}


def test_mcc_binary_by_hand():
  preds = [1, 1, 1, 0, 0, 0, 1, 0]
  labels = [1, 1, 0, 0, 0, 1, 1, 0]
  # tp = 3 (0, 1, 6), fp = 1 (2), fn = 1 (5), tn = 3 (3, 4, 7):
  # (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (9 - 1) / sqrt(4^4) = 0.5.
  assert evaluate.matthews_corrcoef(preds, labels) == pytest.approx(0.5)
  assert evaluate.compute('mcc', preds, labels) == {'mcc': pytest.approx(0.5)}
  # Perfectly inverted predictions.
  assert evaluate.matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


def _sklearn_mcc(preds, labels):
  """scikit-learn's matthews_corrcoef, written out from the confusion matrix."""
  classes = sorted(set(preds) | set(labels))
  index = {c: i for i, c in enumerate(classes)}
  confusion = np.zeros((len(classes), len(classes)))
  for y, p in zip(labels, preds):
    confusion[index[y], index[p]] += 1
  t_sum = confusion.sum(axis=1)
  p_sum = confusion.sum(axis=0)
  n_correct = np.trace(confusion)
  n_samples = p_sum.sum()
  cov_ytyp = n_correct * n_samples - np.dot(t_sum, p_sum)
  cov_ypyp = n_samples**2 - np.dot(p_sum, p_sum)
  cov_ytyt = n_samples**2 - np.dot(t_sum, t_sum)
  if cov_ypyp * cov_ytyt == 0:
    return 0.0
  return cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp)


def test_mcc_matches_sklearn_formula():
  rng = np.random.default_rng(0)
  for num_classes in (2, 3, 5):
    labels = rng.integers(0, num_classes, size=200)
    preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, num_classes, size=200))
    assert evaluate.matthews_corrcoef(preds, labels) == pytest.approx(
        _sklearn_mcc(preds.tolist(), labels.tolist()), abs=1e-12)


def test_mcc_undefined_is_zero():
  assert evaluate.matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0  # constant predictions
  assert evaluate.matthews_corrcoef([0, 1, 0], [1, 1, 1]) == 0.0  # constant labels


def test_mcc_large_counts_do_not_overflow():
  # s^4 overflows int64 at this size; the result must still be exact.
  labels = np.array([0, 1] * 60_000)
  preds = labels.copy()
  preds[:30_000] = 1 - preds[:30_000]  # 25% wrong, balanced
  assert evaluate.matthews_corrcoef(preds, labels) == pytest.approx(0.5)


def test_f1_and_f1_accuracy():
  preds = [1, 1, 0, 0, 1]
  labels = [1, 0, 1, 0, 1]
  # tp = 2, fp = 1, fn = 1: F1 = 2*2 / (2*2 + 1 + 1) = 2/3; accuracy 3/5.
  assert evaluate.f1(preds, labels) == pytest.approx(2 / 3)
  result = evaluate.compute('f1_accuracy', preds, labels)
  assert result['f1'] == pytest.approx(2 / 3)
  assert result['accuracy'] == pytest.approx(0.6)
  assert result['f1_accuracy'] == pytest.approx((2 / 3 + 0.6) / 2)
  assert evaluate.f1([0, 0], [0, 0]) == 0.0  # no positives at all: 0, as scikit-learn


def test_multirc_by_hand():
  # Question (0, 0): 3 options, all right. (0, 1): 2 options, one wrong. (1, 0): 1 option, right.
  groups = [(0, 0), (0, 0), (0, 0), (0, 1), (0, 1), (1, 0)]
  labels = [1, 0, 1, 0, 1, 1]
  preds = [1, 0, 1, 1, 1, 1]
  # Pooled over options: tp = 4, fp = 1, fn = 0 -> F1a = 8/9. EM = 2 of 3 questions.
  result = evaluate.compute('multirc', preds, labels, groups=groups)
  assert result['f1a'] == pytest.approx(8 / 9)
  assert result['em'] == pytest.approx(2 / 3)
  assert result['f1a_em'] == pytest.approx((8 / 9 + 2 / 3) / 2)
  # The dataset's idx dicts group by (paragraph, question), ignoring the answer index.
  idx = [{'paragraph': p, 'question': q, 'answer': a}
         for a, (p, q) in enumerate(groups)]
  assert evaluate.multirc(preds, labels, idx) == result
  # So does a batched idx dict of arrays, as TFDS yields it.
  batched = {k: np.array([d[k] for d in idx]) for k in ('paragraph', 'question', 'answer')}
  assert evaluate.multirc(preds, labels, batched) == result


# --- SQuAD / ReCoRD ----------------------------------------------------------------------------


@pytest.mark.parametrize('raw, normalized', [
    ('The  Cat!', 'cat'),  # case, punctuation, article, whitespace
    ('an apple', 'apple'),
    ('A.B.C', 'abc'),  # punctuation goes first, so the lone 'a' is no longer a word
    ('theater', 'theater'),  # articles only as whole words
    ('  Hello,\tWorld \n', 'hello world'),
    ("Obama's", 'obamas'),
    ('the a an', ''),
])
def test_squad_normalization(raw, normalized):
  assert evaluate.normalize_answer(raw) == normalized


def test_squad_exact_match_and_f1_by_hand():
  assert evaluate.exact_match_score('The  Cat!', 'cat') == 1.0
  assert evaluate.f1_score('The  Cat!', 'cat') == 1.0
  # [big, red, dog] vs [red, dog, barked]: 2 common, P = R = 2/3 -> F1 = 2/3.
  assert evaluate.f1_score('the big red dog', 'a red dog barked') == pytest.approx(2 / 3)
  # [red, dog] vs [big, red, dog]: P = 1, R = 2/3 -> F1 = 0.8.
  assert evaluate.f1_score('red dog', 'The big red dog.') == pytest.approx(0.8)
  # Repeated tokens count by multiplicity: [dog, dog] vs [dog]: P = 1/2, R = 1 -> 2/3.
  assert evaluate.f1_score('dog dog', 'dog') == pytest.approx(2 / 3)
  assert evaluate.f1_score('cat', 'dog') == 0.0


def test_squad_max_over_gold_answers():
  result = evaluate.compute(
      'squad',
      ['Paris', 'the big red dog'],
      [['France', 'paris.'], ['a red dog barked', 'dog']],
  )
  # Q1: EM 1 (vs 'paris.'), F1 1. Q2: EM 0; F1 max(2/3, [big, red, dog] vs [dog] = 0.5) = 2/3.
  assert result['exact_match'] == pytest.approx(0.5)
  assert result['f1'] == pytest.approx((1 + 2 / 3) / 2)
  # A single gold string and UTF-8 bytes (as TFDS yields them) are accepted.
  assert evaluate.squad([b'Paris'], [b'paris']) == {'exact_match': 1.0, 'f1': 1.0}


def test_record_max_over_answers():
  result = evaluate.compute(
      'record',
      ['Barack Obama', 'President Obama'],
      [['Obama', 'Barack Obama'], ['Obama', 'Barack Obama']],
  )
  # Q1: exact. Q2: vs 'Obama' P = 1/2, R = 1 -> 2/3; vs 'Barack Obama' 1/2; max 2/3.
  assert result['exact_match'] == pytest.approx(0.5)
  assert result['f1'] == pytest.approx((1 + 2 / 3) / 2)


def test_squad_rejects_missing_gold():
  with pytest.raises(ValueError, match='no gold answer'):
    evaluate.squad(['x'], [[]])


# --- ROUGE -------------------------------------------------------------------------------------


def test_rouge_by_hand():
  result = evaluate.compute('rouge', ['the cat sat on the mat'], ['the cat lay on the mat'])
  # Unigrams: 5 of 6 match both ways -> 5/6. Bigrams: the-cat, on-the, the-mat of 5 -> 3/5.
  # LCS: 'the cat on the mat' = 5 tokens -> 5/6 (one sentence, so rougeLsum = rougeL).
  assert result['rouge1'] == pytest.approx(5 / 6)
  assert result['rouge2'] == pytest.approx(3 / 5)
  assert result['rougeL'] == pytest.approx(5 / 6)
  assert result['rougeLsum'] == pytest.approx(5 / 6)
  assert evaluate.primary_key('rouge') == 'rougeLsum'


def test_rouge_stemming_and_mean():
  # Porter stemming: running/runs -> run, dogs -> dog.
  result = evaluate.rouge(['running dogs', 'a b'], ['runs dog', 'c d'], rouge_types=['rouge1'])
  assert result == {'rouge1': pytest.approx(0.5)}  # mean of 1.0 and 0.0
  unstemmed = evaluate.rouge(['running dogs'], ['runs dog'], rouge_types=['rouge1'],
                             use_stemmer=False)
  assert unstemmed['rouge1'] == 0.0


def test_rouge_lsum_splits_sentences():
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  prediction = 'The cat sat on the mat. It was happy!'
  reference = 'the cat lay on the mat\nit was very happy'  # CNN/DM style: one per line
  assert evaluate.split_sentences(prediction) == 'The cat sat on the mat.\nIt was happy!'
  assert evaluate.split_sentences('He said "no." Then left.') == 'He said "no."\nThen left.'
  assert evaluate.split_sentences(reference) == reference
  expected = rouge_scorer.RougeScorer(['rougeLsum'], use_stemmer=True).score(
      reference, 'The cat sat on the mat.\nIt was happy!')['rougeLsum'].fmeasure
  result = evaluate.rouge([prediction], [reference])
  assert result['rougeLsum'] == pytest.approx(expected)
  # Summary-level LCS: sentence 1 shares 5 of 6, sentence 2 shares 3 ('it was happy') of 4
  # reference tokens: R = 8/10, P = 8/9.
  assert expected == pytest.approx(2 * (8 / 10) * (8 / 9) / (8 / 10 + 8 / 9))


# --- Dispatcher and accumulator ----------------------------------------------------------------


def test_unknown_metric_lists_known_names():
  with pytest.raises(ValueError, match='Unknown metric .*accuracy.*mcc.*multirc.*rouge'):
    evaluate.compute('bleu', [1], [1])
  with pytest.raises(ValueError, match='Unknown metric'):
    evaluate.MetricAccumulator('bleu')


def test_catalogue_metric_names_are_known():
  assert set(evaluate.METRICS) == {
      'accuracy', 'mcc', 'f1_accuracy', 'multirc', 'squad', 'record', 'rouge'}
  for name in evaluate.METRICS:
    assert isinstance(evaluate.primary_key(name), str)


def test_length_mismatch_raises():
  with pytest.raises(ValueError, match='2 predictions but 3 labels'):
    evaluate.accuracy([1, 0], [1, 0, 1])


def test_accumulator_classification_with_mask():
  acc = evaluate.MetricAccumulator('f1_accuracy')
  acc.add(np.array([1, 1, 0, 9]), np.array([1, 0, 1, 9]), mask=np.array([1, 1, 1, 0]))
  acc.add([0, 1], [0, 1])
  assert acc.count == 5
  assert acc.result() == evaluate.compute('f1_accuracy', [1, 1, 0, 0, 1], [1, 0, 1, 0, 1])
  acc.reset()
  assert acc.count == 0
  with pytest.raises(ValueError, match='No examples'):
    acc.result()


def test_accumulator_multirc_question_split_across_batches():
  acc = evaluate.MetricAccumulator('multirc')
  acc.add([1, 0], [1, 0], groups=[(0, 0), (0, 0)])
  acc.add([1, 1, 1, 1], [1, 0, 1, 1], groups=np.array([[0, 0], [0, 1], [0, 1], [1, 0]]))
  result = acc.result()
  assert result['em'] == pytest.approx(2 / 3)
  assert result['f1a'] == pytest.approx(8 / 9)
  with pytest.raises(ValueError, match='needs groups'):
    acc.add([1], [1])


def test_accumulator_text_and_merge():
  first = evaluate.MetricAccumulator('squad')
  first.add(['Paris'], [['paris.']])
  second = evaluate.MetricAccumulator('squad')
  second.add(['the big red dog', 'pad'], [['a red dog barked'], ['x']], mask=[True, False])
  first.merge(second)
  result = first.result()
  assert result['exact_match'] == pytest.approx(0.5)
  assert result['f1'] == pytest.approx((1 + 2 / 3) / 2)
  rouge = evaluate.MetricAccumulator('rouge', rouge_types=['rouge1'])
  rouge.add(['the cat sat on the mat'], ['the cat lay on the mat'])
  assert rouge.result() == {'rouge1': pytest.approx(5 / 6)}
