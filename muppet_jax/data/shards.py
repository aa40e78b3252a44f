"""ArrayRecord shard checks: are the prepared files what their dataset's metadata says?

A shard can be damaged after `prepare` wrote it: truncated or corrupted by a copy to a bucket,
a full disk, a crash. ArrayRecord keeps its record index at the end of the file, so a shard cut
short opens as holding no records, and TFDS's reader (which takes the record counts from
dataset_info.json) then hands out empty records: the mapper drops them, silently. A corrupted
chunk fails its checksum only when a record in it is read.

Two checks, each naming the dataset, the split and the file with the fix:
- `check_counts` (cheap: each shard's footer): every shard of a split holds the number of
  records its metadata says. The training streams run it when they open a split
  (`streams.open_source`, also in the run's preflight), so a truncated shard stops the run
  before its first step.
- `verify_shard` (reads every record, checksums included): `python -m muppet_jax.data.prepare
  --check --verify`.
A record that cannot be read while training (`CheckedSource`) stops the run at once with the
same kind of line. Nothing here imports TensorFlow (worker processes use it).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from muppet_jax.errors import UserError

# Records read per call when verifying a whole shard (bounded memory for large shards).
_READ_CHUNK = 1024


class DamagedDataError(UserError):
  """A prepared shard does not match its metadata or cannot be read; the message names the
  dataset, the split, the file and how to prepare it again."""


@dataclasses.dataclass(frozen=True)
class Shard:
  """One ArrayRecord file of a split and the records its metadata says it holds."""

  path: str
  records: int


def _reader(path: str):
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  return array_record_module.ArrayRecordReader(os.fspath(path))


def _brief(error: BaseException) -> str:
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text[:300]}' if text else type(error).__name__


def _close(reader) -> None:
  try:
    reader.close()
  except Exception:  # pylint: disable=broad-except  (a damaged file can fail to close too)
    pass


def count_problem(shard: Shard) -> str:
  """'' if the shard opens and holds `shard.records` records, else what is wrong."""
  try:
    reader = _reader(shard.path)
  except Exception as e:  # pylint: disable=broad-except  (riegeli errors are RuntimeErrors)
    return f'cannot be opened ({_brief(e)})'
  try:
    found = reader.num_records()
  except Exception as e:  # pylint: disable=broad-except
    return f'cannot be read ({_brief(e)})'
  finally:
    _close(reader)
  if found != shard.records:
    return (f'holds {found} records, its metadata says {shard.records} (truncated or '
            'overwritten)')
  return ''


def verify_shard(shard: Shard) -> str:
  """'' if every record of the shard can be read (checksums included) and there are as many
  as its metadata says, else what is wrong."""
  problem = count_problem(shard)
  if problem:
    return problem
  reader = _reader(shard.path)
  try:
    for start in range(0, shard.records, _READ_CHUNK):
      end = min(start + _READ_CHUNK, shard.records)
      try:
        records = reader.read(start, end)
      except Exception as e:  # pylint: disable=broad-except
        return f'records {start}-{end - 1} cannot be read ({_brief(e)})'
      if len(records) != end - start:
        return f'records {start}-{end - 1}: {len(records)} read'
  finally:
    _close(reader)
  return ''


def damaged_message(slug: str, dataset: str, split: str, path: str, problem: str,
                    data_dir: str, fix: str | None = None) -> str:
  """The one line that names a damaged shard and the fix (the same for `prepare --check
  --verify` and for a run that meets it); `fix` replaces the default (prepare it again)."""
  fix = fix or (f'delete {os.path.dirname(path)} and run `python -m muppet_jax.data.prepare '
                f'--tasks {slug} --data_dir {data_dir}`')
  return (f'{slug} ({dataset}), split {split}: the prepared file {path} is damaged: {problem}. '
          f'Prepare the dataset again: {fix}')


def check_counts(shards: Sequence[Shard], *, slug: str, dataset: str, split: str,
                 data_dir: str) -> None:
  """Raises `DamagedDataError` for the first shard whose record count is not its metadata's."""
  for shard in shards:
    problem = count_problem(shard)
    if problem:
      raise DamagedDataError(damaged_message(slug, dataset, split, shard.path, problem,
                                             data_dir))


class CheckedSource:
  """A random-access source of one split (TFDS's ArrayRecord data source) that names the shard
  of a record that cannot be read (`DamagedDataError`) instead of a bare riegeli error.

  Args:
    source: the TFDS data source (`__len__`, `__getitem__`).
    shards: the split's files in the order of its records (`Shard.records` each).
    slug, dataset, split, data_dir: for the message.
  """

  def __init__(self, source: Any, shards: Sequence[Shard], *, slug: str, dataset: str,
               split: str, data_dir: str):
    self._source = source
    self._shards = tuple(shards)
    self._where = dict(slug=slug, dataset=dataset, split=split, data_dir=data_dir)

  def __len__(self) -> int:
    return len(self._source)

  def shard_of(self, index: int) -> Shard | None:
    """The file that holds record `index` of the split."""
    for shard in self._shards:
      if index < shard.records:
        return shard
      index -= shard.records
    return None

  def __getitem__(self, index):
    try:
      return self._source[index]
    except Exception as e:  # pylint: disable=broad-except  (riegeli, decoding: damaged data)
      if isinstance(e, (IndexError, KeyError)) and not 0 <= int(index) < len(self):
        raise
      shard = self.shard_of(int(index))
      path = shard.path if shard is not None else '(unknown shard)'
      raise DamagedDataError(damaged_message(
          problem=f'record {int(index)} of the split cannot be read ({_brief(e)})',
          path=path, **self._where)) from e
