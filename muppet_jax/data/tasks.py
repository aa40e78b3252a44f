"""seqio registration of the pre-finetuning tasks and mixtures: the registry of names, splits,
mappers and natural rates.

Importing this module registers (idempotently: importing again is a no-op):

- one seqio Task `muppet_<slug>` per catalogue record with training data (46: the 47 of the
  paper's appendix A.1 minus the SuperGLUE umbrella record), and one per demo task;
- the mixtures, with natural rates (proportional to each task's training examples, from the
  catalogue, since TFDS split sizes are not available offline):
    `muppet_all`: the 45 of Table 1 (catalogue.default_mixture_records(): everything with
      training data except Multi-News, see catalogue.EXCLUDED_FROM_ALL);
    `muppet_encoder`: `muppet_all` without summarization (RoBERTa has no decoder);
    `muppet_demo`, `muppet_demo_encoder`: the embedded offline demo, with and without its
      summarization task;
  and, on request, `first_k_mixture(k)`: the first k tasks in the paper's order (section 5.1).
A run's tasks are its mixture's, chosen by `select_tasks` (`data.num_tasks`: a seeded random
subset that keeps `data.required_tasks`, without `data.excluded_tasks`).

Splits. Every task has the canonical splits 'train' and 'validation', mapped to the dataset's
real split names from the catalogue (e.g. RACE 'validation' -> 'dev', MNLI -> 'validation_
matched', AG News -> 'test'). They are always passed to seqio explicitly: seqio's TfdsDataSource
otherwise asks TFDS for the split list, which is empty offline and under mock data.

Training and evaluation do not read through seqio: they read the same TFDS data with grain
random-access streams (`streams.py`) and apply the same mapper functions. The seqio Tasks are
the registry, and the tf.data view for anyone who wants it: TFDS source (for HF-only datasets,
the local builders of hf_builders.py) -> one dataset-level preprocessor that runs the dataset's
python mapper (`mappers.MAPPERS[slug]`, raw example as plain python -> 0..n family
examples; bad records are dropped and counted by the process-wide `DROP_COUNTER`) -> a `tf.data`
dataset of family examples with a fixed signature per task (`example_signature`). The tasks
have no `output_features` (tokenization happens in batching), so
`task.get_dataset(sequence_length=None, split=..., shuffle=False)` works. TFDS 4.9 reads tf.data
only from a TFRecord preparation (`python -m muppet_jax.data.prepare` writes ArrayRecord; a
TFRecord preparation it converted keeps both).

`register_dataset(record, mapper)` adds a dataset of your own; `SeqioVocabulary` wraps a run's
tokenizer as a `seqio.Vocabulary`.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from muppet_jax import errors
from muppet_jax.data import catalogue
from muppet_jax.data import demo
from muppet_jax.data import hf_builders
from muppet_jax.data import mappers
from muppet_jax.data.catalogue import TRAIN  # pylint: disable=unused-import  (public name)
from muppet_jax.data.catalogue import VALIDATION  # pylint: disable=unused-import
from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.data.catalogue import UnknownNameError
from muppet_jax.data.catalogue import split_map
from muppet_jax.data.mappers import DROP_COUNTER
from muppet_jax.data.mappers import check_family_example
from muppet_jax.data.mappers import to_python
from muppet_jax.data.features import Family
from muppet_jax.data.features import TaskTable
from muppet_jax.data.vocab import HFVocabulary

_TF_TYPES = {str: tf.TensorSpec([], tf.string), list: tf.TensorSpec([None], tf.string),
             int: tf.TensorSpec([], tf.int64)}

# The tf.data element signature of each family's examples (mappers.FAMILY_FIELDS).
FAMILY_SIGNATURES: Mapping[Family, Mapping[str, tf.TensorSpec]] = {
    family: {k: _TF_TYPES[t] for k, t in fields.items()}
    for family, fields in mappers.FAMILY_FIELDS.items()}


def example_signature(record: DatasetRecord,
                      evaluation: bool = False) -> dict[str, tf.TensorSpec]:
  """The tf.data element signature of a task's family examples (`mappers.example_fields`:
  the family's fields and the dataset's optional ones)."""
  return {k: _TF_TYPES[t] for k, t in mappers.example_fields(record, evaluation).items()}


MUPPET_ALL = 'muppet_all'
MUPPET_ENCODER = 'muppet_encoder'
MUPPET_DEMO = 'muppet_demo'
MUPPET_DEMO_ENCODER = 'muppet_demo_encoder'

_ENCODER_FAMILIES = (Family.CLASSIFICATION, Family.MULTIPLE_CHOICE, Family.SPAN)

# ---------------------------------------------------------------------------------------------
# seqio's tf.data view: raw TFDS examples -> family examples.
# ---------------------------------------------------------------------------------------------


class MapToFamily:
  """seqio dataset-level preprocessor: raw TFDS examples -> family examples via a python mapper.

  Iterates the raw dataset as numpy, decodes it to plain python, calls the dataset's mapper
  (`mappers.MAPPERS[slug]`) through `DROP_COUNTER` (bad records are dropped and
  counted), checks each result and re-emits it with `tf.data.Dataset.from_generator` and the
  family's fixed signature. A summary line of the task's drops is logged when a stream is
  exhausted or closed.
  """

  def __init__(self, record: DatasetRecord):
    self._record = record

  def __repr__(self) -> str:
    return f'MapToFamily({self._record.slug})'

  def __call__(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
    record = self._record
    if record.slug not in mappers.MAPPERS:
      raise ValueError(f'{record.task_name}: no mapper for {record.slug!r} in '
                       'mappers.MAPPERS')

    def generate() -> Iterator[dict[str, Any]]:
      try:
        for raw in dataset.as_numpy_iterator():
          for example in DROP_COUNTER.apply(record.slug, to_python(raw)):
            yield check_family_example(example, record)
      finally:
        counts = DROP_COUNTER.counts.get(record.slug)
        if counts and counts['dropped']:
          logging.info('%s: stream closed; so far kept %d records, dropped %s',
                       record.task_name, counts['kept'], counts['dropped'])

    return tf.data.Dataset.from_generator(generate, output_signature=example_signature(record))


# ---------------------------------------------------------------------------------------------
# Data sources.
# ---------------------------------------------------------------------------------------------


def _catalogue_sizes(record: DatasetRecord) -> dict[str, int]:
  sizes = {}
  if record.train_split:
    sizes[TRAIN] = record.train_size
  if record.eval_split:
    sizes[VALIDATION] = record.eval_size
  return sizes


class CatalogueTfdsSource(seqio.TfdsDataSource):
  """A TfdsDataSource that falls back to the catalogue when TFDS has no split info.

  Offline (and under mock data) `builder.info.splits` is empty, so seqio's size and shard
  lookups raise; sizes then come from the catalogue (they only decide seqio's in-memory caching
  of small datasets, our rates are explicit) and sharding happens per example.
  """

  def __init__(self, tfds_name: str, record: DatasetRecord):
    super().__init__(tfds_name=tfds_name, splits=split_map(record))
    self._sizes = _catalogue_sizes(record)

  def num_input_examples(self, split: str) -> int | None:
    try:
      return super().num_input_examples(split)
    except KeyError:  # No split info: not prepared, offline, or mock data.
      return self._sizes.get(split)

  def list_shards(self, split: str) -> Sequence[str]:
    try:
      return super().list_shards(split)
    except KeyError:  # No split info: Task.get_dataset then shards per example.
      return []


class MultiTfdsSource(seqio.DataSource):
  """Several TFDS configs read as one dataset (RACE = race/high + race/middle)."""

  def __init__(self, tfds_names: Sequence[str], record: DatasetRecord):
    splits = split_map(record)
    super().__init__(splits=tuple(splits), num_input_examples=_catalogue_sizes(record))
    self._loaders = tuple(seqio.utils.LazyTfdsLoader(name, split_map=splits)
                          for name in tfds_names)

  def __repr__(self) -> str:
    return f'MultiTfdsSource({[loader.name for loader in self._loaders]})'

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    # No file-level sharding across configs: seqio shards the examples instead.
    return []

  def _weights(self, split: str) -> list[float] | None:
    try:
      return [float(loader.size(split)) for loader in self._loaders]
    except KeyError:  # Sizes unknown offline: sample the configs uniformly.
      return None

  def get_dataset(self, split: str = TRAIN, shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: int | None = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs, shard_info  # seqio shards per example.
    parts = [loader.load(split, shuffle_files=shuffle, seed=seed) for loader in self._loaders]
    if not shuffle:
      return functools.reduce(lambda a, b: a.concatenate(b), parts)
    # Interleave at the configs' relative sizes so that no config ends the stream alone.
    return tf.data.Dataset.sample_from_datasets(parts, weights=self._weights(split), seed=seed,
                                                stop_on_empty_dataset=False)


def _demo_dataset(record: DatasetRecord, split: str, shuffle_files: bool,
                  seed: int | None = None) -> tf.data.Dataset:
  """FunctionDataSource dataset_fn: one demo split, already in family format.

  Demo tasks need no mapper, so they skip `MapToFamily` (one python round trip less per
  example) and are checked here instead.
  """
  del shuffle_files, seed  # Small and in memory: the Task's shuffle buffer shuffles it.
  examples = demo.examples(record.slug, split)

  def generate() -> Iterator[dict[str, Any]]:
    for example in examples:
      yield check_family_example(example, record)

  return tf.data.Dataset.from_generator(generate, output_signature=example_signature(record))


def _source(record: DatasetRecord) -> seqio.DataSource:
  kind, _, name = record.source.partition(':')
  if kind == 'demo':
    return seqio.FunctionDataSource(
        dataset_fn=functools.partial(_demo_dataset, record),
        splits=tuple(split_map(record)), num_input_examples=_catalogue_sizes(record))
  if kind == 'hf':
    return CatalogueTfdsSource(hf_builders.tfds_name(record.source), record)
  if kind == 'tfds':
    names = name.split('+')
    if len(names) == 1:
      return CatalogueTfdsSource(names[0], record)
    return MultiTfdsSource(names, record)
  raise ValueError(f'{record.slug}: unknown source kind in {record.source!r}')


# ---------------------------------------------------------------------------------------------
# Registration.
# ---------------------------------------------------------------------------------------------

# Every record with a registered task, by task name (catalogue and demo).
_RECORDS_BY_TASK: dict[str, DatasetRecord] = {}


def _register_task(record: DatasetRecord) -> None:
  _RECORDS_BY_TASK[record.task_name] = record
  if record.task_name in seqio.TaskRegistry.names():
    return
  is_demo = record.source.startswith('demo:')  # Already family format (see _demo_dataset).
  seqio.TaskRegistry.add(
      record.task_name,
      source=_source(record),
      preprocessors=[] if is_demo else [MapToFamily(record)],
      output_features={},  # Tokenization happens in batching.
  )


def register_dataset(record: DatasetRecord, mapper: mappers.Mapper | None = None) -> str:
  """Adds a dataset that is not in the catalogue: its seqio task `muppet_<slug>` and mapper.

  For your own data: describe it with a `catalogue.DatasetRecord` (a TFDS source
  'tfds:<name>:<version>' whose builder is registered with TFDS, family, classes, split names,
  sizes), give the function that maps one raw record to 0..n family examples
  (mappers/formats.py has the formats), prepare it with
  `python -m muppet_jax.data.prepare`, then use `data.mixture=muppet_<slug>` or put the task
  into a mixture of your own (`seqio.MixtureRegistry.add`).

  Returns:
    The task name. Registering the same record again is a no-op; another record under the
    same slug raises.
  """
  known = _RECORDS_BY_TASK.get(record.task_name)
  if known is not None and known != record:
    raise ValueError(f'task {record.task_name} is already registered with another record')
  if not record.source.startswith('demo:'):
    if mapper is None and record.slug not in mappers.MAPPERS:
      raise ValueError(f'{record.slug}: register_dataset needs a mapper (raw record -> family '
                       'examples)')
    if mapper is not None:
      mappers.MAPPERS[record.slug] = mapper
  _register_task(record)
  return record.task_name


def _register_mixture(name: str, records: Iterable[DatasetRecord]) -> str:
  """Registers a natural-rate mixture (rate = catalogue train_size) unless it exists."""
  if name not in seqio.MixtureRegistry.names():
    tasks = [(r.task_name, float(r.train_size)) for r in records]
    if not tasks:
      raise ValueError(f'mixture {name!r} would be empty')
    seqio.MixtureRegistry.add(name, tasks)
  return name


def _register_all() -> None:
  for record in catalogue.RECORDS:
    if record.has_training_data:
      _register_task(record)
  for record in demo.RECORDS:
    _register_task(record)
  default = catalogue.default_mixture_records()
  _register_mixture(MUPPET_ALL, default)
  _register_mixture(MUPPET_ENCODER, catalogue.by_family(*_ENCODER_FAMILIES, records=default))
  _register_mixture(MUPPET_DEMO, demo.RECORDS)
  # Registered even when the demo has no summarization task, so configs can rely on the name.
  _register_mixture(MUPPET_DEMO_ENCODER,
                    catalogue.by_family(*_ENCODER_FAMILIES, records=demo.RECORDS))


_register_all()


# ---------------------------------------------------------------------------------------------
# A run's tokenizer as a seqio.Vocabulary.
# ---------------------------------------------------------------------------------------------


class SeqioVocabulary(seqio.Vocabulary):
  """An `HFVocabulary` behind seqio's `Vocabulary` interface, for seqio's tf.data pipelines.

  seqio assumes pad = 0 and no BOS; this reports the tokenizer's real ids (RoBERTa `pad_id`
  is 1). muppet_jax itself never tokenizes through seqio (its tasks have no output features:
  batching tokenizes); this is for users who want the tf.data view of the registry.
  """

  def __init__(self, vocab: HFVocabulary):
    self.hf = vocab
    super().__init__(extra_ids=0)

  @property
  def eos_id(self) -> int | None:
    return self.hf.eos_id

  @property
  def pad_id(self) -> int:
    return self.hf.pad_id

  @property
  def unk_id(self) -> int | None:
    return self.hf.unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self.hf.vocab_size

  def _encode(self, s: str) -> list[int]:
    return self.hf.encode(s)

  def _decode(self, ids: Iterable[int]) -> str:
    return self.hf.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
    """Scalar string -> [n] int32; [B] strings -> ragged [B, None] int32 (tf.py_function: eager
    or in tf.data, not in saved graphs)."""
    s = tf.convert_to_tensor(s, tf.string)
    flat = tf.reshape(s, [-1])

    def encode(strings):
      ids = self.hf.encode_batch([x.decode('utf-8') for x in strings.numpy()])
      lengths = np.array([len(i) for i in ids], np.int64)
      values = np.array([t for i in ids for t in i], np.int32)
      return values, lengths

    values, lengths = tf.py_function(encode, [flat], [tf.int32, tf.int64])
    values.set_shape([None])
    lengths.set_shape([None])
    if s.shape.rank == 0:
      return values
    if s.shape.rank != 1:
      raise ValueError(f'encode_tf takes a scalar or a vector of strings, got shape {s.shape}')
    return tf.RaggedTensor.from_row_lengths(values, lengths)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """[n] ids -> scalar string; [B, n] ids -> [B] strings (special tokens and padding skipped)."""
    ids = tf.convert_to_tensor(ids)
    rank = ids.shape.rank
    if rank not in (1, 2):
      raise ValueError(f'decode_tf takes [n] or [B, n] ids, got shape {ids.shape}')
    batched = ids if rank == 2 else ids[tf.newaxis]

    def decode(x):
      return np.array([t.encode('utf-8') for t in self.hf.decode_batch(x.numpy().tolist())],
                      dtype=object)

    out = tf.py_function(decode, [batched], tf.string)
    out.set_shape([None])
    return out if rank == 2 else out[0]

  def __eq__(self, other) -> bool:
    return isinstance(other, SeqioVocabulary) and self.hf == other.hf

  def __hash__(self) -> int:
    return hash(('SeqioVocabulary', self.hf.path))


# ---------------------------------------------------------------------------------------------
# Public lookups.
# ---------------------------------------------------------------------------------------------


def _unknown(kind: str, name: str, known: Iterable[str]) -> UnknownNameError:
  known = sorted(known)
  close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
  hint = f'did you mean {close}?' if close else f'registered: {known}'
  return UnknownNameError(f'unknown {kind} {name!r}; {hint}')


def get_task(task_name: str) -> seqio.Task:
  """The registered seqio Task (e.g. 'muppet_rte'); UnknownNameError names close matches."""
  if task_name not in seqio.TaskRegistry.names():
    raise _unknown('task', task_name, [n for n in seqio.TaskRegistry.names()
                                       if n.startswith('muppet_')])
  return seqio.TaskRegistry.get(task_name)


def get_mixture(mixture_name: str) -> seqio.Mixture:
  """The registered seqio Mixture; UnknownNameError names close matches."""
  if mixture_name not in seqio.MixtureRegistry.names():
    raise _unknown('mixture', mixture_name, [n for n in seqio.MixtureRegistry.names()
                                             if n.startswith('muppet_')])
  return seqio.MixtureRegistry.get(mixture_name)


def record_for_task(task_name: str) -> DatasetRecord:
  """The catalogue (or demo) record behind a registered task name."""
  if task_name not in _RECORDS_BY_TASK:
    raise _unknown('task', task_name, _RECORDS_BY_TASK)
  return _RECORDS_BY_TASK[task_name]


def mixture_tasks(mixture_name: str) -> list[tuple[str, float]]:
  """[(task name, rate)] of a mixture, sub-mixtures expanded, in definition order.

  Rates are seqio's (`Mixture.get_rate`): a sub-mixture's rate is shared among its tasks in
  proportion to their own rates. A task listed twice appears once with its rates summed.
  """
  mixture = get_mixture(mixture_name)
  order: list[str] = []

  def visit(m: seqio.Mixture) -> None:
    for name in m.rate_per_task_name:
      if name in seqio.TaskRegistry.names():
        if name not in order:
          order.append(name)
      else:
        visit(seqio.MixtureRegistry.get(name))

  visit(mixture)
  return [(name, float(mixture.get_rate(seqio.TaskRegistry.get(name)))) for name in order]


def resolve_task_name(name: str) -> str:
  """A registered task name from a task name or a catalogue slug ('rte' -> 'muppet_rte').

  Raises:
    UnknownNameError: neither is registered (close matches named).
  """
  name = name.strip()
  for candidate in (name, f'muppet_{name}'):
    if candidate in _RECORDS_BY_TASK:
      return candidate
  raise _unknown('task', name, _RECORDS_BY_TASK)


def parse_task_list(text: str) -> list[str]:
  """Registered task names from a comma-separated list of names or slugs ('' -> [])."""
  return [resolve_task_name(part) for part in text.split(',') if part.strip()]


# Mixed into `select_tasks`' seed so that its draws are independent of other users of the
# same small integers (the run seed, the sampler).
_SUBSET_DOMAIN = 0x7A5C5


class TaskSelectionError(errors.ConfigError):
  """`data.num_tasks` / `data.required_tasks` / `data.excluded_tasks` do not fit the mixture."""


def select_tasks(mixture: Sequence[tuple[str, float]], *, num_tasks: int = -1,
                 required: Sequence[str] = (), excluded: Sequence[str] = (),
                 seed: int = 0) -> list[tuple[str, float]]:
  """The tasks of a run: `mixture` without `excluded`, then `num_tasks` of them.

  The subset holds every `required` task and a seeded random choice of the others (paper
  section 5.1 pre-finetunes on random subsets that always contain the fine-tuning targets;
  section 5.2 on 35 random tasks). The others are drawn as one seeded permutation, of which
  a subset of k takes the first k - len(required): with one seed, a larger subset contains
  every smaller one (the paper's nesting). `seed=-1` takes the others in mixture order (the
  first k). The result keeps the mixture's order and rates (task ids follow it).

  Args:
    mixture: [(task name, rate)] in the mixture's order.
    num_tasks: -1 (every task left after `excluded`) or k >= 1.
    required: task names every subset includes.
    excluded: task names removed first (held-out fine-tuning tasks).
    seed: the subset's seed (`data.subset_seed`), or -1.

  Raises:
    TaskSelectionError: a required task is excluded or not in the mixture, or k is smaller
      than the required tasks or larger than the tasks available.
  """
  names = [name for name, _ in mixture]
  excluded = set(excluded)
  clash = sorted(excluded & set(required))
  if clash:
    raise TaskSelectionError(f'tasks {clash} are both required (data.required_tasks) and '
                             'excluded (data.excluded_tasks); keep them in one list only')
  missing = [t for t in required if t not in names]
  if missing:
    raise TaskSelectionError(f'required tasks {missing} (data.required_tasks) are not in the '
                             f'mixture, whose tasks are {names}')
  kept = [(name, rate) for name, rate in mixture if name not in excluded]
  if num_tasks == -1:
    return kept
  if not len(set(required)) <= num_tasks <= len(kept):
    raise TaskSelectionError(
        f'data.num_tasks={num_tasks} must be between the {len(set(required))} required tasks '
        f'and the {len(kept)} tasks of the mixture'
        f'{" left after data.excluded_tasks" if excluded else ""}')
  others = [name for name, _ in kept if name not in required]
  if seed >= 0:
    order = np.random.default_rng([int(seed), _SUBSET_DOMAIN]).permutation(len(others))
    others = [others[i] for i in order]
  chosen = set(required) | set(others[:num_tasks - len(set(required))])
  return [(name, rate) for name, rate in kept if name in chosen]


def task_table(mixture_name: str) -> TaskTable:
  """The run's TaskTable (task ids in the mixture's order) for a mixture."""
  records = [record_for_task(name) for name, _ in mixture_tasks(mixture_name)]
  return TaskTable.build([r.task_name for r in records], [int(r.family) for r in records],
                         [r.num_classes for r in records])


def _family_suffix(families: Sequence[Family]) -> str:
  return '_'.join(f.name.lower() for f in sorted(families))


def first_k_mixture(k: int, family_filter: Family | Iterable[Family] | None = None, *,
                    base: str = MUPPET_ALL) -> str:
  """Registers the mixture of the first k tasks of `base` and returns its name.

  The order is the base mixture's definition order: for muppet_all / muppet_encoder the
  paper's appendix order, which is fixed, so a larger k always holds every task of a smaller
  one (the nesting of the paper's section 5.1 study). Rates stay natural.

  Args:
    k: number of tasks, 1 <= k <= tasks available after filtering.
    family_filter: keep only tasks of these families before taking the first k (e.g. the
      encoder families for RoBERTa); None keeps all.
    base: the mixture whose order is used.

  Returns:
    'muppet_first_<k>' for muppet_all unfiltered; otherwise '<base>_first_<k>' plus, with a
    filter, '_<family names>' (e.g. 'muppet_all_first_10_classification_span').
  """
  families = None
  if family_filter is not None:
    families = ((family_filter,) if isinstance(family_filter, Family)
                else tuple(sorted(set(family_filter))))
  records = [record_for_task(name) for name, _ in mixture_tasks(base)]
  if families is not None:
    records = [r for r in records if r.family in families]
  if not 1 <= k <= len(records):
    raise ValueError(f'k must be in [1, {len(records)}] for {base}'
                     f'{f" with families {families}" if families else ""}, got {k}')
  if base == MUPPET_ALL and families is None:
    name = f'muppet_first_{k}'
  else:
    name = f'{base}_first_{k}' + (f'_{_family_suffix(families)}' if families else '')
  return _register_mixture(name, records[:k])


def drop_counts() -> dict[str, dict[str, Any]]:
  """Records kept and dropped so far, per dataset slug (see mappers.DropCounter)."""
  return DROP_COUNTER.counts
