"""What is on disk (offline: files only, no builder code, no network), and whether it reads.

`check_dataset` looks at one dataset version's directory: dataset_info.json, its file formats,
the needed splits and their shard files. A preparation interrupted half-way never shows as
present: TFDS writes into an `incomplete.*` directory that it renames only when complete (what
an interrupted one leaves is reported), and the TFRecord -> ArrayRecord conversion adds
'array_record' to dataset_info.json only after its last shard.

`verify_dataset` (`prepare --check --verify`) reads every record of every ArrayRecord shard of
every split and compares the record counts with dataset_info.json (`shards.verify_shard`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from etils import epath
from tensorflow_datasets.core import constants as tfds_constants
from tensorflow_datasets.core import dataset_info as tfds_dataset_info
from tensorflow_datasets.core import file_adapters

from muppet_jax.data import shards
from muppet_jax.data import tasks
from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.data.prepare.datasets import (DatasetState, RecordReport, Status, TfdsDataset,
                                              split_names, tfds_datasets)

ARRAY_RECORD = file_adapters.FileFormat.ARRAY_RECORD
TFRECORD = file_adapters.FileFormat.TFRECORD


def formats(info) -> list[str]:
  """File formats of a dataset_info proto; '' (old preparations) means TFRecord."""
  return [info.file_format or TFRECORD.value, *info.alternative_file_formats]


def _split_info(info, directory: epath.Path, split: str, file_format):
  return tfds_dataset_info.get_split_dict_from_proto(
      info, data_dir=directory, file_format=file_format)[split]


def _missing_shards(info, directory: epath.Path, split: str, file_format,
                    present: set[str]) -> list[str]:
  return [f for f in _split_info(info, directory, split, file_format).filenames
          if f not in present]


def interrupted(dataset: TfdsDataset, data_dir: str) -> list[epath.Path]:
  """What interrupted preparations of `dataset` left: TFDS's `incomplete.*_<version>`
  directories next to the version directory (deleted by nothing; harmless)."""
  parent = dataset.directory(data_dir).parent
  if not parent.exists():
    return []
  return sorted(p for p in parent.iterdir()
                if p.name.startswith(tfds_constants.INCOMPLETE_PREFIX) and
                p.name.endswith(f'_{dataset.version}'))


def check_dataset(dataset: TfdsDataset, data_dir: str, splits: Sequence[str]) -> DatasetState:
  """The on-disk state of `dataset` under `data_dir` for its splits `splits` (own names)."""
  directory = dataset.directory(data_dir)
  info_path = directory / tfds_constants.DATASET_INFO_FILENAME
  if not info_path.exists():
    versions = []
    parent = directory.parent
    if parent.exists():
      versions = sorted(p.name for p in parent.iterdir() if p.is_dir() and p.name[:1].isdigit())
    problem = f'not prepared ({directory} does not exist)'
    if versions:
      problem = f'version {dataset.version} not prepared (found {", ".join(versions)})'
    leftovers = interrupted(dataset, data_dir)
    if leftovers:
      problem += (f'; an interrupted preparation left {leftovers[-1]}: prepare again (it starts '
                  'the dataset over; delete the leftover when no prepare is running)')
    return DatasetState(dataset, Status.MISSING, problem=problem)
  try:
    info = tfds_dataset_info.read_from_json(info_path)
  except Exception as e:  # pylint: disable=broad-except  (a damaged json is a data problem)
    return DatasetState(dataset, Status.INCOMPLETE,
                        problem=f'unreadable {info_path} ({e}): delete {directory} and prepare '
                                'again')
  found = formats(info)
  present = {p.name for p in directory.iterdir()}
  known = {s.name: s for s in info.splits}
  lacking = [s for s in splits if s not in known]
  sizes = {s: int(sum(known[s].shard_lengths)) for s in splits if s in known}
  convertible = TFRECORD.value in found and not lacking and not any(
      _missing_shards(info, directory, s, TFRECORD, present) for s in splits)
  if ARRAY_RECORD.value not in found:
    fix = ('prepare converts it in place, no download' if convertible else
           f'not convertible (splits or shards missing): delete {directory} and prepare again')
    return DatasetState(dataset, Status.WRONG_FORMAT, sizes, convertible=convertible,
                        problem=f'prepared as {"/".join(found)}, not array_record; {fix}')
  if lacking:
    return DatasetState(
        dataset, Status.INCOMPLETE, sizes,
        problem=f'no split {", ".join(lacking)} (has {", ".join(sorted(known))}): delete '
                f'{directory} and prepare again')
  missing = [f for s in splits for f in _missing_shards(info, directory, s, ARRAY_RECORD,
                                                         present)]
  if missing:
    fix = 'prepare again (converts them)' if convertible else \
        f'delete {directory} and prepare again'
    return DatasetState(dataset, Status.INCOMPLETE, sizes, convertible=convertible,
                        problem=f'{len(missing)} array_record shard file(s) missing, e.g. '
                                f'{missing[0]}: {fix}')
  return DatasetState(dataset, Status.PRESENT, sizes)


def verify_dataset(dataset: TfdsDataset, data_dir: str, slug: str) -> str:
  """Reads every record of every ArrayRecord shard of every split of a prepared dataset.

  Returns:
    '' if every shard holds the records dataset_info.json says and each reads (checksums
    included); otherwise the first damaged shard's line (`shards.damaged_message`: dataset,
    split, file and the fix).
  """
  directory = dataset.directory(data_dir)
  info = tfds_dataset_info.read_proto_from_builder_dir(directory)
  tfrecord = TFRECORD.value in formats(info)
  present = {p.name for p in directory.iterdir()}
  for split in info.splits:
    split_info = _split_info(info, directory, split.name, ARRAY_RECORD)
    for path, length in zip(split_info.filepaths, split_info.shard_lengths):
      problem = shards.verify_shard(shards.Shard(path=str(path), records=int(length)))
      if not problem:
        continue
      fix = None
      if tfrecord and not _missing_shards(info, directory, split.name, TFRECORD, present):
        fix = (f'delete {path} and run `python -m muppet_jax.data.prepare --tasks {slug} '
               f'--data_dir {data_dir}`: it converts that shard again from its TFRecord shard, '
               'no download')
      return shards.damaged_message(slug, dataset.full_name, split.name, str(path), problem,
                                    data_dir, fix=fix)
  return ''


def verify_reports(reports: Sequence[RecordReport], data_dir: str) -> list[RecordReport]:
  """`reports` with every ready dataset read in full (`verify_dataset`): a damaged one becomes
  `Status.DAMAGED`, its problem the line naming the shard."""
  out = []
  for report in reports:
    parts = []
    for part in report.parts:
      problem = (verify_dataset(part.dataset, data_dir, report.record.slug)
                 if part.status.ready else '')
      parts.append(dataclasses.replace(part, status=Status.DAMAGED, problem=problem)
                   if problem else part)
    out.append(dataclasses.replace(report, parts=tuple(parts)))
  return out


def check_records(records: Iterable[DatasetRecord], data_dir: str,
                  splits: Sequence[str] = (tasks.TRAIN, tasks.VALIDATION), *,
                  verify: bool = False) -> list[RecordReport]:
  """The on-disk state of each record's datasets (offline).

  Args:
    records: the datasets.
    data_dir: the TFDS data dir (`resolve_data_dir`).
    splits: canonical splits to check ('train', 'validation').
    verify: also read every record of every present dataset (`verify_reports`).
  """
  reports = []
  for record in records:
    own = split_names(record, splits)
    parts = tuple(check_dataset(d, data_dir, own) for d in tfds_datasets(record))
    reports.append(RecordReport(record, own, parts))
  return verify_reports(reports, data_dir) if verify else reports
