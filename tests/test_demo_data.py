"""Demo tasks, HF vocabulary, task sampler and the host input pipeline."""

import collections
import filecmp
import itertools
import json
import os
import pickle

import numpy as np
import pytest
import tensorflow as tf

from muppet_jax.data import batching, demo
from muppet_jax.data.features import BatchShape, Family, TaskTable
from muppet_jax.data.pipeline import InputPipeline, merge_states
from muppet_jax.data.sampler import TaskSampler
from muppet_jax.data.vocab import HFVocabulary


@pytest.fixture(scope='module')
def vocab(tmp_path_factory):
  return HFVocabulary(demo.build_tokenizer(str(tmp_path_factory.mktemp('tokenizer'))))


# --- Demo ----------------------------------------------------------------------------------------


def test_demo_records_and_sizes():
  assert {r.family for r in demo.RECORDS} == set(Family)
  classification = [r for r in demo.RECORDS if r.family == Family.CLASSIFICATION]
  assert sorted(r.num_classes for r in classification) == [2, 3, 4]
  for r in demo.RECORDS:
    assert r.slug == f'demo_{r.source.split(":")[1]}' and r.source.startswith('demo:')
    assert (r.train_split, r.eval_split) == ('train', 'validation')
    assert len(demo.examples(r.slug, 'train')) == r.train_size >= 2000
    assert len(demo.examples(r.slug, 'validation')) == r.eval_size == 300
    assert r.metric == {Family.SPAN: 'squad', Family.SUMMARIZATION: 'rouge'}.get(
        r.family, 'accuracy')
    if r.family == Family.CLASSIFICATION:
      assert len(r.label_names) == r.num_classes


def test_demo_is_deterministic_balanced_and_held_out():
  splits = ('train', 'validation')
  before = {(r.slug, s): json.dumps(demo.examples(r.slug, s)) for r in demo.RECORDS for s in splits}
  demo._generate.cache_clear()  # pylint: disable=protected-access
  for r in demo.RECORDS:
    train, validation = demo.examples(r.slug, 'train'), demo.examples(r.slug, 'validation')
    assert json.dumps(train) == before[(r.slug, 'train')]  # Re-generated identically.
    assert json.dumps(validation) == before[(r.slug, 'validation')]
    train_keys = {json.dumps(e, sort_keys=True) for e in train}
    assert not any(json.dumps(e, sort_keys=True) in train_keys for e in validation)
    if r.family == Family.CLASSIFICATION:
      for split in (train, validation):
        counts = collections.Counter(e['label'] for e in split)
        assert sorted(counts) == list(range(r.num_classes))
        assert max(counts.values()) - min(counts.values()) <= 1
    elif r.family == Family.MULTIPLE_CHOICE:
      assert {len(e['choices']) for e in train} == {3, 4, 5}
      assert all(0 <= e['label'] < len(e['choices']) for e in train)
    elif r.family == Family.SPAN:
      for e in train + validation:
        assert e['context'][e['answer_start']:e['answer_end']] == e['answers'][0]


def test_demo_tasks_are_not_solved_by_one_token():
  """No single word decides a classification label (the best one-word rule stays far from 1)."""
  for slug in ('demo_sentiment', 'demo_compare', 'demo_topic'):
    examples = demo.examples(slug, 'train')
    by_word = collections.defaultdict(collections.Counter)
    for e in examples:
      for w in set(f"{e['text_a']} {e['text_b']}".split()):
        by_word[w][e['label']] += 1
    # Accuracy of "predict the majority label of the example's most telling word".
    purity = {w: max(c.values()) / sum(c.values()) for w, c in by_word.items()
              if sum(c.values()) >= 20}
    best = 0
    for e in examples:
      words = [w for w in set(f"{e['text_a']} {e['text_b']}".split()) if w in purity]
      w = max(words, key=purity.get)
      best += by_word[w].most_common(1)[0][0] == e['label']
    assert best / len(examples) < 0.9, (slug, best / len(examples))


def test_demo_tokenizer_is_deterministic(tmp_path):
  a, b = demo.build_tokenizer(str(tmp_path / 'a')), demo.build_tokenizer(str(tmp_path / 'b'))
  for name in ('tokenizer.json', 'vocab.json', 'merges.txt', 'tokenizer_config.json'):
    assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False)
  assert [p for p in os.listdir(tmp_path / 'a') if p.startswith('.')] == []  # No tmp left.


# --- Vocabulary --------------------------------------------------------------------------------


