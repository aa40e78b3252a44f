"""Tests of data/catalogue.py, data/hf_builders.py and data/tasks.py.

TFDS data cannot be downloaded here, so seqio's tf.data view of the registry is tested under
`tfds.testing.mock_data`: random examples in each builder's real feature structure. Random
values make most MRC and several multiple-choice records unmappable, so these tests check the
plumbing (every task iterates through seqio, whatever comes out is well-formed family format);
the mappers' semantics are tested on hand-written records in test_mappers.py, the grain
streams that training and evaluation read in test_streams.py.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from muppet_jax.data import catalogue
from muppet_jax.data import demo
from muppet_jax.data import hf_builders
from muppet_jax.data import mappers
from muppet_jax.data import streams
from muppet_jax.data import tasks
from muppet_jax.data.features import Family

# The paper's appendix A.1, in order (the fixed order of the number-of-tasks study).
PAPER_ORDER = (
    'cola', 'sst2', 'mrpc', 'qqp', 'mnli', 'qnli', 'rte', 'wnli', 'superglue', 'boolq',
    'multirc', 'wic', 'wsc', 'cb', 'copa', 'ag_news', 'imdb', 'multi_nli', 'snli', 'hans',
    'rotten_tomatoes', 'yelp_polarity', 'eraser_multi_rc', 'wiki_qa', 'trec', 'scitail',
    'cnn_dailymail', 'billsum', 'xsum', 'aeslc', 'multi_news', 'math_qa', 'openbookqa', 'swag',
    'hellaswag', 'race', 'commonsense_qa', 'cosmos_qa', 'arc_easy', 'arc_challenge', 'sciq',
    'squad', 'natural_questions', 'drop', 'record', 'hotpot_qa', 'trivia_qa')

# Split names that differ from ('train', 'validation'), from the datasets' TFDS pages. TFDS
# split names are not knowable offline (no dataset_info.json in the wheel), so they are pinned.
IRREGULAR_SPLITS = {
    'superglue': ('', ''),
    'mnli': ('train', 'validation_matched'),
    'multi_nli': ('train', 'validation_matched'),
    'ag_news': ('train', 'test'),
    'imdb': ('train', 'test'),
    'yelp_polarity': ('train', 'test'),
    'trec': ('train', 'test'),
    'billsum': ('train', 'test'),
    'race': ('train', 'dev'),
    'drop': ('train', 'dev'),
}

METRICS = {'accuracy', 'mcc', 'f1_accuracy', 'cb', 'multirc', 'squad', 'record', 'drop', 'rouge'}
TRAINABLE = tuple(r for r in catalogue.RECORDS if r.has_training_data)
MOCK_EXAMPLES = 3


def _assert_family_example(example: dict[str, Any], record: catalogue.DatasetRecord) -> None:
  """Exactly the family's keys, python types, labels and spans in range."""
  expected = set(tasks.example_signature(record))
  assert set(example) == expected, (record.slug, example)
  if mappers.GROUP_FIELD in expected:
    assert isinstance(example[mappers.GROUP_FIELD], str) and example[mappers.GROUP_FIELD]
  if record.family == Family.CLASSIFICATION:
    assert isinstance(example['text_a'], str) and isinstance(example['text_b'], str)
    assert isinstance(example['label'], int) and 0 <= example['label'] < record.num_classes
  elif record.family == Family.MULTIPLE_CHOICE:
    assert isinstance(example['context'], str) and isinstance(example['question'], str)
    choices = example['choices']
    assert isinstance(choices, list) and all(isinstance(c, str) for c in choices)
    assert 2 <= len(choices) <= record.num_classes
    assert 0 <= example['label'] < len(choices)
  elif record.family == Family.SPAN:
    context = example['context']
    assert isinstance(context, str) and isinstance(example['question'], str)
    assert 0 <= example['answer_start'] < example['answer_end'] <= len(context)
    assert example['answers'] and all(isinstance(a, str) for a in example['answers'])
  else:
    assert isinstance(example['document'], str) and isinstance(example['summary'], str)


def _records_seen(slug: str) -> int:
  counts = tasks.drop_counts().get(slug, {'kept': 0, 'dropped': {}})
  return counts['kept'] + sum(counts['dropped'].values())


# ---------------------------------------------------------------------------------------------
# Catalogue.
# ---------------------------------------------------------------------------------------------


def test_records_follow_the_paper_order():
  assert tuple(r.slug for r in catalogue.RECORDS) == PAPER_ORDER


