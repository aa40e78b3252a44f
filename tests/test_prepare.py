"""Dataset preparation (`python -m muppet_jax.data.prepare`), the preflight and inspect, offline.

A small TFDS builder defined here (sentence pairs in GLUE RTE's field format) is really written
to ArrayRecord by `prepare_records` and read back with `tfds.data_source`; prepared as TFRecord
(3 shards) by TFDS itself, it is converted by our beam-free converter and compared with what
`tfds.load` reads from the TFRecord files. The six Hugging Face builders are prepared from
in-memory rows (`hf_builders.load_hf_split` replaced). Nothing here touches the network:
`DatasetBuilder.download_and_prepare` is made to fail wherever nothing may be downloaded.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
import transformers
from array_record.python import array_record_data_source

from configs import base as base_config
from configs import demo as demo_config
from muppet_jax import errors
from muppet_jax import sharding
from muppet_jax.data import catalogue
from muppet_jax.data import demo
from muppet_jax.data import hf_builders
from muppet_jax.data import inspect as inspect_lib
from muppet_jax.data import mappers
from muppet_jax.data import prepare
from muppet_jax.data.prepare import readiness
from muppet_jax.data import tasks
from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.data.features import Family
from muppet_jax.data.mappers import classification

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {'train': 12, 'validation': 4}


def _pair(split: str, i: int) -> dict:
  """Example i of a split of the test builder, as written (and as read back, decoded)."""
  return {'sentence1': f'{split} premise {i}', 'sentence2': f'{split} hypothesis {i}',
          'label': i % 2}


class MuppetPrepTestPairs(tfds.core.GeneratorBasedBuilder):
  """12 train / 4 validation sentence pairs with GLUE RTE's fields (read by RTE's mapper)."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'sentence1': tfds.features.Text(), 'sentence2': tfds.features.Text(),
        'label': tfds.features.ClassLabel(names=['entailment', 'not_entailment'])}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, n) for split, n in SIZES.items()}

  def _generate_examples(self, split, n):
    for i in range(n):
      yield i, _pair(split, i)


TFDS_NAME = 'muppet_prep_test_pairs:1.0.0'
RECORD = DatasetRecord(
    slug='prep_test_pairs', name='Prepare test pairs', family=Family.CLASSIFICATION,
    source=f'tfds:{TFDS_NAME}', num_classes=2, label_names=('entailment', 'not_entailment'),
    train_size=12, eval_size=4)


def _register(monkeypatch, record: DatasetRecord, mapper) -> None:
  """Registers a test dataset; its mapper leaves mappers.MAPPERS after the test."""
  monkeypatch.setitem(mappers.MAPPERS, record.slug, mapper)
  tasks.register_dataset(record)


@pytest.fixture
def no_download(monkeypatch):
  """Any attempt to download or generate a dataset fails the test."""

  def fail(self, *args, **kwargs):
    raise AssertionError(f'{self.name}: download_and_prepare called')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', fail)


@pytest.fixture(scope='module')
def array_dir(tmp_path_factory):
  """The test dataset prepared by `prepare_records` (ArrayRecord), and the reports."""
  data_dir = str(tmp_path_factory.mktemp('array'))
  start = time.perf_counter()
  reports = prepare.prepare_records([RECORD], data_dir, log=None)
  print(f'prepare (test builder, 16 examples): {time.perf_counter() - start:.2f} s')
  return data_dir, reports


@pytest.fixture(scope='module')
def tfrecord_dir(tmp_path_factory):
  """The test dataset prepared by TFDS as TFRecord, 3 shards per split (read-only: copy it)."""
  data_dir = str(tmp_path_factory.mktemp('tfrecord'))
  tfds.builder(TFDS_NAME, data_dir=data_dir).download_and_prepare(
      file_format='tfrecord',
      download_config=tfds.download.DownloadConfig(try_download_gcs=False, num_shards=3))
  return data_dir


def _copy(data_dir: str, tmp_path) -> str:
  target = str(tmp_path / 'data')
  shutil.copytree(data_dir, target)
  return target


def _version_dir(data_dir: str) -> str:
  return os.path.join(data_dir, 'muppet_prep_test_pairs', '1.0.0')


def _info_json(data_dir: str) -> dict:
  with open(os.path.join(_version_dir(data_dir), 'dataset_info.json')) as f:
    return json.load(f)


def _plain(value):
  """TFDS's decoded values (numpy arrays and scalars, bytes, lists, dicts) as plain python."""
  if isinstance(value, bytes):
    return value.decode()
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_plain(v) for v in value]
  return value.item() if isinstance(value, np.generic) else value


def _decoded(examples) -> list[dict]:
  return [_plain(e) for e in examples]


