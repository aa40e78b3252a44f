"""Local TFDS builders for the datasets that exist only on the Hugging Face hub.

HANS, Rotten Tomatoes, WikiQA, SWAG, CommonsenseQA and SciQ have no TFDS builder. Each gets a
small `tfds.core.GeneratorBasedBuilder` here whose features copy the HF dataset card, so that
every dataset of the catalogue goes through the same path (TFDS -> seqio Task -> mapper) and
works offline under `tfds.testing.mock_data`, which only needs the features.

They are prepared like every other dataset, as TFDS ArrayRecord, by
`python -m muppet_jax.data.prepare --tasks hans,swag,... --data_dir DIR` (TFDS's generator
path: no apache_beam). Preparing reads the data with the HF `datasets` library
(requirements-data.txt), imported lazily because it is only needed then. `datasets` >= 4
refuses repositories that still hold a loading script (HANS): for those the hub's automatic
parquet export (`refs/convert/parquet`) is read instead.

HotpotQA has no builder here: the catalogue uses TFDS `mrqa/hotpot_qa` (see catalogue.py).

Importing this module registers the builders with TFDS (names in `BUILDER_NAMES`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import tensorflow_datasets as tfds

_Text = tfds.features.Text
_ClassLabel = tfds.features.ClassLabel

_VERSION = tfds.core.Version('1.0.0')
_RELEASE_NOTES = {'1.0.0': 'Features of the Hugging Face dataset card; data read from the hub.'}


@dataclasses.dataclass(frozen=True)
class HfSource:
  """Where a builder's data lives on the Hugging Face hub.

  Attributes:
    dataset_id: hub repository id, e.g. 'allenai/swag'.
    config: dataset config (subset) name, or None for the default one.
    splits: split names the hub provides (TFDS uses the same names).
  """

  dataset_id: str
  config: str | None
  splits: tuple[str, ...]


def load_hf_split(source: HfSource, split: str) -> Any:
  """Returns one split of a hub dataset as a `datasets.Dataset` (needs network access).

  Raises:
    ImportError: the `datasets` package is not installed.
  """
  try:
    import datasets  # pylint: disable=g-import-not-at-top  # Heavy and only needed online.
  except ImportError as e:
    raise ImportError(
        f'Preparing {source.dataset_id} needs the Hugging Face `datasets` package: '
        'pip install -r requirements-data.txt (or pip install datasets)') from e
  try:
    return datasets.load_dataset(source.dataset_id, source.config, split=split)
  except RuntimeError as e:
    # datasets >= 4 no longer runs loading scripts ("Dataset scripts are no longer supported");
    # the hub keeps a parquet export of every public dataset on this branch.
    if 'script' not in str(e).lower():
      raise
  revision = 'refs/convert/parquet'
  try:
    return datasets.load_dataset(source.dataset_id, source.config, split=split,
                                 revision=revision)
  except ValueError:
    # Some exports name the only subset 'default' instead of the script's config name.
    return datasets.load_dataset(source.dataset_id, 'default', split=split, revision=revision)


class _HfBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base: features come from `_features()`, data from the hub source `HF`."""

  VERSION = _VERSION
  RELEASE_NOTES = _RELEASE_NOTES
  HF: HfSource
  HOMEPAGE: str = ''
  DESCRIPTION: str = ''

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    """None: TFDS only uses the code path to find a checksums file, and none is needed here.

    The data comes through the HF library, not the TFDS download manager. (TFDS's own
    implementation also imports `importlib_resources`, which TFDS declares as a dependency
    only for Python < 3.9, so preparing a builder defined outside TFDS fails without this.)
    """
    return None

  def _features(self) -> Mapping[str, tfds.features.FeatureConnector]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict(dict(self._features())),
        homepage=self.HOMEPAGE or f'https://huggingface.co/datasets/{self.HF.dataset_id}',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The HF library downloads and caches the files itself.
    return {split: self._generate_examples(split) for split in self.HF.splits}

  def _convert(self, row: dict[str, Any]) -> dict[str, Any]:
    """Turns one HF row into this builder's feature dict (identity unless overridden)."""
    return {name: row[name] for name in self.info.features}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for index, row in enumerate(load_hf_split(self.HF, split)):
      yield index, self._convert(row)


class HfHans(_HfBuilder):
  """HANS (McCoy et al. 2019): NLI pairs built to defeat syntactic heuristics."""

  name = 'hf_hans'
  HF = HfSource('jhu-cogsci/hans', 'plain_text', ('train', 'validation'))
  HOMEPAGE = 'https://github.com/tommccoy1/hans'
  DESCRIPTION = 'HANS: Heuristic Analysis for NLI Systems (from the Hugging Face hub).'

  def _features(self):
    text_fields = ('premise', 'hypothesis', 'parse_premise', 'parse_hypothesis',
                   'binary_parse_premise', 'binary_parse_hypothesis', 'heuristic', 'subcase',
                   'template')
    features = {name: _Text() for name in text_fields}
    features['label'] = _ClassLabel(names=['entailment', 'non-entailment'])
    return features


