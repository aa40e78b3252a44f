"""grain random-access streams over TFDS (under `tfds.testing.mock_data`) and the demo.

Hand-written records in each dataset's real TFDS structure are served through
`tfds.data_source` by mock_data's `as_data_source_fn`; the mappers' semantics are tested in
test_mappers.py, the plumbing (split names, configs read as one dataset, flattening,
sharding, shuffling, positions) here.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any

import numpy as np
import pytest
import tensorflow_datasets as tfds

from muppet_jax.data import catalogue
from muppet_jax.data import demo
from muppet_jax.data import mappers
from muppet_jax.data import streams
from muppet_jax.data import tasks
from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.data.features import Family

TRAINABLE = tuple(r for r in catalogue.RECORDS if r.has_training_data)


def _serve(rows_by_builder: dict[str, dict[str, list[dict]]], requested: list):
  """A mock `as_data_source` serving hand-written records (as `data_source` decodes them)."""

  def as_data_source(builder, split, decoders=None, deserialize_method=None, **kwargs):
    del decoders, deserialize_method, kwargs
    name = builder.name + (f'/{builder.builder_config.name}' if builder.builder_config else '')
    requested.append((name, str(split)))
    return rows_by_builder[name][str(split)]

  return as_data_source


def _race_row(article: str, n: int) -> dict:
  return {'example_id': article, 'article': f'{article} text.',
          'questions': [f'{article} q{i}?' for i in range(n)],
          'options': [['a', 'b', 'c', 'd'] for _ in range(n)], 'answers': ['B'] * n}


_SQUAD_ROW = {'id': 'q1', 'title': 'T', 'question': 'Where is the cat?',
              'context': 'The cat sat on the mat.',
              'answers': {'text': ['on the mat'], 'answer_start': [12]}}

_ROWS = {
    'squad/v1.1': {'train': [_SQUAD_ROW], 'validation': [_SQUAD_ROW]},
    # RACE: two configs read as one dataset; each article flattens to one example per question.
    'race/high': {'train': [_race_row('h0', 2), _race_row('h1', 1)],
                  'dev': [_race_row('hdev', 1)]},
    'race/middle': {'train': [_race_row('m0', 3)], 'dev': []},
    'glue/mnli': {'validation_matched': [
        {'idx': 0, 'premise': 'A man sleeps.', 'hypothesis': 'A man rests.', 'label': 0}]},
}


def test_hand_written_records_through_the_streams():
  """Real-format records: split names, both RACE configs, flattening, spans, family format."""
  requested = []
  with tfds.testing.mock_data(as_data_source_fn=_serve(_ROWS, requested)):
    squad = list(streams.eval_examples('muppet_squad'))
    race_dev = list(streams.eval_examples('muppet_race'))
    mnli = list(streams.eval_examples('muppet_mnli', limit=5))
    race = streams.train_stream(catalogue.get('race'), 0, 1, seed=0)
    epoch = [next(race)['question'] for _ in range(6)]
  assert squad == [{'context': 'The cat sat on the mat.', 'question': 'Where is the cat?',
                    'answer_start': 12, 'answer_end': 22, 'answers': ['on the mat']}]
  assert [e['question'] for e in race_dev] == ['hdev q0?']
  assert mnli == [{'text_a': 'A man sleeps.', 'text_b': 'A man rests.', 'label': 0}]
  # One epoch = every question of the three articles, each article's questions in order.
  assert sorted(epoch) == ['h0 q0?', 'h0 q1?', 'h1 q0?', 'm0 q0?', 'm0 q1?', 'm0 q2?']
  assert epoch.index('m0 q0?') + 1 == epoch.index('m0 q1?')
  assert ('race/high', 'dev') in requested and ('race/middle', 'train') in requested
  assert ('glue/mnli', 'validation_matched') in requested


def test_positions_inside_a_multi_example_record_resume_exactly():
  """The state is (record index, offset among its examples): a stream restored in the middle of
  a RACE article continues with the article's next question."""
  with tfds.testing.mock_data(as_data_source_fn=_serve(_ROWS, [])):
    reference = streams.train_stream(catalogue.get('race'), 0, 1, seed=0)
    states, questions = [], []
    for _ in range(20):
      states.append(reference.get_state())
      questions.append(next(reference)['question'])
    assert any(s['offset'] > 0 for s in states)
    for k in (1, 2, 5, 13):
      restored = streams.train_stream(catalogue.get('race'), 0, 1, seed=0)
      restored.set_state(states[k])
      assert [next(restored)['question'] for _ in range(20 - k)] == questions[k:]
    with pytest.raises(ValueError, match='only 1 examples'):
      restored.set_state({'next_index': next(i for i, s in enumerate(states) if
                                             s['offset'] == 0 and questions[i].startswith('h1')),
                          'offset': 3})


def _texts(stream, n: int) -> list[str]:
  return [next(stream)['text_a'] for _ in range(n)]


