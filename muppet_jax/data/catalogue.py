"""One record per pre-finetuning dataset: source, family, classes, splits, sizes.

`RECORDS` holds the 47 numbered entries of the paper's appendix A.1, in the paper's order. That
order is fixed: the number-of-tasks study (paper section 5.1, `tasks.first_k_mixture`) takes
the first k tasks of `muppet_all` in this order. Sizes are hard-coded here because TFDS split
sizes are not available offline (the TFDS wheel ships no dataset_info.json); they come from
TFDS's testing metadata, the Hugging Face dataset cards and the published figures.

Decisions (each record's `notes` has the details):

- #9 "SuperGLUE" is an umbrella record with no data of its own: its
  training data are the SuperGLUE tasks listed on their own (#7 RTE, #10-#15, #45 ReCoRD). The
  alternatives were worse: AX-b/AX-g are test-only diagnostics (training on them contaminates
  them), super_glue/rte duplicates #7. It has no train split, so no seqio task is registered.
- Duplicates are kept as separate tasks with their own heads, as the paper lists them: #18
  MultiNLI (same data as #5 MNLI) and #23 ERASER MultiRC (same questions as #11 MultiRC). The
  paper's classification total (2.9M) is close to the count with MultiNLI counted twice (2.75M)
  and far from the deduplicated one (2.35M), so the paper most likely kept both.
- Summarization: #31 Multi-News is registered as a task (`muppet_multi_news`) but left out of
  the default mixtures (`EXCLUDED_FROM_ALL`): Table 1 lists 4 summarization sets with 524K
  training examples, which is exactly CNN/DM + BillSum + XSum + AESLC (524,075). So `muppet_all`
  has 45 tasks: Table 1's 46 minus the SuperGLUE umbrella.
- MRC: NQ, TriviaQA and HotpotQA use the MRQA 2019 conversions in TFDS (`mrqa/...`): clean
  character spans, contexts of tractable length, no Beam/95 GB NQ build. They are smaller than
  the originals (503K MRC examples instead of the paper's 1.05M). DROP trains only on answers
  found verbatim in the passage (the mapper drops computed numbers, dates and multi-span
  answers); its evaluation keeps every question (`mappers.EVAL_MAPPERS`).
  ReCoRD's TFDS version has no character offsets: the mapper finds the answer in the passage.
- Multiple choice: num_classes is the most choices of an example (ARC: 5, usually 4). SciQ's
  correct answer always comes first in the raw data, so the mapper shuffles the options with a
  seed derived from the example (deterministic across runs and hosts).
- Labels: each classification dataset keeps its own label order and its own head (WNLI and CB
  differ from MNLI's order on purpose). Examples with label -1 (SNLI's unlabelled `-`, GLUE and
  SuperGLUE test splits) are dropped by the mappers. Yelp's raw names '1'/'2' become
  'negative'/'positive'. TREC uses the 6 coarse labels.
- Splits: `train_split`/`eval_split` are the dataset's real split names; seqio tasks map them
  to the canonical 'train'/'validation'. RACE and DROP call it 'dev'; MNLI/MultiNLI evaluate on
  'validation_matched'. AG News, Yelp, IMDB, TREC and BillSum have no validation split: they
  evaluate on 'test' (there is no model selection on these sets during pre-finetuning; carve a
  validation slice from train when fine-tuning on them).
- Sizes count examples *after* flattening (RACE: questions, not articles; MultiRC:
  answer-level), because the natural mixing rate is about examples the model sees.
- TFDS versions are pinned (seqio requires a version; pinning also keeps runs reproducible):
  the default versions of TFDS 4.9.10.
- HF-only datasets (HANS, Rotten Tomatoes, WikiQA, SWAG, CommonsenseQA, SciQ) read through the
  feature-only local TFDS builders of `hf_builders.py`, so every dataset goes through TFDS.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping

from muppet_jax import errors
from muppet_jax.data.features import Family


class UnknownNameError(errors.UserError, KeyError):
  """An unknown dataset, task or mixture name; the message lists close matches."""

  def __str__(self) -> str:  # KeyError would print the message quoted.
    return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class DatasetRecord:
  """Static description of one dataset.

  Attributes:
    slug: short name; the seqio task is `muppet_<slug>`.
    name: human-readable name as in the paper.
    family: the task family (decides head and loss).
    source: 'tfds:<name>[/<config>]:<version>' (several joined by '+' are read as one
      dataset), 'hf:<dataset id>[/<config>]' (read through hf_builders.py) or 'demo:<name>'.
    num_classes: classes (classification) or most choices (multiple choice); 0 otherwise.
    label_names: class names in label order (classification), for `id2label` on export.
    train_split: split used for training ('' = none; evaluation-only).
    eval_split: split used for evaluation ('' = none).
    train_size: training examples (the natural mixing rate).
    eval_size: evaluation examples.
    metric: the standard metric name (see muppet_jax/eval/metrics.py).
    notes: decisions taken for this dataset (duplicates, label fixes, offsets ...).
  """

  slug: str
  name: str
  family: Family
  source: str
  num_classes: int = 0
  label_names: tuple[str, ...] = ()
  train_split: str = 'train'
  eval_split: str = 'validation'
  train_size: int = 0
  eval_size: int = 0
  metric: str = 'accuracy'
  notes: str = ''

  @property
  def task_name(self) -> str:
    return f'muppet_{self.slug}'

  @property
  def has_training_data(self) -> bool:
    """Whether the dataset can be trained on (the SuperGLUE umbrella record cannot)."""
    return bool(self.train_split) and self.train_size > 0


_C = Family.CLASSIFICATION
_MC = Family.MULTIPLE_CHOICE
_SPAN = Family.SPAN
_SUM = Family.SUMMARIZATION
_FALSE_TRUE = ('False', 'True')
_NLI3 = ('entailment', 'neutral', 'contradiction')  # MNLI, MultiNLI, SNLI (TFDS order).

# The 47 entries of the paper's appendix A.1, in the paper's order (see the module docstring).
RECORDS: tuple[DatasetRecord, ...] = (
    # --- 1-8: GLUE -----------------------------------------------------------------------------
    DatasetRecord(
        slug='cola', name='CoLA', family=_C, source='tfds:glue/cola:2.0.0', num_classes=2,
        label_names=('unacceptable', 'acceptable'), train_size=8_551, eval_size=1_043,
        metric='mcc', notes='Test split (1,063) is unlabelled (-1).'),
    DatasetRecord(
        slug='sst2', name='SST-2', family=_C, source='tfds:glue/sst2:2.0.0', num_classes=2,
        label_names=('negative', 'positive'), train_size=67_349, eval_size=872),
    DatasetRecord(
        slug='mrpc', name='MRPC', family=_C, source='tfds:glue/mrpc:2.0.0', num_classes=2,
        label_names=('not_equivalent', 'equivalent'), train_size=3_668, eval_size=408,
        metric='f1_accuracy', notes='F1 of the positive class (equivalent) and accuracy.'),
    DatasetRecord(
        slug='qqp', name='QQP', family=_C, source='tfds:glue/qqp:2.0.0', num_classes=2,
        label_names=('not_duplicate', 'duplicate'), train_size=363_846, eval_size=40_430,
        metric='f1_accuracy', notes='Test split (390,965) is unlabelled.'),
    DatasetRecord(
        slug='mnli', name='MNLI', family=_C, source='tfds:glue/mnli:2.0.0', num_classes=3,
        label_names=_NLI3, eval_split='validation_matched', train_size=392_702,
        eval_size=9_815,
        notes='No `validation` split: evaluate on validation_matched (validation_mismatched, '
              '9,832, is the other half). Same data as #18 MultiNLI; both kept (module doc).'),
    DatasetRecord(
        slug='qnli', name='QNLI', family=_C, source='tfds:glue/qnli:2.0.0', num_classes=2,
        label_names=('entailment', 'not_entailment'), train_size=104_743, eval_size=5_463,
        notes='Built from SQuAD v1.1 (#42): overlapping passages.'),
    DatasetRecord(
        slug='rte', name='RTE', family=_C, source='tfds:glue/rte:2.0.0', num_classes=2,
        label_names=('entailment', 'not_entailment'), train_size=2_490, eval_size=277,
        notes='Same data as super_glue/rte; the GLUE copy is the one used.'),
    DatasetRecord(
        slug='wnli', name='WNLI', family=_C, source='tfds:glue/wnli:2.0.0', num_classes=2,
        label_names=('not_entailment', 'entailment'), train_size=635, eval_size=71,
        notes="Label order is the reverse of RTE's; kept (own head)."),
    # --- 9: SuperGLUE umbrella -----------------------------------------------------------------
    DatasetRecord(
        slug='superglue', name='SuperGLUE', family=_C, source='tfds:super_glue',
        num_classes=0, train_split='', eval_split='', train_size=0, eval_size=0,
        notes='Umbrella entry with no data of its own: '
              'its tasks are #7 RTE, #10-#15 and #45 ReCoRD. AX-b/AX-g are test-only '
              'diagnostics (training on them would contaminate them) and super_glue/rte '
              'duplicates #7. No seqio task; not in any mixture; the source names the '
              'benchmark, not a loadable config.'),
    # --- 10-15: SuperGLUE tasks ----------------------------------------------------------------
    DatasetRecord(
        slug='boolq', name='BoolQ', family=_C, source='tfds:super_glue/boolq:1.0.2', num_classes=2,
        label_names=_FALSE_TRUE, train_size=9_427, eval_size=3_270,
        notes='super_glue/boolq rather than bool_q (same questions; ClassLabel instead of bool).'),
    DatasetRecord(
        slug='multirc', name='MultiRC', family=_C, source='tfds:super_glue/multirc:1.0.2',
        num_classes=2, label_names=_FALSE_TRUE, train_size=27_243, eval_size=4_848,
        metric='multirc',
        notes='One example per (paragraph, question, answer); the mapper strips the '
              '`<b>Sent n: </b>` markup. EM/F1a group answers by idx.question. Same questions '
              'as #23 ERASER MultiRC; both kept (module doc).'),
    DatasetRecord(
        slug='wic', name='WiC', family=_C, source='tfds:super_glue/wic:1.0.2', num_classes=2,
        label_names=_FALSE_TRUE, train_size=5_428, eval_size=638),
    DatasetRecord(
        slug='wsc', name='WSC', family=_C, source='tfds:super_glue/wsc.fixed:1.0.2', num_classes=2,
        label_names=_FALSE_TRUE, train_size=554, eval_size=104,
        notes='wsc.fixed: the config with corrected span indices.'),
    DatasetRecord(
        slug='cb', name='CB', family=_C, source='tfds:super_glue/cb:1.0.2', num_classes=3,
        label_names=('entailment', 'contradiction', 'neutral'), train_size=250, eval_size=56,
        metric='cb',
        notes="Label order differs from MNLI's; kept (own head). Score: the mean of accuracy and "
              'the macro-F1 over the 3 classes (SuperGLUE convention).'),
    DatasetRecord(
        slug='copa', name='COPA', family=_C, source='tfds:super_glue/copa:1.0.2', num_classes=2,
        label_names=('choice1', 'choice2'), train_size=400, eval_size=100,
        notes='Classification with 2 classes, as in the paper (sentence prediction, 26 '
              'classification datasets), not multiple choice.'),
    # --- 16-26: other classification -----------------------------------------------------------
    DatasetRecord(
        slug='ag_news', name='AG News', family=_C, source='tfds:ag_news_subset:1.0.0',
        num_classes=4, label_names=('World', 'Sports', 'Business', 'Sci/Tech'),
        eval_split='test', train_size=120_000, eval_size=7_600,
        notes='No validation split: evaluate on test.'),
    DatasetRecord(
        slug='imdb', name='IMDB', family=_C, source='tfds:imdb_reviews/plain_text:1.0.0',
        num_classes=2, label_names=('neg', 'pos'), eval_split='test', train_size=25_000,
        eval_size=25_000,
        notes='No validation split: evaluate on test. The unsupervised split (50,000, label -1) '
              'is not used. Long reviews (truncated in batching).'),
    DatasetRecord(
        slug='multi_nli', name='MultiNLI', family=_C, source='tfds:multi_nli:1.1.0', num_classes=3,
        label_names=_NLI3, eval_split='validation_matched', train_size=392_702,
        eval_size=9_815,
        notes='Same data as #5 MNLI. Kept as its own task and head because the paper lists it '
              'and its classification total counts it (module doc).'),
    DatasetRecord(
        slug='snli', name='SNLI', family=_C, source='tfds:snli:1.1.0', num_classes=3,
        label_names=_NLI3, train_size=550_152, eval_size=10_000,
        notes='Examples without gold label (`-`, label -1; 785 in train) are dropped.'),
    DatasetRecord(
        slug='hans', name='HANS', family=_C, source='hf:jhu-cogsci/hans/plain_text',
        num_classes=2, label_names=('entailment', 'non-entailment'), train_size=30_000,
        eval_size=30_000,
        notes='HF only (local TFDS builder hf_hans). A diagnostic set designed for '
              'evaluation; trained on because the paper lists it.'),
    DatasetRecord(
        slug='rotten_tomatoes', name='Rotten Tomatoes', family=_C,
        source='hf:cornell-movie-review-data/rotten_tomatoes', num_classes=2,
        label_names=('neg', 'pos'), train_size=8_530, eval_size=1_066,
        notes='HF only (local TFDS builder hf_rotten_tomatoes); not TFDS movie_rationales.'),
    DatasetRecord(
        slug='yelp_polarity', name='Yelp Polarity', family=_C,
        source='tfds:yelp_polarity_reviews:0.2.0', num_classes=2,
        label_names=('negative', 'positive'), eval_split='test', train_size=560_000,
        eval_size=38_000,
        notes="No validation split: evaluate on test. TFDS names the labels '1'/'2' (stars "
              "1-2 / 4-5); renamed negative/positive, ids 0/1 unchanged."),
    DatasetRecord(
        slug='eraser_multi_rc', name='ERASER MultiRC', family=_C,
        source='tfds:eraser_multi_rc:0.1.1', num_classes=2, label_names=_FALSE_TRUE,
        train_size=24_029, eval_size=3_214,
        notes='text_a = passage, text_b = query_and_answer. Train + validation = SuperGLUE '
              'MultiRC train and its test = SuperGLUE MultiRC validation, so it duplicates #11; '
              'kept as the paper lists it. Never evaluate #11 with a model trained on this '
              "set's test split (we do not train on test splits)."),
    DatasetRecord(
        slug='wiki_qa', name='WikiQA', family=_C, source='hf:microsoft/wiki_qa', num_classes=2,
        label_names=('incorrect', 'correct'), train_size=20_360, eval_size=2_733,
        notes='HF only (local TFDS builder hf_wiki_qa). Answer-sentence selection as pair '
              "classification (question, answer); HF label names '0'/'1' renamed. Few "
              'positives; MAP/MRR would need question grouping, accuracy is reported.'),
    DatasetRecord(
        slug='trec', name='TREC', family=_C, source='tfds:trec:1.0.0', num_classes=6,
        label_names=('DESC', 'ENTY', 'ABBR', 'HUM', 'NUM', 'LOC'), eval_split='test',
        train_size=5_452, eval_size=500,
        notes='Coarse labels (label-coarse, 6 classes; TFDS order). No validation split: '
              'evaluate on test.'),
    DatasetRecord(
        slug='scitail', name='SciTail', family=_C, source='tfds:sci_tail:1.0.0', num_classes=2,
        label_names=('entails', 'neutral'), train_size=23_097, eval_size=1_304),
    # --- 27-31: summarization ------------------------------------------------------------------
    DatasetRecord(
        slug='cnn_dailymail', name='CNN/DailyMail', family=_SUM, source='tfds:cnn_dailymail:3.4.0',
        train_size=287_113, eval_size=13_368, metric='rouge',
        notes='Non-anonymized 3.x version; highlights are newline-separated sentences. '
              '585 MB download from Google Drive.'),
    DatasetRecord(
        slug='billsum', name='BillSum', family=_SUM, source='tfds:billsum:3.0.0', eval_split='test',
        train_size=18_949, eval_size=3_269, metric='rouge',
        notes='No validation split: evaluate on test (ca_test, 1,237, is not used). Long '
              'documents.'),
    DatasetRecord(
        slug='xsum', name='XSum', family=_SUM, source='tfds:xsum:1.1.0', train_size=203_577,
        eval_size=11_305, metric='rouge',
        notes='Manual download in TFDS (BBC articles); see the TFDS catalogue page.'),
    DatasetRecord(
        slug='aeslc', name='AESLC', family=_SUM, source='tfds:aeslc:1.0.0', train_size=14_436,
        eval_size=1_960, metric='rouge', notes='email_body -> subject_line.'),
    DatasetRecord(
        slug='multi_news', name='Multi-News', family=_SUM, source='tfds:multi_news:2.1.0',
        train_size=44_972, eval_size=5_622, metric='rouge',
        notes='Registered as a task but not in muppet_all: Table 1 lists 4 summarization sets '
              'with 524K examples = CNN/DM + BillSum + XSum + AESLC exactly. Non-commercial '
              'licence. Documents are `|||||`-joined.'),
    # --- 32-41: commonsense (multiple choice) --------------------------------------------------
    DatasetRecord(
        slug='math_qa', name='MathQA', family=_MC, source='tfds:math_qa:1.0.0', num_classes=5,
        train_size=29_837, eval_size=4_475,
        notes="options is one string `a ) ... , b ) ...`: the mapper parses it; correct is a "
              'letter.'),
    DatasetRecord(
        slug='openbookqa', name='OpenBookQA', family=_MC, source='tfds:openbookqa:0.1.0',
        num_classes=4, train_size=4_957, eval_size=500,
        notes='fact1 serves as context (the open book).'),
    DatasetRecord(
        slug='swag', name='SWAG', family=_MC, source='hf:allenai/swag/regular', num_classes=4,
        train_size=73_546, eval_size=20_006,
        notes='HF only (local TFDS builder hf_swag). Test split (20,005) is unlabelled.'),
    DatasetRecord(
        slug='hellaswag', name='HellaSwag', family=_MC, source='tfds:hellaswag:1.1.0',
        num_classes=4,
        train_size=39_905, eval_size=10_042,
        notes='label is a plain int32 (not a ClassLabel): the mapper checks its range.'),
    DatasetRecord(
        slug='race', name='RACE', family=_MC, source='tfds:race/high:2.0.0+race/middle:2.0.0',
        num_classes=4, eval_split='dev', train_size=87_866, eval_size=4_887,
        notes='Both TFDS configs (high 18,728 + middle 6,409 articles) read as one task. One '
              'raw example is an article: the mapper flattens it to one example per question, '
              'so sizes count questions. Eval split is `dev`.'),
    DatasetRecord(
        slug='commonsense_qa', name='CommonsenseQA', family=_MC,
        source='hf:tau/commonsense_qa', num_classes=5, train_size=9_741, eval_size=1_221,
        notes='HF only (local TFDS builder hf_commonsense_qa) rather than TFDS cos_e, which has '
              'no answerKey. Test split (1,140) is unlabelled.'),
    DatasetRecord(
        slug='cosmos_qa', name='Cosmos QA', family=_MC, source='tfds:cosmos_qa:1.0.0',
        num_classes=4,
        train_size=25_262, eval_size=2_985),
    DatasetRecord(
        slug='arc_easy', name='ARC-Easy', family=_MC, source='tfds:ai2_arc/ARC-Easy:1.0.0',
        num_classes=5, train_size=2_251, eval_size=570,
        notes='3-5 choices (mostly 4); 5 is the most.'),
    DatasetRecord(
        slug='arc_challenge', name='ARC-Challenge', family=_MC,
        source='tfds:ai2_arc/ARC-Challenge:1.0.0', num_classes=5, train_size=1_119, eval_size=299,
        notes='3-5 choices (mostly 4); 5 is the most.'),
    DatasetRecord(
        slug='sciq', name='SciQ', family=_MC, source='hf:allenai/sciq', num_classes=4,
        train_size=11_679, eval_size=1_000,
        notes='HF only (local TFDS builder hf_sciq). The correct answer always comes first in '
              'the raw data: the mapper shuffles the 4 options with a seed derived from the '
              'example, so the order is fixed across runs. Licence CC BY-NC 3.0.'),
    # --- 42-47: MRC (extractive) ---------------------------------------------------------------
    DatasetRecord(
        slug='squad', name='SQuAD', family=_SPAN, source='tfds:squad/v1.1:3.0.0', train_size=87_599,
        eval_size=10_570, metric='squad', notes='v1.1 (no unanswerable questions).'),
    DatasetRecord(
        slug='natural_questions', name='Natural Questions', family=_SPAN,
        source='tfds:mrqa/natural_questions:1.0.0', train_size=104_071, eval_size=12_836,
        metric='squad',
        notes='MRQA 2019 version: long answer as context, only questions with a short answer, '
              'character spans given. The full natural_questions (45 GB, Beam) is not used.'),
    DatasetRecord(
        slug='drop', name='DROP', family=_SPAN, source='tfds:drop:2.0.0', eval_split='dev',
        train_size=77_409, eval_size=9_536, metric='drop',
        notes='Eval split is `dev`. Training keeps only answers found verbatim in the passage '
              '(first occurrence); computed numbers, dates and multi-span answers are dropped by '
              'the mapper, so fewer examples are seen than train_size. Evaluation keeps every '
              'question and scores it with the official DROP EM/F1 (number-aware, multi-span).'),
    DatasetRecord(
        slug='record', name='ReCoRD', family=_SPAN, source='tfds:super_glue/record:1.0.2',
        train_size=100_730, eval_size=10_000, metric='record',
        notes='TFDS drops the entity character offsets: the mapper finds each answer string in '
              'the passage. Context = passage, question = query with @placeholder. Passages are '
              'CNN/DM news (overlap with #27).'),
    DatasetRecord(
        slug='hotpot_qa', name='HotpotQA', family=_SPAN, source='tfds:mrqa/hotpot_qa:1.0.0',
        train_size=72_928, eval_size=5_901, metric='squad',
        notes='MRQA 2019 version: the 2 gold paragraphs as context, yes/no questions dropped, '
              'character spans given (no HF builder needed).'),
    DatasetRecord(
        slug='trivia_qa', name='TriviaQA', family=_SPAN, source='tfds:mrqa/trivia_qa:1.0.0',
        train_size=61_688, eval_size=7_785, metric='squad',
        notes='MRQA 2019 version: web evidence, first 800 tokens, answers matched to aliases, '
              'character spans given (the rc/unfiltered configs need 13-23 GB and alignment).'),
)

# Records with training data that the default mixtures leave out, with the reason.
EXCLUDED_FROM_ALL: Mapping[str, str] = {
    'multi_news': "not among the paper's 4 summarization sets (Table 1: 524K = CNN/DM + "
                  'BillSum + XSum + AESLC)',
}

_BY_SLUG: dict[str, DatasetRecord] = {r.slug: r for r in RECORDS}
if len(_BY_SLUG) != len(RECORDS):
  raise ValueError('duplicate slug in catalogue.RECORDS')


# Canonical split names of every task: training, and the held-out split evaluation uses.
TRAIN = 'train'
VALIDATION = 'validation'


def split_map(record: DatasetRecord) -> dict[str, str]:
  """Canonical split name -> the dataset's own split name ('validation' -> 'dev' ...)."""
  splits = {}
  if record.train_split:
    splits[TRAIN] = record.train_split
  if record.eval_split:
    splits[VALIDATION] = record.eval_split
  return splits