def test_hf_vocabulary(vocab):
  assert (vocab.bos_id, vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)
  assert (vocab.cls_id, vocab.sep_id, vocab.mask_id) == (0, 2, vocab.vocab_size - 1)
  text = 'the food was not bad .'
  ids = vocab.encode(text)
  assert ids and 0 not in ids and 2 not in ids
  assert vocab.decode(ids) == text
  assert vocab.decode([*ids, 2, 1, 1]) == text  # Stops at EOS, drops padding.
  assert vocab.encode_batch([text, 'anna']) == [ids, vocab.encode('anna')]
  assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids
  ragged = vocab.encode_tf(tf.constant([text, 'anna']))
  assert ragged.to_list() == [ids, vocab.encode('anna')]
  anna = vocab.encode('anna')
  padded = tf.constant([[*ids, 2, 1], [*anna, 2] + [1] * (len(ids) + 1 - len(anna))])
  assert [s.decode() for s in vocab.decode_tf(padded).numpy()] == [text, 'anna']
  assert vocab.decode_tf(tf.constant(ids)).numpy().decode() == text
  ds = tf.data.Dataset.from_tensor_slices([text]).map(vocab.encode_tf)
  assert next(iter(ds)).numpy().tolist() == ids
  clone = pickle.loads(pickle.dumps(vocab))
  assert clone == vocab and clone.encode(text) == ids
  enc = vocab.encode_batch_with_offsets(['anna lives in rome'])[0]
  assert [('anna lives in rome')[s:e].strip() for s, e in enc.offsets] == [
      'anna', 'lives', 'in', 'rome']


# --- Sampler -----------------------------------------------------------------------------------


def test_heterogeneous_frequencies_and_determinism():
  rates = [4000, 4000, 3000, 3000, 2000, 500]
  sampler = TaskSampler(rates, seed=3)
  draws = np.concatenate([sampler.tasks(step, range(8)) for step in range(2500)])
  assert draws.size == 20_000
  freq = np.bincount(draws, minlength=len(rates)) / draws.size
  print('\nsampler frequencies', np.round(freq, 4), 'rates', np.round(sampler.rates, 4))
  assert np.all(np.abs(freq - sampler.rates) < 0.02)
  again = TaskSampler(rates, seed=3)
  assert all(again.task(t, s) == sampler.task(t, s) for t in range(50) for s in range(8))
  other = TaskSampler(rates, seed=4)
  assert any(other.task(t, s) != sampler.task(t, s) for t in range(50) for s in range(8))
  # Any subset of slots sees the same tasks (multi-host / accumulation layouts).
  assert sampler.tasks(7, [5, 2]).tolist() == [sampler.task(7, 5), sampler.task(7, 2)]
  assert 1 not in TaskSampler([1, 0, 1], seed=0).tasks(0, range(500))  # Zero rate never drawn.


def test_batch_homogeneous_one_task_per_step():
  sampler = TaskSampler([1, 1, 2], seed=0, strategy='batch_homogeneous')
  per_step = [set(sampler.tasks(t, range(16)).tolist()) for t in range(2000)]
  assert all(len(s) == 1 for s in per_step)
  freq = np.bincount([s.pop() for s in per_step], minlength=3) / 2000
  assert np.all(np.abs(freq - [0.25, 0.25, 0.5]) < 0.04)


def test_dataset_homogeneous_order():
  sampler = TaskSampler([2, 1, 1], seed=0, strategy='dataset_homogeneous', total_steps=10)
  schedule = [sampler.task(t, 0) for t in range(10)]
  assert schedule == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]  # 5, 2.5, 2.5: the tie goes to the first.
  assert sampler.steps_per_task().sum() == 10
  assert all(sampler.task(t, s) == schedule[t % 10] for t in range(30) for s in range(4))
  with pytest.raises(ValueError, match='total_steps'):
    TaskSampler([1, 1], seed=0, strategy='dataset_homogeneous')


# --- Pipeline ----------------------------------------------------------------------------------

_SHAPE = BatchShape(rows=4, length=128, max_examples=64, max_choices=5, decoder_length=32)


@pytest.fixture(scope='module')
def setup(vocab):
  records = demo.RECORDS
  table = TaskTable.build([r.task_name for r in records], [r.family for r in records],
                          [r.num_classes for r in records])
  builder = batching.SubBatchBuilder(_SHAPE, vocab, table, model_type='bart', span_stride=32)
  return table, builder


def _factory(calls=None):
  def stream_factory(task_name, shard_index, num_shards):
    if calls is not None:
      calls.append((task_name, shard_index, num_shards))
    examples = demo.examples(task_name.removeprefix('muppet_'), 'train')
    return itertools.cycle(examples[shard_index::num_shards])
  return stream_factory


def _pipeline(setup, slots, num_slots=4, prefetch=2, factory=None, seed=0):
  table, builder = setup
  rates = [r.train_size for r in demo.RECORDS]
  return InputPipeline(table.names, rates, table, builder, TaskSampler(rates, seed),
                       stream_factory=factory or _factory(), slots=slots, num_slots=num_slots,
                       seed=seed, prefetch=prefetch)