def test_family_counts_match_the_appendix():
  counts = {f: len(catalogue.by_family(f)) for f in Family}
  # Items 1-26 (with the SuperGLUE umbrella), 27-31, 32-41, 42-47.
  assert counts == {Family.CLASSIFICATION: 26, Family.SUMMARIZATION: 5,
                    Family.MULTIPLE_CHOICE: 10, Family.SPAN: 6}
  assert catalogue.by_family() == catalogue.RECORDS
  both = catalogue.by_family(Family.SPAN, Family.SUMMARIZATION)
  assert {r.family for r in both} == {Family.SPAN, Family.SUMMARIZATION} and len(both) == 11


@pytest.mark.parametrize('record', catalogue.RECORDS, ids=lambda r: r.slug)
def test_record_fields_are_consistent(record):
  assert record.metric in METRICS
  assert record.task_name == f'muppet_{record.slug}'
  if record.slug == 'superglue':
    return
  assert record.train_size > 0 and record.eval_size > 0
  kind, _, name = record.source.partition(':')
  if kind == 'tfds':
    for part in name.split('+'):  # seqio needs a pinned version.
      assert ':' in part and part.rsplit(':', 1)[1].count('.') == 2, record.source
  else:
    assert kind == 'hf' and record.source in hf_builders.BUILDER_NAMES
  if record.family == Family.CLASSIFICATION:
    assert record.num_classes >= 2 and len(record.label_names) == record.num_classes
  elif record.family == Family.MULTIPLE_CHOICE:
    assert 2 <= record.num_classes <= 5
  else:
    assert record.num_classes == 0
  if record.family == Family.SUMMARIZATION:
    assert record.metric == 'rouge'
  if record.family == Family.SPAN:
    assert record.metric in ('squad', 'record', 'drop')


def test_label_orders_of_the_tricky_datasets():
  assert catalogue.get('wnli').label_names == ('not_entailment', 'entailment')
  assert catalogue.get('cb').label_names == ('entailment', 'contradiction', 'neutral')
  assert catalogue.get('mnli').label_names == ('entailment', 'neutral', 'contradiction')
  assert catalogue.get('yelp_polarity').label_names == ('negative', 'positive')
  assert catalogue.get('trec').num_classes == 6


@pytest.mark.parametrize('record', catalogue.RECORDS, ids=lambda r: r.slug)
def test_split_table(record):
  assert (record.train_split, record.eval_split) == IRREGULAR_SPLITS.get(
      record.slug, ('train', 'validation'))
  if record.source.startswith('hf:'):  # Local builders declare their splits offline.
    declared = hf_builders.declared_splits(hf_builders.BUILDER_NAMES[record.source])
    assert {record.train_split, record.eval_split} <= set(declared)


def test_tfds_features_hold_the_catalogue_label_names():
  """Where TFDS has a ClassLabel, our label names are its names (or a documented rename)."""
  renamed = {'yelp_polarity': ('1', '2'), 'wiki_qa': ('0', '1')}
  for slug in ('cola', 'wnli', 'cb', 'copa', 'snli', 'trec', 'scitail', 'hans', 'wiki_qa',
               'yelp_polarity', 'ag_news'):
    record = catalogue.get(slug)
    if record.source.startswith('hf:'):
      name = hf_builders.tfds_name(record.source)
    else:
      name = record.source.removeprefix('tfds:')
    features = tfds.builder(name).info.features
    label = features['label-coarse' if slug == 'trec' else 'label']
    assert tuple(label.names) == renamed.get(slug, record.label_names), slug


def test_superglue_is_an_umbrella_without_data():
  record = catalogue.get('superglue')
  assert not record.has_training_data
  assert record.task_name not in seqio.TaskRegistry.names()
  assert all(record.task_name != t for t, _ in tasks.mixture_tasks('muppet_all'))


def test_summarization_total_is_table_1():
  summ = catalogue.by_family(Family.SUMMARIZATION, records=catalogue.default_mixture_records())
  assert [r.slug for r in summ] == ['cnn_dailymail', 'billsum', 'xsum', 'aeslc']
  assert sum(r.train_size for r in summ) == 524_075  # Table 1: 524K.


def test_get_unknown_slug_names_it_and_close_matches():
  assert catalogue.get('rte') is catalogue.get('muppet_rte')
  with pytest.raises(catalogue.UnknownNameError) as info:
    catalogue.get('rtee')
  assert str(info.value).startswith("unknown dataset slug 'rtee'; did you mean ['rte'")
  assert isinstance(info.value, KeyError)
  with pytest.raises(KeyError, match='known slugs'):
    catalogue.get('zzzzzz')


# ---------------------------------------------------------------------------------------------
# Registration, mixtures, lookups.
# ---------------------------------------------------------------------------------------------


def test_every_record_with_data_has_a_task():
  for record in TRAINABLE + demo.RECORDS:
    task = tasks.get_task(record.task_name)
    assert set(task.splits) == {'train', 'validation'}
    assert tasks.record_for_task(record.task_name) is record
  assert len(TRAINABLE) == 46


