r"""Prepares the datasets as TFDS ArrayRecord (once, online) and checks them before a run.

  # On a machine with internet access (pip install -r requirements-data.txt):
  python -m muppet_jax.data.prepare --mixture muppet_encoder --data_dir ~/tensorflow_datasets
  python -m muppet_jax.data.prepare --tasks rte,boolq,swag --data_dir gs://BUCKET/tfds
  # Offline, anywhere: what is there, what is missing (exit status 1 if anything is missing).
  python -m muppet_jax.data.prepare --mixture muppet_all --data_dir DIR --check

Every dataset is written in TFDS's ArrayRecord format (`file_format='array_record'`), which
`tfds.data_source` reads with random access: that is what the training streams
(`streams.open_source`) read, offline. For each dataset of the selection, `prepare`

- skips it if it is already prepared as ArrayRecord;
- converts it in place if it was prepared as TFRecord (e.g. by an earlier `tfds.load`), without
  downloading anything: each TFRecord shard's serialized examples are copied unchanged into an
  ArrayRecord shard of the same name and length, and `array_record` is added to the formats of
  its dataset_info.json (the TFRecord files stay, so `tfds.load` keeps working). TFDS's own
  converter needs apache_beam; this one does not;
- otherwise downloads and prepares it with its TFDS builder (TFDS-native datasets; RACE is two
  configs, race/high + race/middle) or with the local builder of `hf_builders.py` for the six
  datasets that exist only on the Hugging Face hub (these need the `datasets` package);
- for datasets that need a manual download (XSum), prints what to fetch and where to put it
  (`--manual_dir`, TFDS's default `<data_dir>/downloads/manual`), and goes on with the others.

A table at the end lists each dataset, its splits with their number of examples, and its status.

Before a run, `preflight(task_names, data_dir)` checks the same offline in seconds (dataset
directories, formats, splits and shard files, no network and no TFDS builder code) and samples
a few records of each split through the dataset's mapper, and raises one `DataNotPreparedError`
naming everything that is missing and the command that prepares it.

Your own datasets: every function here takes `catalogue.DatasetRecord`s, so a dataset
registered with `tasks.register_dataset` (a TFDS builder of your own, imported before the call)
is prepared by `prepare_records([record], data_dir)` or, once registered in the process, by
`--tasks <slug>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import constants as tfds_constants
from tensorflow_datasets.core import dataset_info as tfds_dataset_info
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core.utils import py_utils as tfds_py_utils

from muppet_jax.data import catalogue
from muppet_jax.data import hf_builders
from muppet_jax.data import preprocessors
from muppet_jax.data import tasks
from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.errors import UserError

_ARRAY_RECORD = file_adapters.FileFormat.ARRAY_RECORD
_TFRECORD = file_adapters.FileFormat.TFRECORD

# Records of each split that the preflight maps (spread evenly over the split).
PREFLIGHT_SAMPLE = 32

# Files a manual-download builder expects in its manual dir (checked before preparing, so that
# the instructions come at once instead of after a partial download).
_MANUAL_FILES: Mapping[str, tuple[str, ...]] = {
    'xsum': ('xsum-extracts-from-downloads.tar.gz',),
}


class DataNotPreparedError(UserError):
  """Datasets of a run are missing, incomplete, in the wrong format or unreadable by their
  mapper; the message lists every one of them and the command that prepares them."""


class Status(enum.Enum):
  """The state of one dataset on disk (check) or the outcome of preparing it."""

  PRESENT = 'present'  # Prepared as ArrayRecord with every split needed.
  PREPARED = 'prepared'  # Downloaded and prepared now.
  CONVERTED = 'converted'  # TFRecord converted to ArrayRecord now.
  MISSING = 'missing'  # Not prepared (this version).
  WRONG_FORMAT = 'wrong format'  # Prepared, but not as ArrayRecord (TFRecord: convertible).
  INCOMPLETE = 'incomplete'  # A needed split or shard file is missing.
  MANUAL = 'manual download needed'  # Needs files only the user can fetch (XSum).
  FAILED = 'failed'  # Preparing raised; the problem says why.

  @property
  def ready(self) -> bool:
    """Whether the data can be read (as ArrayRecord) after this status."""
    return self in (Status.PRESENT, Status.PREPARED, Status.CONVERTED)


# Most severe first: a record with several TFDS datasets (RACE) shows its worst status.
_SEVERITY = (Status.FAILED, Status.MANUAL, Status.MISSING, Status.INCOMPLETE,
             Status.WRONG_FORMAT, Status.CONVERTED, Status.PREPARED, Status.PRESENT)


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
  """One TFDS dataset version: `name[/config]:version` ('glue/rte:2.0.0', 'hf_swag:1.0.0')."""

  name: str
  config: str
  version: str

  @classmethod
  def parse(cls, spec: str) -> TfdsDataset:
    name_config, _, version = spec.partition(':')
    name, _, config = name_config.partition('/')
    if not name or not version:
      raise ValueError(f"TFDS dataset {spec!r} must be 'name[/config]:version'")
    return cls(name=name, config=config, version=version)

  @property
  def full_name(self) -> str:
    name = f'{self.name}/{self.config}' if self.config else self.name
    return f'{name}:{self.version}'

  def directory(self, data_dir: str) -> epath.Path:
    """`<data_dir>/<name>[/<config>]/<version>`, where TFDS writes the prepared files."""
    path = epath.Path(data_dir) / self.name
    return (path / self.config if self.config else path) / self.version


def tfds_datasets(record: DatasetRecord) -> tuple[TfdsDataset, ...]:
  """The TFDS datasets a record reads: () for in-memory (demo) data, two for RACE.

  Raises:
    UserError: the record has no data of its own (the SuperGLUE umbrella record).
  """
  kind, _, name = record.source.partition(':')
  if kind == 'hf':
    return (TfdsDataset.parse(hf_builders.tfds_name(record.source)),)
  if kind != 'tfds':
    return ()  # Embedded data: nothing to prepare.
  if not record.has_training_data or ':' not in name:
    raise UserError(f'{record.slug} ({record.name}) has no data of its own to prepare: '
                    f'{record.notes}')
  return tuple(TfdsDataset.parse(spec) for spec in name.split('+'))


def split_names(record: DatasetRecord, splits: Iterable[str]) -> tuple[str, ...]:
  """The dataset's own names of canonical splits ('validation' -> 'dev' for RACE); canonical
  splits the record does not have are left out."""
  mapping = tasks.split_map(record)
  return tuple(dict.fromkeys(mapping[s] for s in splits if s in mapping))


def resolve_data_dir(value: str | os.PathLike | None) -> str:
  """The TFDS data dir a run reads: `value`, or TFDS's default when empty.

  TFDS's default is $TFDS_DATA_DIR if set, else ~/tensorflow_datasets (read now, not at import,
  so that setting the variable in a notebook takes effect). '~' is expanded.
  """
  value = os.fspath(value) if value else ''
  if not value:
    value = tfds_constants.get_default_data_dir()
  return os.path.expanduser(value)


# ---------------------------------------------------------------------------------------------
# Checking what is on disk (offline: files only, no builder code, no network).
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetState:
  """What one TFDS dataset looks like on disk (or after preparing it).

  Attributes:
    dataset: the TFDS dataset.
    status: see `Status`.
    split_sizes: examples per needed split, for the splits found.
    problem: what is wrong and how to fix it ('' when ready).
    convertible: prepared as TFRecord with every shard present (`convert_to_array_record`).
  """

  dataset: TfdsDataset
  status: Status
  split_sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)
  problem: str = ''
  convertible: bool = False


def _formats(info) -> list[str]:
  """File formats of a dataset_info proto; '' (old preparations) means TFRecord."""
  return [info.file_format or _TFRECORD.value, *info.alternative_file_formats]


def _missing_shards(info, directory: epath.Path, split: str, file_format,
                    present: set[str]) -> list[str]:
  split_info = tfds_dataset_info.get_split_dict_from_proto(
      info, data_dir=directory, file_format=file_format)[split]
  return [f for f in split_info.filenames if f not in present]


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
    return DatasetState(dataset, Status.MISSING, problem=problem)
  try:
    info = tfds_dataset_info.read_from_json(info_path)
  except Exception as e:  # pylint: disable=broad-except  (a damaged json is a data problem)
    return DatasetState(dataset, Status.INCOMPLETE,
                        problem=f'unreadable {info_path} ({e}): delete {directory} and prepare '
                                'again')
  formats = _formats(info)
  present = {p.name for p in directory.iterdir()}
  known = {s.name: s for s in info.splits}
  lacking = [s for s in splits if s not in known]
  sizes = {s: int(sum(known[s].shard_lengths)) for s in splits if s in known}
  convertible = _TFRECORD.value in formats and not lacking and not any(
      _missing_shards(info, directory, s, _TFRECORD, present) for s in splits)
  if _ARRAY_RECORD.value not in formats:
    fix = ('prepare converts it in place, no download' if convertible else
           f'not convertible (splits or shards missing): delete {directory} and prepare again')
    return DatasetState(dataset, Status.WRONG_FORMAT, sizes, convertible=convertible,
                        problem=f'prepared as {"/".join(formats)}, not array_record; {fix}')
  if lacking:
    return DatasetState(
        dataset, Status.INCOMPLETE, sizes,
        problem=f'no split {", ".join(lacking)} (has {", ".join(sorted(known))}): delete '
                f'{directory} and prepare again')
  missing = [f for s in splits for f in _missing_shards(info, directory, s, _ARRAY_RECORD,
                                                         present)]
  if missing:
    fix = 'prepare again (converts them)' if convertible else \
        f'delete {directory} and prepare again'
    return DatasetState(dataset, Status.INCOMPLETE, sizes, convertible=convertible,
                        problem=f'{len(missing)} array_record shard file(s) missing, e.g. '
                                f'{missing[0]}: {fix}')
  return DatasetState(dataset, Status.PRESENT, sizes)


@dataclasses.dataclass(frozen=True)
class RecordReport:
  """One catalogue record's datasets on disk (or after preparing them).

  Attributes:
    record: the dataset's record.
    splits: the record's own split names that were checked.
    parts: one state per TFDS dataset (two for RACE; none for embedded demo data).
  """

  record: DatasetRecord
  splits: tuple[str, ...]
  parts: tuple[DatasetState, ...]

  @property
  def status(self) -> Status:
    """The worst status of its parts (embedded data is always present)."""
    statuses = {p.status for p in self.parts}
    return next((s for s in _SEVERITY if s in statuses), Status.PRESENT)

  @property
  def split_sizes(self) -> dict[str, int]:
    """Examples per split, summed over the parts."""
    sizes: dict[str, int] = {}
    for part in self.parts:
      for split, n in part.split_sizes.items():
        sizes[split] = sizes.get(split, 0) + n
    return sizes

  @property
  def source(self) -> str:
    if not self.parts:
      return self.record.source
    return '+'.join(p.dataset.full_name for p in self.parts)


def check_records(records: Iterable[DatasetRecord], data_dir: str,
                  splits: Sequence[str] = (tasks.TRAIN, tasks.VALIDATION)
                  ) -> list[RecordReport]:
  """The on-disk state of each record's datasets (offline, files only).

  Args:
    records: the datasets.
    data_dir: the TFDS data dir (`resolve_data_dir`).
    splits: canonical splits to check ('train', 'validation').
  """
  reports = []
  for record in records:
    own = split_names(record, splits)
    parts = tuple(check_dataset(d, data_dir, own) for d in tfds_datasets(record))
    reports.append(RecordReport(record, own, parts))
  return reports


# ---------------------------------------------------------------------------------------------
# Converting a TFRecord preparation (no apache_beam, no download).
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Conversion:
  """What `convert_to_array_record` did."""

  shards_written: int  # ArrayRecord shard files written (existing ones are kept).
  examples: int  # Examples copied into them.


def _copy_shard(in_path: epath.Path, out_path: epath.Path, length: int) -> int:
  """Copies one TFRecord shard's serialized examples into an ArrayRecord shard; returns their
  number. Written under a temporary name and renamed only if complete and of `length`."""
  count = 0

  def keyed():
    nonlocal count
    tfrecord = file_adapters.ADAPTER_FOR_FORMAT[_TFRECORD]
    for count, serialized in enumerate(tfrecord.make_tf_data(in_path).as_numpy_iterator(), 1):
      yield count, serialized

  with tfds_py_utils.incomplete_file(out_path) as tmp_path:
    file_adapters.ADAPTER_FOR_FORMAT[_ARRAY_RECORD].write_examples(tmp_path, keyed())
    if count != length:
      raise ValueError(f'{in_path} holds {count} examples, dataset_info.json says {length}: the '
                       f'preparation is damaged; delete {out_path.parent} and prepare again')
  return count


def convert_to_array_record(directory: str | os.PathLike) -> Conversion:
  """Adds ArrayRecord shards to a TFDS dataset prepared as TFRecord, in place.

  Each TFRecord shard's serialized examples are copied unchanged, in order, into the
  ArrayRecord shard of the same split and shard index (TFDS's file naming and writer options),
  so `tfds.data_source` reads exactly the examples `tfds.load` reads. Shards are written
  atomically and existing ones are skipped, so an interrupted conversion resumes. Finally
  'array_record' is added to the formats of dataset_info.json (its `alternative_file_formats`,
  as TFDS's own in-place conversion does); the TFRecord files are kept.

  Args:
    directory: the dataset version directory (`<data_dir>/<name>[/<config>]/<version>`).

  Raises:
    ValueError: the directory holds no TFRecord preparation, or a shard's example count differs
      from dataset_info.json (damaged files).
  """
  directory = epath.Path(directory)
  info = tfds_dataset_info.read_proto_from_builder_dir(directory)
  formats = _formats(info)
  if _TFRECORD.value not in formats:
    raise ValueError(f'{directory} is not a TFRecord preparation (formats: {formats})')
  sources = tfds_dataset_info.get_split_dict_from_proto(info, data_dir=directory,
                                                        file_format=_TFRECORD)
  targets = tfds_dataset_info.get_split_dict_from_proto(info, data_dir=directory,
                                                        file_format=_ARRAY_RECORD)
  shards = examples = 0
  for name, source in sources.items():
    for in_path, out_path, length in zip(source.filepaths, targets[name].filepaths,
                                         source.shard_lengths):
      if out_path.exists():
        continue
      count = _copy_shard(in_path, out_path, length)
      shards += 1
      examples += count
  if _ARRAY_RECORD.value not in formats:
    info.alternative_file_formats.append(_ARRAY_RECORD.value)
    tfds_dataset_info.write_dataset_info_proto(info, dataset_info_dir=directory)
  return Conversion(shards_written=shards, examples=examples)


# ---------------------------------------------------------------------------------------------
# Preparing (online).
# ---------------------------------------------------------------------------------------------


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
          file_format=_ARRAY_RECORD,
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
      parts.append(state)
    reports.append(RecordReport(record, own, tuple(parts)))
  return reports


def format_table(reports: Sequence[RecordReport]) -> str:
  """The dataset | source | splits (examples) | examples | status table, then the problems."""
  header = ('dataset', 'source', 'splits', 'examples', 'status')
  rows = []
  for report in reports:
    sizes = report.split_sizes
    splits = ' '.join(f'{s}={sizes[s]:,}' if s in sizes else f'{s}=-' for s in report.splits)
    total = f'{sum(sizes.values()):,}' if sizes else '-'
    status = report.status.value + (' (embedded)' if not report.parts else '')
    rows.append((report.record.slug, report.source, splits, total, status))
  widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]

  def line(row) -> str:
    cells = [str(v).rjust(w) if c == 3 else str(v).ljust(w)
             for c, (v, w) in enumerate(zip(row, widths))]
    return '  '.join(cells).rstrip()

  lines = [line(header), line(['-' * w for w in widths])] + [line(r) for r in rows]
  counts: dict[str, int] = {}
  for report in reports:
    counts[report.status.value] = counts.get(report.status.value, 0) + 1
  lines.append(f'{len(reports)} datasets: ' + ', '.join(f'{n} {s}' for s, n in counts.items()))
  problems = [(r.record.slug, p) for r in reports for p in r.parts if p.problem]
  if problems:
    lines.append('')
    lines.extend(f'{slug} ({p.dataset.full_name}): {p.problem}' for slug, p in problems)
  return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------
# Preflight (before every run: offline, seconds).
# ---------------------------------------------------------------------------------------------


def _needs_manual_download(dataset: TfdsDataset) -> bool:
  try:
    return bool(getattr(tfds.builder_cls(dataset.name), 'MANUAL_DOWNLOAD_INSTRUCTIONS', None))
  except Exception:  # pylint: disable=broad-except  (a builder not importable here: unknown)
    return False


def prepare_command(records: Iterable[DatasetRecord], data_dir: str) -> str:
  """The command that prepares `records` under `data_dir`."""
  return (f'python -m muppet_jax.data.prepare --tasks {",".join(r.slug for r in records)} '
          f'--data_dir {data_dir}')


def _sample_indices(size: int, sample: int) -> list[int]:
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
  evaluation, `preprocessors.mapper_for`), checking each example like the streams do
  (`tasks.check_family_example`).
  """
  from muppet_jax.data import streams  # pylint: disable=g-import-not-at-top  (imports grain)
  source = streams.open_source(record, split, data_dir)
  indices = _sample_indices(len(source), sample)
  evaluation = split != tasks.TRAIN
  mapper = preprocessors.mapper_for(record.slug, evaluation=evaluation)
  counter = preprocessors.DropCounter()  # Local: the run's own drop accounting stays clean.
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
              if p.status == Status.MISSING and _needs_manual_download(p.dataset)]
    lines.append('Prepare them (once; downloading needs internet access, converting does not)'
                 + (f'; {", ".join(manual)} needs a manual download first, the command says '
                    'what to fetch' if manual else '') + ':')
    lines.append(f'  {prepare_command([r.record for r in unready], data_dir)}')
  if unready and unreadable:
    lines.append('And:')
  lines.extend(f'  {line}' for line in unreadable)
  raise DataNotPreparedError('\n'.join(lines))


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def select_records(mixture: str = '', task_list: str = '') -> list[DatasetRecord]:
  """The records of a registered mixture, or of comma-separated slugs / task names.

  Raises:
    catalogue.UnknownNameError: an unknown name (close matches named).
    UserError: a record with no data (the SuperGLUE umbrella).
  """
  if mixture:
    return [tasks.record_for_task(name) for name, _ in tasks.mixture_tasks(mixture)]
  records = []
  for name in (n.strip() for n in task_list.split(',')):
    if not name:
      continue
    task_name = name if name.startswith('muppet_') else f'muppet_{name}'
    try:
      record = tasks.record_for_task(task_name)
    except catalogue.UnknownNameError:
      record = catalogue.get(name)  # The umbrella record (no task), or close matches.
      tfds_datasets(record)  # Raises: no data of its own.
      raise
    if record not in records:
      records.append(record)
  if not records:
    raise UserError('--tasks is empty: give comma-separated slugs or task names, e.g. rte,boolq')
  return records


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m muppet_jax.data.prepare',
      description='Download and prepare datasets as TFDS ArrayRecord (or --check them offline).')
  which = parser.add_mutually_exclusive_group(required=True)
  which.add_argument('--mixture', help='a registered mixture: muppet_all, muppet_encoder, ...')
  which.add_argument('--tasks', help='comma-separated slugs or task names: rte,boolq,muppet_swag')
  parser.add_argument('--data_dir', default='',
                      help="TFDS data dir to write ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  parser.add_argument('--manual_dir', default='',
                      help='manually downloaded files (XSum); default <data_dir>/downloads/manual')
  parser.add_argument('--check', action='store_true',
                      help='only report present / missing / wrong format, offline; exit 1 if '
                           'anything is not present')
  args = parser.parse_args(argv)
  try:
    records = select_records(args.mixture or '', args.tasks or '')
  except (UserError, catalogue.UnknownNameError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  data_dir = resolve_data_dir(args.data_dir)
  if args.check:
    reports = check_records(records, data_dir)
  else:
    epath.Path(data_dir).mkdir(parents=True, exist_ok=True)
    reports = prepare_records(records, data_dir, manual_dir=args.manual_dir)
  print()
  print(format_table(reports))
  failed = [r for r in reports if not r.status.ready]
  if failed:
    if args.check:
      manual = [p.dataset.full_name for r in failed for p in r.parts
                if p.status == Status.MISSING and _needs_manual_download(p.dataset)]
      print(f'\nnot ready: {", ".join(r.record.slug for r in failed)}. Prepare them with\n  '
            f'{prepare_command([r.record for r in failed], data_dir)}')
      if manual:
        print(f'({", ".join(manual)} needs a manual download first: that command says what to '
              'fetch and where to put it.)')
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
