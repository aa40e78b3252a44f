"""Before a run: are its datasets prepared and readable? (offline, seconds)

`preflight(task_names, data_dir)` checks every task's splits on disk (`check.check_records`:
dataset directories, formats, splits and shard files; no network, no TFDS builder code), opens
each split the way training does (`streams.open_source`, which also checks that every shard
holds the records its metadata says: a truncated one is named at once) and maps a few records
spread over it with the dataset's mapper. It raises one `DataNotPreparedError` naming everything
that is missing and the command that prepares it, or `shards.DamagedDataError` for a damaged
shard.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from etils import epath

from muppet_jax.data import mappers
from muppet_jax.data import tasks
from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.data.prepare.build import needs_manual_download
from muppet_jax.data.prepare.check import check_records
from muppet_jax.data.prepare.datasets import (DataNotPreparedError, Status, resolve_data_dir,
                                              tfds_datasets)

# Records of each split that the preflight maps (spread evenly over the split).
PREFLIGHT_SAMPLE = 32


def prepare_command(records: Iterable[DatasetRecord], data_dir: str) -> str:
  """The command that prepares `records` under `data_dir`."""
  return (f'python -m muppet_jax.data.prepare --tasks {",".join(r.slug for r in records)} '
          f'--data_dir {data_dir}')


def sample_indices(size: int, sample: int) -> list[int]:
  """Up to `sample` record indices spread evenly over [0, size)."""
  if size <= sample:
    return list(range(size))
  return sorted(set(np.linspace(0, size - 1, sample).round().astype(int).tolist()))


@dataclasses.dataclass(frozen=True)
class MapperSample:
  """How a dataset's mapper did on records sampled from one split.

  Attributes:
    split: canonical split ('train' / 'validation').
    sampled: records read.
    ok: at least one record gave a valid family example (sampling stops there).
    reasons: why the records read were dropped, with counts (BadRecord reasons, missing or
      malformed fields, invalid examples).
  """

  split: str
  sampled: int
  ok: bool
  reasons: Mapping[str, int]


def sample_mapper(record: DatasetRecord, split: str, data_dir: str,
                  sample: int = PREFLIGHT_SAMPLE) -> MapperSample:
  """Maps up to `sample` records spread over a split until one gives a valid example.

  Reads the records by index through the training streams' reader (`streams.open_source`,
  TFDS's ArrayRecord random access) and maps them with the split's mapper (training or
  evaluation, `mappers.mapper_for`), checking each example like the streams do
  (`tasks.check_family_example`).
  """
  from muppet_jax.data import streams  # pylint: disable=g-import-not-at-top  (imports grain)
  source = streams.open_source(record, split, data_dir)
  indices = sample_indices(len(source), sample)
  evaluation = split != tasks.TRAIN
  mapper = mappers.mapper_for(record.slug, evaluation=evaluation)
  counter = mappers.DropCounter()  # Local: the run's own drop accounting stays clean.
  invalid: dict[str, int] = {}
  for n, index in enumerate(indices, 1):
    for example in counter.apply(record.slug, source[index], mapper):
      try:
        tasks.check_family_example(example, record, evaluation)
        return MapperSample(split, n, ok=True, reasons={})
      except ValueError as e:  # '<task>: <problem>: <example>' -> '<problem>'.
        reason = str(e).split(': ')[1] if str(e).count(': ') >= 2 else str(e)
        invalid[reason[:80]] = invalid.get(reason[:80], 0) + 1
  reasons = dict(counter.counts.get(record.slug, {}).get('dropped', {}))
  reasons.update(invalid)
  if not indices:
    reasons = {'empty split': 1}
  return MapperSample(split, len(indices), ok=False, reasons=reasons)


def _mapper_message(record: DatasetRecord, samples: Sequence[MapperSample]) -> str:
  details = '; '.join(
      f'{s.split}: none of {s.sampled} kept, '
      + ', '.join(f'{reason} x{n}' for reason, n in s.reasons.items()) for s in samples)
  return (f'{record.slug}: its mapper keeps none of the sampled records ({details}): the data '
          f'does not look like {record.name}; look at it with `python -m '
          f'muppet_jax.data.inspect --task {record.task_name} --split {samples[0].split}`')


def preflight(task_names: Iterable[str], data_dir: str | None,
              splits: Sequence[str] = (tasks.TRAIN, tasks.VALIDATION), *,
              sample: int = PREFLIGHT_SAMPLE) -> None:
  """Checks, offline and in seconds, that every task's splits are prepared and readable.

  Args:
    task_names: the run's registered tasks ('muppet_rte', ...).
    data_dir: `data.tfds_data_dir` ('' or None = TFDS's default, `resolve_data_dir`).
    splits: canonical splits the run reads ('train', 'validation').
    sample: records of each split mapped by the dataset's mapper (0: skip that check).

  Raises:
    DataNotPreparedError: one message listing every dataset that is missing, incomplete, in the
      wrong format, or whose mapper keeps none of the sampled records, with the command that
      prepares them.
  """
  preflight_records([tasks.record_for_task(n) for n in task_names], data_dir, splits,
                    sample=sample)


def preflight_records(records: Sequence[DatasetRecord], data_dir: str | None,
                      splits: Sequence[str] = (tasks.TRAIN, tasks.VALIDATION), *,
                      sample: int = PREFLIGHT_SAMPLE) -> None:
  """`preflight` for records (e.g. datasets not registered as tasks)."""
  on_disk = [r for r in records if tfds_datasets(r)]  # Demo data is embedded: always there.
  if not on_disk:
    return
  data_dir = resolve_data_dir(data_dir)
  if not epath.Path(data_dir).exists():
    raise DataNotPreparedError(
        f'data_dir {data_dir} does not exist (data.tfds_data_dir; empty = TFDS\'s default, '
        f'$TFDS_DATA_DIR or ~/tensorflow_datasets), and the {len(on_disk)} dataset(s) of this '
        f'run must be prepared there: {", ".join(r.slug for r in on_disk)}. Point '
        'data.tfds_data_dir at the directory that holds them, or (training never downloads) '
        'prepare them once, on a machine with internet access, with:\n'
        f'  {prepare_command(on_disk, data_dir)}')
  reports = check_records(on_disk, data_dir, splits)
  unready = [r for r in reports if not r.status.ready]
  unreadable = []  # One line per dataset whose mapper keeps none of a split's samples.
  if sample > 0:
    for report in (r for r in reports if r.status.ready):
      failed = [s for s in (sample_mapper(report.record, split, data_dir, sample)
                            for split in splits if split in tasks.split_map(report.record))
                if not s.ok]
      if failed:
        unreadable.append(_mapper_message(report.record, failed))
  if not unready and not unreadable:
    return
  bad = len(unready) + len(unreadable)
  lines = [f'{bad} of {len(on_disk)} dataset{"s" if len(on_disk) > 1 else ""} of this run '
           f'{"is" if bad == 1 else "are"} not ready under {data_dir} (training reads prepared '
           'TFDS ArrayRecord files and never downloads):']
  groups = {
      Status.MISSING: 'not prepared',
      Status.WRONG_FORMAT: 'not in ArrayRecord format',
      Status.INCOMPLETE: 'incomplete',
  }
  for status, title in groups.items():
    items = [r for r in unready if r.status == status]
    if not items:
      continue
    if status == Status.MISSING:
      details = ', '.join(f'{r.record.slug} ({r.source})' for r in items)
    else:
      details = '; '.join(f'{r.record.slug} ({p.dataset.full_name}: {p.problem})'
                          for r in items for p in r.parts if p.problem)
    lines.append(f'  {title}: {details}')
  if unready:
    manual = [p.dataset.full_name for r in unready for p in r.parts
              if p.status == Status.MISSING and needs_manual_download(p.dataset)]
    lines.append('Prepare them (once; downloading needs internet access, converting does not)'
                 + (f'; {", ".join(manual)} needs a manual download first, the command says '
                    'what to fetch' if manual else '') + ':')
    lines.append(f'  {prepare_command([r.record for r in unready], data_dir)}')
  if unready and unreadable:
    lines.append('And:')
  lines.extend(f'  {line}' for line in unreadable)
  raise DataNotPreparedError('\n'.join(lines))

