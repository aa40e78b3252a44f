"""The vocabulary of dataset preparation: TFDS datasets, their on-disk status, the reports.

`TfdsDataset` names one TFDS dataset version (`glue/rte:2.0.0`); `tfds_datasets(record)` gives
those a catalogue record reads (two for RACE, none for the embedded demo). A dataset's state on
disk (`check.py`) or after preparing it (`build.py`) is a `DatasetState` with a `Status`; a
record's states together are a `RecordReport`.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Iterable, Mapping

from etils import epath
from tensorflow_datasets.core import constants as tfds_constants

from muppet_jax.data import hf_builders
from muppet_jax.data import tasks
from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.errors import UserError


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
  # A shard does not hold the records its metadata says, or cannot be read (--verify).
  DAMAGED = 'damaged'


  @property
  def ready(self) -> bool:
    """Whether the data can be read (as ArrayRecord) after this status."""
    return self in (Status.PRESENT, Status.PREPARED, Status.CONVERTED)


# Most severe first: a record with several TFDS datasets (RACE) shows its worst status.
SEVERITY = (Status.FAILED, Status.DAMAGED, Status.MANUAL, Status.MISSING, Status.INCOMPLETE,
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
    return next((s for s in SEVERITY if s in statuses), Status.PRESENT)

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

