"""Held-out evaluation (`muppet_jax/evaluation.py`): MultiRC per-question EM, SQuAD-style best
span over all windows of a question mapped back to the original text, and the Evaluator's
compiled program on every family of the demo.

Expected values are computed by hand in the comments; column positions of the hand-made span
logits come from the Hugging Face tokenizer's own overflowing-window encoding (the standard
`run_qa` preprocessing), not from the code under test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from configs import demo as demo_config
from muppet_jax import build
from muppet_jax import config_lib
from muppet_jax import evaluation
from muppet_jax import objective
from muppet_jax import sharding
from muppet_jax.data import batching, demo, tasks
from muppet_jax.data.features import BatchShape, Family, TaskTable
from muppet_jax.data.vocab import HFVocabulary
from muppet_jax.models import muppet

LENGTH, STRIDE, ROWS = 32, 4, 4


@pytest.fixture(scope='module')
def vocab(tmp_path_factory):
  return HFVocabulary(demo.build_tokenizer(str(tmp_path_factory.mktemp('tokenizer'))))


def _sub_batches(builder, task_name, examples):
  stream = builder.stream(task_name, iter(examples))
  out = []
  while (sub := builder.build(stream)).num_examples:
    out.append(sub)
  return out


def _predictions(num_examples, **fields):
  """SlotPredictions (numpy) with zeros for the fields not given."""
  zeros = np.zeros(num_examples)
  values = dict(label=zeros.astype(np.int32), span_start=zeros.astype(np.int32),
                span_end=zeros.astype(np.int32), span_score=zeros, loss=zeros)
  values.update(fields)
  return objective.SlotPredictions(**values)


# --- MultiRC -------------------------------------------------------------------------------------


def test_multirc_em_groups_answer_options_by_question(vocab):
  name = 'muppet_multirc'
  table = TaskTable.build([name], [Family.CLASSIFICATION], [2])
  # E = 3: question 2's options are split over two sub-batches, so grouping must span them.
  shape = BatchShape(rows=2, length=64, max_examples=3, max_choices=2, decoder_length=1)
  builder = batching.SubBatchBuilder(shape, vocab, table, evaluation=True)
  paragraph = 'anna has a dog . the dog is brown .'
  options = [  # (question, answer option, label, group, predicted)
      ('what does anna have ?', 'a dog', 1, '0:0', 1),
      ('what does anna have ?', 'a cat', 0, '0:0', 0),  # Question 0: all right.
      ('what colour is the dog ?', 'brown', 1, '0:1', 1),
      ('what colour is the dog ?', 'light brown', 1, '0:1', 0),  # Missed: question 1 wrong.
      ('what colour is the dog ?', 'black', 0, '0:1', 0),
  ]
  examples = [{'text_a': paragraph, 'text_b': f'{q} {a}', 'label': label, 'group': group}
              for q, a, label, group, _ in options]
  subs = _sub_batches(builder, name, examples)
  assert [s.num_examples for s in subs] == [3, 2]
  preds = []
  for sub in subs:
    label = np.zeros(shape.max_examples, np.int32)
    for e in np.flatnonzero(sub.arrays['example_mask']):
      label[e] = options[sub.meta[e].index][4]
    preds.append(_predictions(shape.max_examples, label=label))
  scores = evaluation.score(tasks.record_for_task(name), subs, preds)
  # Options: predicted [1, 0, 1, 0, 0] vs labels [1, 0, 1, 1, 0]: tp 2, fp 0, fn 1.
  # F1a = 2 tp / (2 tp + fp + fn) = 4 / 5; EM = 1 of 2 questions; their mean 0.65.
  assert scores == pytest.approx({'f1a': 0.8, 'em': 0.5, 'f1a_em': 0.65, 'accuracy': 0.8,
                                  'examples': 5.0})


def test_multirc_without_groups_fails_loudly(vocab):
  name = 'muppet_multirc'
  table = TaskTable.build([name], [Family.CLASSIFICATION], [2])
  shape = BatchShape(rows=2, length=64, max_examples=4, max_choices=2, decoder_length=1)
  builder = batching.SubBatchBuilder(shape, vocab, table, evaluation=True)
  subs = _sub_batches(builder, name, [{'text_a': 'a b', 'text_b': 'c', 'label': 1}])
  with pytest.raises(ValueError, match="no 'group'"):
    evaluation.score(tasks.record_for_task(name), subs, [_predictions(4)])


# --- Extractive QA -------------------------------------------------------------------------------

_FILLER = 'anna went to the park with ben . '
# Question 0: the answer (inside brackets, with a double space) lies in the second window only.
Q0 = dict(question='where did carl go ?',
          context=_FILLER * 3 + 'then carl went to  (New  York) , by train .',
          answers=['New York', 'new york city'])
# Question 1: one window; the predicted span is partly right.
Q1 = dict(question='where did ben go ?', context='ben went to the zoo with emma .',
          answers=['the zoo', 'zoo with emma and finn'])
# Question 2: five windows, the answer only in the fifth; an evaluation builder keeps the
# first four (it must not choose windows by the answer), so the question is a sure miss.
Q2 = dict(question='where did carl fly ?', context=_FILLER * 10 + 'carl flew to the moon .',
          answers=['the moon'])


def _span_example(q, answer_text):
  start = q['context'].index(answer_text)
  return dict(q, answer_start=start, answer_end=start + len(answer_text))


def _hf_windows(tokenizer, q):
  """Hugging Face's overflowing windows of a question (run_qa's preprocessing)."""
  return tokenizer(q['question'], q['context'], truncation='only_second', max_length=LENGTH,
                   stride=STRIDE, return_overflowing_tokens=True, return_offsets_mapping=True)


def _column(enc, window, char, side):
  """The context column of HF window `window` whose token starts (side 0) / ends (side 1) at
  character `char`."""
  cols = [c for c, (sid, off) in enumerate(zip(enc.sequence_ids(window),
                                               enc['offset_mapping'][window]))
          if sid == 1 and off[side] == char and off[0] < off[1]]
  assert len(cols) == 1, (window, char, cols)
  return cols[0]


def _span_model(vocab, table):
  config = config_lib.default()
  hf_config = transformers.RobertaConfig(
      vocab_size=vocab.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
      intermediate_size=32, max_position_embeddings=LENGTH + 4, type_vocab_size=1,
      pad_token_id=vocab.pad_id, bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id)
  return muppet.build_model(config, hf_config, table, rngs=nnx.Rngs(0))


def test_span_best_across_windows_maps_back_to_the_original_text(vocab, monkeypatch):
  name = 'muppet_demo_span'
  table = TaskTable.build([name], [Family.SPAN], [0])
  shape = BatchShape(rows=ROWS, length=LENGTH, max_examples=8, max_choices=2, decoder_length=1)
  builder = batching.SubBatchBuilder(shape, vocab, table, span_stride=STRIDE, evaluation=True)
  examples = [_span_example(Q0, 'New  York'), _span_example(Q1, 'zoo'),
              _span_example(Q2, 'the moon')]
  subs = _sub_batches(builder, name, examples)
  # Sub-batch 0: question 0 (3 windows, rows 0-2) and 1 (row 3); sub-batch 1: question 2.
  assert [[m.index for m in s.meta[:ROWS]] for s in subs] == [[0, 0, 0, 1], [2, 2, 2, 2]]
  tokenizer = transformers.AutoTokenizer.from_pretrained(vocab.path)
  encodings = [_hf_windows(tokenizer, q) for q in (Q0, Q1, Q2)]
  assert [len(e['input_ids']) for e in encodings] == [3, 1, 5]
  # Our rows are HF's windows (the first four of question 2's five).
  rows = {(0, 0): (0, 0), (0, 1): (0, 1), (0, 2): (0, 2), (1, 0): (0, 3)}
  rows.update({(2, w): (1, w) for w in range(4)})
  for (q, w), (b, r) in rows.items():
    ids = encodings[q]['input_ids'][w]
    np.testing.assert_array_equal(subs[b].arrays['input_ids'][r, :len(ids)], ids)

  max_answer_length = 10
  start = np.full((2, ROWS, LENGTH), -10.0, np.float32)
  end = np.full((2, ROWS, LENGTH), -10.0, np.float32)
  # Question 0, window 0 (no answer): higher-scoring spans that the constraints must reject:
  # the `<s>` "not in this window" position (50 + 50), a question token (40 + 40), and a
  # context span of 13 tokens > max_answer_length (30 + 30). Its best valid span scores
  # 30 - 10 = 20 (start at the first context column, any end within 10 tokens).
  first = 9  # `<s>` + 6 question tokens + `</s></s>`
  assert encodings[0].sequence_ids(0)[first - 1:first + 1] == [None, 1]
  start[0, 0, 0] = end[0, 0, 0] = 50
  start[0, 0, 2] = end[0, 0, 2] = 40
  start[0, 0, first], end[0, 0, first + 12] = 30, 30
  # Question 0, window 1: the answer, 15 + 15 = 30 > 20. Columns from HF's offsets; the
  # demo BPE spells the capitalised words letter by letter, so the span is 8 tokens long.
  begin = Q0['context'].index('New  York')
  s0 = _column(encodings[0], 1, begin, 0)
  e0 = _column(encodings[0], 1, begin + len('New  York'), 1)
  assert 1 < e0 - s0 + 1 <= max_answer_length
  start[0, 1, s0], end[0, 1, e0] = 15, 15
  # Question 0, window 2: 'train', 12 + 12 = 24: the best of its window, not of the question.
  begin = Q0['context'].index('train')
  col = _column(encodings[0], 2, begin, 0)
  start[0, 2, col] = end[0, 2, col] = 12
  # Question 1: 'zoo with emma' (partly right).
  begin = Q1['context'].index('zoo with emma')
  s1 = _column(encodings[1], 0, begin, 0)
  e1 = _column(encodings[1], 0, begin + len('zoo with emma'), 1)
  assert e1 - s1 + 1 <= max_answer_length
  start[0, 3, s1], end[0, 3, e1] = 5, 5
  # Question 2: the first context token of window 0 ('anna'): a miss.
  start[1, 0, first], end[1, 0, first] = 1, 1

  current = {}

  def fake_span(self, batch, input_embeddings=None, deterministic=True):
    del self, input_embeddings, deterministic
    return muppet.SpanOutputs(start_logits=jnp.asarray(current['start']),
                              end_logits=jnp.asarray(current['end']),
                              position_mask=batch['span_mask'].astype(bool))

  monkeypatch.setattr(muppet.MuppetModel, 'span', fake_span)
  model = _span_model(vocab, table)
  settings = objective.ObjectiveSettings(max_answer_length=max_answer_length)
  preds = []
  for b, sub in enumerate(subs):
    current.update(start=start[b], end=end[b])
    batch = {k: jnp.asarray(v) for k, v in sub.arrays.items()}
    out = objective.slot_predictions(model, batch, task_table=table, settings=settings)
    preds.append(jax.tree.map(np.asarray, out))
  # The device step already applied the constraints, per window.
  assert (preds[0].span_start[0], preds[0].span_end[0]) == (first, first)
  assert preds[0].span_score[0] == pytest.approx(20.0)
  assert (preds[0].span_start[1], preds[0].span_end[1]) == (s0, e0)
  assert preds[0].span_score[1] == pytest.approx(30.0)
  assert (preds[0].span_start[2], preds[0].span_score[2]) == (col, pytest.approx(24.0))
  assert subs[0].meta[1].span_text(s0, e0) == 'New  York'  # Original spacing, no brackets.
  assert subs[0].meta[3].span_text(s1, e1) == 'zoo with emma'
  assert subs[1].meta[0].span_text(first, first) == 'anna'
  # A span that starts on the byte-level space token before 'York': the space is stripped.
  space = _column(encodings[0], 1, Q0['context'].index('York'), 0) - 1
  assert subs[0].meta[1].span_text(space, e0) == 'York'
  # No kept window of question 2 holds its answer.
  assert not subs[1].arrays['span_end'][:ROWS].any()

  scores = evaluation.score(tasks.record_for_task(name), subs, preds)
  # Question 0: 'New  York' = gold 1 after normalisation: EM 1, F1 1.
  # Question 1: 'zoo with emma' vs 'the zoo' -> 'zoo': P 1/3, R 1, F1 0.5; vs 'zoo with emma
  #   and finn': P 1, R 3/5, F1 0.75; EM 0. Max over golds: F1 0.75.
  # Question 2: 'anna' vs 'the moon': 0, 0.
  assert scores == pytest.approx({'exact_match': 1 / 3, 'f1': (1 + 0.75 + 0) / 3,
                                  'examples': 3.0})


def test_training_builder_still_prefers_the_answer_windows(vocab):
  """Only evaluation picks windows blind; training keeps the window that holds the answer."""
  name = 'muppet_demo_span'
  table = TaskTable.build([name], [Family.SPAN], [0])
  shape = BatchShape(rows=ROWS, length=LENGTH, max_examples=8, max_choices=2, decoder_length=1)
  example = _span_example(Q2, 'the moon')
  for evaluation_mode, holds in ((False, True), (True, False)):
    builder = batching.SubBatchBuilder(shape, vocab, table, span_stride=STRIDE,
                                       evaluation=evaluation_mode)
    sub = builder.build(builder.stream(name, iter([example])))
    assert bool(sub.arrays['span_end'].any()) == holds
    assert (sub.meta is not None) == evaluation_mode


# --- The Evaluator's compiled program ------------------------------------------------------------


def test_evaluator_every_family_of_the_demo(tmp_path):
  """BART demo (all four families) on 8 devices: every task is scored, and the span
  predictions of the sharded eval step are each window's best valid span (brute force on the
  model's own logits)."""
  config = demo_config.get_config('bart')
  config.model.hidden_size = 32
  config.model.num_layers = 1
  config.model.num_heads = 2
  config.model.intermediate_size = 64
  config.data.eval_examples = 6
  config.eval.num_beams = 1
  config.eval.max_length = 6
  config.eval.max_answer_length = 5
  data = build.setup_data(config, str(tmp_path))
  model, hf_config = build.build_model(config, data)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  layout = sharding.make_mesh(config.mesh)
  assert layout.data_size == 8
  settings = objective.ObjectiveSettings.from_config(config, data.vocab.vocab_size)
  assert settings.max_answer_length == 5
  evaluator = evaluation.Evaluator(graphdef=graphdef, data=data, config=config, layout=layout,
                                   settings=settings, hf_config=hf_config)
  results = evaluator.run(params, rest)
  assert set(results) == set(data.task_names)
  for name in data.task_names:
    family = tasks.record_for_task(name).family
    keys = {Family.CLASSIFICATION: {'accuracy'}, Family.MULTIPLE_CHOICE: {'accuracy'},
            Family.SPAN: {'exact_match', 'f1'},
            Family.SUMMARIZATION: {'rouge1', 'rouge2', 'rougeL', 'rougeLsum'}}[family]
    assert keys | {'examples'} <= set(results[name]), (name, results[name])
    assert results[name]['examples'] == 6.0, name  # Every example / question once.

  subs = evaluator._sub_batches('muppet_demo_span')  # pylint: disable=protected-access
  preds = evaluator._predict(params, rest, subs)  # pylint: disable=protected-access
  for sub, pred in zip(subs, preds):
    out = model.span({k: jnp.asarray(v) for k, v in sub.arrays.items()})
    starts, ends = np.asarray(out.start_logits, np.float64), np.asarray(out.end_logits,
                                                                       np.float64)
    for row in np.flatnonzero(sub.arrays['example_mask']):
      window = sub.meta[row].window
      cols = range(window.context_begin, window.context_end)
      best = max((starts[row, s] + ends[row, e], s, e) for s in cols for e in cols
                 if s <= e < s + 5)
      assert (int(pred.span_start[row]), int(pred.span_end[row])) == best[1:]
      assert float(pred.span_score[row]) == pytest.approx(best[0], rel=1e-5, abs=1e-5)