def test_split_map_sends_canonical_names_to_real_ones():
  assert tasks.split_map(catalogue.get('race')) == {'train': 'train', 'validation': 'dev'}
  assert tasks.split_map(catalogue.get('mnli'))['validation'] == 'validation_matched'
  assert tasks.split_map(catalogue.get('ag_news'))['validation'] == 'test'


def test_muppet_all_has_natural_rates_in_paper_order():
  mixture = tasks.mixture_tasks('muppet_all')
  expected = [(r.task_name, float(r.train_size)) for r in TRAINABLE if r.slug != 'multi_news']
  assert mixture == expected
  assert len(mixture) == 45  # Table 1's 46 datasets minus the SuperGLUE umbrella.
  names = [name for name, _ in mixture]
  # Rates are proportional to the catalogue's train sizes.
  total = sum(rate for _, rate in mixture)
  qqp = dict(mixture)['muppet_qqp'] / total
  assert qqp == pytest.approx(catalogue.get('qqp').train_size /
                              sum(r.train_size for r in catalogue.default_mixture_records()))
  assert 'muppet_multi_news' not in names and 'muppet_multi_news' in seqio.TaskRegistry.names()
  # Duplicates are kept on purpose (module doc of catalogue.py).
  assert {'muppet_mnli', 'muppet_multi_nli', 'muppet_multirc', 'muppet_eraser_multi_rc'} <= set(
      names)


def test_muppet_encoder_has_no_summarization():
  encoder = tasks.mixture_tasks('muppet_encoder')
  families = {tasks.record_for_task(name).family for name, _ in encoder}
  assert Family.SUMMARIZATION not in families
  all_tasks = dict(tasks.mixture_tasks('muppet_all'))
  assert len(encoder) == 41
  assert all(all_tasks[name] == rate for name, rate in encoder)


def test_demo_mixtures():
  demo_tasks = tasks.mixture_tasks('muppet_demo')
  assert demo_tasks == [(r.task_name, float(r.train_size)) for r in demo.RECORDS]
  encoder = tasks.mixture_tasks('muppet_demo_encoder')
  assert encoder == [(r.task_name, float(r.train_size)) for r in demo.RECORDS
                     if r.family != Family.SUMMARIZATION]


def test_mixture_tasks_expands_sub_mixtures():
  name = 'muppet_test_nested'
  if name not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(name, [('muppet_demo_encoder', 1.0), ('muppet_rte', 1.0)])
  expanded = dict(tasks.mixture_tasks(name))
  demo_total = sum(rate for _, rate in tasks.mixture_tasks('muppet_demo_encoder'))
  assert expanded['muppet_rte'] == 1.0
  sentiment = tasks.record_for_task('muppet_demo_sentiment')
  assert expanded['muppet_demo_sentiment'] == pytest.approx(sentiment.train_size / demo_total)
  assert sum(expanded.values()) == pytest.approx(2.0)


def test_first_k_mixture_is_nested_in_paper_order():
  all_names = [name for name, _ in tasks.mixture_tasks('muppet_all')]
  assert tasks.first_k_mixture(10) == 'muppet_first_10'
  assert tasks.first_k_mixture(10) == 'muppet_first_10'  # Idempotent.
  first_10 = tasks.mixture_tasks('muppet_first_10')
  assert [n for n, _ in first_10] == all_names[:10]
  assert all(rate == float(tasks.record_for_task(n).train_size) for n, rate in first_10)
  first_25 = [n for n, _ in tasks.mixture_tasks(tasks.first_k_mixture(25))]
  assert first_25[:10] == all_names[:10]
  assert tasks.first_k_mixture(45) == 'muppet_first_45'


def test_first_k_mixture_family_filter_and_base():
  name = tasks.first_k_mixture(5, family_filter=Family.SPAN)
  assert name == 'muppet_all_first_5_span'
  assert [n for n, _ in tasks.mixture_tasks(name)] == [
      'muppet_squad', 'muppet_natural_questions', 'muppet_drop', 'muppet_record',
      'muppet_hotpot_qa']
  encoder_families = [Family.SPAN, Family.CLASSIFICATION, Family.MULTIPLE_CHOICE]
  name = tasks.first_k_mixture(30, family_filter=encoder_families)
  names = [n for n, _ in tasks.mixture_tasks(name)]
  assert len(names) == 30 and 'muppet_cnn_dailymail' not in names
  assert tasks.first_k_mixture(30, base='muppet_encoder') == 'muppet_encoder_first_30'
  assert [n for n, _ in tasks.mixture_tasks('muppet_encoder_first_30')] == names
  assert tasks.first_k_mixture(2, base='muppet_demo') == 'muppet_demo_first_2'
  with pytest.raises(ValueError, match=r'\[1, 45\]'):
    tasks.first_k_mixture(46)
  with pytest.raises(ValueError):
    tasks.first_k_mixture(0)
  with pytest.raises(ValueError, match='families'):
    tasks.first_k_mixture(7, family_filter=Family.SPAN)


