"""Every metric of muppet_jax/eval/metrics.py against the official scoring code.

The references are independent: scikit-learn (GLUE accuracy, F1, MCC), copies of the official
scripts in tests/reference/ (SQuAD v1.1, ReCoRD, DROP, SuperGLUE CB/MultiRC as T5 scores them)
and `rouge-score`, on random and adversarial predictions (agreement within 1e-6), plus hand
computations from the published definitions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import sklearn.metrics
from rouge_score import rouge_scorer

from muppet_jax.eval import metrics
from muppet_jax.eval import sentences
from tests.reference import drop_eval
from tests.reference import record_evaluation
from tests.reference import squad_v1_1_evaluate
from tests.reference import superglue

TOL = 1e-6


def _label_cases(num_classes: int, seed: int = 0):
  """(predictions, labels) pairs: random, mostly right, and the adversarial corners."""
  rng = np.random.default_rng(seed)
  cases = []
  for size in (1, 2, 7, 50, 333):
    labels = rng.integers(0, num_classes, size=size)
    cases.append((rng.integers(0, num_classes, size=size), labels))  # random
    mostly = np.where(rng.random(size) < 0.8, labels, rng.integers(0, num_classes, size=size))
    cases.append((mostly, labels))
  labels = rng.integers(0, num_classes, size=40)
  cases += [
      (labels, labels),  # perfect
      ((labels + 1) % num_classes, labels),  # always wrong
      (np.zeros(40, int), labels),  # constant prediction
      (labels, np.zeros(40, int)),  # constant labels
      (np.full(40, num_classes - 1), np.zeros(40, int)),  # constant and disjoint
      (np.zeros(40, int), np.zeros(40, int)),  # one class only, everywhere
  ]
  return cases


# --- GLUE: accuracy, F1, MCC against scikit-learn ----------------------------------------------


@pytest.mark.filterwarnings('ignore:A single label was found')  # sklearn, one-class cases.
@pytest.mark.parametrize('num_classes', [2, 3, 5])
def test_accuracy_and_mcc_match_sklearn(num_classes):
  for preds, labels in _label_cases(num_classes):
    assert metrics.accuracy(preds, labels) == pytest.approx(
        sklearn.metrics.accuracy_score(labels, preds), abs=TOL)
    assert metrics.matthews_corrcoef(preds, labels) == pytest.approx(
        sklearn.metrics.matthews_corrcoef(labels, preds), abs=TOL), (preds, labels)


def test_mcc_large_counts_do_not_overflow():
  # s^4 overflows int64 at this size; the result must still be exact.
  labels = np.array([0, 1] * 60_000)
  preds = labels.copy()
  preds[:30_000] = 1 - preds[:30_000]  # 25% wrong, balanced
  assert metrics.matthews_corrcoef(preds, labels) == pytest.approx(
      sklearn.metrics.matthews_corrcoef(labels, preds), abs=TOL)
  assert metrics.matthews_corrcoef(preds, labels) == pytest.approx(0.5)


def test_binary_f1_and_f1_accuracy_match_sklearn():
  for preds, labels in _label_cases(2, seed=1):
    expected_f1 = sklearn.metrics.f1_score(labels, preds, zero_division=0)
    expected_acc = sklearn.metrics.accuracy_score(labels, preds)
    result = metrics.compute('f1_accuracy', preds, labels)
    assert result['f1'] == pytest.approx(expected_f1, abs=TOL)
    assert result['accuracy'] == pytest.approx(expected_acc, abs=TOL)
    assert result['f1_accuracy'] == pytest.approx((expected_f1 + expected_acc) / 2, abs=TOL)


# --- SuperGLUE CB and MultiRC ------------------------------------------------------------------


def test_cb_matches_superglue_scoring():
  for preds, labels in _label_cases(3, seed=2):
    expected = superglue.cb(labels, preds)
    result = metrics.compute('cb', preds, labels)
    assert result == pytest.approx(expected, abs=TOL), (preds, labels)
  assert metrics.primary_key('cb') == 'accuracy_macro_f1'


def test_cb_macro_f1_by_hand():
  # Classes 0 entailment, 1 contradiction, 2 neutral.
  labels = [0, 0, 0, 1, 1, 2, 2, 2]
  preds = [0, 0, 1, 1, 2, 2, 2, 0]
  # Class 0: tp 2, fp 1 (last), fn 1 -> F1 = 4 / 6. Class 1: tp 1, fp 1, fn 1 -> 2 / 4.
  # Class 2: tp 2, fp 1, fn 1 -> 4 / 6. Macro-F1 = (2/3 + 1/2 + 2/3) / 3 = 11/18.
  # Accuracy 5/8; the CB score is their mean.
  result = metrics.compute('cb', preds, labels)
  assert result['macro_f1'] == pytest.approx(11 / 18)
  assert result['accuracy'] == pytest.approx(5 / 8)
  assert result['accuracy_macro_f1'] == pytest.approx((11 / 18 + 5 / 8) / 2)
  # The binary F1 of class 1 (what CB used to get) is a different number.
  assert metrics.f1(preds, labels) == pytest.approx(0.5)
  # A class that never occurs and is never predicted still counts, with F1 0 (T5's
  # labels=range(3)): all-correct predictions over classes 0 and 1 give macro-F1 2/3.
  assert metrics.macro_f1([0, 1, 1], [0, 1, 1], num_classes=3) == pytest.approx(2 / 3)


def test_multirc_matches_superglue_scoring():
  rng = np.random.default_rng(3)
  for trial in range(20):
    n = int(rng.integers(1, 60))
    groups = [(0, int(q)) for q in rng.integers(0, max(1, n // 3), size=n)]
    labels = rng.integers(0, 2, size=n)
    preds = labels if trial == 0 else np.where(rng.random(n) < 0.7, labels, 1 - labels)
    if trial == 1:
      preds = np.zeros(n, int)  # no positive prediction
    expected = superglue.multirc(labels, preds, groups)
    assert metrics.multirc(preds, labels, groups) == pytest.approx(expected, abs=TOL)


def test_multirc_by_hand():
  # Question (0, 0): 3 options, all right. (0, 1): 2 options, one wrong. (1, 0): 1 option, right.
  groups = [(0, 0), (0, 0), (0, 0), (0, 1), (0, 1), (1, 0)]
  labels = [1, 0, 1, 0, 1, 1]
  preds = [1, 0, 1, 1, 1, 1]
  # Pooled over options: tp = 4, fp = 1, fn = 0 -> F1a = 8/9. EM = 2 of 3 questions.
  result = metrics.compute('multirc', preds, labels, groups=groups)
  assert result == pytest.approx({'f1a': 8 / 9, 'em': 2 / 3, 'f1a_em': (8 / 9 + 2 / 3) / 2})
  # The dataset's idx dicts group by (paragraph, question), ignoring the answer index.
  idx = [{'paragraph': p, 'question': q, 'answer': a} for a, (p, q) in enumerate(groups)]
  assert metrics.multirc(preds, labels, idx) == result
  batched = {k: np.array([d[k] for d in idx]) for k in ('paragraph', 'question', 'answer')}
  assert metrics.multirc(preds, labels, batched) == result


# --- Extractive QA: SQuAD v1.1 and ReCoRD against their official scripts ------------------------

_WORDS = ['the', 'The', 'a', 'An', 'an', 'cat', 'Cat', 'cats', 'dog', 'red', 'New', 'York',
          'theater', 'the-cat', 'A.B.C', "Obama's", 'U.S.', '3', '3.0', 'three', '1,000',
          'café', 'Café', 'naïve', '“quoted”', '–', '!', '?', '...', '(', ')', '  ', '\t', '\n',
          'e.g.', 'well-known', 'α', '中文']


def _random_answer(rng) -> str:
  n = int(rng.integers(0, 6))
  return ''.join(str(rng.choice(_WORDS)) + str(rng.choice(['', ' ', ' ', '  '])) for _ in range(n))


def _qa_cases(seed: int):
  rng = np.random.default_rng(seed)
  predictions, golds = [], []
  for _ in range(300):
    gold = [_random_answer(rng) for _ in range(int(rng.integers(1, 4)))]
    roll = rng.random()
    if roll < 0.3:  # A gold answer with noise: case, articles, punctuation, spacing.
      prediction = str(rng.choice(gold))
      prediction = rng.choice([prediction.upper(), 'The ' + prediction, prediction + '.',
                               ' ' + prediction.replace(' ', '  ') + '\t'])
    elif roll < 0.5:  # Overlapping but not equal.
      prediction = str(rng.choice(gold)) + ' ' + _random_answer(rng)
    else:
      prediction = _random_answer(rng)
    predictions.append(str(prediction))
    golds.append(gold)
  # Corners: empty prediction, gold that normalises to nothing, exact duplicates.
  predictions += ['', 'the', 'a an the', 'cat cat', '!!!']
  golds += [['cat'], ['The'], ['the a'], ['cat'], ['!']]
  return predictions, golds


def test_squad_matches_official_script():
  predictions, golds = _qa_cases(4)
  dataset = [{'paragraphs': [{'qas': [
      {'id': str(i), 'answers': [{'text': g} for g in gold]} for i, gold in enumerate(golds)]}]}]
  expected = squad_v1_1_evaluate.evaluate(dataset, {str(i): p for i, p in enumerate(predictions)})
  result = metrics.compute('squad', predictions, golds)
  assert result['exact_match'] == pytest.approx(expected['exact_match'] / 100, abs=TOL)
  assert result['f1'] == pytest.approx(expected['f1'] / 100, abs=TOL)
  for prediction, gold in zip(predictions, golds):  # Per question, not only on average.
    for g in gold:
      assert metrics.normalize_answer(g) == squad_v1_1_evaluate.normalize_answer(g)
      assert metrics.f1_score(prediction, g) == pytest.approx(
          squad_v1_1_evaluate.f1_score(prediction, g), abs=TOL)


def test_record_matches_official_script():
  predictions, golds = _qa_cases(5)
  dataset = [{'qas': [{'id': str(i), 'answers': [{'text': g} for g in gold]}
                      for i, gold in enumerate(golds)]}]
  expected, _ = record_evaluation.evaluate(dataset, {str(i): p for i, p in enumerate(predictions)})
  result = metrics.compute('record', predictions, golds)
  assert result['exact_match'] == pytest.approx(expected['exact_match'] / 100, abs=TOL)
  assert result['f1'] == pytest.approx(expected['f1'] / 100, abs=TOL)


def test_squad_by_hand():
  assert metrics.exact_match_score('The  Cat!', 'cat') == 1.0
  # [big, red, dog] vs [red, dog, barked]: 2 common, P = R = 2/3 -> F1 = 2/3.
  assert metrics.f1_score('the big red dog', 'a red dog barked') == pytest.approx(2 / 3)
  # Repeated tokens count by multiplicity: [dog, dog] vs [dog]: P = 1/2, R = 1 -> 2/3.
  assert metrics.f1_score('dog dog', 'dog') == pytest.approx(2 / 3)
  assert metrics.squad([b'Paris'], [b'paris']) == {'exact_match': 1.0, 'f1': 1.0}
  with pytest.raises(ValueError, match='no gold answer'):
    metrics.squad(['x'], [[]])


# --- DROP against drop_eval.py ------------------------------------------------------------------

_DROP_SPANS = ['Smith', 'John Smith', 'the Bears', 'Bears', 'New York Giants', 'field goal',
               '45-yard', 'touchdown', 'Jones', '']
_DROP_NUMBERS = ['3', '3.0', '03', '45', '1,000', '1000', '2.5', '-7', '0', '1e3', 'nan', '']


def _drop_answer(rng) -> dict:
  """A gold answer JSON as the DROP release has it."""
  empty_date = {'day': '', 'month': '', 'year': ''}
  kind = rng.integers(0, 4)
  if kind == 0:
    return {'number': str(rng.choice(_DROP_NUMBERS[:-1])), 'date': empty_date, 'spans': []}
  if kind == 1:
    date = {'day': str(rng.choice(['3', '', '21'])), 'month': str(rng.choice(['May', ''])),
            'year': str(rng.choice(['1995', '']))}
    return {'number': '', 'date': date, 'spans': []}
  spans = [str(s) for s in rng.choice(_DROP_SPANS, size=int(rng.integers(1, 4)))]
  if kind == 3 and rng.random() < 0.3:
    spans = []  # No answer at all: the date branch gives a blank gold, which does not count.
  return {'number': '', 'date': empty_date, 'spans': spans}


def _drop_prediction(rng, golds: list[tuple[str, ...]]):
  roll = rng.random()
  if roll < 0.35:
    spans = list(golds[int(rng.integers(0, len(golds)))])
    rng.shuffle(spans)
    if len(spans) > 1 and rng.random() < 0.5:
      spans = spans[:-1]  # One span missing.
    return spans[0] if len(spans) == 1 and rng.random() < 0.5 else spans
  if roll < 0.55:
    return str(rng.choice(_DROP_NUMBERS)) + str(rng.choice(['', ' yards', ' points']))
  if roll < 0.75:
    return [str(s) for s in rng.choice(_DROP_SPANS + _DROP_NUMBERS, size=int(rng.integers(1, 4)))]
  return str(rng.choice(_DROP_SPANS))


def test_drop_matches_official_script():
  rng = np.random.default_rng(6)
  annotations, predictions, ours_pred, ours_gold = {}, {}, [], []
  for i in range(400):
    answers = [_drop_answer(rng) for _ in range(int(rng.integers(1, 4)))]
    # The released answer is never blank (the official script's per-type report fails on a
    # question without any usable gold: `test_drop_by_hand` covers that case).
    if not drop_eval.answer_json_to_strings(answers[0])[0][0].strip():
      answers[0] = {**answers[0], 'number': '', 'spans': ['Bears']}
    golds = [drop_eval.answer_json_to_strings(a)[0] for a in answers]
    prediction = _drop_prediction(rng, golds)
    query_id = f'q{i}'
    annotations[f'p{i}'] = {'qa_pairs': [{'query_id': query_id, 'answer': answers[0],
                                          'validated_answers': answers[1:]}]}
    predictions[query_id] = prediction
    ours_pred.append(prediction)
    ours_gold.append(golds)
    for gold in golds:  # Per (prediction, gold) pair as well.
      official = drop_eval.get_metrics(prediction, gold)
      score = metrics.drop_score(prediction, gold)
      assert (score.exact_match, score.f1) == pytest.approx(official, abs=TOL), (prediction, gold)
  em, f1 = drop_eval.evaluate_json(annotations, predictions)
  result = metrics.compute('drop', ours_pred, ours_gold)
  assert result['exact_match'] == pytest.approx(em, abs=TOL)
  assert result['f1'] == pytest.approx(f1, abs=TOL)
  assert 0.1 < result['f1'] < 0.9  # The cases are neither trivial nor hopeless.


def test_drop_by_hand():
  # Numbers are compared as floats: '3' matches '3.0' and '03'.
  assert metrics.drop_normalize('The 3.0-yard  Touchdown!') == '3.0 yard touchdown'
  assert metrics.drop_score('3', '3.00') == metrics.DropScore(1.0, 1.0)
  # A number in the gold must be in the prediction: '45 yards' vs '45-yard' shares '45.0'
  # (tokens {45.0, yards} vs {45.0, yard}: P = R = 1/2, F1 0.5); '44 yards' shares the word
  # 'yards' only, which does not count because the gold holds a number: F1 0.
  assert metrics.drop_score('45 yards', '45-yard').f1 == 0.5
  assert metrics.drop_score('44 yards', '45 yards').f1 == 0.0
  assert metrics.drop_score('John Smith', 'Smith').f1 == pytest.approx(0.67)  # 2/3, rounded
  # Multi-span: gold (Smith, Jones) vs predicted (Jones): the best alignment pairs Jones with
  # Jones (F1 1) and leaves Smith unpaired (0): mean over max(2, 1) spans = 0.5; EM 0.
  assert metrics.drop_score(['Jones'], ['Smith', 'Jones']) == metrics.DropScore(0.0, 0.5)
  # Predicting an extra span is penalised the same way: mean over max(1, 2) = 0.5.
  assert metrics.drop_score(['Smith', 'Jones'], ['Smith']).f1 == 0.5
  # Order does not matter for EM.
  assert metrics.drop_score(['Jones', 'Smith'], ['Smith', 'Jones']).exact_match == 1.0
  # Per question: the max over gold answers; a blank gold does not count, but the question does.
  result = metrics.drop(['Smith', 'x'], [[('Jones',), ('Smith',)], [('  ',)]])
  assert result == {'exact_match': 0.5, 'f1': 0.5}


# --- ROUGE and sentence splitting ---------------------------------------------------------------


@pytest.mark.parametrize('text, expected', [
    ('Dr. Smith met Mr. Jones in the U.S. Capitol. It rained.',
     ['Dr. Smith met Mr. Jones in the U.S. Capitol.', 'It rained.']),
    ('Sec. Clinton spoke on Jan. 5 at 3.5 p.m. sharp. Then she left!',
     ['Sec. Clinton spoke on Jan. 5 at 3.5 p.m. sharp.', 'Then she left!']),
    ('Shares rose 3.5 percent to $2.25 billion. Analysts were surprised.',
     ['Shares rose 3.5 percent to $2.25 billion.', 'Analysts were surprised.']),
    ('He lives in the U.S. The president spoke.', ['He lives in the U.S.', 'The president spoke.']),
    ('J. K. Rowling wrote it. She is rich!', ['J. K. Rowling wrote it.', 'She is rich!']),
    ('He said "yes." Then he left.', ['He said "yes."', 'Then he left.']),
    ('It ranked No. 5 in the U.K. last year.', ['It ranked No. 5 in the U.K. last year.']),
    ('Is it? Yes (mostly). Fine.', ['Is it?', 'Yes (mostly).', 'Fine.']),
    ('Mrs. Brown, Prof. Green and Gen. White, e.g. at St. Paul, met Messrs. Black.',
     ['Mrs. Brown, Prof. Green and Gen. White, e.g. at St. Paul, met Messrs. Black.']),
    ('first line .\nsecond line .', ['first line .', 'second line .']),
    ('no period at all', ['no period at all']),
])
def test_sentence_split(text, expected):
  assert sentences.split(text) == expected


def test_rouge_matches_rouge_score_on_split_sentences():
  scorer = rouge_scorer.RougeScorer(list(metrics.ROUGE_TYPES), use_stemmer=True)
  rng = np.random.default_rng(7)
  words = ['the', 'cat', 'sat', 'on', 'mat', 'Dr.', 'Smith', 'U.S.', 'officials', 'said',
           'running', 'runs', '3.5', 'percent', 'It', 'was', 'happy']
  predictions, references = [], []
  for _ in range(40):
    def text():
      return ' '.join(' '.join(rng.choice(words, size=int(rng.integers(2, 8)))) + '.'
                      for _ in range(int(rng.integers(1, 4))))
    predictions.append(text())
    references.append(text())
  result = metrics.rouge(predictions, references)
  expected = {k: 0.0 for k in metrics.ROUGE_TYPES}
  for prediction, reference in zip(predictions, references):
    scores = scorer.score('\n'.join(sentences.split(reference)),
                          '\n'.join(sentences.split(prediction)))
    for k in expected:
      expected[k] += scores[k].fmeasure / len(predictions)
  assert result == pytest.approx(expected, abs=TOL)


def test_rouge_lsum_does_not_split_at_abbreviations():
  """rougeLsum scores sentence by sentence, so a split after "Dr." or "U.S." changes it."""
  reference, prediction = 'Dr. Kerry met U.S. officials.', 'U.S. officials met Dr. Kerry.'
  # One sentence each: the LCS of [dr kerry met u s officials] and [u s officials met dr
  # kerry] is 3 tokens ('u s officials'), so P = R = F = 3/6.
  assert metrics.rouge([prediction], [reference], rouge_types=['rougeLsum']) == {
      'rougeLsum': pytest.approx(0.5)}
  # Split after every period (the old regex), the union LCS of the fragments finds all six
  # tokens: rouge-score gives 1.0 for the same pair.
  scorer = rouge_scorer.RougeScorer(['rougeLsum'], use_stemmer=True)
  split_wrong = scorer.score('Dr.\nKerry met U.S.\nofficials.', 'U.S.\nofficials met Dr.\nKerry.')
  assert split_wrong['rougeLsum'].fmeasure == pytest.approx(1.0)


def test_rouge_by_hand():
  result = metrics.compute('rouge', ['the cat sat on the mat'], ['the cat lay on the mat'])
  # Unigrams: 5 of 6 match both ways -> 5/6. Bigrams: the-cat, on-the, the-mat of 5 -> 3/5.
  assert result == pytest.approx({'rouge1': 5 / 6, 'rouge2': 3 / 5, 'rougeL': 5 / 6,
                                  'rougeLsum': 5 / 6})
  # Porter stemming: running/runs -> run, dogs -> dog.
  assert metrics.rouge(['running dogs'], ['runs dog'], rouge_types=['rouge1']) == {
      'rouge1': pytest.approx(1.0)}


# --- Dispatcher ---------------------------------------------------------------------------------


def test_metric_names_and_errors():
  assert set(metrics.METRICS) == {'accuracy', 'mcc', 'f1_accuracy', 'cb', 'multirc', 'squad',
                                  'record', 'drop', 'rouge'}
  with pytest.raises(ValueError, match='Unknown metric .*accuracy.*cb.*drop'):
    metrics.compute('bleu', [1], [1])
  with pytest.raises(ValueError, match='2 predictions but 3 labels'):
    metrics.accuracy([1, 0], [1, 0, 1])
  with pytest.raises(ValueError, match='No examples'):
    metrics.drop([], [])


def test_catalogue_metric_names_are_known():
  from muppet_jax.data import catalogue  # pylint: disable=g-import-not-at-top
  for record in catalogue.RECORDS:
    if record.metric:
      assert record.metric in metrics.METRICS, record.slug
  assert catalogue.get('cb').metric == 'cb'
  assert catalogue.get('drop').metric == 'drop'
  json.dumps(metrics.compute('cb', [0, 1, 2], [0, 1, 1]))  # Plain floats, JSON-serialisable.
