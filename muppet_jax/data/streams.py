"""Random-access example streams: grain over TFDS ArrayRecord (or the in-memory demo).

Every task's data is read through `open_source`: a `grain.MapDataset` of the raw records of one
split, backed by `tfds.data_source(...)` (TFDS's ArrayRecord random access, prepared once by
`python -m muppet_jax.data.prepare`) or, for the embedded demo, by an in-memory list. Nothing
here downloads: a dataset that is not prepared fails (the run's preflight names it first). A
split whose shards do not hold the records their metadata says (a truncated copy), or a record
that cannot be read, stops with one `shards.DamagedDataError` naming the dataset, the split and
the file, never with records silently dropped.

Training (`train_stream`): a task's train split in a seeded global shuffle that changes every
epoch, repeated forever; slot s of S reads shard s of S of that order (its elements s, s + S,
s + 2S, ...).
Each raw record goes through the dataset's mapper (`mappers.mapper_for`, the same
function the seqio Task applies) directly in Python, giving 0..n family examples (RACE: one
per question), checked like the seqio path checks them (`mappers.check_family_example`).

A stream's position is its grain iterator state, `{'next_index': i, 'offset': j}`: the j-th
family example of the i-th record of the stream's (sharded, shuffled, repeated) order. Restoring it is a
constant-time index computation (grain's `index_shuffle`), whatever the number of examples
consumed, so a run resumes as fast at step 200k as at step 10, and continues the identical
example stream.

Evaluation (`eval_examples`): the evaluation split in its stored order, mapped with the
dataset's evaluation mapper (`mappers.mapper_for(slug, evaluation=True)`).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from muppet_jax.data import catalogue
from muppet_jax.data import demo
from muppet_jax.data import hf_builders
from muppet_jax.data import mappers
from muppet_jax.data import shards
from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.errors import UserError

# A stream that reads this many records in a row without one example (or a whole epoch of its
# shard, if that is shorter) stops with `AllRecordsDroppedError` instead of spinning forever.
_MAX_EMPTY_RECORDS = 10_000


class AllRecordsDroppedError(UserError):
  """A task's mapper rejected every record the stream read (wrong data or a broken mapper)."""


def tfds_names(record: DatasetRecord) -> list[str]:
  """The TFDS builder names (with version) a record reads; RACE has two (high + middle)."""
  kind, _, name = record.source.partition(':')
  if kind == 'hf':
    return [hf_builders.tfds_name(record.source)]
  if kind == 'tfds':
    return name.split('+')
  raise ValueError(f'{record.slug}: source {record.source!r} is not a TFDS dataset')


def split_name(record: DatasetRecord, split: str) -> str:
  """Canonical split ('train' / 'validation') -> the dataset's own split name."""
  splits = catalogue.split_map(record)
  if split not in splits:
    raise ValueError(f'{record.task_name} has splits {sorted(splits)}, not {split!r}')
  return splits[split]


