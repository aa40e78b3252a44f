"""Held-out evaluation (`muppet_jax/eval/evaluator.py`): MultiRC per-question EM, the best span
of a question over ALL its windows (also those beyond one sub-batch's rows) mapped back to the
original text, DROP's structured golds, the evaluation mappers, and the Evaluator's compiled
programs on the mesh.

Expected values are computed by hand in the comments; column positions of the hand-made span
logits come from the Hugging Face tokenizer's own overflowing-window encoding (the standard
`run_qa` preprocessing), not from the code under test.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from configs import demo as demo_config
from muppet_jax import build
from muppet_jax import config_lib
from muppet_jax import objective
from muppet_jax import sharding
from muppet_jax.data import batching, demo, mappers, tasks
from muppet_jax.data.features import BatchShape, Family, TaskTable
from muppet_jax.data.mappers import evaluation as eval_mappers
from muppet_jax.data.mappers import span as span_mappers
from muppet_jax.data.vocab import HFVocabulary
from muppet_jax.eval import evaluator as evaluator_lib
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
  result = evaluator_lib.score(tasks.record_for_task(name), subs, preds)
  # Options: predicted [1, 0, 1, 0, 0] vs labels [1, 0, 1, 1, 0]: tp 2, fp 0, fn 1.
  # F1a = 2 tp / (2 tp + fp + fn) = 4 / 5; EM = 1 of 2 questions; their mean 0.65.
  assert result.metrics == pytest.approx({'f1a': 0.8, 'em': 0.5, 'f1a_em': 0.65,
                                          'accuracy': 0.8, 'examples': 5.0})
  assert [p['prediction'] for p in result.predictions] == [o[4] for o in options]
  assert [p['group'] for p in result.predictions] == [o[3] for o in options]


def test_multirc_without_groups_fails_loudly(vocab):
  name = 'muppet_multirc'
  table = TaskTable.build([name], [Family.CLASSIFICATION], [2])
  shape = BatchShape(rows=2, length=64, max_examples=4, max_choices=2, decoder_length=1)
  builder = batching.SubBatchBuilder(shape, vocab, table, evaluation=True)
  subs = _sub_batches(builder, name, [{'text_a': 'a b', 'text_b': 'c', 'label': 1}])
  with pytest.raises(ValueError, match="no 'group'"):
    evaluator_lib.score(tasks.record_for_task(name), subs, [_predictions(4)])


# --- Extractive QA: best span over every window ----------------------------------------------------

_FILLER = 'anna went to the park with ben . '
# Question 0: the answer (inside brackets, with a double space) lies in the second window only.
Q0 = dict(question='where did carl go ?',
          context=_FILLER * 3 + 'then carl went to  (New  York) , by train .',
          answers=['New York', 'new york city'])
# Question 1: one window; the predicted span is partly right.
Q1 = dict(question='where did ben go ?', context='ben went to the zoo with emma .',
          answers=['the zoo', 'zoo with emma and finn'])
# Question 2: five windows, more than a sub-batch's four rows; the answer only in the fifth.
Q2 = dict(question='where did carl fly ?', context=_FILLER * 10 + 'carl flew to the moon .',
          answers=['the moon'])


def _span_example(q, answer_text):
  start = q['context'].index(answer_text)
  return dict(q, answer_start=start, answer_end=start + len(answer_text))


def _hf_windows(tokenizer, q, length=LENGTH, stride=STRIDE):
  """Hugging Face's overflowing windows of a question (run_qa's preprocessing)."""
  return tokenizer(q['question'], q['context'], truncation='only_second', max_length=length,
                   stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)


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


def test_span_best_across_all_windows_maps_back_to_the_original_text(vocab, monkeypatch):
  name = 'muppet_demo_span'
  table = TaskTable.build([name], [Family.SPAN], [0])
  shape = BatchShape(rows=ROWS, length=LENGTH, max_examples=8, max_choices=2, decoder_length=1)
  builder = batching.SubBatchBuilder(shape, vocab, table, span_stride=STRIDE, evaluation=True)
  examples = [_span_example(Q0, 'New  York'), _span_example(Q1, 'zoo'),
              _span_example(Q2, 'the moon')]
  subs = _sub_batches(builder, name, examples)
  # Sub-batch 0: question 0 (3 windows, rows 0-2) and 1 (row 3). Question 2 has 5 windows,
  # more than 4 rows: it starts an empty sub-batch (windows 0-3) and ends in the next (4).
  layout = [[m.index for m in s.meta if m is not None] for s in subs]
  assert layout == [[0, 0, 0, 1], [2, 2, 2, 2], [2]]
  assert [s.num_examples for s in subs] == [2, 1, 1]
  tokenizer = transformers.AutoTokenizer.from_pretrained(vocab.path)
  encodings = [_hf_windows(tokenizer, q) for q in (Q0, Q1, Q2)]
  assert [len(e['input_ids']) for e in encodings] == [3, 1, 5]
  # Our rows are HF's windows, all of them.
  rows = {(0, 0): (0, 0), (0, 1): (0, 1), (0, 2): (0, 2), (1, 0): (0, 3)}
  rows.update({(2, w): (1 + w // ROWS, w % ROWS) for w in range(5)})
  for (q, w), (b, r) in rows.items():
    ids = encodings[q]['input_ids'][w]
    np.testing.assert_array_equal(subs[b].arrays['input_ids'][r, :len(ids)], ids)

  max_answer_length = 10
  start = np.full((3, ROWS, LENGTH), -10.0, np.float32)
  end = np.full((3, ROWS, LENGTH), -10.0, np.float32)
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
  # Question 2: a decoy in window 0 ('anna', 1 + 1) and the gold 'the moon' in window 4, the
  # first row of the third sub-batch (3 + 3 = 6): the late window must win.
  start[1, 0, first], end[1, 0, first] = 1, 1
  begin = Q2['context'].index('the moon')
  s2 = _column(encodings[2], 4, begin, 0)
  e2 = _column(encodings[2], 4, begin + len('the moon'), 1)
  start[2, 0, s2], end[2, 0, e2] = 3, 3

  current = {}

  def fake_span(self, batch, input_embeddings=None, deterministic=True, *, hidden=None):
    del self, input_embeddings, deterministic, hidden
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
  assert subs[2].meta[0].span_text(s2, e2) == 'the moon'
  # A span that starts on the byte-level space token before 'York': the space is stripped.
  space = _column(encodings[0], 1, Q0['context'].index('York'), 0) - 1
  assert subs[0].meta[1].span_text(space, e0) == 'York'

  result = evaluator_lib.score(tasks.record_for_task(name), subs, preds)
  # Question 0: 'New  York' = gold 1 after normalisation: EM 1, F1 1.
  # Question 1: 'zoo with emma' vs 'the zoo' -> 'zoo': P 1/3, R 1, F1 0.5; vs 'zoo with emma
  #   and finn': P 1, R 3/5, F1 0.75; EM 0. Max over golds: F1 0.75.
  # Question 2: 'the moon', from its fifth window: EM 1, F1 1.
  assert result.metrics == pytest.approx({'exact_match': 2 / 3, 'f1': (1 + 0.75 + 1) / 3,
                                          'examples': 3.0})
  assert [p['prediction'] for p in result.predictions] == ['New  York', 'zoo with emma',
                                                           'the moon']


def test_training_builder_still_keeps_rows_windows_with_the_answer(vocab):
  """Training keeps R windows, those that hold the answer first; evaluation keeps every window,
  in context order, and spreads them over sub-batches."""
  name = 'muppet_demo_span'
  table = TaskTable.build([name], [Family.SPAN], [0])
  shape = BatchShape(rows=ROWS, length=LENGTH, max_examples=8, max_choices=2, decoder_length=1)
  example = _span_example(Q2, 'the moon')
  training = batching.SubBatchBuilder(shape, vocab, table, span_stride=STRIDE)
  subs = _sub_batches(training, name, [example])
  assert len(subs) == 1 and subs[0].arrays['span_end'].any() and subs[0].meta is None
  evaluation = batching.SubBatchBuilder(shape, vocab, table, span_stride=STRIDE,
                                        evaluation=True)
  subs = _sub_batches(evaluation, name, [example])
  assert [int(s.arrays['example_mask'].sum()) for s in subs] == [4, 1]
  assert not subs[0].arrays['span_end'].any() and subs[1].arrays['span_end'][0] > 0


# --- The late window through the Evaluator's compiled program on the mesh ------------------------


def _late_answer_example(windows_at_least: int) -> dict:
  """A question whose answer, 'the museum', is in the last window of a long context."""
  context = _FILLER * (4 * windows_at_least) + 'then carl went to the museum .'
  start = context.index('the museum')
  return {'question': 'where did carl go ?', 'context': context, 'answer_start': start,
          'answer_end': start + len('the museum'), 'answers': ['the museum', 'museum']}


@pytest.mark.parametrize('model_type, rows', [('roberta', 2), ('bart', 1)])
def test_evaluator_finds_an_answer_beyond_the_first_rows_windows(tmp_path, monkeypatch,
                                                                  model_type, rows):
  """RoBERTa with 2 rows and BART with 1 row (configs/bart_*.py): the question's windows fill
  several sub-batches, run 8 at a time on 8 devices; a 'model' that scores only the token
  ' museum' (start + end logit 10 + 10) must find it in the last window."""
  config = demo_config.get_config(model_type)
  config.model.hidden_size = 16
  config.model.num_layers = 1
  config.model.num_heads = 2
  config.model.intermediate_size = 32
  config.data.rows = rows
  config.data.length = 48
  config.data.span_stride = 8
  name = 'muppet_demo_span'
  data = build.setup_data(config, str(tmp_path))
  data = build.DataSetup(vocab=data.vocab, task_names=(name,), rates=(1.0,),
                         task_table=TaskTable.build([name], [Family.SPAN], [0]),
                         shape=BatchShape.from_config(config.data))
  museum = data.vocab.encode_batch([' museum'])[0]
  assert len(museum) == 1  # One token of the demo BPE.
  late = _late_answer_example(3 * rows)
  early = dict(_late_answer_example(3 * rows), question='where did anna go ?', answers=['park'])
  early['answer_start'] = early['context'].index('park')
  early['answer_end'] = early['answer_start'] + len('park')
  tokenizer = transformers.AutoTokenizer.from_pretrained(data.vocab.path)
  num_windows = len(_hf_windows(tokenizer, late, 48, 8)['input_ids'])
  assert num_windows > 2 * rows  # The answer is beyond the first sub-batch (and the next).

  def fake_span(self, batch, input_embeddings=None, deterministic=True, *, hidden=None):
    del self, input_embeddings, deterministic, hidden
    hit = 10.0 * (batch['input_ids'] == museum[0]).astype(jnp.float32)
    return muppet.SpanOutputs(start_logits=hit, end_logits=hit,
                              position_mask=batch['span_mask'].astype(bool))

  monkeypatch.setattr(muppet.MuppetModel, 'span', fake_span)
  model, hf_config = build.build_model(config, data)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  layout = sharding.make_mesh(config.mesh)
  assert layout.data_size == 8
  settings = objective.ObjectiveSettings.from_config(config, data.vocab.vocab_size)
  evaluator = evaluator_lib.Evaluator(graphdef=graphdef, data=data, config=config,
                                      layout=layout, settings=settings, hf_config=hf_config)
  subs = evaluator.sub_batches(name, [late, early])
  # Every window of both questions is laid out, in as many sub-batches as that takes.
  early_windows = len(_hf_windows(tokenizer, early, 48, 8)['input_ids'])
  assert sum(int(s.arrays['example_mask'].sum()) for s in subs) == num_windows + early_windows
  result = evaluator.evaluate_task(params, rest, name, examples=[late, early])
  # The late question: ' museum' in its last window, EM 1. The early one (gold 'park'): every
  # window also ends with ' museum', so the fake model answers 'museum' there too: EM 0.
  assert [p['prediction'] for p in result.predictions] == ['museum', 'museum']
  assert result.metrics == pytest.approx({'exact_match': 0.5, 'f1': 0.5, 'examples': 2.0})


# --- DROP's structured golds -------------------------------------------------------------------


def test_drop_is_scored_against_its_structured_golds(vocab):
  name = 'muppet_drop'
  table = TaskTable.build([name], [Family.SPAN], [0])
  passage = 'The Bears scored 3 touchdowns and Smith kicked 2 field goals in 1995.'
  raws = [
      # A two-span answer: predicting one of the spans gives F1 0.5 (mean over 2 spans).
      {'passage': passage, 'question': 'Who scored?', 'query_id': 'a',
       'answer': {'number': '', 'date': {'day': '', 'month': '', 'year': ''},
                  'spans': ['Bears', 'Smith']},
       'validated_answers': []},
      # A computed number, in no window: still scored; predicting '3.0' for gold '5' gives 0.
      {'passage': passage, 'question': 'How many in total?', 'query_id': 'b',
       'answer': '5', 'validated_answers': ['5']},
      # A TFDS date without a year ('-May-3' -> '3 May '); the validated answer '1995' is right.
      {'passage': passage, 'question': 'When?', 'query_id': 'c',
       'answer': '-May-3', 'validated_answers': ['1995']},
  ]
  examples = [eval_mappers.map_drop_eval(raw)[0] for raw in raws]
  record = tasks.record_for_task(name)
  examples = [tasks.check_family_example(e, record, evaluation=True) for e in examples]
  assert json.loads(examples[0]['answer_spans']) == [['Bears', 'Smith']]
  assert examples[1]['answer_start'] == examples[1]['answer_end'] == 0
  assert json.loads(examples[2]['answer_spans']) == [['3 May '], ['1995']]
  shape = BatchShape(rows=4, length=96, max_examples=8, max_choices=2, decoder_length=1)
  builder = batching.SubBatchBuilder(shape, vocab, table, span_stride=4, evaluation=True)
  (sub,) = _sub_batches(builder, name, examples)
  assert [m.index for m in sub.meta[:3]] == [0, 1, 2]  # One window per question.
  assert sub.meta[0].gold_spans == (('Bears', 'Smith'),)
  # Predict 'Bears', '3' and '1995' by their columns in each row.
  tokenizer = transformers.AutoTokenizer.from_pretrained(vocab.path)
  cols = []
  for row, text in enumerate(['Bears', '3', '1995']):
    q = {'question': raws[row]['question'], 'context': passage}
    enc = _hf_windows(tokenizer, q, 96, 4)
    begin = passage.index(text)
    cols.append((_column(enc, 0, begin, 0), _column(enc, 0, begin + len(text), 1)))
  span_start = np.zeros(8, np.int32)
  span_end = np.zeros(8, np.int32)
  for row, (s, e) in enumerate(cols):
    span_start[row], span_end[row] = s, e
  preds = [_predictions(8, span_start=span_start, span_end=span_end, span_score=np.ones(8))]
  result = evaluator_lib.score(record, [sub], preds)
  assert [p['prediction'] for p in result.predictions] == ['Bears', '3', '1995']
  # DROP F1 by hand: question a 0.5 (one of two gold spans, averaged over max(2, 1) spans);
  # b: gold '5' holds a number the prediction lacks: 0; c: '1995' = validated gold: 1 (EM 1).
  assert result.metrics == pytest.approx({'exact_match': 1 / 3, 'f1': 1.5 / 3,
                                          'examples': 3.0})


# --- Evaluation mappers ------------------------------------------------------------------------


def test_evaluation_mappers_keep_every_question():
  context = 'Paris is the capital of France.'
  squad = {'context': context, 'question': 'What is the capital?',
           'answers': {'text': ['Lyon', 'lyon'], 'answer_start': [3, 3]}}
  with pytest.raises(mappers.BadRecord):
    span_mappers.map_squad(squad)  # Training drops it.
  (ex,) = mappers.mapper_for('squad', evaluation=True)(squad)
  assert (ex['answer_start'], ex['answer_end'], ex['answers']) == (0, 0, ['Lyon', 'lyon'])
  # A locatable answer gives the same example as the training mapper.
  located = dict(squad, answers={'text': ['Paris'], 'answer_start': [0]})
  assert eval_mappers.map_squad_eval(located) == span_mappers.map_squad(located)
  # MRQA: scored against `answers` only (the official MRQA script), not the detected texts.
  mrqa = {'context': context, 'question': 'Capital?', 'answers': ['Paris city'],
          'detected_answers': {'text': ['Paris'], 'char_spans': {'start': [[0]], 'end': [[4]]}}}
  (ex,) = mappers.mapper_for('trivia_qa', evaluation=True)(mrqa)
  assert (ex['answer_start'], ex['answer_end'], ex['answers']) == (0, 5, ['Paris city'])
  (ex,) = eval_mappers.map_natural_questions_eval(dict(mrqa, context='Somewhere else.'))
  assert (ex['answer_start'], ex['answer_end']) == (0, 0)
  record = {'passage': context, 'query': 'The capital of @placeholder.',
            'entities': ['France'], 'answers': ['Germany']}
  (ex,) = mappers.mapper_for('record', evaluation=True)(record)
  assert (ex['answer_start'], ex['answer_end'], ex['answers']) == (0, 0, ['Germany'])
  assert set(mappers.EVAL_MAPPERS) == {'squad', 'natural_questions', 'trivia_qa',
                                             'hotpot_qa', 'record', 'drop'}
  # Training mappers are unchanged for every other dataset.
  assert mappers.mapper_for('rte', evaluation=True) is mappers.MAPPERS['rte']


def test_drop_golds_as_the_official_script_flattens_them():
  passage = 'Smith and Jones scored.'
  release = {'passage': passage, 'question': 'Who?',
             'answer': {'number': '', 'date': {'day': '', 'month': '', 'year': ''},
                        'spans': ['Smith', 'Jones']},
             'validated_answers': [
                 {'number': '2', 'date': {'day': '', 'month': '', 'year': ''}, 'spans': []},
                 {'number': '', 'date': {'day': '3', 'month': 'May', 'year': '1995'},
                  'spans': []}]}
  (ex,) = eval_mappers.map_drop_eval(release)
  # drop_eval.answer_json_to_strings: spans as a tuple, a number as str, a date 'day month year'.
  assert json.loads(ex['answer_spans']) == [['Smith', 'Jones'], ['2'], ['3 May 1995']]
  assert passage[ex['answer_start']:ex['answer_end']] == 'Smith'
  tfds = {'passage': passage, 'question': 'When?', 'answer': '1995-May-3',
          'validated_answers': ['', '7']}
  (ex,) = eval_mappers.map_drop_eval(tfds)
  assert json.loads(ex['answer_spans']) == [['3 May 1995'], [''], ['7']]
  assert (ex['answer_start'], ex['answer_end']) == (0, 0)
  with pytest.raises(mappers.BadRecord):
    span_mappers.map_drop(tfds)  # Training keeps extractive answers only.


# --- The Evaluator's compiled programs on every family -----------------------------------------


def test_evaluator_every_family_of_the_demo(tmp_path):
  """BART demo (all four families) on 8 devices: every task is scored, summarization through
  the mesh too, and the span predictions of the sharded eval step are each window's best
  valid span (brute force on the model's own logits)."""
  config = demo_config.get_config('bart')
  config.model.hidden_size = 32
  config.model.num_layers = 1
  config.model.num_heads = 2
  config.model.intermediate_size = 64
  config.data.eval_examples = 6
  config.eval.num_beams = 2
  config.eval.max_length = 6
  config.eval.max_answer_length = 5
  data = build.setup_data(config, str(tmp_path))
  model, hf_config = build.build_model(config, data)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  layout = sharding.make_mesh(config.mesh)
  assert layout.data_size == 8
  settings = objective.ObjectiveSettings.from_config(config, data.vocab.vocab_size)
  assert settings.max_answer_length == 5
  evaluator = evaluator_lib.Evaluator(graphdef=graphdef, data=data, config=config,
                                      layout=layout, settings=settings, hf_config=hf_config)
  results = evaluator.evaluate(params, rest)
  assert set(results) == set(data.task_names)
  for name in data.task_names:
    family = tasks.record_for_task(name).family
    keys = {Family.CLASSIFICATION: {'accuracy'}, Family.MULTIPLE_CHOICE: {'accuracy'},
            Family.SPAN: {'exact_match', 'f1'},
            Family.SUMMARIZATION: {'rouge1', 'rouge2', 'rougeL', 'rougeLsum'}}[family]
    metrics = results[name].metrics
    assert keys | {'examples'} <= set(metrics), (name, metrics)
    assert metrics['examples'] == 6.0, name  # Every example / question once.
    assert [p['id'] for p in results[name].predictions] == list(range(6)), name

  name = 'muppet_demo_span'
  subs = evaluator.sub_batches(name, evaluator.examples(name))
  preds = evaluator._on_mesh(evaluator._step, params, rest, subs)  # pylint: disable=protected-access
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
