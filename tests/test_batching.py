"""Sub-batch builder: layout, packing, lookahead, truncation, span windows, seq2seq shift."""

import itertools
import os
import time

import numpy as np
import pytest
import transformers

from muppet_jax.data import batching, demo
from muppet_jax.data.features import BatchShape, Family, TaskTable
from muppet_jax.data.vocab import HFVocabulary

CLS, PAD, SEP = 0, 1, 2
CLASSIFICATION = ('demo_sentiment', 'demo_compare', 'demo_topic')


@pytest.fixture(scope='module')
def vocab(tmp_path_factory):
  return HFVocabulary(demo.build_tokenizer(str(tmp_path_factory.mktemp('tokenizer'))))


@pytest.fixture(scope='module')
def table():
  return TaskTable.build([r.task_name for r in demo.RECORDS], [r.family for r in demo.RECORDS],
                         [r.num_classes for r in demo.RECORDS])


def _shape(**kw):
  sizes = dict(rows=8, length=128, max_examples=128, max_choices=5, decoder_length=32)
  sizes.update(kw)
  return BatchShape(**sizes)


def _examples(slug, n=None, split='train'):
  return demo.examples(slug, split)[:n]


def _all_sub_batches(builder, slug, examples):
  stream = builder.stream(f'muppet_{slug}', iter(examples))
  out = []
  while (sub := builder.build(stream)).num_examples:
    out.append(sub)
  assert stream.consumed == len(examples) == sum(s.num_examples for s in out)
  return out


def _segments(sub, row):
  """Token lists of each segment of a row, by segment id."""
  ids, seg = sub.arrays['input_ids'][row], sub.arrays['segment_ids'][row]
  return {int(k): ids[seg == k] for k in np.unique(seg) if k}


def _check_shapes(arrays, shape):
  specs = shape.field_specs()
  assert set(arrays) == set(specs)
  for name, (dims, dtype) in specs.items():
    assert arrays[name].shape == dims and arrays[name].dtype == dtype, name


# --- Tokenizer -----------------------------------------------------------------------------------


def test_demo_tokenizer_is_a_roberta_tokenizer(vocab):
  tok = transformers.AutoTokenizer.from_pretrained(vocab.path)
  assert 'Roberta' in type(tok).__name__
  assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
  assert tok.mask_token_id == len(tok) - 1 and 1000 <= len(tok) <= 2000
  a, b = 'the food was not bad .', 'anna is taller than ben .'
  ids_a = tok(a, add_special_tokens=False)['input_ids']
  ids_b = tok(b, add_special_tokens=False)['input_ids']
  assert tok(a, b)['input_ids'] == [CLS, *ids_a, SEP, SEP, *ids_b, SEP]
  assert tok(a)['input_ids'] == [CLS, *ids_a, SEP]
  for text in (a, demo.examples('demo_span', 'validation')[0]['context'], 'Ünïcode & CAPS 42!'):
    assert tok.decode(tok(text, add_special_tokens=False)['input_ids']) == text
  # A second build reuses the cached directory (no retraining, same files).
  mtime = os.path.getmtime(os.path.join(vocab.path, 'tokenizer.json'))
  assert demo.build_tokenizer(os.path.dirname(vocab.path)) == vocab.path
  assert os.path.getmtime(os.path.join(vocab.path, 'tokenizer.json')) == mtime


# --- Layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize('model_type', ['roberta', 'bart'])
def test_every_family_matches_field_specs(vocab, table, model_type):
  shape = _shape(length=64, max_examples=40)
  builder = batching.SubBatchBuilder(shape, vocab, table, model_type=model_type, span_stride=16)
  for record in demo.RECORDS:
    if record.family == Family.SUMMARIZATION and model_type == 'roberta':
      continue
    stream = builder.stream(record.task_name, iter(_examples(record.slug, 50)))
    sub = builder.build(stream)
    assert sub.num_examples > 0
    _check_shapes(sub.arrays, shape)
    assert int(sub.arrays['task_id']) == table.task_id(record.task_name)
    assert int(sub.arrays['family_id']) == record.family
    a = sub.arrays
    assert np.all((a['input_ids'] == PAD) == (a['segment_ids'] == 0))
    assert np.all(a['positions'][a['segment_ids'] == 0] == 0)
    assert not a['example_mask'][a['loss_n'] == 0].any()
    assert np.all(a['loss_n'][a['example_mask']] >= 2)