def test_shards_partition_each_epoch_and_epochs_reshuffle():
  record = demo.RECORDS[0]  # 4,000 sentiment examples, one per record.
  texts = [e['text_a'] for e in demo.examples(record.slug, 'train')]
  n, shards = len(texts), 3
  per_shard = [_texts(streams.train_stream(record, s, shards, seed=7), 2 * n // shards)
               for s in range(shards)]
  first_epoch = [t for shard in per_shard for t in shard[:n // shards]]
  assert len(set(first_epoch)) == len(first_epoch)  # Disjoint shards, no repeats in an epoch.
  assert len(first_epoch) >= n - shards
  # The next epoch is another order of the same records.
  second = per_shard[0][n // shards + 1:]
  assert second != per_shard[0][:len(second)] and set(second) <= set(texts)
  # Deterministic in the seed, different across seeds and tasks' streams.
  again = _texts(streams.train_stream(record, 1, shards, seed=7), 50)
  assert again == per_shard[1][:50]
  assert _texts(streams.train_stream(record, 1, shards, seed=8), 50) != again


def test_fewer_records_than_shards_and_train_fraction():
  """Every shard gets records when the split is smaller than the slot count; a fraction keeps
  ceil(fraction x records) of the split only (a seeded random subset:
  tests/test_experiments_finetune.py)."""
  record = demo.RECORDS[0]
  texts = [e['text_a'] for e in demo.examples(record.slug, 'train')]
  seen = collections.Counter()
  for shard in range(64):
    stream = streams.train_stream(record, shard, 64, seed=0, fraction=0.01)
    seen.update(_texts(stream, 3))
  assert len(set(seen)) == 40 and set(seen) <= set(texts)  # ceil(0.01 * 4000)
  with pytest.raises(ValueError, match='train_fraction'):
    streams.train_stream(record, 0, 1, seed=0, fraction=0.0)
  with pytest.raises(ValueError, match='shard_index'):
    streams.train_stream(record, 3, 3, seed=0)


def test_a_mapper_that_rejects_everything_stops_with_a_clear_error():
  def reject(raw: dict) -> list[dict]:
    raise mappers.BadRecord('no usable label')

  with tfds.testing.mock_data(num_examples=12):
    stream = streams.train_stream(catalogue.get('rte'), 0, 2, seed=0, mapper=reject)
    with pytest.raises(streams.AllRecordsDroppedError) as info:
      next(stream)
  message = str(info.value)
  assert 'muppet_rte' in message and 'no usable label' in message and 'inspect' in message


def test_evaluation_keeps_what_training_drops():
  """The evaluation mapper keeps a SQuAD question whose answer is not in the context (scored
  against its gold texts); training drops it."""
  row = dict(_SQUAD_ROW, answers={'text': ['on the roof'], 'answer_start': [3]})
  rows = {'squad/v1.1': {'train': [row], 'validation': [row]}}
  with tfds.testing.mock_data(as_data_source_fn=_serve(rows, [])):
    evaluated = list(streams.eval_examples('muppet_squad'))
    with pytest.raises(streams.AllRecordsDroppedError):
      next(streams.train_stream(catalogue.get('squad'), 0, 1, seed=0))
  assert len(evaluated) == 1 and evaluated[0]['answers'] == ['on the roof']
  assert evaluated[0]['answer_start'] == evaluated[0]['answer_end'] == 0


def _assert_well_formed(example: dict[str, Any], record: DatasetRecord) -> None:
  assert mappers.check_family_example(example, record) == example
  if record.family == Family.SPAN:
    assert example['answers']


@pytest.mark.parametrize('record', TRAINABLE, ids=lambda r: r.slug)
def test_every_task_reads_through_tfds_data_source_under_mock_data(record):
  """Both splits of every dataset open through `tfds.data_source` (random mock records in the
  builder's real structure); every record is mapped or counted as dropped."""
  configs = record.source.count('+') + 1  # RACE reads two configs.
  with tfds.testing.mock_data(num_examples=3):
    for split in (catalogue.TRAIN, catalogue.VALIDATION):
      source = streams.open_source(record, split)
      assert len(source) == 3 * configs
      before = mappers.DROP_COUNTER.counts.get(record.slug, {})
      seen_before = before.get('kept', 0) + sum(before.get('dropped', {}).values())
      mapper = mappers.mapper_for(record.slug, evaluation=split != catalogue.TRAIN)
      for raw in source:
        for example in mappers.DROP_COUNTER.apply(record.slug, raw, mapper):
          if split == catalogue.TRAIN:
            _assert_well_formed(mappers.check_family_example(example, record), record)
      after = mappers.DROP_COUNTER.counts[record.slug]
      assert after['kept'] + sum(after['dropped'].values()) - seen_before == 3 * configs


def test_data_sources_are_not_cached_across_calls():
  """Without a cache each call opens the split afresh (a mock context, a re-prepared data_dir)."""
  with tfds.testing.mock_data(num_examples=3):
    assert len(streams.open_source(catalogue.get('rte'), 'train')) == 3
  with tfds.testing.mock_data(num_examples=5):
    assert len(streams.open_source(catalogue.get('rte'), 'train')) == 5
    cache = {}
    streams.open_source(catalogue.get('rte'), 'train', cache=cache)
    streams.open_source(catalogue.get('rte'), 'validation', cache=cache)
    assert sorted(k[1] for k in cache) == ['train', 'validation']


def test_factory_is_self_contained_and_picklable():
  """Worker processes get records and mappers with the factory (a registered dataset's mapper
  need not be registered there), and no opened data source. grain ships it with cloudpickle."""
  import cloudpickle  # pylint: disable=import-outside-toplevel
  factory = streams.TrainStreamFactory(['muppet_demo_topic', 'muppet_rte'], seed=3)
  next(factory('muppet_demo_topic', 0, 2))
  clone = cloudpickle.loads(cloudpickle.dumps(factory))
  assert clone.records == factory.records and set(clone.mappers) == set(factory.mappers)
  assert not clone._sources  # pylint: disable=protected-access
  assert list(itertools.islice(clone('muppet_demo_topic', 1, 2), 5)) == list(
      itertools.islice(factory('muppet_demo_topic', 1, 2), 5))
  assert factory.mappers['muppet_rte'] is mappers.MAPPERS['rte']
  assert tasks.record_for_task('muppet_rte') is factory.records['muppet_rte']
  np.testing.assert_equal(clone.seed, 3)