def get(slug: str) -> DatasetRecord:
  """Returns the record of `slug` ('rte'; the task name 'muppet_rte' is accepted too).

  Raises:
    UnknownNameError (a KeyError): unknown slug; the message lists the closest known slugs.
  """
  record = _BY_SLUG.get(slug) or _BY_SLUG.get(slug.removeprefix('muppet_'))
  if record is None:
    close = difflib.get_close_matches(slug.removeprefix('muppet_'), _BY_SLUG, n=5, cutoff=0.5)
    hint = f'did you mean {close}?' if close else f'known slugs: {sorted(_BY_SLUG)}'
    raise UnknownNameError(f'unknown dataset slug {slug!r}; {hint}')
  return record


def by_family(*families: Family, records: tuple[DatasetRecord, ...] = RECORDS
              ) -> tuple[DatasetRecord, ...]:
  """The records of the given families, in catalogue order (all records if none given)."""
  if not families:
    return records
  return tuple(r for r in records if r.family in families)


def default_mixture_records(records: tuple[DatasetRecord, ...] = RECORDS
                            ) -> tuple[DatasetRecord, ...]:
  """The records of `muppet_all`: with training data and not in `EXCLUDED_FROM_ALL`."""
  return tuple(r for r in records if r.has_training_data and r.slug not in EXCLUDED_FROM_ALL)
