"""Demo tasks, HF vocabulary and the task sampler (the input pipeline: test_pipeline.py)."""

import collections
import filecmp
import json
import os
import pickle

import numpy as np
import pytest
import tensorflow as tf

from muppet_jax.data import demo, tasks
from muppet_jax.data.features import Family
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
  assert vocab.decode([*ids, 2, *vocab.encode('anna')]) == text
  assert vocab.encode_batch([text, 'anna']) == [ids, vocab.encode('anna')]
  clone = pickle.loads(pickle.dumps(vocab))
  assert clone == vocab and clone.encode(text) == ids
  enc = vocab.encode_batch_with_offsets(['anna lives in rome'])[0]
  assert [('anna lives in rome')[s:e].strip() for s, e in enc.offsets] == [
      'anna', 'lives', 'in', 'rome']


def test_seqio_vocabulary_wraps_the_tokenizer(vocab):
  """seqio's view of the same tokenizer: python and TensorFlow paths agree with HFVocabulary."""
  seqio_vocab = tasks.SeqioVocabulary(vocab)
  text = 'the food was not bad .'
  ids = vocab.encode(text)
  assert seqio_vocab.vocab_size == vocab.vocab_size and seqio_vocab.pad_id == 1
  assert seqio_vocab.encode(text) == ids and seqio_vocab.decode([*ids, 2, 1]) == text
  assert seqio_vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids
  ragged = seqio_vocab.encode_tf(tf.constant([text, 'anna']))
  assert ragged.to_list() == [ids, vocab.encode('anna')]
  anna = vocab.encode('anna')
  padded = tf.constant([[*ids, 2, 1], [*anna, 2] + [1] * (len(ids) + 1 - len(anna))])
  assert [s.decode() for s in seqio_vocab.decode_tf(padded).numpy()] == [text, 'anna']
  assert seqio_vocab.decode_tf(tf.constant(ids)).numpy().decode() == text
  ds = tf.data.Dataset.from_tensor_slices([text]).map(seqio_vocab.encode_tf)
  assert next(iter(ds)).numpy().tolist() == ids


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