def test_summarization_requires_bart(vocab, table):
  builder = batching.SubBatchBuilder(_shape(), vocab, table, model_type='roberta')
  with pytest.raises(ValueError, match='bart'):
    builder.stream('muppet_demo_summarize', iter([]))


def test_packing_efficiency_and_throughput(vocab, table):
  """Short-text classification mix: >= 90% real tokens; builder + tokenizer speed per core."""
  shape = _shape()
  builder = batching.SubBatchBuilder(shape, vocab, table, model_type='roberta')
  real = total = examples = 0
  cpu = time.process_time()
  for slug in CLASSIFICATION:
    subs = _all_sub_batches(builder, slug, _examples(slug))
    examples += sum(s.num_examples for s in subs)
    for sub in subs[:-1]:  # The last one holds what was left at the end of the data.
      real += sub.num_tokens
      total += shape.rows * shape.length
  cpu = time.process_time() - cpu
  print(f'\npacking: {real / total:.1%} real tokens (R=8, L=128, {CLASSIFICATION}); '
        f'builder+tokenizer: {examples / cpu:,.0f} examples/s, {real / cpu:,.0f} tokens/s '
        'per CPU core')
  assert real / total >= 0.90


@pytest.mark.parametrize('model_type', ['roberta', 'bart'])
def test_classification_segments_once_in_order(vocab, table, model_type):
  """Consecutive sub-batches hold every example once, in order, laid out like HF."""
  shape = _shape(rows=4, length=96, max_examples=24)
  builder = batching.SubBatchBuilder(shape, vocab, table, model_type=model_type)
  tok = vocab.tokenizer
  examples = _examples('demo_compare', 300)
  seen = []
  for sub in _all_sub_batches(builder, 'demo_compare', examples):
    a = sub.arrays
    assert a['example_mask'].sum() == sub.num_examples
    assert not a['example_mask'][sub.num_examples:].any()
    for row in range(shape.rows):  # Segments 1..k, contiguous, positions restart at 0.
      seg = a['segment_ids'][row]
      k = seg.max()
      assert np.array_equal(np.unique(seg[seg > 0]), np.arange(1, k + 1))
      for s in range(1, k + 1):
        cols = np.flatnonzero(seg == s)
        assert np.array_equal(cols, np.arange(cols[0], cols[0] + len(cols)))
        assert np.array_equal(a['positions'][row, cols], np.arange(len(cols)))
    flat_ids, flat_seg = a['input_ids'].reshape(-1), a['segment_ids'].reshape(-1)
    for e in range(sub.num_examples):
      idx = a['example_index'][e, 0]
      assert a['choice_mask'][e].tolist() == [True] + [False] * (shape.max_choices - 1)
      row, s = idx // shape.length, flat_seg[idx]
      tokens = _segments(sub, row)[s]
      if model_type == 'roberta':
        assert flat_ids[idx] == CLS and (idx % shape.length == 0 or flat_seg[idx - 1] != s)
      else:
        assert flat_ids[idx] == SEP
        assert idx % shape.length == shape.length - 1 or flat_seg[idx + 1] != s
      seen.append((tokens.tolist(), int(a['labels'][e]), float(a['loss_n'][e])))
  assert [s[1] for s in seen] == [ex['label'] for ex in examples]
  assert all(s[2] == 3 for s in seen)
  for (tokens, _, _), ex in zip(seen, examples):
    assert tokens == tok(ex['text_a'], ex['text_b'])['input_ids']