def _tfds_source(name: str, split: str, data_dir: str | None):
  """One TFDS split as an ArrayRecord data source."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  # download=False: reading never fetches anything (preparing is `muppet_jax.data.prepare`).
  return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)


def _checked_source(source, record: DatasetRecord, tfds_name: str, split: str):
  """`source` after checking that each of its shards holds the records its metadata says
  (a truncated shard would otherwise read as empty records, silently dropped), wrapped so that
  a record that cannot be read names its shard (`shards.DamagedDataError`). A source that is
  not files on disk (`tfds.testing.mock_data`) is returned as it is."""
  try:
    instructions = source.dataset_info.splits[split].file_instructions
  except (AttributeError, KeyError):
    return source
  files = [shards.Shard(path=os.fspath(fi.filename), records=int(fi.examples_in_shard))
           for fi in instructions]
  if not files:
    return source
  # <data_dir>/<name>[/<config>]/<version>/<file>: the data dir the prepare command needs.
  levels = len(tfds_name.partition(':')[0].split('/')) + 2
  data_dir = os.path.dirname(files[0].path) if files else ''
  for _ in range(levels - 1):
    data_dir = os.path.dirname(data_dir)
  where = dict(slug=record.slug, dataset=tfds_name, split=split, data_dir=data_dir)
  shards.check_counts(files, **where)
  return shards.CheckedSource(source, files, **where)


def open_source(record: DatasetRecord, split: str, data_dir: str | None = None, *,
                cache: dict | None = None) -> grain.MapDataset:
  """The raw records of one split as a random-access `grain.MapDataset` of plain python dicts.

  Args:
    record: the dataset's catalogue (or demo) record.
    split: 'train' or 'validation' (canonical names; see `catalogue.split_map`).
    data_dir: TFDS data dir of the prepared datasets (None / '' = TFDS's default).
    cache: a dict in which opened TFDS data sources are kept and reused (e.g. by every slot's
      stream of a task); None opens them afresh.

  Returns:
    Records as TFDS yields them, decoded to plain python (`mappers.to_python`); for demo
    tasks, the demo's family examples. Several TFDS configs (RACE) are concatenated.
  """
  real_split = split_name(record, split)
  kind, _, name = record.source.partition(':')
  if kind == 'demo':  # 'demo:<name>': the demo task demo_<name>, already family examples.
    return grain.MapDataset.source(demo.examples(f'demo_{name}', real_split))
  parts = []
  for tfds_name in tfds_names(record):
    key = (tfds_name, real_split, data_dir or None)
    source = cache.get(key) if cache is not None else None
    if source is None:
      source = _checked_source(_tfds_source(*key), record, tfds_name, real_split)
      if cache is not None:
        cache[key] = source
    parts.append(grain.MapDataset.source(source))
  source = parts[0] if len(parts) == 1 else grain.MapDataset.concatenate(parts)
  return source.map(mappers.to_python)


def stream_seed(seed: int, task_name: str) -> int:
  """The 32-bit shuffle seed of one task's training order: independent across tasks, the same
  on every host and in every process."""
  digest = hashlib.sha256(f'{seed}:{task_name}'.encode()).digest()
  return int.from_bytes(digest[:4], 'little')


def shard_records(records: grain.MapDataset, shard_index: int, num_shards: int
                  ) -> grain.MapDataset:
  """Shard `shard_index` of `num_shards` of an (endless) record order: its elements
  shard_index, shard_index + num_shards, ....

  Sharding the globally shuffled, repeated order (rather than shuffling each shard) keeps
  every epoch a permutation of the whole split, split evenly over the shards, and works for
  splits with fewer records than shards.
  """
  if not 0 <= shard_index < num_shards:
    raise ValueError(f'shard_index {shard_index} not in [0, {num_shards})')
  return records[shard_index::num_shards]


class FamilyStream(grain.DatasetIterator):
  """One task's family examples from a `grain.MapDataset` of raw records, with a grain state.

  Reads records by index (random access), maps each through the dataset's mapper (bad records
  are dropped and counted by `mappers.DROP_COUNTER`), checks the results and yields them one at a
  time. `get_state()` is the position of the next example, `{'next_index': i, 'offset': j}`;
  `set_state` jumps there in constant time.
  """

  def __init__(self, records: grain.MapDataset, record: DatasetRecord, *,
               evaluation: bool = False, epoch_length: int | None = None,
               mapper: mappers.Mapper | None = None):
    """Args:
      records: raw records (finite, or infinite for repeated training streams).
      record: the dataset's record (mapper, family checks, error messages).
      evaluation: use the dataset's evaluation mapper.
      epoch_length: records per epoch of a repeated `records` (a whole epoch without one
        example means the mapper rejects everything); default `len(records)`.
      mapper: the dataset's mapper; default `mappers.mapper_for(record.slug, evaluation)`
        (pass it where the registry of this process may not know the dataset: a dataset
        registered in another process).
    """
    super().__init__()
    self._records = records
    self._record = record
    self._demo = record.source.startswith('demo:')  # Already family examples: no mapper.
    self._mapper = None if self._demo else (
        mapper or mappers.mapper_for(record.slug, evaluation))
    self._evaluation = evaluation  # Evaluation examples keep their extra fields (tasks.py).
    self._length = len(records)  # sys.maxsize for repeated datasets.
    self._epoch_length = epoch_length or self._length
    self._next_index = 0  # Next record to read.
    self._pending: list[dict[str, Any]] = []  # Examples of the record read last.
    self._offset = 0  # Next example within `_pending`.
    self._record_index = -1  # Index of the record `_pending` came from.

  @property
  def task_name(self) -> str:
    return self._record.task_name

  def _map(self, raw: dict) -> list[dict[str, Any]]:
    if self._demo:
      return [mappers.check_family_example(raw, self._record, self._evaluation)]
    examples = mappers.DROP_COUNTER.apply(self._record.slug, raw, self._mapper)
    return [mappers.check_family_example(e, self._record, self._evaluation)
            for e in examples]

  def __next__(self) -> dict[str, Any]:
    empty = 0
    while self._offset >= len(self._pending):
      if self._next_index >= self._length:
        raise StopIteration
      self._record_index = self._next_index
      self._pending = self._map(self._records[self._next_index])
      self._next_index += 1
      self._offset = 0
      empty = 0 if self._pending else empty + 1
      if empty and empty >= min(_MAX_EMPTY_RECORDS, self._epoch_length):
        self._raise_all_dropped(empty)
    example = self._pending[self._offset]
    self._offset += 1
    return example

  def _raise_all_dropped(self, empty: int) -> None:
    counts = mappers.DROP_COUNTER.counts.get(self._record.slug, {})
    reasons = counts.get('dropped') or {'no examples': empty}
    raise AllRecordsDroppedError(
        f'{self._record.task_name}: the mapper of {self._record.source} dropped {empty} records '
        f'in a row and kept none (reasons: {reasons}): the prepared data does not look like '
        f'{self._record.name}. Check it with `python -m muppet_jax.data.inspect --task '
        f'{self._record.task_name}`.')

  def get_state(self) -> dict[str, int]:
    """Position of the next example: record index and offset among that record's examples."""
    if self._offset < len(self._pending):
      return {'next_index': self._record_index, 'offset': self._offset}
    return {'next_index': self._next_index, 'offset': 0}

  def set_state(self, state: dict[str, int]) -> None:
    index, offset = int(state['next_index']), int(state['offset'])
    if index < 0 or offset < 0:
      raise ValueError(f'invalid stream state {state!r}')
    self._pending, self._offset, self._record_index = [], 0, -1
    self._next_index = index
    if offset:
      if index >= self._length:
        raise ValueError(f'stream state {state!r} is past the end of {self.task_name}')
      self._record_index = index
      self._pending = self._map(self._records[index])
      self._next_index = index + 1
      if offset > len(self._pending):
        raise ValueError(f'stream state {state!r}: record {index} of {self.task_name} has only '
                         f'{len(self._pending)} examples (the data or the mapper changed)')
      self._offset = offset