def _sort(examples: list[dict]) -> list[dict]:
  return sorted(examples, key=lambda e: json.dumps(e, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# prepare: ArrayRecord, skip, convert.
# ---------------------------------------------------------------------------------------------


def test_prepare_writes_array_record_that_data_source_reads(array_dir):
  data_dir, reports = array_dir
  (report,) = reports
  assert report.status == prepare.Status.PREPARED
  assert report.split_sizes == SIZES
  files = os.listdir(_version_dir(data_dir))
  assert sorted(f for f in files if '.array_record-' in f) == [
      'muppet_prep_test_pairs-train.array_record-00000-of-00001',
      'muppet_prep_test_pairs-validation.array_record-00000-of-00001']
  assert not [f for f in files if '.tfrecord-' in f]
  assert _info_json(data_dir)['fileFormat'] == 'array_record'
  sources = tfds.data_source(TFDS_NAME, data_dir=data_dir, download=False)
  for split, n in SIZES.items():
    assert len(sources[split]) == n
    read = _decoded(sources[split][i] for i in range(n))
    assert _sort(read) == _sort([_pair(split, i) for i in range(n)])
  table = prepare.format_table(reports)
  assert re.search(r'prep_test_pairs\s+muppet_prep_test_pairs:1.0.0\s+train=12 validation=4'
                   r'\s+16\s+prepared', table), table


def test_prepare_skips_what_is_prepared(array_dir, no_download):
  data_dir, _ = array_dir
  version_dir = _version_dir(data_dir)
  before = {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns for f in os.listdir(version_dir)}
  (report,) = prepare.prepare_records([RECORD], data_dir, log=None)
  assert report.status == prepare.Status.PRESENT
  after = {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns for f in os.listdir(version_dir)}
  assert after == before


def _tfrecord_order(data_dir: str, split: str) -> list[dict]:
  """What tf.data reads from the TFRecord shards, in file order."""
  return _decoded(tfds.load(TFDS_NAME, data_dir=data_dir, split=split, download=False,
                            shuffle_files=False).as_numpy_iterator())


def test_tfrecord_preparation_is_converted_not_downloaded(tfrecord_dir, tmp_path, no_download):
  data_dir = _copy(tfrecord_dir, tmp_path)
  expected = {split: _tfrecord_order(data_dir, split) for split in SIZES}
  assert {s: len(e) for s, e in expected.items()} == SIZES
  start = time.perf_counter()
  (report,) = prepare.prepare_records([RECORD], data_dir, log=None)
  print(f'convert (test builder, 6 shards, 16 examples): {time.perf_counter() - start:.2f} s')
  assert report.status == prepare.Status.CONVERTED, report.parts[0].problem
  assert report.split_sizes == SIZES

  # tfds.data_source reads exactly what tfds.load reads from the TFRecord files, in order.
  sources = tfds.data_source(TFDS_NAME, data_dir=data_dir, download=False)
  for split, examples in expected.items():
    assert _decoded(sources[split][i] for i in range(len(sources[split]))) == examples
    assert _tfrecord_order(data_dir, split) == examples  # The TFRecord view still works.

  # Every shard's serialized examples were copied unchanged, and the formats recorded.
  info = _info_json(data_dir)
  assert info['fileFormat'] == 'tfrecord' and info['alternativeFileFormats'] == ['array_record']
  for split in info['splits']:
    lengths = [int(n) for n in split['shardLengths']]
    assert len(lengths) == 3 and sum(lengths) == SIZES[split['name']]
    for shard, length in enumerate(lengths):
      stem = os.path.join(_version_dir(data_dir),
                          f'muppet_prep_test_pairs-{split["name"]}.%s-{shard:05d}-of-00003')
      original = [r.numpy() for r in tf.data.TFRecordDataset(stem % 'tfrecord')]
      copied = array_record_data_source.ArrayRecordDataSource([stem % 'array_record'])
      assert len(original) == length == len(copied)
      assert [copied[i] for i in range(length)] == original


def test_conversion_resumes_and_rejects_damaged_shards(tfrecord_dir, tmp_path):
  data_dir = _copy(tfrecord_dir, tmp_path)
  version_dir = _version_dir(data_dir)
  done = prepare.convert_to_array_record(version_dir)
  assert done == prepare.Conversion(shards_written=6, examples=16)
  # An interrupted conversion: one shard missing. Only that shard is written again.
  lost = 'muppet_prep_test_pairs-train.array_record-00001-of-00003'
  os.remove(os.path.join(version_dir, lost))
  state = prepare.check_dataset(prepare.TfdsDataset.parse(TFDS_NAME), data_dir,
                                ('train', 'validation'))
  assert state.status == prepare.Status.INCOMPLETE and state.convertible
  assert lost in state.problem
  length = int(_info_json(data_dir)['splits'][0]['shardLengths'][1])
  again = prepare.convert_to_array_record(version_dir)
  assert again == prepare.Conversion(shards_written=1, examples=length)
  assert _info_json(data_dir)['alternativeFileFormats'] == ['array_record']

  # A TFRecord shard shorter than dataset_info.json says: an error, and no partial shard.
  damaged = _copy(tfrecord_dir, tmp_path / 'damaged')
  shard = os.path.join(_version_dir(damaged),
                       'muppet_prep_test_pairs-validation.tfrecord-00000-of-00003')
  with tf.io.TFRecordWriter(shard):
    pass  # Empty.
  with pytest.raises(ValueError, match='damaged'):
    prepare.convert_to_array_record(_version_dir(damaged))
  assert not [f for f in os.listdir(_version_dir(damaged))
              if f.startswith('muppet_prep_test_pairs-validation.array_record-00000')]
  assert 'alternativeFileFormats' not in _info_json(damaged)


# ---------------------------------------------------------------------------------------------
# prepare --check and the command line.
# ---------------------------------------------------------------------------------------------


def _cli(capsys, *argv) -> tuple[int, str]:
  code = prepare.main(list(argv))
  captured = capsys.readouterr()
  return code, captured.out + captured.err


def test_check_reports_present_missing_and_wrong_format_offline(
    array_dir, tfrecord_dir, tmp_path, capsys, monkeypatch, no_download):
  _register(monkeypatch, RECORD, classification.map_rte)
  args = ('--tasks', 'prep_test_pairs', '--check', '--data_dir')

  code, out = _cli(capsys, *args, array_dir[0])
  assert code == 0
  assert re.search(r'train=12 validation=4\s+16\s+present', out), out

  missing_dir = str(tmp_path / 'not_there')
  code, out = _cli(capsys, *args, missing_dir)
  assert code == 1 and re.search(r'prep_test_pairs .*\s+missing', out), out
  assert f'python -m muppet_jax.data.prepare --tasks prep_test_pairs --data_dir {missing_dir}' \
      in out
  assert not os.path.exists(missing_dir)  # --check writes nothing.

  code, out = _cli(capsys, *args, tfrecord_dir)
  assert code == 1 and re.search(r'\s+wrong format', out), out
  assert 'prepared as tfrecord, not array_record; prepare converts it in place' in out

  incomplete = _copy(array_dir[0], tmp_path)
  os.remove(os.path.join(_version_dir(incomplete),
                         'muppet_prep_test_pairs-validation.array_record-00000-of-00001'))
  code, out = _cli(capsys, *args, incomplete)
  assert code == 1 and re.search(r'\s+incomplete', out), out
  assert 'validation.array_record-00000-of-00001' in out


def test_cli_selection_errors(capsys):
  code, out = _cli(capsys, '--tasks', 'superglue', '--check')
  assert code == 2 and 'no data of its own' in out
  code, out = _cli(capsys, '--tasks', 'rtee', '--check')
  assert code == 2 and 'rte' in out and 'did you mean' in out
  assert [r.slug for r in prepare.select_records(task_list='rte,muppet_boolq,rte')] == [
      'rte', 'boolq']
  encoder = prepare.select_records(mixture='muppet_encoder')
  assert [r.task_name for r in encoder] == [n for n, _ in tasks.mixture_tasks('muppet_encoder')]


# ---------------------------------------------------------------------------------------------
# The Hugging Face builders and XSum's manual download.
# ---------------------------------------------------------------------------------------------

# One row per dataset in the format `datasets` yields (HF dataset cards), keyed by slug.
HF_ROWS = {
    'hans': {'premise': 'The doctor saw the lawyer .', 'hypothesis': 'The lawyer saw the '
             'doctor .', 'label': 1, 'parse_premise': '(ROOT (S))', 'parse_hypothesis':
             '(ROOT (S))', 'binary_parse_premise': '( ( The doctor ) )',
             'binary_parse_hypothesis': '( ( The lawyer ) )', 'heuristic': 'lexical_overlap',
             'subcase': 'ln_subject/object_swap', 'template': 'temp1'},
    'rotten_tomatoes': {'text': 'a gorgeous , witty , seductive movie .', 'label': 1},
    'wiki_qa': {'question_id': 'Q1', 'question': 'how are glacier caves formed?',
                'document_title': 'Glacier cave', 'answer': 'A glacier cave is a cave formed '
                'within the ice of a glacier .', 'label': 1},
    'swag': {'video-id': 'anetv_jkn6uvmqwh4', 'fold-ind': '3416', 'startphrase': 'Members of '
             'the procession walk down the street. A drum line', 'sent1': 'Members of the '
             'procession walk down the street.', 'sent2': 'A drum line', 'gold-source': 'gold',
             'ending0': 'passes by playing their instruments.', 'ending1': 'has heard them.',
             'ending2': 'arrives and they are asleep.', 'ending3': 'turns the singer.',
             'label': 0},
    'commonsense_qa': {'id': '075e483d21c29a511267ef62bedc0461', 'question': 'The sanctions '
                       'against the school seemed to what the efforts it had made?',
                       'question_concept': 'punishing', 'choices': {
                           'label': ['A', 'B', 'C', 'D', 'E'],
                           'text': ['ignore', 'enforce', 'authoritarian', 'yell at', 'avoid']},
                       'answerKey': 'A'},
    'sciq': {'question': 'What type of organism is used to make cheese and yogurt?',
             'distractor3': 'viruses', 'distractor1': 'protozoa', 'distractor2': 'gymnosperms',
             'correct_answer': 'mesophilic organisms', 'support': 'Mesophiles grow best in '
             'moderate temperature.'},
}
# Unlabelled test rows as the hub has them (SWAG test labels are -1).
HF_TEST_OVERRIDES = {'swag': {'label': -1}, 'commonsense_qa': {'answerKey': ''}}


def _hf_row(slug: str, split: str) -> dict:
  row = dict(HF_ROWS[slug])
  if split == 'test':
    row.update(HF_TEST_OVERRIDES.get(slug, {}))
  first_text = next(k for k, v in row.items() if isinstance(v, str) and ' ' in v)
  row[first_text] = f'{split}: {row[first_text]}'  # Tells the splits apart when read back.
  return row


def test_every_catalogue_dataset_is_preparable_and_only_xsum_is_manual(tmp_path):
  manual = []
  for record in catalogue.RECORDS:
    if not record.has_training_data:
      continue
    for dataset in prepare.tfds_datasets(record):
      # Offline: only builder code, the data_dir is empty. TFDS generates only the code's
      # canonical (or newest) version; a pinned version it cannot generate would fail there.
      builder = tfds.builder(dataset.full_name, data_dir=str(tmp_path))
      assert str(builder.version) == dataset.version
      assert dataset.version in {str(builder.canonical_version), str(max(builder.versions))}
      assert not isinstance(builder, tfds.core.BeamBasedBuilder), dataset.full_name
      if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        manual.append(dataset.full_name)
  assert manual == ['xsum:1.1.0']


def test_the_six_hf_only_datasets_have_builders():
  hf_sources = {r.source for r in catalogue.RECORDS if r.source.startswith('hf:')}
  assert len(hf_sources) == 6 and set(hf_builders.BUILDER_NAMES) == hf_sources
  assert {catalogue.get(s).source for s in HF_ROWS} == hf_sources


@pytest.mark.parametrize('slug', sorted(HF_ROWS))
def test_hf_builder_prepares_array_record_offline(slug, tmp_path, monkeypatch):
  record = catalogue.get(slug)
  builder_name = hf_builders.BUILDER_NAMES[record.source]
  calls = []

  def load_hf_split(source, split):
    assert source.dataset_id in record.source
    calls.append(split)
    return [_hf_row(slug, split)]

  monkeypatch.setattr(hf_builders, 'load_hf_split', load_hf_split)
  data_dir = str(tmp_path)
  (report,) = prepare.prepare_records([record], data_dir, log=None)
  assert report.status == prepare.Status.PREPARED, report.parts[0].problem
  declared = hf_builders.declared_splits(builder_name)
  assert sorted(calls) == sorted(declared)
  assert tfds.builder_cls(builder_name).code_path is None
  assert 'apache_beam' not in sys.modules
  version_dir = os.path.join(data_dir, builder_name, '1.0.0')
  assert sorted(f for f in os.listdir(version_dir) if '.array_record-' in f) == sorted(
      f'{builder_name}-{s}.array_record-00000-of-00001' for s in declared)
  sources = tfds.data_source(hf_builders.tfds_name(record.source), data_dir=data_dir,
                             download=False)
  for split in declared:
    assert _decoded([sources[split][0]]) == [_hf_row(slug, split)]
  # The rows in the hub's format go through the dataset's mapper: the preflight passes.
  prepare.preflight([record.task_name], data_dir)


def test_xsum_prints_what_to_fetch_and_where(tmp_path, capsys, no_download):
  data_dir = str(tmp_path / 'tfds')
  code, out = _cli(capsys, '--tasks', 'xsum', '--data_dir', data_dir)
  assert code == 1
  default_manual = os.path.join(data_dir, 'downloads', 'manual')
  assert re.search(r'xsum\s+xsum:1.1.0\s.*manual download needed', out), out
  assert f'put xsum-extracts-from-downloads.tar.gz in {default_manual}' in out
  assert 'https://github.com/EdinburghNLP/XSum' in out  # The builder's own instructions.

  manual = tmp_path / 'manual'
  (report,) = prepare.prepare_records([catalogue.get('xsum')], data_dir,
                                      manual_dir=str(manual), log=None)
  assert report.status == prepare.Status.MANUAL and str(manual) in report.parts[0].problem
  xsum = prepare.TfdsDataset.parse('xsum:1.1.0')
  manual.mkdir()
  (manual / 'xsum-extracts-from-downloads.tar.gz').write_bytes(b'')
  assert prepare.manual_download_problem(xsum, data_dir, str(manual)) == ''
  assert prepare.manual_download_problem(prepare.TfdsDataset.parse('glue/rte:2.0.0'),
                                         data_dir) == ''


# ---------------------------------------------------------------------------------------------
# Preflight.
# ---------------------------------------------------------------------------------------------


def _command_tasks(message: str) -> list[str]:
  match = re.search(r'python -m muppet_jax\.data\.prepare --tasks (\S+) --data_dir (\S+)',
                    message)
  assert match, message
  return match.group(1).split(',')


def test_resolve_data_dir(monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', '/data/tfds')
  assert prepare.resolve_data_dir('') == '/data/tfds'
  assert prepare.resolve_data_dir(None) == '/data/tfds'
  assert prepare.resolve_data_dir('/elsewhere') == '/elsewhere'
  monkeypatch.delenv('TFDS_DATA_DIR')
  home = os.path.expanduser('~')
  assert prepare.resolve_data_dir('') == os.path.join(home, 'tensorflow_datasets')
  assert prepare.resolve_data_dir('~/d') == os.path.join(home, 'd')


def test_preflight_names_every_missing_dataset_of_the_mixture(tmp_path, no_download):
  names = [n for n, _ in tasks.mixture_tasks('muppet_encoder')]
  with pytest.raises(prepare.DataNotPreparedError) as e:
    prepare.preflight(names, str(tmp_path))
  message = str(e.value)
  assert isinstance(e.value, errors.UserError)
  slugs = [tasks.record_for_task(n).slug for n in names]
  assert _command_tasks(message) == slugs and len(slugs) == 41
  assert f'--data_dir {tmp_path}' in message
  for slug in slugs:
    assert f'{slug} (' in message
  assert 'race (race/high:2.0.0+race/middle:2.0.0)' in message
  assert message.startswith(f'41 of 41 datasets of this run are not ready under {tmp_path}')


def test_preflight_data_dir_that_does_not_exist(tmp_path, no_download):
  missing = str(tmp_path / 'nope')
  with pytest.raises(prepare.DataNotPreparedError, match='does not exist') as e:
    prepare.preflight(['muppet_rte', 'muppet_demo_sentiment', 'muppet_swag'], missing)
  assert _command_tasks(str(e.value)) == ['rte', 'swag']  # Demo data is embedded.


def test_preflight_lists_each_kind_of_problem_in_one_message(
    tfrecord_dir, tmp_path, monkeypatch, no_download):
  _register(monkeypatch, RECORD, classification.map_rte)
  data_dir = _copy(tfrecord_dir, tmp_path)
  with pytest.raises(prepare.DataNotPreparedError) as e:
    prepare.preflight([RECORD.task_name, 'muppet_rte', 'muppet_demo_sentiment'], data_dir)
  message = str(e.value)
  assert message.startswith('2 of 2 datasets of this run are not ready')
  assert '  not prepared: rte (glue/rte:2.0.0)' in message
  assert ('  not in ArrayRecord format: prep_test_pairs (muppet_prep_test_pairs:1.0.0: prepared '
          'as tfrecord, not array_record; prepare converts it in place, no download)') in message
  assert _command_tasks(message) == ['prep_test_pairs', 'rte']
  # A missing split: the evaluation split of a dataset whose catalogue names another one.
  renamed = dataclasses.replace(RECORD, slug='prep_test_dev', eval_split='dev')
  _register(monkeypatch, renamed, classification.map_rte)
  prepare.convert_to_array_record(_version_dir(data_dir))
  with pytest.raises(prepare.DataNotPreparedError) as e:
    prepare.preflight([renamed.task_name], data_dir)
  assert "prep_test_dev (muppet_prep_test_pairs:1.0.0: no split dev (has train, validation)" \
      in str(e.value)


def test_preflight_passes_when_prepared_and_for_demo_tasks(array_dir, monkeypatch, no_download):
  _register(monkeypatch, RECORD, classification.map_rte)
  assert prepare.preflight([RECORD.task_name, 'muppet_demo_sentiment'], array_dir[0]) is None
  demo_names = [r.task_name for r in demo.RECORDS]
  assert prepare.preflight(demo_names, '/nonexistent/tfds') is None


def test_preflight_catches_a_mapper_that_rejects_every_record(array_dir, monkeypatch,
                                                              no_download):
  rejecting = dataclasses.replace(RECORD, slug='prep_test_rejecting')
  invalid = dataclasses.replace(RECORD, slug='prep_test_invalid')

  def reject(raw):
    raise mappers.BadRecord('no usable label')

  def emit_label_7(raw):
    return [{'text_a': raw['sentence1'], 'text_b': raw['sentence2'], 'label': 7}]

  _register(monkeypatch, RECORD, classification.map_rte)
  _register(monkeypatch, rejecting, reject)
  _register(monkeypatch, invalid, emit_label_7)
  with pytest.raises(prepare.DataNotPreparedError) as e:
    prepare.preflight([rejecting.task_name, invalid.task_name, RECORD.task_name], array_dir[0])
  message = str(e.value)
  assert message.startswith('2 of 3 datasets of this run are not ready')
  assert ('prep_test_rejecting: its mapper keeps none of the sampled records (train: none of '
          '12 kept, no usable label x12; validation: none of 4 kept, no usable label x4)') \
      in message
  assert 'python -m muppet_jax.data.inspect --task muppet_prep_test_rejecting' in message
  assert 'prep_test_invalid: its mapper keeps none' in message
  assert 'label 7 not in [0, 2)' in message
  assert 'python -m muppet_jax.data.prepare' not in message  # Preparing would not help.
  # Up to 32 records, spread over a larger split.
  assert readiness.sample_indices(1000, 32)[:3] == [0, 32, 64]
  assert len(readiness.sample_indices(1000, 32)) == 32
  assert readiness.sample_indices(3, 32) == [0, 1, 2]


# ---------------------------------------------------------------------------------------------
# Runs: train.run and inspect preflight before anything else; the maintainers' offline check.
# ---------------------------------------------------------------------------------------------


def test_train_run_preflights_before_the_mesh(tmp_path, monkeypatch, no_download):
  from muppet_jax import train  # pylint: disable=g-import-not-at-top  (the whole trainer)
  _register(monkeypatch, RECORD, classification.map_rte)

  def no_mesh(*args, **kwargs):
    raise AssertionError('the mesh was built before the preflight')

  monkeypatch.setattr(sharding, 'make_mesh', no_mesh)
  config = demo_config.get_config()
  config.data.mixture = RECORD.task_name
  config.data.tfds_data_dir = str(tmp_path / 'empty')
  with pytest.raises(prepare.DataNotPreparedError, match='prep_test_pairs'):
    train.run(config, str(tmp_path / 'workdir'))
  assert not os.path.exists(tmp_path / 'workdir')
  # Fine-tuning a summarization task from a (BART) workdir with a RoBERTa config: the model
  # type is adopted after the preflight, which must not reject the task's family.
  config.data.mixture = 'muppet_xsum'
  config.finetune.from_workdir = str(tmp_path / 'pre_finetuned')
  with pytest.raises(prepare.DataNotPreparedError, match='xsum'):
    train.run(config, str(tmp_path / 'workdir'))


def test_inspect_preflights_and_reads_prepared_records(array_dir, tmp_path, capsys,
                                                       monkeypatch, no_download):
  code = inspect_lib.main(['--task', 'muppet_rte', '--tfds_data_dir', str(tmp_path)])
  err = capsys.readouterr().err
  assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith('error: ')
  assert f'python -m muppet_jax.data.prepare --tasks rte --data_dir {tmp_path}' in err
  _register(monkeypatch, RECORD, classification.map_rte)
  code = inspect_lib.main(['--task', RECORD.task_name, '--split', 'validation', '--num', '2',
                           '--tfds_data_dir', array_dir[0]])
  out = capsys.readouterr().out
  assert code == 0
  raws = [json.loads(m) for m in re.findall(r'-- raw \d:\n(\{.*?\n\})', out, re.S)]
  assert len(raws) == 2
  assert all(r in [_pair('validation', i) for i in range(4)] for r in raws)
  assert f'"text_a": "{raws[0]["sentence1"]}"' in out


def _tiny_roberta(path: str) -> str:
  """A tiny random RoBERTa and the demo tokenizer, saved as a Hugging Face directory."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(
      demo.build_tokenizer(os.path.join(path, 'cache')))
  config = transformers.RobertaConfig(
      vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
      intermediate_size=32, max_position_embeddings=520, pad_token_id=tokenizer.pad_token_id,
      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
  model_dir = os.path.join(path, 'model')
  transformers.RobertaModel(config).save_pretrained(model_dir)
  tokenizer.save_pretrained(model_dir)
  return model_dir


def test_base_config_offline_with_empty_data_dir_names_every_missing_dataset(tmp_path):
  model_dir = _tiny_roberta(str(tmp_path))
  data_dir = tmp_path / 'tfds'
  data_dir.mkdir()
  env = dict(os.environ, HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1',
             JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=8')
  start = time.perf_counter()
  result = subprocess.run(
      [sys.executable, '-m', 'muppet_jax.main', '--config', os.path.join(REPO, 'configs',
                                                                          'base.py'),
       '--workdir', str(tmp_path / 'workdir'), f'--config.model.init_from={model_dir}',
       f'--config.data.tfds_data_dir={data_dir}'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  print(f'configs/base.py, nothing prepared: exit {result.returncode} after '
        f'{time.perf_counter() - start:.1f} s')
  output = result.stdout + result.stderr
  assert result.returncode != 0
  assert 'Traceback' not in output
  assert result.stderr.strip().splitlines()[-1].startswith('error: 41 of 41 datasets')
  expected = [tasks.record_for_task(n).slug
              for n, _ in tasks.mixture_tasks(base_config.get_config().data.mixture)]
  assert len(expected) == 41
  assert _command_tasks(output) == expected
  for network_error in ('ConnectionError', 'HTTPSConnection', 'Max retries', 'Retrying',
                        'urlopen', 'NameResolutionError'):
    assert network_error not in output


def test_prepared_dataset_is_trained_on_and_resumes_exactly(array_dir, tmp_path, monkeypatch,
                                                             no_download):
  """The ArrayRecord files `prepare` wrote feed a real run through the grain streams (with
  evaluation on the prepared validation split), and a run killed after its first checkpoint
  resumes to the same parameters and the same input positions."""
  import conftest  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from muppet_jax import checkpoint  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from muppet_jax import train  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  _register(monkeypatch, RECORD, classification.map_rte)

  def config():
    c = conftest.trained_demo_config()
    c.data.mixture = RECORD.task_name
    c.data.tfds_data_dir = array_dir[0]
    c.train.steps = 4
    c.train.checkpoint_every = 2
    c.data.eval_examples = -1
    return c

  straight = str(tmp_path / 'straight')
  result = train.run(config(), straight)
  assert result.step == 4
  assert result.eval_metrics[RECORD.task_name]['examples'] == SIZES['validation']
  # Every example trained on is one record of the prepared split (RTE's mapper: one each), so
  # the streams' positions add up to the examples the metrics counted.
  with open(os.path.join(straight, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  trained = sum(l[RECORD.task_name]['examples'] for l in lines if 'loss' in l)
  final = checkpoint.read_checkpoint(straight, 4)
  positions = final.data_state['streams'][RECORD.task_name]
  assert sorted(positions) == ['0', '1'] and trained > 2 * SIZES['train']  # Several epochs.
  assert sum(p['next_index'] for p in positions.values()) == trained
  assert all(p['offset'] == 0 for p in positions.values())

  resumed = str(tmp_path / 'resumed')
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '4'))  # "Killed" after step 2's save.
  assert train.run(config(), resumed).step == 4
  again = checkpoint.read_checkpoint(resumed, 4)
  assert again.data_state == final.data_state
  for a, b in zip(jax_leaves(again.state['params']), jax_leaves(final.state['params'])):
    np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  return jax.tree.leaves(tree)


# ---------------------------------------------------------------------------------------------
# Damaged shards and interrupted preparations (docs/ARCHITECTURE.md, Faults).
# ---------------------------------------------------------------------------------------------


def _shard(data_dir: str, split: str) -> str:
  return os.path.join(_version_dir(data_dir),
                      f'muppet_prep_test_pairs-{split}.array_record-00000-of-00001')


def _damaged_line(out: str) -> str:
  (line,) = [l for l in out.splitlines() if ' is damaged: ' in l]
  return line


def _run_config(data_dir: str):
  import conftest  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  config = conftest.trained_demo_config()
  config.data.mixture = RECORD.task_name
  config.data.tfds_data_dir = data_dir
  return config


def test_a_truncated_shard_is_named_by_check_verify_and_by_a_run(array_dir, tmp_path, capsys,
                                                                  monkeypatch, no_download):
  from muppet_jax import train  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from muppet_jax.data import shards  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  _register(monkeypatch, RECORD, classification.map_rte)
  data_dir = _copy(array_dir[0], tmp_path)
  shard = _shard(data_dir, 'train')
  with open(shard, 'r+b') as f:
    f.truncate(os.path.getsize(shard) // 2)  # A copy to a bucket cut short.
  # What TFDS alone makes of it: records of empty fields, which a mapper drops without a word.
  assert tfds.data_source(TFDS_NAME, split='train', data_dir=data_dir, download=False)[3] == {
      'label': None, 'sentence1': None, 'sentence2': None}

  code, out = _cli(capsys, '--tasks', RECORD.slug, '--check', '--data_dir', data_dir)
  assert code == 0  # Every file is there: only reading them tells.
  code, out = _cli(capsys, '--tasks', RECORD.slug, '--check', '--verify', '--data_dir', data_dir)
  assert code == 1 and re.search(r'train=12 validation=4\s+16\s+damaged', out), out
  line = _damaged_line(out)
  assert line == (
      f'prep_test_pairs ({TFDS_NAME}), split train: the prepared file {shard} is damaged: holds '
      '0 records, its metadata says 12 (truncated or overwritten). Prepare the dataset again: '
      f'delete {_version_dir(data_dir)} and run `python -m muppet_jax.data.prepare --tasks '
      f'prep_test_pairs --data_dir {data_dir}`')

  workdir = tmp_path / 'run'
  with pytest.raises(shards.DamagedDataError) as raised:
    train.run(_run_config(data_dir), str(workdir))
  assert str(raised.value) == line  # The same line, before the first step.
  assert not workdir.exists()


def test_a_corrupted_record_stops_reading_naming_its_shard(array_dir, tmp_path, capsys,
                                                           monkeypatch, no_download):
  from muppet_jax import train  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from muppet_jax.data import shards  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from muppet_jax.data import streams  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  _register(monkeypatch, RECORD, classification.map_rte)
  data_dir = _copy(array_dir[0], tmp_path)
  shard = _shard(data_dir, 'train')
  with open(shard, 'r+b') as f:  # One bit of the first record's chunk: its checksum fails.
    f.seek(200)
    byte = f.read(1)
    f.seek(200)
    f.write(bytes([byte[0] ^ 0x01]))

  code, out = _cli(capsys, '--tasks', RECORD.slug, '--check', '--verify', '--data_dir', data_dir)
  assert code == 1
  line = _damaged_line(out)
  assert line.startswith(f'prep_test_pairs ({TFDS_NAME}), split train: the prepared file '
                         f'{shard} is damaged: records 0-11 cannot be read (RuntimeError: '
                         'Corrupted Riegeli/records file')
  # The record counts are intact, so the split opens; reading the damaged record stops.
  records = streams.open_source(RECORD, 'train', data_dir)
  readable = []
  with pytest.raises(shards.DamagedDataError) as raised:
    for i in range(len(records)):
      readable.append(records[i])
  message = str(raised.value)
  assert message.startswith(f'prep_test_pairs ({TFDS_NAME}), split train: the prepared file '
                            f'{shard} is damaged: record ')
  assert 'Corrupted Riegeli/records file' in message and 'Prepare the dataset again' in message
  assert '\n' not in message
  with pytest.raises(shards.DamagedDataError, match='is damaged: record'):
    train.run(_run_config(data_dir), str(tmp_path / 'run'))


_SLOW_BUILDER = '''
import os
import time

import tensorflow_datasets as tfds


class MuppetPrepSlowPairs(tfds.core.GeneratorBasedBuilder):
  """The test pairs, generated slowly: blocks in the train split while BLOCK_FILE is set."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'sentence1': tfds.features.Text(), 'sentence2': tfds.features.Text(),
        'label': tfds.features.ClassLabel(names=['entailment', 'not_entailment'])}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, n)
            for split, n in (('train', 12), ('validation', 4))}

  def _generate_examples(self, split, n):
    for i in range(n):
      if split == 'train' and i == 6 and os.environ.get('BLOCK_FILE'):
        open(os.environ['BLOCK_FILE'], 'w').close()
        time.sleep(600)  # Killed here.
      yield i, {'sentence1': f'{split} premise {i}', 'sentence2': f'{split} hypothesis {i}',
                'label': i % 2}
