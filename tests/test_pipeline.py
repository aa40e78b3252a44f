"""The host input pipeline over grain streams: exact resume, slot layouts, worker processes."""

import collections
import json

import numpy as np
import pytest

from muppet_jax.data import batching, demo, streams
from muppet_jax.data.features import BatchShape, TaskTable
from muppet_jax.data.pipeline import InputPipeline, InputStateError, merge_states
from muppet_jax.data.sampler import TaskSampler
from muppet_jax.data.vocab import HFVocabulary

_SHAPE = BatchShape(rows=4, length=128, max_examples=64, max_choices=5, decoder_length=32)
_RATES = [r.train_size for r in demo.RECORDS]


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  vocab = HFVocabulary(demo.build_tokenizer(str(tmp_path_factory.mktemp('tokenizer'))))
  records = demo.RECORDS
  table = TaskTable.build([r.task_name for r in records], [r.family for r in records],
                          [r.num_classes for r in records])
  builder = batching.SubBatchBuilder(_SHAPE, vocab, table, model_type='bart', span_stride=32)
  return table, builder


class _CountingFactory(streams.TrainStreamFactory):
  """The real training streams, recording which streams were opened (and at which state)."""

  def __init__(self, task_names, **kwargs):
    super().__init__(task_names, **kwargs)
    self.opened = []

  def __call__(self, task_name, shard_index, num_shards):
    self.opened.append((task_name, shard_index, num_shards))
    return super().__call__(task_name, shard_index, num_shards)


def _pipeline(setup, slots, num_slots=4, prefetch=2, factory=None, seed=0, num_workers=0):
  table, builder = setup
  return InputPipeline(table.names, table, builder, TaskSampler(_RATES, seed),
                       stream_factory=factory or streams.TrainStreamFactory(table.names,
                                                                            seed=seed),
                       slots=slots, num_slots=num_slots, prefetch=prefetch,
                       num_workers=num_workers)


def _equal(a, b):
  return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_pipeline_batches(setup):
  with _pipeline(setup, [0, 1, 2, 3]) as pipe:
    batch = pipe.next_batch(0)
  assert set(batch) == set(_SHAPE.field_specs())
  for name, (shape, dtype) in _SHAPE.field_specs().items():
    assert batch[name].shape == (4, *shape) and batch[name].dtype == dtype
  tasks = TaskSampler(_RATES, 0).tasks(0, range(4))
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
  assert state['step'] == 4 and state['streams']
  factory = _CountingFactory(setup[0].names, seed=0)
  with _pipeline(setup, [0, 1, 2, 3], prefetch=prefetch, factory=factory) as resumed:
    resumed.restore(state)
    for t in range(5, steps):
      assert _equal(resumed.next_batch(t), expected[t])
  assert factory.opened and all(n == 4 and s in range(4) for _, s, n in factory.opened)


def test_state_is_the_position_after_the_last_batch_handed_out(setup):
  """Demo records map to one example each, so a stream's record index is the number of its
  examples that went into sub-batches; lookahead and prefetched batches do not count."""
  slots = [0, 1]
  with _pipeline(setup, slots, prefetch=3) as pipe:
    batches = [pipe.next_batch(t) for t in range(4)]
    state = pipe.state()
  handed = collections.Counter()
  span_task = setup[0].names.index('muppet_demo_span')
  for batch in batches:
    for i, slot in enumerate(slots):
      task = int(batch['task_id'][i])
      if task == span_task:  # Rows are windows there; count examples another way.
        continue
      handed[(setup[0].names[task], slot)] += int(batch['example_mask'][i].sum())
  assert handed
  for (name, slot), count in handed.items():
    assert state['streams'][name][str(slot)] == {'next_index': count, 'offset': 0}


def test_pipeline_slot_layout_does_not_matter(setup):
  with _pipeline(setup, [0, 1, 2, 3]) as whole, _pipeline(setup, [0, 1]) as low, \
      _pipeline(setup, [2, 3], prefetch=0) as high:
    for t in range(6):
      joint = whole.next_batch(t)
      halves = [low.next_batch(t), high.next_batch(t)]
      for k in joint:
        assert np.array_equal(joint[k], np.concatenate([h[k] for h in halves])), (t, k)
    merged = merge_states([low.state(), high.state()])
    assert merged['streams'] == whole.state()['streams']
  # A merged state restores a different spread of the same slots.
  with _pipeline(setup, [3, 1]) as moved, _pipeline(setup, [0, 1, 2, 3]) as reference:
    moved.restore(merged)
    expected = [reference.next_batch(t) for t in range(8)][6:]
    for t, exp in zip(range(6, 8), expected):
      got = moved.next_batch(t)
      assert all(np.array_equal(got[k], exp[k][[3, 1]]) for k in exp)


def test_worker_processes_give_the_same_batches_and_state(setup):
  """Two grain worker processes (each builds every other local slot) == the in-process path;
  a state written with workers restores without them, and the other way round."""
  slots = [0, 1, 2, 3]
  with _pipeline(setup, slots) as reference:
    expected = [reference.next_batch(t) for t in range(6)]
    reference_state = reference.state()
  with _pipeline(setup, slots, num_workers=2) as workers:
    for t in range(4):
      assert _equal(workers.next_batch(t), expected[t])
    state = workers.state()
  with _pipeline(setup, slots) as resumed:
    resumed.restore(state)
    for t in range(4, 6):
      assert _equal(resumed.next_batch(t), expected[t])
    assert resumed.state() == reference_state
  with _pipeline(setup, slots, num_workers=2) as resumed:
    resumed.restore(json.loads(json.dumps(state)))
    assert _equal(resumed.next_batch(4), expected[4])