class _Take:
  """index -> records[index] (a picklable map function)."""

  def __init__(self, records: grain.MapDataset):
    self.records = records

  def __call__(self, index: int):
    return self.records[index]


def _train_split(record: DatasetRecord, data_dir: str | None, fraction: float,
                 cache: dict | None = None, fraction_seed: int = 0) -> grain.MapDataset:
  """The dataset's train records, cut to a seeded random `fraction` of them.

  The subset is the first ceil(fraction x records) of one seeded permutation of the split
  (`fraction_seed` and the task name, not the run's seed): every run seed and starting point
  trains on the same low-resource split, and a smaller fraction's records are part of every
  larger one's (the paper samples its low-resource splits at random, section 5.3).
  """
  records = open_source(record, catalogue.TRAIN, data_dir, cache=cache)
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'finetune.train_fraction must be in (0, 1], got {fraction}')
  if fraction < 1.0:
    order = np.random.default_rng(stream_seed(fraction_seed, f'subset:{record.task_name}'))
    chosen = order.permutation(len(records))[:max(1, math.ceil(fraction * len(records)))]
    # An index list mapped onto the records (slicing a shuffled grain dataset and shuffling
    # the slice again does not keep the slice in grain 0.2).
    records = grain.MapDataset.source(chosen.tolist()).map(_Take(records))
  if not len(records):
    raise ValueError(f'{record.task_name}: the train split is empty')
  return records


