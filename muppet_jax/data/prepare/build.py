"""Preparing datasets (online): TFDS builders, the local Hugging Face builders, conversion.

For each dataset of a selection `prepare_records` keeps what is prepared, converts a TFRecord
preparation in place (`convert.py`), downloads and prepares the rest with its TFDS builder
(`file_format='array_record'`; the six Hugging Face-only datasets with `hf_builders.py`), and
says what to fetch for a manual download (XSum). TFDS writes into an `incomplete.*` directory
that it renames when the dataset is complete, so a `prepare` killed in the middle of a dataset
leaves it missing, and the next run prepares it again from the start.
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import tensorflow_datasets as tfds
from etils import epath

from muppet_jax.data import tasks
from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.data.prepare.check import ARRAY_RECORD, check_dataset, interrupted
from muppet_jax.data.prepare.convert import convert_to_array_record
from muppet_jax.data.prepare.datasets import (DatasetState, RecordReport, Status, TfdsDataset,
                                              split_names, tfds_datasets)

# Files a manual-download builder expects in its manual dir (checked before preparing, so that
# the instructions come at once instead of after a partial download).
_MANUAL_FILES: Mapping[str, tuple[str, ...]] = {
    'xsum': ('xsum-extracts-from-downloads.tar.gz',),
}


def default_manual_dir(data_dir: str) -> str:
  """TFDS's default manual-download directory for `data_dir`."""
  return os.path.join(data_dir, 'downloads', 'manual')


def manual_download_problem(dataset: TfdsDataset, data_dir: str, manual_dir: str = ''
                            ) -> str:
  """What to fetch and where to put it, if `dataset` needs a manual download not yet done.

  Returns:
    '' if the dataset needs no manual download or its files are in the manual dir; otherwise
    the builder's instructions and the directory to put the files in.
  """
  builder_cls = tfds.builder_cls(dataset.name)
  instructions = getattr(builder_cls, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  if not instructions:
    return ''
  manual_dir = manual_dir or default_manual_dir(data_dir)
  path = epath.Path(manual_dir)
  expected = _MANUAL_FILES.get(dataset.name, ())
  if expected:
    missing = [f for f in expected if not (path / f).exists()]
  else:
    missing = [] if path.exists() and any(path.iterdir()) else ['its files']
  if not missing:
    return ''
  return (f'{dataset.full_name} needs a manual download: put {", ".join(missing)} in '
          f'{manual_dir} (--manual_dir; default <data_dir>/downloads/manual), then run the same '
          f'command again. The dataset\'s instructions:\n'
          + textwrap.indent(textwrap.dedent(instructions).strip(), '    '))



def needs_manual_download(dataset: TfdsDataset) -> bool:
  try:
    return bool(getattr(tfds.builder_cls(dataset.name), 'MANUAL_DOWNLOAD_INSTRUCTIONS', None))
  except Exception:  # pylint: disable=broad-except  (a builder not importable here: unknown)
    return False



def prepare_dataset(dataset: TfdsDataset, data_dir: str, splits: Sequence[str], *,
                    manual_dir: str = '') -> DatasetState:
  """Makes `dataset` readable as ArrayRecord under `data_dir` (downloads only if needed).

  Already prepared: kept. TFRecord preparation: converted in place. Missing: prepared with its
  TFDS builder (`file_format='array_record'`, no GCS copy), unless it needs a manual download
  that is not done yet (status MANUAL, the problem says what to fetch). Errors are returned as
  status FAILED, so that one dataset does not stop the others.
  """
  state = check_dataset(dataset, data_dir, splits)
  if state.status == Status.PRESENT:
    return state
  try:
    if state.convertible:
      convert_to_array_record(dataset.directory(data_dir))
      outcome = Status.CONVERTED
    elif state.status == Status.MISSING:
      problem = manual_download_problem(dataset, data_dir, manual_dir)
      if problem:
        return DatasetState(dataset, Status.MANUAL, problem=problem)
      builder = tfds.builder(dataset.full_name, data_dir=data_dir)
      builder.download_and_prepare(
          file_format=ARRAY_RECORD,
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir or None,
                                                       try_download_gcs=False))
      outcome = Status.PREPARED
    else:
      return state  # Wrong format or incomplete and not convertible: the problem says why.
  except Exception as e:  # pylint: disable=broad-except  (reported in the table, others go on)
    message = ' '.join(f'{type(e).__name__}: {e}'.split())
    return DatasetState(dataset, Status.FAILED, problem=message[:2000])
  after = check_dataset(dataset, data_dir, splits)
  if after.status != Status.PRESENT:
    return dataclasses.replace(after, status=Status.FAILED,
                               problem=f'after preparing: {after.problem}')
  return dataclasses.replace(after, status=outcome)


def prepare_records(records: Iterable[DatasetRecord], data_dir: str, *, manual_dir: str = '',
                    splits: Sequence[str] = (tasks.TRAIN, tasks.VALIDATION),
                    log: Callable[[str], None] | None = print) -> list[RecordReport]:
  """Prepares every dataset of `records` under `data_dir` (see `prepare_dataset`).

  Args:
    records: the datasets (catalogue, demo or `tasks.register_dataset` records).
    data_dir: TFDS data dir to write to (`resolve_data_dir`).
    manual_dir: where manually downloaded files are ('' = <data_dir>/downloads/manual).
    splits: canonical splits that must be there afterwards.
    log: progress lines (None: quiet).
  """
  records = list(records)
  reports = []
  for i, record in enumerate(records, 1):
    own = split_names(record, splits)
    parts = []
    for dataset in tfds_datasets(record):
      start = time.perf_counter()
      if log:
        log(f'[{i}/{len(records)}] {record.slug}: {dataset.full_name} ...')
      state = prepare_dataset(dataset, data_dir, own, manual_dir=manual_dir)
      if log:
        log(f'[{i}/{len(records)}] {record.slug}: {dataset.full_name} {state.status.value} '
            f'({time.perf_counter() - start:.1f} s)')
        for leftover in interrupted(dataset, data_dir) if state.status.ready else ():
          log(f'  {leftover} was left by an interrupted preparation: delete it when no '
              'prepare is running')
      parts.append(state)
    reports.append(RecordReport(record, own, tuple(parts)))
  return reports