def test_non_consecutive_steps_reopen_at_the_last_batch_handed_out(setup):
  with _pipeline(setup, [0, 1]) as a, _pipeline(setup, [0, 1], prefetch=0) as b:
    for t in (0, 1, 5, 6, 2):
      assert _equal(a.next_batch(t), b.next_batch(t))
    assert a.state() == b.state()


def test_restoring_far_into_a_stream_reads_from_there(setup):
  """A position 10^7 records in continues from exactly there (no replay): the stream's next
  state counts on from 10^7 by the examples of one sub-batch."""
  table, _ = setup
  task = table.names.index('muppet_demo_sentiment')
  sampler = TaskSampler(_RATES, 0)
  step = next(t for t in range(1000) if sampler.task(t, 0) == task)
  far = {'next_index': 10**7, 'offset': 0}
  state = {'version': 2, 'step': step - 1, 'num_slots': 1,
           'streams': {'muppet_demo_sentiment': {'0': far}}}
  with _pipeline(setup, [0], num_slots=1) as pipe:
    pipe.restore(state)
    batch = pipe.next_batch(step)
    after = pipe.state()['streams']['muppet_demo_sentiment']['0']
  used = int(batch['example_mask'][0].sum())
  assert used > 0 and after == {'next_index': 10**7 + used, 'offset': 0}
  # The examples are those at 10^7 onwards of the stream's shuffled, repeated order.
  records = streams.train_records(demo.RECORDS[0], 0, 1, seed=0)
  stream = streams.FamilyStream(records, demo.RECORDS[0])
  stream.set_state(far)
  first = next(stream)
  single = batching.SubBatchBuilder(_SHAPE, setup[1].vocab, table, model_type='bart')
  alone = single.build(single.stream('muppet_demo_sentiment', iter([first])))
  n = int(alone.arrays['segment_ids'][0].astype(bool).sum())
  assert np.array_equal(alone.arrays['input_ids'][0, :n], batch['input_ids'][0, 0, :n])


def test_pipeline_errors_surface(setup):
  class Finite:
    def __init__(self, task_name):
      self._it = iter(demo.examples(task_name.removeprefix('muppet_'), 'train')[:3])
      self._n = 0

    def __iter__(self):
      return self

    def __next__(self):
      self._n += 1
      return next(self._it)

    def get_state(self):
      return {'next_index': self._n, 'offset': 0}

    def set_state(self, state):
      raise AssertionError('not restored here')

  with _pipeline(setup, [0], factory=lambda name, s, n: Finite(name)) as pipe:
    with pytest.raises(RuntimeError, match='must repeat'):
      for t in range(20):
        pipe.next_batch(t)
  with pytest.raises(ValueError, match='slots'):
    _pipeline(setup, [0, 4], num_slots=4)
  with _pipeline(setup, [0, 1]) as pipe:
    with pytest.raises(InputStateError, match='format version'):
      pipe.restore({'version': 1, 'step': 3, 'num_slots': 4, 'consumed': {}})
    with pytest.raises(InputStateError, match='slots per update'):
      pipe.restore({'version': 2, 'step': 3, 'num_slots': 8, 'streams': {}})
    with pytest.raises(InputStateError, match='muppet_rte'):
      pipe.restore({'version': 2, 'step': 3, 'num_slots': 4,
                    'streams': {'muppet_rte': {'0': {'next_index': 0, 'offset': 0}}}})


@pytest.mark.parametrize('strategy', ['heterogeneous', 'batch_homogeneous',
                                      'dataset_homogeneous'])
def test_the_trainer_pipeline_follows_each_batching_strategy(setup, strategy):
  """`train.make_pipeline` from a config: 2 devices x 2 accumulation steps, each strategy of the
  paper's section 5.2; the slots' tasks are the sampler's."""
  from configs import demo as demo_config  # pylint: disable=import-outside-toplevel
  from muppet_jax import build, sharding, train  # pylint: disable=import-outside-toplevel
  config = demo_config.get_config()
  config.data.batching = strategy
  config.mesh.data = 2
  config.train.grad_accum = 2
  config.train.steps = 10
  vocab = setup[1].vocab
  run = build.run_tasks(config)
  data = build.DataSetup(vocab=vocab, task_names=run.names, rates=run.rates,
                         task_table=run.table, shape=BatchShape.from_config(config.data))
  layout = sharding.make_mesh(config.mesh)
  sampler = TaskSampler(run.rates, seed=config.seed, strategy=strategy, total_steps=10)
  with train.make_pipeline(config, data, layout) as pipe:
    for step in range(4):
      batch = pipe.next_batch(step)
      assert batch['task_id'].tolist() == sampler.tasks(step, range(4)).tolist()
      if strategy != 'heterogeneous':
        assert len(set(batch['task_id'].tolist())) == 1