def test_unknown_names_are_clear():
  with pytest.raises(tasks.UnknownNameError) as info:
    tasks.get_task('muppet_rtee')
  assert "unknown task 'muppet_rtee'" in str(info.value) and 'muppet_rte' in str(info.value)
  with pytest.raises(tasks.UnknownNameError, match="unknown task 'muppet_nope'"):
    streams.eval_examples('muppet_nope')
  with pytest.raises(tasks.UnknownNameError, match='muppet_all'):
    tasks.mixture_tasks('muppet_al')
  with pytest.raises(KeyError, match='muppet_superglue'):
    tasks.record_for_task('muppet_superglue')
  with pytest.raises(ValueError, match="not 'test'"):
    streams.open_source(catalogue.get('rte'), 'test')


def test_registration_is_idempotent():
  rte = seqio.TaskRegistry.get('muppet_rte')
  num_tasks = len(seqio.TaskRegistry.names())
  importlib.reload(tasks)
  assert seqio.TaskRegistry.get('muppet_rte') is rte
  assert len(seqio.TaskRegistry.names()) == num_tasks
  assert len(tasks.mixture_tasks('muppet_all')) == 45


def test_task_table_follows_the_mixture():
  table = tasks.task_table('muppet_encoder')
  assert table.names[0] == 'muppet_cola' and len(table) == 41
  assert table.num_classes[table.task_id('muppet_mnli')] == 3
  assert table.families[table.task_id('muppet_squad')] == Family.SPAN
  assert table.num_classification_heads == 25


# ---------------------------------------------------------------------------------------------
# Streams under mock data.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('record', TRAINABLE, ids=lambda r: r.slug)
def test_every_task_iterates_under_mock_data(record):
  """Both splits go through seqio; every raw record is kept or counted as dropped."""
  raw_per_split = MOCK_EXAMPLES * (record.source.count('+') + 1)  # RACE reads two configs.
  task = tasks.get_task(record.task_name)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    for split in ('train', 'validation'):
      seen = _records_seen(record.slug)
      dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False)
      examples = [tasks.to_python(e) for e in dataset.as_numpy_iterator()]
      assert _records_seen(record.slug) - seen == raw_per_split
      for example in examples:
        _assert_family_example(example, record)


def test_malformed_mapper_output_fails_loudly():
  record = catalogue.get('rte')
  check = tasks.check_family_example
  with pytest.raises(ValueError, match='label 5 not in'):
    check({'text_a': 'a', 'text_b': 'b', 'label': 5}, record)
  with pytest.raises(ValueError, match='lacks'):
    check({'text_a': 'a'}, record)
  # MultiRC's examples must carry their question group; other tasks drop unknown fields.
  with pytest.raises(ValueError, match='lacks'):
    check({'text_a': 'a', 'text_b': 'b', 'label': 1}, catalogue.get('multirc'))
  assert check({'text_a': 'a', 'text_b': 'b', 'label': 1, 'group': '0:1'}, record) == {
      'text_a': 'a', 'text_b': 'b', 'label': 1}


def test_hf_builders_work_under_mock_data():
  with tfds.testing.mock_data(num_examples=2):
    for source, name in hf_builders.BUILDER_NAMES.items():
      builder = tfds.builder(hf_builders.tfds_name(source))
      assert builder.name == name
      rows = list(tfds.load(hf_builders.tfds_name(source), split='train').as_numpy_iterator())
      assert len(rows) == 2 and set(rows[0]) == set(builder.info.features)


def test_to_python_decodes_recursively():
  value = {'a': b'x', 'b': np.array([b'y', b'z']), 'c': {'d': np.array([1, 2], np.int32)},
           'e': np.int64(3), 'f': np.array(b'w')}
  assert tasks.to_python(value) == {'a': 'x', 'b': ['y', 'z'], 'c': {'d': [1, 2]}, 'e': 3,
                                    'f': 'w'}


# ---------------------------------------------------------------------------------------------
# Demo.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('record', demo.RECORDS, ids=lambda r: r.slug)
def test_demo_tasks_yield_their_examples(record):
  for split, size in (('train', record.train_size), ('validation', record.eval_size)):
    dataset = tasks.get_task(record.task_name).get_dataset(
        sequence_length=None, split=split, shuffle=False)
    examples = [tasks.to_python(e) for e in dataset.as_numpy_iterator()]
    assert len(examples) == size
    for example in examples[:50]:
      _assert_family_example(example, record)
    reference = demo.examples(record.slug, split)[0]
    assert examples[0] == {k: reference[k] for k in tasks.example_signature(record)}