def _equal(a, b):
  return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_pipeline_batches(setup):
  with _pipeline(setup, [0, 1, 2, 3]) as pipe:
    batch = pipe.next_batch(0)
  assert set(batch) == set(_SHAPE.field_specs())
  for name, (shape, dtype) in _SHAPE.field_specs().items():
    assert batch[name].shape == (4, *shape) and batch[name].dtype == dtype
  tasks = TaskSampler([r.train_size for r in demo.RECORDS], 0).tasks(0, range(4))
  assert batch['task_id'].tolist() == tasks.tolist()
  assert np.all(batch['example_mask'].sum(1) > 0)


@pytest.mark.parametrize('prefetch', [0, 3])
def test_pipeline_resume_is_exact(setup, prefetch):
  steps = 12
  with _pipeline(setup, [0, 1, 2, 3], prefetch=prefetch) as reference:
    expected = [reference.next_batch(t) for t in range(steps)]
  with _pipeline(setup, [0, 1, 2, 3], prefetch=prefetch) as first:
    for t in range(5):
      assert _equal(first.next_batch(t), expected[t])
    state = json.loads(json.dumps(first.state()))  # Must survive JSON.
  assert state['step'] == 4 and state['consumed']
  calls = []
  with _pipeline(setup, [0, 1, 2, 3], prefetch=prefetch, factory=_factory(calls)) as resumed:
    resumed.restore(state)
    for t in range(5, steps):
      assert _equal(resumed.next_batch(t), expected[t])
  assert all(n == 4 and s in range(4) for _, s, n in calls)


def test_pipeline_counts_exclude_lookahead(setup):
  with _pipeline(setup, [0, 1], prefetch=2) as pipe:
    batches = [pipe.next_batch(t) for t in range(3)]
    state = pipe.state()
  handed = collections.Counter()
  for batch in batches:
    for i, slot in enumerate([0, 1]):
      task = batch['task_id'][i]
      family = batch['family_id'][i]
      # Span examples may take several rows; count examples via the sampler-independent sums.
      if family == Family.SPAN:
        continue
      handed[(int(task), slot)] += int(batch['example_mask'][i].sum())
  names = setup[0].names
  for (task, slot), count in handed.items():
    assert state['consumed'][names[task]][str(slot)] == count


def test_pipeline_slot_layout_does_not_matter(setup):
  with _pipeline(setup, [0, 1, 2, 3]) as whole, _pipeline(setup, [0, 1]) as low, \
      _pipeline(setup, [2, 3], prefetch=0) as high:
    for t in range(6):
      joint = whole.next_batch(t)
      halves = [low.next_batch(t), high.next_batch(t)]
      for k in joint:
        assert np.array_equal(joint[k], np.concatenate([h[k] for h in halves])), (t, k)
    merged = merge_states([low.state(), high.state()])
    assert merged['consumed'] == whole.state()['consumed']
  # A merged state restores a different spread of the same slots.
  with _pipeline(setup, [3, 1]) as moved, _pipeline(setup, [0, 1, 2, 3]) as reference:
    moved.restore(merged)
    expected = [reference.next_batch(t) for t in range(8)][6:]
    for t, exp in zip(range(6, 8), expected):
      got = moved.next_batch(t)
      assert all(np.array_equal(got[k], exp[k][[3, 1]]) for k in exp)


def test_pipeline_non_consecutive_steps_rewind(setup):
  with _pipeline(setup, [0, 1]) as a, _pipeline(setup, [0, 1], prefetch=0) as b:
    for t in (0, 1, 5, 6, 2):
      assert _equal(a.next_batch(t), b.next_batch(t))
    assert a.state() == b.state()


def test_pipeline_uses_skip_when_the_factory_has_it(setup):
  skips = []

  def factory(task_name, shard_index, num_shards, skip=0):
    skips.append(skip)
    examples = demo.examples(task_name.removeprefix('muppet_'), 'train')[shard_index::num_shards]
    return itertools.islice(itertools.cycle(examples), skip, None)

  with _pipeline(setup, [0, 1], factory=factory) as first:
    for t in range(3):
      first.next_batch(t)
    state = first.state()
    expected = first.next_batch(3)
  skips.clear()
  with _pipeline(setup, [0, 1], factory=factory) as resumed:
    resumed.restore(state)
    assert _equal(resumed.next_batch(3), expected)
  assert any(skips)


def test_pipeline_errors_surface(setup):
  def finite(task_name, shard_index, num_shards):
    return iter(demo.examples(task_name.removeprefix('muppet_'), 'train')[:3])

  with _pipeline(setup, [0], factory=finite) as pipe:
    with pytest.raises(RuntimeError, match='must repeat'):
      for t in range(20):
        pipe.next_batch(t)
  with pytest.raises(ValueError, match='slots'):
    _pipeline(setup, [0, 4], num_slots=4)
