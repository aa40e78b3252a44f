"""Converting a TFRecord preparation to ArrayRecord in place (no apache_beam, no download).

Each shard is written under a temporary name and renamed when complete, and 'array_record' is
added to dataset_info.json only after the last one: a conversion killed half-way leaves a
dataset that `check` reports as not yet converted, and the next `prepare` converts the shards
that are missing.
"""

from __future__ import annotations

import dataclasses
import os

from etils import epath
from tensorflow_datasets.core import dataset_info as tfds_dataset_info
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core.utils import py_utils as tfds_py_utils

from muppet_jax.data.prepare.check import ARRAY_RECORD, TFRECORD, formats


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
    tfrecord = file_adapters.ADAPTER_FOR_FORMAT[TFRECORD]
    for count, serialized in enumerate(tfrecord.make_tf_data(in_path).as_numpy_iterator(), 1):
      yield count, serialized

  with tfds_py_utils.incomplete_file(out_path) as tmp_path:
    file_adapters.ADAPTER_FOR_FORMAT[ARRAY_RECORD].write_examples(tmp_path, keyed())
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
  found = formats(info)
  if TFRECORD.value not in found:
    raise ValueError(f'{directory} is not a TFRecord preparation (formats: {found})')
  sources = tfds_dataset_info.get_split_dict_from_proto(info, data_dir=directory,
                                                        file_format=TFRECORD)
  targets = tfds_dataset_info.get_split_dict_from_proto(info, data_dir=directory,
                                                        file_format=ARRAY_RECORD)
  shards = examples = 0
  for name, source in sources.items():
    for in_path, out_path, length in zip(source.filepaths, targets[name].filepaths,
                                         source.shard_lengths):
      if out_path.exists():
        continue
      count = _copy_shard(in_path, out_path, length)
      shards += 1
      examples += count
  if ARRAY_RECORD.value not in found:
    info.alternative_file_formats.append(ARRAY_RECORD.value)
    tfds_dataset_info.write_dataset_info_proto(info, dataset_info_dir=directory)
  return Conversion(shards_written=shards, examples=examples)