def train_records(record: DatasetRecord, shard_index: int, num_shards: int, *, seed: int,
                  data_dir: str | None = None, fraction: float = 1.0,
                  cache: dict | None = None, fraction_seed: int = 0) -> grain.MapDataset:
  """The endless raw-record order of one training stream.

  The split's records in a seeded global shuffle that changes every epoch (grain's
  `index_shuffle`: no buffer, constant memory, random access), repeated forever; shard
  `shard_index` of `num_shards` of that order.

  Args:
    record: the dataset's record.
    shard_index, num_shards: this stream's shard (the slot) and the number of shards (slots).
    seed: the run's seed (each task gets its own shuffle, `stream_seed`).
    data_dir: TFDS data dir.
    fraction: train on a seeded random `fraction` of the split's records (fine-tuning's
      low-resource runs, `finetune.train_fraction`; see `_train_split`).
    cache: see `open_source`.
    fraction_seed: which random subset `fraction` keeps (`finetune.fraction_seed`).

  Returns:
    A `grain.MapDataset` of (practically) infinite length.
  """
  records = _train_split(record, data_dir, fraction, cache, fraction_seed)
  order = records.shuffle(seed=stream_seed(seed, record.task_name)).repeat()
  return shard_records(order, shard_index, num_shards)


def train_stream(record: DatasetRecord, shard_index: int, num_shards: int, *, seed: int,
                 data_dir: str | None = None, fraction: float = 1.0,
                 mapper: mappers.Mapper | None = None,
                 cache: dict | None = None, fraction_seed: int = 0) -> FamilyStream:
  """One slot's endless stream of a dataset's training examples (see `train_records`)."""
  records = train_records(record, shard_index, num_shards, seed=seed, data_dir=data_dir,
                          fraction=fraction, cache=cache, fraction_seed=fraction_seed)
  # About one epoch's share of records without a single example: the mapper rejects all.
  split_length = train_split_size(record, data_dir=data_dir, fraction=fraction, cache=cache)
  return FamilyStream(records, record, epoch_length=max(1, split_length // num_shards),
                      mapper=mapper)


def train_split_size(record: DatasetRecord, *, data_dir: str | None = None,
                     fraction: float = 1.0, cache: dict | None = None) -> int:
  """Records of the train split a run with `finetune.train_fraction=fraction` trains on."""
  return len(_train_split(record, data_dir, fraction, cache))


def _record(task: str | DatasetRecord) -> DatasetRecord:
  if isinstance(task, DatasetRecord):
    return task
  # The seqio registry knows every task name (catalogue, demo, registered datasets); imported
  # here so that worker processes, which are handed records, never import seqio / TensorFlow.
  from muppet_jax.data import tasks  # pylint: disable=g-import-not-at-top
  return tasks.record_for_task(task)


def eval_examples(task: str | DatasetRecord, *, limit: int = -1, data_dir: str | None = None
                  ) -> Iterator[dict[str, Any]]:
  """A task's evaluation examples in stored order (first `limit` examples; -1 = all).

  Args:
    task: a registered task name or a dataset record.
    limit: most examples (-1: the whole split).
    data_dir: TFDS data dir.
  """
  record = _record(task)
  stream = FamilyStream(open_source(record, catalogue.VALIDATION, data_dir), record,
                        evaluation=True)
  return itertools.islice(stream, limit) if limit >= 0 else stream


class TrainStreamFactory:
  """`(task_name, shard_index, num_shards) -> FamilyStream` over given tasks; picklable, and
  self-contained (records and mappers travel with it), for worker processes."""

  def __init__(self, task_names: Sequence[str], *, seed: int, data_dir: str | None = None,
               fraction: float = 1.0, fraction_seed: int = 0):
    self.records = {name: _record(name) for name in task_names}
    self.mappers = {name: None if r.source.startswith('demo:') else
                    mappers.mapper_for(r.slug) for name, r in self.records.items()}
    self.seed = int(seed)
    self.data_dir = data_dir or None
    self.fraction = float(fraction)
    self.fraction_seed = int(fraction_seed)
    self._sources = {}  # Opened TFDS data sources, shared by the streams of a task.

  def __getstate__(self):
    return {**self.__dict__, '_sources': {}}  # Data sources are re-opened in each process.

  def __call__(self, task_name: str, shard_index: int, num_shards: int) -> FamilyStream:
    return train_stream(self.records[task_name], shard_index, num_shards, seed=self.seed,
                        data_dir=self.data_dir, fraction=self.fraction,
                        mapper=self.mappers[task_name], cache=self._sources,
                        fraction_seed=self.fraction_seed)