'''


def test_prepare_killed_mid_dataset_is_never_present_and_finishes_when_run_again(tmp_path):
  builder_dir, data_dir = tmp_path / 'builder', str(tmp_path / 'data')
  builder_dir.mkdir()
  (builder_dir / 'muppet_prep_slow_builder.py').write_text(_SLOW_BUILDER)
  record = dataclasses.replace(RECORD, slug='prep_slow_pairs', name='Prepare slow pairs',
                               source='tfds:muppet_prep_slow_pairs:1.0.0')
  block = tmp_path / 'blocked'
  script = (
      'import sys; sys.path.insert(0, sys.argv[1]); import muppet_prep_slow_builder\n'
      'import dataclasses\n'
      'from muppet_jax.data import mappers, prepare, tasks\n'
      'from muppet_jax.data.catalogue import DatasetRecord\n'
      'from muppet_jax.data.features import Family\n'
      'from muppet_jax.data.mappers import classification\n'
      f'record = DatasetRecord(slug={record.slug!r}, name={record.name!r}, '
      f'family=Family.CLASSIFICATION, source={record.source!r}, num_classes=2, '
      f'label_names={record.label_names!r}, train_size=12, eval_size=4)\n'
      'mappers.MAPPERS[record.slug] = classification.map_rte\n'
      'tasks.register_dataset(record)\n'
      'prepare.prepare_records([record], sys.argv[2])\n')
  log = tmp_path / 'prepare.log'
  with open(log, 'w') as output:
    proc = subprocess.Popen(
        [sys.executable, '-c', script, str(builder_dir), data_dir], cwd=REPO,
        env=dict(os.environ, BLOCK_FILE=str(block), PYTHONPATH=REPO),
        stdout=output, stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  while not block.exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.2)
  assert block.exists(), log.read_text()[-3000:]  # It reached the middle of the train split.
  proc.kill()  # SIGKILL, half-way through the dataset.
  proc.wait()

  sys.path.insert(0, str(builder_dir))
  try:
    import muppet_prep_slow_builder  # pylint: disable=g-import-not-at-top,import-outside-toplevel,unused-import
  finally:
    sys.path.remove(str(builder_dir))
  (report,) = prepare.check_records([record], data_dir)
  assert report.status == prepare.Status.MISSING  # Not present, not even incomplete.
  (part,) = report.parts
  assert 'an interrupted preparation left' in part.problem and 'incomplete.' in part.problem
  (report,) = prepare.prepare_records([record], data_dir, log=None)
  assert report.status == prepare.Status.PREPARED, report.parts[0].problem
  (report,) = prepare.check_records([record], data_dir, verify=True)
  assert report.status == prepare.Status.PRESENT and report.split_sizes == SIZES