class HfRottenTomatoes(_HfBuilder):
  """Rotten Tomatoes movie-review sentences (Pang and Lee 2005), binary sentiment."""

  name = 'hf_rotten_tomatoes'
  HF = HfSource('cornell-movie-review-data/rotten_tomatoes', None,
                ('train', 'validation', 'test'))
  DESCRIPTION = 'Rotten Tomatoes sentence polarity (from the Hugging Face hub).'

  def _features(self):
    return {'text': _Text(), 'label': _ClassLabel(names=['neg', 'pos'])}


class HfWikiQa(_HfBuilder):
  """WikiQA (Yang et al. 2015): answer-sentence selection as pair classification."""

  name = 'hf_wiki_qa'
  HF = HfSource('microsoft/wiki_qa', None, ('train', 'validation', 'test'))
  DESCRIPTION = 'WikiQA answer sentence selection (from the Hugging Face hub).'

  def _features(self):
    return {
        'question_id': _Text(),
        'question': _Text(),
        'document_title': _Text(),
        'answer': _Text(),
        'label': _ClassLabel(names=['0', '1']),
    }


class HfSwag(_HfBuilder):
  """SWAG (Zellers et al. 2018), config 'regular': pick the ending of a video caption."""

  name = 'hf_swag'
  HF = HfSource('allenai/swag', 'regular', ('train', 'validation', 'test'))
  DESCRIPTION = 'SWAG, regular config (from the Hugging Face hub); test labels are -1.'

  def _features(self):
    text_fields = ('video-id', 'fold-ind', 'startphrase', 'sent1', 'sent2', 'gold-source',
                   'ending0', 'ending1', 'ending2', 'ending3')
    features = {name: _Text() for name in text_fields}
    features['label'] = _ClassLabel(names=['0', '1', '2', '3'])
    return features


class HfCommonsenseQa(_HfBuilder):
  """CommonsenseQA (Talmor et al. 2019): 5-way multiple choice."""

  name = 'hf_commonsense_qa'
  HF = HfSource('tau/commonsense_qa', None, ('train', 'validation', 'test'))
  DESCRIPTION = 'CommonsenseQA (from the Hugging Face hub); test answerKey is empty.'

  def _features(self):
    return {
        'id': _Text(),
        'question': _Text(),
        'question_concept': _Text(),
        'choices': tfds.features.Sequence({'label': _Text(), 'text': _Text()}),
        'answerKey': _Text(),
    }


class HfSciq(_HfBuilder):
  """SciQ (Welbl et al. 2017): science exam questions, correct answer + 3 distractors."""

  name = 'hf_sciq'
  HF = HfSource('allenai/sciq', None, ('train', 'validation', 'test'))
  DESCRIPTION = 'SciQ (from the Hugging Face hub); the correct answer is not shuffled in.'

  def _features(self):
    text_fields = ('question', 'distractor3', 'distractor1', 'distractor2', 'correct_answer',
                   'support')
    return {name: _Text() for name in text_fields}


_BUILDERS: tuple[type[_HfBuilder], ...] = (
    HfHans, HfRottenTomatoes, HfWikiQa, HfSwag, HfCommonsenseQa, HfSciq)

# TFDS builder name of each hub dataset, keyed by 'hf:<dataset id>[/<config>]' as in the
# catalogue's `source` field.
BUILDER_NAMES: Mapping[str, str] = {
    'hf:' + b.HF.dataset_id + (f'/{b.HF.config}' if b.HF.config else ''): b.name
    for b in _BUILDERS
}


def tfds_name(source: str) -> str:
  """The local TFDS builder name with version ('hf_swag:1.0.0') for 'hf:<id>[/<config>]'.

  Raises:
    KeyError: no local builder for that source.
  """
  try:
    return f'{BUILDER_NAMES[source]}:{_VERSION}'
  except KeyError:
    raise KeyError(f'no local TFDS builder for {source!r}; known: {sorted(BUILDER_NAMES)}'
                   ) from None


def declared_splits(builder_name: str) -> tuple[str, ...]:
  """The split names a local builder declares (known offline, unlike TFDS split info)."""
  for builder in _BUILDERS:
    if builder.name == builder_name:
      return builder.HF.splits
  raise KeyError(f'unknown local builder {builder_name!r}')