def test_multiple_choice_layout(vocab, table):
  shape = _shape(rows=4, length=128, max_examples=16)
  builder = batching.SubBatchBuilder(shape, vocab, table, model_type='roberta')
  tok = vocab.tokenizer
  examples = _examples('demo_choice', 200)
  got = []
  for sub in _all_sub_batches(builder, 'demo_choice', examples):
    a = sub.arrays
    flat_ids, flat_seg = a['input_ids'].reshape(-1), a['segment_ids'].reshape(-1)
    for e in range(sub.num_examples):
      n = int(a['choice_mask'][e].sum())
      assert a['choice_mask'][e, :n].all() and a['loss_n'][e] == n
      segments = []
      for c in range(n):
        idx = a['example_index'][e, c]
        assert flat_ids[idx] == CLS
        segments.append(_segments(sub, idx // shape.length)[flat_seg[idx]].tolist())
      got.append((segments, int(a['labels'][e])))
  assert len(got) == len(examples)
  for (segments, label), ex in zip(got, examples):
    assert label == ex['label']
    first = f"{ex['context']} {ex['question']}"
    assert segments == [tok(first, c)['input_ids'] for c in ex['choices']]


def test_multiple_choice_truncates_context_not_choices(vocab, table):
  shape = _shape(rows=2, length=32, max_examples=4)
  builder = batching.SubBatchBuilder(shape, vocab, table, model_type='bart')
  ex = {'context': ' '.join(['anna has a red car .'] * 20), 'question': 'what does anna have ?',
        'choices': ['a red car', 'a blue hat', 'a green cup', 'a pink box', 'a gold kite'],
        'label': 2}
  stream = builder.stream('muppet_demo_choice', iter([ex, ex]))
  sub = builder.build(stream)
  assert sub.num_examples == 1  # 5 choices in 2 rows: 3 segments in a row, <= 32 // 3 each.
  a = sub.arrays
  for c, choice in enumerate(ex['choices']):
    idx = a['example_index'][0, c]  # BART: the segment's last </s>.
    tokens = _segments(sub, idx // 32)[a['segment_ids'].reshape(-1)[idx]]
    assert len(tokens) <= 32 // 3 and tokens[-1] == SEP
    choice_ids = vocab.encode(choice)
    assert tokens[-1 - len(choice_ids):-1].tolist() == choice_ids
  assert builder.build(stream).num_examples == 1
  assert builder.build(stream).num_examples == 0


def test_long_pairs_truncated_longest_first(vocab, table):
  shape = _shape(rows=2, length=24, max_examples=4)
  builder = batching.SubBatchBuilder(shape, vocab, table)
  long_a = ' '.join(['anna is taller than ben'] * 10)
  stream = builder.stream('muppet_demo_compare', iter([
      {'text_a': long_a, 'text_b': 'ben is shorter than anna .', 'label': 0},
      {'text_a': long_a, 'text_b': long_a, 'label': 1},
  ]))
  sub = builder.build(stream)
  assert sub.num_examples == 2
  first, second = _segments(sub, 0)[1], _segments(sub, 1)[1]
  assert len(first) == len(second) == 24
  b_ids = vocab.encode('ben is shorter than anna .')
  assert first[-1 - len(b_ids):].tolist() == [*b_ids, SEP]  # The short text is kept whole.
  sep = np.flatnonzero(second == SEP)
  assert sep[0] - 1 == len(second) - sep[1] - 2  # Equal halves.


def test_bad_labels_raise_naming_the_task(vocab, table):
  builder = batching.SubBatchBuilder(_shape(), vocab, table)
  bad = [{'text_a': 'x', 'text_b': '', 'label': 2}]  # demo_sentiment has 2 classes.
  with pytest.raises(ValueError, match=r"muppet_demo_sentiment.*label 2"):
    builder.build(builder.stream('muppet_demo_sentiment', iter(bad)))
  bad = [{'context': 'c', 'question': 'q', 'choices': ['a', 'b'], 'label': 2}]
  with pytest.raises(ValueError, match=r"muppet_demo_choice.*label 2"):
    builder.build(builder.stream('muppet_demo_choice', iter(bad)))
  bad = [{'context': 'c', 'question': 'q', 'choices': list('abcdef'), 'label': 0}]
  with pytest.raises(ValueError, match='6 choices'):
    builder.build(builder.stream('muppet_demo_choice', iter(bad)))


def test_span_windows_point_at_the_answer(vocab, table):
  shape = _shape(rows=8, length=64, max_examples=8)
  builder = batching.SubBatchBuilder(shape, vocab, table, model_type='roberta', span_stride=16)
  tok = vocab.tokenizer
  examples = _examples('demo_span', 300)
  windows_per_example, found = [], []
  for sub in _all_sub_batches(builder, 'demo_span', examples):
    a = sub.arrays
    rows = int(a['example_mask'].sum())
    assert np.all(a['span_mask'][:rows, 0])
    assert np.array_equal(a['loss_n'][:rows], a['span_mask'][:rows].sum(1))
    assert not a['span_mask'][rows:].any()
    for r in range(rows):
      start, end = int(a['span_start'][r]), int(a['span_end'][r])
      assert a['span_mask'][r, start] and a['span_mask'][r, end] and start <= end
      if start:
        found.append(tok.decode(a['input_ids'][r, start:end + 1]).strip())
    windows_per_example.append(rows / sub.num_examples)
  answers = {ex['answers'][0] for ex in examples}
  assert found and set(found) <= answers
  assert max(windows_per_example) > 1  # Some contexts needed several windows.


def test_span_answers_per_example(vocab, table):
  """Each example: >= 1 window holds exactly its answer; the others point at 0."""
  shape = _shape(rows=8, length=64, max_examples=8)
  builder = batching.SubBatchBuilder(shape, vocab, table, span_stride=16)
  for ex in _examples('demo_span', 120):
    sub = builder.build(builder.stream('muppet_demo_span', iter([ex])))
    a = sub.arrays
    rows = int(a['example_mask'].sum())
    answers = [vocab.tokenizer.decode(a['input_ids'][r, a['span_start'][r]:a['span_end'][r] + 1])
               for r in range(rows) if a['span_start'][r]]
    assert answers and all(s.strip() == ex['answers'][0] for s in answers), (ex, answers)
    assert np.all(a['span_end'][:rows][a['span_start'][:rows] == 0] == 0)
    # The masked positions are the window's context: they decode to a piece of the context.
    for r in range(rows):
      cols = np.flatnonzero(a['span_mask'][r])[1:]
      assert vocab.tokenizer.decode(a['input_ids'][r, cols]).strip() in ex['context']


def test_unanswerable_and_bad_span_offsets(vocab, table):
  builder = batching.SubBatchBuilder(_shape(length=64), vocab, table, span_stride=16)
  ex = {'context': 'anna lives in rome .', 'question': 'where does ben live ?',
        'answer_start': -1, 'answer_end': -1, 'answers': []}
  sub = builder.build(builder.stream('muppet_demo_span', iter([ex])))
  assert sub.num_examples == 1 and sub.arrays['span_start'][0] == sub.arrays['span_end'][0] == 0
  ex = dict(ex, answer_start=30, answer_end=34)
  with pytest.raises(ValueError, match='muppet_demo_span'):
    builder.build(builder.stream('muppet_demo_span', iter([ex])))


def test_summarization_decoder_shift(vocab, table):
  shape = _shape(rows=4, length=64, max_examples=8, decoder_length=12)
  builder = batching.SubBatchBuilder(shape, vocab, table, model_type='bart')
  examples = _examples('demo_summarize', 10)
  subs = _all_sub_batches(builder, 'demo_summarize', examples)
  assert [s.num_examples for s in subs] == [4, 4, 2]
  for sub, chunk in zip(subs, (examples[0:4], examples[4:8], examples[8:10])):
    a = sub.arrays
    for row, ex in enumerate(chunk):
      m = int(a['decoder_mask'][row].sum())
      target, inputs = a['decoder_target_ids'][row], a['decoder_input_ids'][row]
      summary = vocab.encode(ex['summary'])[:shape.decoder_length - 1]
      assert target[:m].tolist() == [*summary, SEP]
      assert inputs[0] == SEP and np.array_equal(inputs[1:m], target[:m - 1])
      assert np.all(target[m:] == PAD) and np.all(inputs[m:] == PAD)
      n = int((a['segment_ids'][row] > 0).sum())
      document = vocab.encode(ex['document'])[:shape.length - 2]
      assert a['input_ids'][row, :n].tolist() == [CLS, *document, SEP]
      assert a['loss_n'][row] == vocab.vocab_size
    assert not a['decoder_mask'][len(chunk):].any()


def test_lookahead_is_not_consumed(vocab, table):
  builder = batching.SubBatchBuilder(_shape(rows=1, length=32, max_examples=4), vocab, table)
  examples = _examples('demo_sentiment', 40)
  stream = builder.stream('muppet_demo_sentiment', iter(examples))
  sub = builder.build(stream)
  assert stream.consumed == sub.num_examples < len(examples)
  # A fresh stream that skips the consumed examples continues identically.
  fresh = builder.stream('muppet_demo_sentiment',
                         itertools.islice(examples, stream.consumed, None))
  assert all(np.array_equal(x, y) for x, y in zip(builder.build(stream).arrays.values(),
                                                  builder.build(fresh).arrays.values()))


def test_span_keeps_the_answer_window_when_windows_exceed_rows(vocab, table):
  shape = _shape(rows=2, length=32, max_examples=2)
  builder = batching.SubBatchBuilder(shape, vocab, table, span_stride=4)
  context = ' '.join(['the river was calm .'] * 30) + ' anna lives in rome .'
  start = context.index('rome')
  ex = {'context': context, 'question': 'where does anna live ?', 'answer_start': start,
        'answer_end': start + 4, 'answers': ['rome']}
  sub = builder.build(builder.stream('muppet_demo_span', iter([ex])))
  a = sub.arrays
  assert sub.num_examples == 1 and a['example_mask'].all()  # 2 of many windows kept.
  hits = [r for r in range(2) if a['span_start'][r]]
  assert len(hits) >= 1
  r = hits[0]
  answer = a['input_ids'][r, a['span_start'][r]:a['span_end'][r] + 1]
  assert vocab.tokenizer.decode(answer).strip() == 'rome'


# --- Evaluation metadata -------------------------------------------------------------------------


@pytest.mark.parametrize('model_type', ['roberta', 'bart'])
def test_evaluation_builder_same_arrays_plus_aligned_metadata(vocab, table, model_type):
  """The device arrays of an evaluation builder are the training builder's (one compiled
  program); `meta` has one entry per example slot, exactly where `example_mask` is set."""
  shape = _shape(length=64, max_examples=40)
  kw = dict(model_type=model_type, span_stride=16)
  training = batching.SubBatchBuilder(shape, vocab, table, **kw)
  evaluation = batching.SubBatchBuilder(shape, vocab, table, evaluation=True, **kw)
  for record in demo.RECORDS:
    if record.family == Family.SUMMARIZATION and model_type == 'roberta':
      continue
    examples = _examples(record.slug, 60, split='validation')
    train_subs = _all_sub_batches(training, record.slug, examples)
    eval_subs = _all_sub_batches(evaluation, record.slug, examples)
    assert len(train_subs) == len(eval_subs) > 1
    seen = []
    for t, e in zip(train_subs, eval_subs):
      assert t.meta is None
      assert set(t.arrays) == set(e.arrays)
      for name in t.arrays:
        np.testing.assert_array_equal(t.arrays[name], e.arrays[name], err_msg=name)
      assert len(e.meta) == shape.max_examples
      assert [m is not None for m in e.meta] == e.arrays['example_mask'].tolist()
      for slot in np.flatnonzero(e.arrays['example_mask']):
        meta = e.meta[slot]
        example = examples[meta.index]
        if record.family == Family.SPAN:
          assert meta.context == example['context']
          assert meta.answers == tuple(example['answers'])
          assert meta.window.context_begin <= meta.window.context_end
        elif record.family == Family.SUMMARIZATION:
          assert meta.reference == example['summary']  # Raw, not cut at decoder_length.
        seen.append(meta.index)
    # Every example once, in stream order (span: once per window, windows adjacent).
    assert sorted(set(seen)) == list(range(len(examples)))
    assert seen == sorted(seen)


def test_span_text_cuts_the_original_context(vocab, table):
  shape = _shape(rows=4, length=32, max_examples=4)
  builder = batching.SubBatchBuilder(shape, vocab, table, span_stride=4, evaluation=True)
  context = 'rosa lives in  (Old  Town) , near the river .'
  start = context.index('Old')
  ex = {'context': context, 'question': 'where ?', 'answer_start': start,
        'answer_end': start + len('Old  Town'), 'answers': ['Old Town']}
  sub = builder.build(builder.stream('muppet_demo_span', iter([ex])))
  a, meta = sub.arrays, sub.meta[0]
  # The gold columns map back to exactly the gold characters (double space kept, brackets
  # and the spaces before them not included).
  assert meta.span_text(int(a['span_start'][0]), int(a['span_end'][0])) == 'Old  Town'
  w = meta.window
  assert meta.span_text(w.context_begin, w.context_end - 1) == context
  with pytest.raises(ValueError, match='not inside'):
    meta.span_text(0, int(a['span_end'][0]))
