"""Raw dataset example -> unified family format, one small mapper per dataset.

Every mapper takes one raw example as TFDS (or, for the Hugging Face-only datasets, the HF
card) yields it, converted to plain Python: bytes decoded to `str`, numpy arrays turned into
lists, nested feature dicts kept as dicts, and `Sequence`-of-dict features given as a dict of
lists (e.g. SQuAD `answers == {'text': [...], 'answer_start': [...]}`). It returns a list of
examples in its family's format:

  classification   {'text_a': str, 'text_b': str, 'label': int}
  multiple_choice  {'context': str, 'question': str, 'choices': list[str], 'label': int}
  span             {'context': str, 'question': str, 'answer_start': int, 'answer_end': int,
                    'answers': list[str]}
  summarization    {'document': str, 'summary': str}

Span offsets are character offsets into `context`, end exclusive, of the first gold answer
found in the context; `answers` holds every gold answer text (for EM/F1). Most mappers return
exactly one example; RACE returns one per question of the article.

One optional field: the mappers of the datasets in `GROUPED` (MultiRC, ERASER MultiRC) add
`'group': str` to their classification examples, the question an answer option belongs to, so
that evaluation can score MultiRC's per-question exact match. Training ignores it.

Evaluation splits use `EVAL_MAPPERS` where the official scoring needs records that training
drops (`mapper_for(slug, evaluation=True)`): the extractive-QA sets keep every question, also
one whose answer cannot be located in the context (then answer_start = answer_end = 0, which
batching treats as "not in any window", and `answers` holds every gold text to score against);
DROP keeps its whole validation split, and its evaluation examples add `'answer_spans': str`
(`STRUCTURED_ANSWERS`): a JSON list of the gold answers, each a list of spans, as the official
drop_eval.py flattens numbers, dates and multi-span answers.

A record that cannot be mapped faithfully (missing field, unlabelled or out-of-range label,
empty text, answer absent from the context, wrong number of choices ...) raises `BadRecord`.
`DropCounter` wraps the mappers so that such records are dropped and counted by reason instead
of either crashing a run or being trained on.

Label orders are each dataset's own (every classification dataset has its own head), so e.g.
WNLI keeps [not_entailment, entailment] and CB keeps [entailment, contradiction, neutral].
"""

from __future__ import annotations

import ast
import collections
import hashlib
import json
import operator
import random
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.data.features import Family

Example = dict[str, Any]
Mapper = Callable[[dict], list[Example]]

_LETTERS = 'ABCDE'


class BadRecord(ValueError):
  """A raw record that cannot be mapped; `reason` is a short, record-independent label."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


# ---------------------------------------------------------------------------------------------
# Field access and validation helpers.
# ---------------------------------------------------------------------------------------------


def _field(raw: Mapping[str, Any], key: str) -> Any:
  """Returns raw[key]; a missing or None field is a bad record, not a crash."""
  try:
    value = raw[key]
  except (KeyError, TypeError, IndexError):
    raise BadRecord(f'missing field {key}') from None
  if value is None:
    raise BadRecord(f'missing field {key}')
  return value


def _str(value: Any, key: str) -> str:
  """Coerces a text feature to str (bytes decoded defensively) or raises BadRecord."""
  if isinstance(value, bytes):
    value = value.decode('utf-8', errors='replace')
  if not isinstance(value, str):
    raise BadRecord(f'non-text field {key}')
  return value


def _text(raw: Mapping[str, Any], key: str, allow_empty: bool = False) -> str:
  """The stripped text of raw[key]; empty text is a bad record unless `allow_empty`."""
  value = _str(_field(raw, key), key).strip()
  if not value and not allow_empty:
    raise BadRecord('empty text')
  return value


def _nonempty(value: str) -> str:
  """Strips `value` and rejects it if nothing is left."""
  value = value.strip()
  if not value:
    raise BadRecord('empty text')
  return value


def _int(value: Any) -> int:
  """An integer label from int / numpy int / digit string, else BadRecord.

  `operator.index` accepts Python and numpy integers but not floats, so a float label (a
  sign of a wrong field) is rejected rather than truncated. Digit strings cover the HF
  datasets that store labels as text (HF HellaSwag: '0'..'3', '' on test).
  """
  if isinstance(value, bytes):
    value = value.decode('utf-8', errors='replace')
  if isinstance(value, str):
    value = value.strip()
    if not value:
      raise BadRecord('missing label')
    try:
      return int(value)
    except ValueError:
      raise BadRecord('bad label') from None
  try:
    return operator.index(value)
  except TypeError:
    raise BadRecord('bad label') from None


def _label(value: Any, num_classes: int) -> int:
  """A label in [0, num_classes); -1 (unlabelled test splits, SNLI '-') is reported apart."""
  label = _int(value)
  if label == -1:
    raise BadRecord('label -1 (unlabelled)')
  if not 0 <= label < num_classes:
    raise BadRecord('label out of range')
  return label


def _letter(value: Any) -> str:
  """Normalises an answer key to 'A'..'E': accepts 'A'-'E', 'a'-'e', '1'-'5' or an index."""
  if isinstance(value, bytes):
    value = value.decode('utf-8', errors='replace')
  if isinstance(value, str):
    key = value.strip().upper()
    if len(key) == 1 and key in _LETTERS:
      return key
    if len(key) == 1 and key in '12345':
      # ARC (HF) uses '1'..'5' for some questions; they mean A..E.
      return _LETTERS[int(key) - 1]
    raise BadRecord('bad answer key')
  index = _int(value)  # TFDS ClassLabel index into ['A', ..., 'E'].
  if index == -1:
    raise BadRecord('label -1 (unlabelled)')
  if not 0 <= index < len(_LETTERS):
    raise BadRecord('bad answer key')
  return _LETTERS[index]


def _texts(values: Any, key: str) -> list[str]:
  """A list of texts from a Sequence(Text) feature."""
  if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
    raise BadRecord(f'non-list field {key}')
  return [_str(v, key) for v in values]


def _dedup(texts: Iterable[str]) -> list[str]:
  """Stripped, non-empty texts in first-seen order without duplicates."""
  seen = []
  for t in texts:
    t = t.strip()
    if t and t not in seen:
      seen.append(t)
  return seen


# ---------------------------------------------------------------------------------------------
# Family constructors: the only places that build output dicts, so the formats stay uniform.
# ---------------------------------------------------------------------------------------------


def _classification(text_a: str, text_b: str, label: Any, num_classes: int) -> list[Example]:
  """One classification example; text_a must be non-empty, text_b may be ''."""
  return [{'text_a': _nonempty(text_a), 'text_b': text_b.strip(),
           'label': _label(label, num_classes)}]


def _multiple_choice(context: str, question: str, choices: Sequence[str], label: int,
                     min_choices: int, max_choices: int) -> Example:
  """One multiple-choice example (a dict, not a list: RACE builds several per record)."""
  choices = [c.strip() for c in choices]
  if not min_choices <= len(choices) <= max_choices:
    raise BadRecord('wrong number of choices')
  if any(not c for c in choices):
    raise BadRecord('empty choice')
  if not 0 <= label < len(choices):
    raise BadRecord('label out of range')
  context, question = context.strip(), question.strip()
  if not context and not question:
    raise BadRecord('empty text')
  return {'context': context, 'question': question, 'choices': choices, 'label': label}


def _span_example(context: str, question: str, start: int, end: int,
                  answers: Sequence[str]) -> list[Example]:
  """One span example; [start, end) must be a non-empty range inside the context."""
  if not question.strip():
    raise BadRecord('empty text')
  if not 0 <= start < end <= len(context):
    raise BadRecord('answer not found in context')
  return [{'context': context, 'question': question.strip(), 'answer_start': start,
           'answer_end': end, 'answers': list(answers)}]


def _summarization(document: str, summary: str) -> list[Example]:
  """One summarization example; both sides must be non-empty."""
  return [{'document': _nonempty(document), 'summary': _nonempty(summary)}]


def _is_word_char(ch: str) -> bool:
  """Whether `ch` can continue a word (so a match next to it is inside a longer word)."""
  return ch.isalnum() or ch == '_'


def _find_bounded(context: str, answer: str, start: int = 0) -> int:
  """First index >= start of `answer` in `context` not inside a longer word, or -1.

  A plain `find` would place the DROP answer '3' inside '1930' or the ReCoRD entity 'US'
  inside 'USA'; an edge of the answer that is a word character must meet a non-word character
  (or the end of the context) on the other side.
  """
  if not answer:
    return -1
  check_left, check_right = _is_word_char(answer[0]), _is_word_char(answer[-1])
  pos = context.find(answer, start)
  while pos != -1:
    end = pos + len(answer)
    left_ok = not check_left or pos == 0 or not _is_word_char(context[pos - 1])
    right_ok = not check_right or end == len(context) or not _is_word_char(context[end])
    if left_ok and right_ok:
      return pos
    pos = context.find(answer, pos + 1)
  return -1


def _locate_first(context: str, answers: Sequence[str]) -> tuple[int, int]:
  """Offsets (start, end exclusive) of the first answer, in order, that occurs in context."""
  for answer in answers:
    pos = _find_bounded(context, answer)
    if pos != -1:
      return pos, pos + len(answer)
  raise BadRecord('answer not found in context')


# ---------------------------------------------------------------------------------------------
# Classification.
# ---------------------------------------------------------------------------------------------

# Classes per classification dataset, in each dataset's own label order (TFDS ClassLabel or
# HF ClassLabel). tests/test_preprocessors.py checks these against the catalogue.
NUM_CLASSES: dict[str, int] = {
    'cola': 2, 'sst2': 2, 'mrpc': 2, 'qqp': 2, 'mnli': 3, 'qnli': 2, 'rte': 2, 'wnli': 2,
    'boolq': 2, 'multirc': 2, 'wic': 2, 'wsc': 2, 'cb': 3, 'copa': 2, 'ag_news': 4, 'imdb': 2,
    'multi_nli': 3, 'snli': 3, 'hans': 2, 'rotten_tomatoes': 2, 'yelp_polarity': 2,
    'eraser_multi_rc': 2, 'wiki_qa': 2, 'trec': 6, 'scitail': 2,
}


def _single(slug: str, key: str) -> Mapper:
  """Mapper for a single-text dataset with a `label` field."""

  def mapper(raw: dict) -> list[Example]:
    return _classification(_text(raw, key), '', _field(raw, 'label'), NUM_CLASSES[slug])

  mapper.__name__ = f'map_{slug}'
  mapper.__doc__ = f'{slug}: text_a = {key}, label = label.'
  return mapper


def _pair(slug: str, key_a: str, key_b: str) -> Mapper:
  """Mapper for a sentence-pair dataset with a `label` field."""

  def mapper(raw: dict) -> list[Example]:
    return _classification(_text(raw, key_a), _text(raw, key_b), _field(raw, 'label'),
                           NUM_CLASSES[slug])

  mapper.__name__ = f'map_{slug}'
  mapper.__doc__ = f'{slug}: (text_a, text_b) = ({key_a}, {key_b}), label = label.'
  return mapper


map_cola = _single('cola', 'sentence')
map_sst2 = _single('sst2', 'sentence')
map_mrpc = _pair('mrpc', 'sentence1', 'sentence2')
map_qqp = _pair('qqp', 'question1', 'question2')
map_mnli = _pair('mnli', 'premise', 'hypothesis')
map_qnli = _pair('qnli', 'question', 'sentence')
map_rte = _pair('rte', 'sentence1', 'sentence2')
# WNLI's order is [not_entailment, entailment], the reverse of RTE's; kept (own head).
map_wnli = _pair('wnli', 'sentence1', 'sentence2')
map_boolq = _pair('boolq', 'question', 'passage')
# CB's order is [entailment, contradiction, neutral], unlike MNLI's; kept (own head).
map_cb = _pair('cb', 'premise', 'hypothesis')
map_multi_nli = _pair('multi_nli', 'premise', 'hypothesis')
# SNLI marks examples without gold consensus ('-') with label -1: dropped by `_label`.
map_snli = _pair('snli', 'premise', 'hypothesis')
map_hans = _pair('hans', 'premise', 'hypothesis')
map_rotten_tomatoes = _single('rotten_tomatoes', 'text')
# TFDS's Yelp ClassLabel is named ['1', '2'], so its indices are already 0 (neg) / 1 (pos).
map_yelp_polarity = _single('yelp_polarity', 'text')
map_wiki_qa = _pair('wiki_qa', 'question', 'answer')
map_scitail = _pair('scitail', 'premise', 'hypothesis')

_HTML_BREAK = re.compile(r'<br\s*/?>')
_SPACES = re.compile(r'\s+')


def map_imdb(raw: dict) -> list[Example]:
  """IMDB: text with its HTML line breaks ('<br /><br />') turned into spaces."""
  text = _SPACES.sub(' ', _HTML_BREAK.sub(' ', _text(raw, 'text')))
  return _classification(text, '', _field(raw, 'label'), NUM_CLASSES['imdb'])


def map_trec(raw: dict) -> list[Example]:
  """TREC: text, label = label-coarse (6 classes; the 47 fine classes are not used)."""
  return _classification(_text(raw, 'text'), '', _field(raw, 'label-coarse'),
                         NUM_CLASSES['trec'])


def map_ag_news(raw: dict) -> list[Example]:
  """AG News: text_a = title, text_b = description."""
  return _classification(_text(raw, 'title'), _text(raw, 'description', allow_empty=True),
                         _field(raw, 'label'), NUM_CLASSES['ag_news'])


# MultiRC paragraphs look like '<b>Sent 1: </b>First.<br><b>Sent 2: </b>Second.<br>'.
_MULTIRC_SENT = re.compile(r'<b>\s*Sent\s+\d+\s*:\s*</b>')


def map_multirc(raw: dict) -> list[Example]:
  """SuperGLUE MultiRC: (paragraph without markup, question + ' ' + answer).

  group: '<idx.paragraph>:<idx.question>', the question the answer option belongs to (the key
  of SuperGLUE's per-question exact match).
  """
  paragraph = _text(raw, 'paragraph')
  paragraph = _HTML_BREAK.sub(' ', _MULTIRC_SENT.sub('', paragraph))
  paragraph = _SPACES.sub(' ', paragraph)
  text_b = _text(raw, 'question') + ' ' + _text(raw, 'answer')
  idx = _field(raw, 'idx')
  if not isinstance(idx, Mapping):
    raise BadRecord('non-dict field idx')
  group = f'{_int(_field(idx, "paragraph"))}:{_int(_field(idx, "question"))}'
  examples = _classification(paragraph, text_b, _field(raw, 'label'), NUM_CLASSES['multirc'])
  examples[0]['group'] = group
  return examples


def map_eraser_multi_rc(raw: dict) -> list[Example]:
  """ERASER MultiRC: (passage, 'question || answer' as is: the query already joins them).

  group: the passage's digest and the question (the text before ' || '): ERASER has no
  question ids, and a question is one passage's question text.
  """
  passage = _text(raw, 'passage')
  query_and_answer = _text(raw, 'query_and_answer')
  examples = _classification(passage, query_and_answer, _field(raw, 'label'),
                             NUM_CLASSES['eraser_multi_rc'])
  question = query_and_answer.split('||', 1)[0].strip()
  digest = hashlib.sha1(passage.encode('utf-8')).hexdigest()[:16]
  examples[0]['group'] = f'{digest}:{question}'
  return examples


def map_wic(raw: dict) -> list[Example]:
  """WiC: (word + ': ' + sentence1, sentence2); the start/end offsets are not used."""
  text_a = _text(raw, 'word') + ': ' + _text(raw, 'sentence1')
  return _classification(text_a, _text(raw, 'sentence2'), _field(raw, 'label'),
                         NUM_CLASSES['wic'])


_WORD_EDGE_PUNCT = '.,;:!?"\'()[]'


def _mark_span(words: list[str], index: Any, span_text: str, left: str, right: str) -> None:
  """Wraps the words of `span_text` starting at word `index` in `left`/`right`, in place.

  The index (a whitespace-token index, as in SuperGLUE) is trusted only if the token there
  matches the span's first word, so a stale index cannot silently mark the wrong words.
  """
  index = _int(index)
  span_words = span_text.split()
  if not span_words or not 0 <= index < len(words):
    raise BadRecord('span not found')
  # startswith: the token may carry a possessive or a contraction ("Joe's" for span 'Joe').
  token = words[index].strip(_WORD_EDGE_PUNCT).lower()
  if not token.startswith(span_words[0].strip(_WORD_EDGE_PUNCT).lower()):
    raise BadRecord('span not found')
  last = min(index + len(span_words), len(words)) - 1
  words[index] = left + words[index]
  words[last] = words[last] + right


def map_wsc(raw: dict) -> list[Example]:
  """WSC: text with '*span1*' and '[span2]' marked; text_b = 'span2 refers to span1'.

  span1 is the candidate noun phrase, span2 the pronoun; label True means the pronoun refers
  to the noun phrase.
  """
  words = _text(raw, 'text').split()
  span1 = _text(raw, 'span1_text')
  span2 = _text(raw, 'span2_text')
  _mark_span(words, _field(raw, 'span1_index'), span1, '*', '*')
  _mark_span(words, _field(raw, 'span2_index'), span2, '[', ']')
  return _classification(' '.join(words), f'{span2} refers to {span1}', _field(raw, 'label'),
                         NUM_CLASSES['wsc'])


_COPA_QUESTIONS = {'cause': ' What was the cause?', 'effect': ' What was the effect?'}


def map_copa(raw: dict) -> list[Example]:
  """COPA as 2-class classification (as the paper counts it): label 0 = choice1, 1 = choice2.

  text_a = premise + ' What was the cause?' (or '... effect?'),
  text_b = choice1 + ' </s> ' + choice2.
  """
  question = _text(raw, 'question')
  if question not in _COPA_QUESTIONS:
    raise BadRecord('bad question type')
  text_a = _text(raw, 'premise') + _COPA_QUESTIONS[question]
  text_b = _text(raw, 'choice1') + ' </s> ' + _text(raw, 'choice2')
  return _classification(text_a, text_b, _field(raw, 'label'), NUM_CLASSES['copa'])


# ---------------------------------------------------------------------------------------------
# Multiple choice (commonsense).
# ---------------------------------------------------------------------------------------------


def map_swag(raw: dict) -> list[Example]:
  """SWAG (HF allenai/swag, regular): context = sent1, question = sent2, ending0-3."""
  choices = [_text(raw, f'ending{i}') for i in range(4)]
  return [_multiple_choice(_text(raw, 'sent1'), _text(raw, 'sent2', allow_empty=True),
                           choices, _label(_field(raw, 'label'), 4), 4, 4)]


def map_hellaswag(raw: dict) -> list[Example]:
  """HellaSwag: context (= ctx_a + ' ' + ctx_b in TFDS), no question, 4 endings.

  The label is a plain int32 (-1 on test), not a ClassLabel.
  """
  choices = _texts(_field(raw, 'endings'), 'endings')
  return [_multiple_choice(_text(raw, 'context'), '', choices,
                           _label(_field(raw, 'label'), 4), 4, 4)]


def map_race(raw: dict) -> list[Example]:
  """RACE: one article -> one example per question; answer letter 'A'-'D' -> index.

  The article is dropped as a whole if any of its questions is malformed (mismatched list
  lengths, a bad answer letter ...): RACE is clean, so this is a corruption signal, and a
  partial article would hide the drop from the counters.
  """
  article = _text(raw, 'article')
  questions = _texts(_field(raw, 'questions'), 'questions')
  answers = _texts(_field(raw, 'answers'), 'answers')
  options = _field(raw, 'options')
  if isinstance(options, (str, bytes)) or not isinstance(options, Iterable):
    raise BadRecord('non-list field options')
  options = [_texts(o, 'options') for o in options]
  if not questions:
    raise BadRecord('no questions')
  if not len(questions) == len(answers) == len(options):
    raise BadRecord('questions, answers and options differ in length')
  examples = []
  for question, answer, choices in zip(questions, answers, options):
    label = 'ABCD'.find(answer.strip().upper()) if len(answer.strip()) == 1 else -1
    if label == -1:
      raise BadRecord('bad answer key')
    # Cloze questions ('The author thinks _ .') are kept: the question text is the stem.
    examples.append(_multiple_choice(article, question, choices, label, 4, 4))
  return examples


def map_commonsense_qa(raw: dict) -> list[Example]:
  """CommonsenseQA: no context, question, 5 choices; label = index of answerKey.

  Accepts the HF tau/commonsense_qa format (choices = {'label': ['A'..'E'], 'text': [...]},
  answerKey 'A'..'E'; '' on test) and the TFDS cos_e format (choices = [5 texts], answer =
  the correct text).
  """
  question = _text(raw, 'question')
  choices_field = _field(raw, 'choices')
  if isinstance(choices_field, Mapping):
    texts = _texts(_field(choices_field, 'text'), 'choices.text')
    keys = [_letter(k) for k in _texts(_field(choices_field, 'label'), 'choices.label')]
    answer_key = _str(_field(raw, 'answerKey'), 'answerKey').strip()
    if not answer_key:
      raise BadRecord('label -1 (unlabelled)')
    key = _letter(answer_key)
    if key not in keys:
      raise BadRecord('answer key not among choices')
    label = keys.index(key)
  else:
    texts = _texts(choices_field, 'choices')
    answer = _text(raw, 'answer')
    stripped = [t.strip() for t in texts]
    if answer not in stripped:
      raise BadRecord('answer not among choices')
    label = stripped.index(answer)
  return [_multiple_choice('', question, texts, label, 5, 5)]


def map_cosmos_qa(raw: dict) -> list[Example]:
  """Cosmos QA: context, question, answer0-3, label."""
  choices = [_text(raw, f'answer{i}') for i in range(4)]
  return [_multiple_choice(_text(raw, 'context'), _text(raw, 'question'), choices,
                           _label(_field(raw, 'label'), 4), 4, 4)]


def _map_arc(raw: dict) -> list[Example]:
  """ARC: no context, question, 3-5 choices; label = position of answerKey among the labels.

  TFDS stores answerKey and choices.label as ClassLabel indices into A-E (it already maps
  '1'-'5' to A-E); HF stores letters or digits. Both are normalised to letters first.
  """
  choices = _field(raw, 'choices')
  if not isinstance(choices, Mapping):
    raise BadRecord('non-dict field choices')
  texts = _texts(_field(choices, 'text'), 'choices.text')
  labels = _field(choices, 'label')
  if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
    raise BadRecord('non-list field choices.label')
  keys = [_letter(k) for k in labels]
  if len(keys) != len(texts):
    raise BadRecord('choices.label and choices.text differ in length')
  key = _letter(_field(raw, 'answerKey'))
  if key not in keys:
    raise BadRecord('answer key not among choices')
  return [_multiple_choice('', _text(raw, 'question'), texts, keys.index(key), 3, 5)]


def map_arc_easy(raw: dict) -> list[Example]:
  """ARC-Easy: see `_map_arc`."""
  return _map_arc(raw)


def map_arc_challenge(raw: dict) -> list[Example]:
  """ARC-Challenge: see `_map_arc`."""
  return _map_arc(raw)


def map_openbookqa(raw: dict) -> list[Example]:
  """OpenBookQA: context = fact1 (or ''), question = stem, choice_A-D, label = answerKey."""
  question = _field(raw, 'question')
  if not isinstance(question, Mapping):
    raise BadRecord('non-dict field question')
  fact = raw.get('fact1')
  context = _str(fact, 'fact1') if fact is not None else ''
  choices = [_text(question, f'choice_{letter}') for letter in 'ABCD']
  key = _letter(_field(raw, 'answerKey'))
  if key not in 'ABCD':
    raise BadRecord('bad answer key')
  label = 'ABCD'.index(key)
  return [_multiple_choice(context, _text(question, 'stem'), choices, label, 4, 4)]


def _stable_seed(text: str) -> int:
  """A seed from the text's SHA-256: stable across runs and hosts, unlike salted hash()."""
  return int.from_bytes(hashlib.sha256(text.encode('utf-8')).digest()[:8], 'little')


def map_sciq(raw: dict) -> list[Example]:
  """SciQ: context = support, question, correct + 3 distractors shuffled.

  The order comes from a RNG seeded with the SHA-256 of the question, so every run and host
  sees the same order, and the correct answer is not always first (which a model would learn).
  """
  question = _text(raw, 'question')
  correct = _text(raw, 'correct_answer')
  choices = [correct] + [_text(raw, f'distractor{i}') for i in (1, 2, 3)]
  order = list(range(4))
  random.Random(_stable_seed(question)).shuffle(order)
  shuffled = [choices[i] for i in order]
  return [_multiple_choice(_text(raw, 'support', allow_empty=True), question, shuffled,
                           order.index(0), 4, 4)]


# Option markers of MathQA's 'a ) 38 , b ) 27.675 , c ) ...'. Options are separated by ' , '
# but option text can itself hold commas ('1,000', 'none of these , but') and letters followed
# by ')' ('( a + b ) / 2'), so the markers are looked for in order a, b, c, d, e, each after the
# previous one, preferring one that follows a comma; a marker after plain whitespace is the
# fallback for the few strings without commas.
_MATHQA_FIRST = re.compile(r'\s*a\s*\)')
_MATHQA_AFTER_COMMA = {c: re.compile(r',\s*' + c + r'\s*\)') for c in 'bcde'}
_MATHQA_AFTER_SPACE = {c: re.compile(r'(?<=\s)' + c + r'\s*\)') for c in 'bcde'}
_MATHQA_LIST_MARKER = re.compile(r'^\s*[a-e]\s*\)\s*')


def parse_math_qa_options(options: str) -> list[str]:
  """Splits a MathQA options string into option texts, in order a, b, c, ...

  Handles both the usual 'a ) x , b ) y , ...' form and the Python-list form
  "['a ) x', 'b ) y', ...]" that some records use.
  """
  options = options.strip()
  if options.startswith('[') and options.endswith(']'):
    try:
      items = ast.literal_eval(options)
    except (ValueError, SyntaxError):
      raise BadRecord('unparsable options') from None
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
      raise BadRecord('unparsable options')
    return [_MATHQA_LIST_MARKER.sub('', x).strip() for x in items]
  first = _MATHQA_FIRST.match(options)
  if first is None:
    raise BadRecord('unparsable options')
  bounds = [(0, first.end())]  # (marker start, text start) per option
  for letter in 'bcde':
    pos = bounds[-1][1]
    marker = (_MATHQA_AFTER_COMMA[letter].search(options, pos) or
              _MATHQA_AFTER_SPACE[letter].search(options, pos))
    if marker is None:
      break
    bounds.append((marker.start(), marker.end()))
  texts = []
  for i, (_, text_start) in enumerate(bounds):
    text_end = bounds[i + 1][0] if i + 1 < len(bounds) else len(options)
    texts.append(options[text_start:text_end].strip().rstrip(',').strip())
  return texts


def map_math_qa(raw: dict) -> list[Example]:
  """MathQA: no context, question = Problem, 5 parsed options, label = correct letter."""
  choices = parse_math_qa_options(_text(raw, 'options'))
  correct = _text(raw, 'correct').lower()
  if len(correct) != 1 or correct not in 'abcde':
    raise BadRecord('bad answer key')
  return [_multiple_choice('', _text(raw, 'Problem'), choices, 'abcde'.index(correct), 5, 5)]


# ---------------------------------------------------------------------------------------------
# Extractive QA (span).
# ---------------------------------------------------------------------------------------------


def map_squad(raw: dict) -> list[Example]:
  """SQuAD v1.1: the given answer_start of the first answer that matches the context.

  An answer whose offset does not point at its text (rare annotation drift) is located by
  search instead; a record where no answer can be placed is dropped.
  """
  context = _str(_field(raw, 'context'), 'context')
  answers = _field(raw, 'answers')
  if not isinstance(answers, Mapping):
    raise BadRecord('non-dict field answers')
  texts = _texts(_field(answers, 'text'), 'answers.text')
  starts = _field(answers, 'answer_start')
  if isinstance(starts, (str, bytes)) or not isinstance(starts, Iterable):
    raise BadRecord('non-list field answers.answer_start')
  starts = [_int(s) for s in starts]
  gold = _dedup(texts)
  if not gold:
    raise BadRecord('no answer')
  for text, start in zip(texts, starts):
    if text and 0 <= start and context[start:start + len(text)] == text:
      return _span_example(context, _text(raw, 'question'), start, start + len(text), gold)
  start, end = _locate_first(context, [t for t in texts if t])
  return _span_example(context, _text(raw, 'question'), start, end, gold)


def _map_mrqa(raw: dict) -> list[Example]:
  """MRQA (mrqa/natural_questions, mrqa/hotpot_qa, mrqa/trivia_qa): detected char spans.

  MRQA's char_spans are end-INCLUSIVE; they become end-exclusive here. Each span is checked
  against its detected text (TFDS strips the context, which would shift every offset of a
  context that began with whitespace); a span that does not match is located by search.
  """
  context = _str(_field(raw, 'context'), 'context')
  detected = _field(raw, 'detected_answers')
  if not isinstance(detected, Mapping):
    raise BadRecord('non-dict field detected_answers')
  det_texts = _texts(_field(detected, 'text'), 'detected_answers.text')
  spans = _field(detected, 'char_spans')
  if not isinstance(spans, Mapping):
    raise BadRecord('non-dict field detected_answers.char_spans')
  span_starts, span_ends = _field(spans, 'start'), _field(spans, 'end')
  gold = _dedup(_texts(raw.get('answers') or [], 'answers') + det_texts)
  if not gold:
    raise BadRecord('no answer')
  question = _text(raw, 'question')
  for text, starts, ends in zip(det_texts, span_starts, span_ends):
    text = text.strip()
    for s, e in zip(starts, ends):
      s, e = _int(s), _int(e) + 1
      if text and 0 <= s < e <= len(context) and context[s:e].lower() == text.lower():
        return _span_example(context, question, s, e, gold)
  start, end = _locate_first(context, [t.strip() for t in det_texts if t.strip()] + gold)
  return _span_example(context, question, start, end, gold)


def map_natural_questions(raw: dict) -> list[Example]:
  """Natural Questions via mrqa/natural_questions (long answer as context): `_map_mrqa`."""
  return _map_mrqa(raw)


def map_trivia_qa(raw: dict) -> list[Example]:
  """TriviaQA via mrqa/trivia_qa (web evidence, first 800 tokens): `_map_mrqa`."""
  return _map_mrqa(raw)


def map_hotpot_qa(raw: dict) -> list[Example]:
  """HotpotQA: mrqa/hotpot_qa (`_map_mrqa`), or the HF distractor format.

  HF format: question, answer, type, level, supporting_facts = {'title', 'sent_id'},
  context = {'title': [...], 'sentences': [[...], ...]}. As MRQA does, the context is the gold
  (supporting) paragraphs only, each 'title: sentences', and yes/no answers are dropped.
  """
  if 'detected_answers' in raw:
    return _map_mrqa(raw)
  answer = _text(raw, 'answer')
  if answer.lower() in ('yes', 'no'):
    raise BadRecord('non-extractive answer')
  ctx = _field(raw, 'context')
  facts = _field(raw, 'supporting_facts')
  if not isinstance(ctx, Mapping) or not isinstance(facts, Mapping):
    raise BadRecord('non-dict field context')
  gold_titles = set(_texts(_field(facts, 'title'), 'supporting_facts.title'))
  paragraphs = []
  for title, sentences in zip(_texts(_field(ctx, 'title'), 'context.title'),
                              _field(ctx, 'sentences')):
    if title in gold_titles:
      # HotpotQA sentences carry their own leading spaces, so they are joined with ''.
      body = ''.join(_texts(sentences, 'context.sentences')).strip()
      paragraphs.append(f'{title}: {body}')
  context = ' '.join(paragraphs)
  start, end = _locate_first(context, [answer])
  return _span_example(context, _text(raw, 'question'), start, end, [answer])


# TFDS DROP renders dates as f'{year}-{month}-{day}' ('1995-May-3', '-May-3', '--3').
_DROP_DATE = re.compile(r'^\d*-[^-\s]*-\d+\w*$')


def map_drop(raw: dict) -> list[Example]:
  """DROP: only answers that occur verbatim in the passage (first whole-word occurrence).

  TFDS flattens each answer to one string: a number, a date as 'year-month-day', or the FIRST
  span of a (possibly multi-span) answer. Dates, empty answers and numbers that are not in the
  passage (computed ones) are 'non-extractive answer'. Limits: TFDS hides whether an answer had
  several spans, so the first span of a multi-span answer is kept as a single span, and a
  computed number that happens to occur in the passage is kept.
  """
  passage = _str(_field(raw, 'passage'), 'passage')
  if not passage.strip():
    raise BadRecord('empty text')
  answer = _str(_field(raw, 'answer'), 'answer').strip()
  validated = _texts(raw.get('validated_answers') or [], 'validated_answers')
  gold = _dedup([answer] + validated)
  if not answer or _DROP_DATE.match(answer):
    raise BadRecord('non-extractive answer')
  pos = _find_bounded(passage, answer)
  if pos == -1:
    raise BadRecord('non-extractive answer')
  return _span_example(passage, _text(raw, 'question'), pos, pos + len(answer), gold)


# ReCoRD passages end with '@highlight' bullet lines; T5's preprocessing turns them into
# sentences, which reads better than a literal marker.
_RECORD_HIGHLIGHT_AFTER_PUNCT = re.compile(r'([.?!"\'])\n@highlight\n')
_RECORD_HIGHLIGHT = re.compile(r'\n@highlight\n')


def map_record(raw: dict) -> list[Example]:
  """ReCoRD: context = passage, question = query (with @placeholder).

  TFDS drops the answers' character offsets, so the first answer (in TFDS's sorted order)
  that occurs as a whole word in the passage is located by search.
  """
  passage = _text(raw, 'passage')
  passage = _RECORD_HIGHLIGHT.sub('. ', _RECORD_HIGHLIGHT_AFTER_PUNCT.sub(r'\1 ', passage))
  gold = _dedup(_texts(_field(raw, 'answers'), 'answers'))
  if not gold:
    raise BadRecord('no answer')
  start, end = _locate_first(passage, gold)
  return _span_example(passage, _text(raw, 'query'), start, end, gold)


# ---------------------------------------------------------------------------------------------
# Extractive QA, evaluation splits: every question is kept (the official scripts score them all).
# ---------------------------------------------------------------------------------------------

_NOT_FOUND = 'answer not found in context'


def _unlocated_example(context: str, question: str, answers: Sequence[str]) -> list[Example]:
  """An evaluation span example whose answer is in no window (answer_start = answer_end = 0):
  it is predicted and scored against `answers` like any other question."""
  if not question.strip():
    raise BadRecord('empty text')
  return [{'context': context, 'question': question.strip(), 'answer_start': 0,
           'answer_end': 0, 'answers': list(answers)}]


def map_squad_eval(raw: dict) -> list[Example]:
  """SQuAD v1.1 evaluation: `map_squad`, keeping a question whose answer cannot be placed."""
  try:
    return map_squad(raw)
  except BadRecord as e:
    if e.reason != _NOT_FOUND:
      raise
  gold = _dedup(_texts(_field(_field(raw, 'answers'), 'text'), 'answers.text'))
  return _unlocated_example(_str(_field(raw, 'context'), 'context'), _text(raw, 'question'),
                            gold)


def _map_mrqa_eval(raw: dict) -> list[Example]:
  """MRQA evaluation: `_map_mrqa`'s span, scored against `answers` only, as the MRQA official
  script does (training also accepts the detected answer texts); a question whose answer
  cannot be placed is kept."""
  try:
    examples = _map_mrqa(raw)
  except BadRecord as e:
    if e.reason != _NOT_FOUND:
      raise
    examples = None
  detected = _field(raw, 'detected_answers')
  gold = _dedup(_texts(raw.get('answers') or [], 'answers')) or _dedup(
      _texts(_field(detected, 'text'), 'detected_answers.text'))
  if examples is None:
    return _unlocated_example(_str(_field(raw, 'context'), 'context'), _text(raw, 'question'),
                              gold)
  examples[0]['answers'] = gold
  return examples


def map_natural_questions_eval(raw: dict) -> list[Example]:
  """Natural Questions (MRQA) evaluation: `_map_mrqa_eval`."""
  return _map_mrqa_eval(raw)


def map_trivia_qa_eval(raw: dict) -> list[Example]:
  """TriviaQA (MRQA) evaluation: `_map_mrqa_eval`."""
  return _map_mrqa_eval(raw)


def map_hotpot_qa_eval(raw: dict) -> list[Example]:
  """HotpotQA evaluation: `_map_mrqa_eval` (MRQA), or the HF distractor format with every
  question kept (yes/no answers too: they are in no span, and score as the official script
  scores them)."""
  if 'detected_answers' in raw:
    return _map_mrqa_eval(raw)
  try:
    return map_hotpot_qa(raw)
  except BadRecord as e:
    if e.reason not in (_NOT_FOUND, 'non-extractive answer'):
      raise
  answer = _text(raw, 'answer')
  ctx, facts = _field(raw, 'context'), _field(raw, 'supporting_facts')
  gold_titles = set(_texts(_field(facts, 'title'), 'supporting_facts.title'))
  paragraphs = [f'{title}: ' + ''.join(_texts(sentences, 'context.sentences')).strip()
                for title, sentences in zip(_texts(_field(ctx, 'title'), 'context.title'),
                                            _field(ctx, 'sentences'))
                if title in gold_titles]
  return _unlocated_example(' '.join(paragraphs), _text(raw, 'question'), [answer])


def map_record_eval(raw: dict) -> list[Example]:
  """ReCoRD evaluation: `map_record`, keeping a query whose entity cannot be placed."""
  try:
    return map_record(raw)
  except BadRecord as e:
    if e.reason != _NOT_FOUND:
      raise
  passage = _text(raw, 'passage')
  passage = _RECORD_HIGHLIGHT.sub('. ', _RECORD_HIGHLIGHT_AFTER_PUNCT.sub(r'\1 ', passage))
  return _unlocated_example(passage, _text(raw, 'query'),
                            _dedup(_texts(_field(raw, 'answers'), 'answers')))


# TFDS's rendering of a DROP date, f'{year}-{month}-{day}' ('1995-May-3', '-May-3').
_DROP_DATE_PARTS = re.compile(r'^(\d*)-([^-\s]*)-(\d+\w*)$')


def _drop_gold(answer: Any) -> list[str]:
  """One DROP gold answer as the official `answer_json_to_strings` flattens it.

  The release's JSON ({'number', 'date': {'day', 'month', 'year'}, 'spans'}): the number if
  set, else the spans, else the date as 'day month year'. TFDS's flattened string: a number or
  the FIRST span as they are, a date 'year-month-day' turned into 'day month year'. TFDS loses
  the other spans of a multi-span answer and the dates without a day (it gives ''); such a
  blank gold answer is skipped by the metric, as the official script skips it.
  """
  if isinstance(answer, Mapping):
    if answer.get('number'):
      return [str(answer['number'])]
    if answer.get('spans'):
      return _texts(answer['spans'], 'spans')
    date = answer.get('date')
    if not isinstance(date, Mapping):
      raise BadRecord('answer type not found')
    return [f"{date.get('day', '')} {date.get('month', '')} {date.get('year', '')}"]
  text = _str(answer, 'answer').strip()
  date = _DROP_DATE_PARTS.match(text)
  if date:
    year, month, day = date.groups()
    return [f'{day} {month} {year}']
  return [text]


def map_drop_eval(raw: dict) -> list[Example]:
  """DROP evaluation: every question of the split, with its structured gold answers.

  `answer_spans` (JSON) lists the released answer then the validated answers, each a list of
  spans (`_drop_gold`); `answers` holds their distinct texts. The span the model is trained
  to find (answer_start/answer_end, for the evaluation loss only) is the first of those texts
  that occurs as a whole word in the passage, else 0, 0.
  """
  passage = _str(_field(raw, 'passage'), 'passage')
  if not passage.strip():
    raise BadRecord('empty text')
  validated = raw.get('validated_answers') or []
  if isinstance(validated, Mapping):  # A TFDS Sequence of dicts arrives as a dict of lists.
    validated = [dict(zip(validated, values)) for values in zip(*validated.values())]
  golds = [_drop_gold(_field(raw, 'answer'))] + [_drop_gold(a) for a in validated]
  texts = _dedup(span for gold in golds for span in gold)
  question = _text(raw, 'question')
  examples = None
  for text in texts:
    pos = _find_bounded(passage, text)
    if pos != -1:
      examples = _span_example(passage, question, pos, pos + len(text), texts)
      break
  if examples is None:
    examples = _unlocated_example(passage, question, texts)
  examples[0]['answer_spans'] = json.dumps(golds)
  return examples


# ---------------------------------------------------------------------------------------------
# Summarization.
# ---------------------------------------------------------------------------------------------


def _summ(slug: str, doc_key: str, summary_key: str) -> Mapper:
  """Mapper for a (document field, summary field) summarization dataset."""

  def mapper(raw: dict) -> list[Example]:
    return _summarization(_text(raw, doc_key), _text(raw, summary_key))

  mapper.__name__ = f'map_{slug}'
  mapper.__doc__ = f'{slug}: document = {doc_key}, summary = {summary_key}.'
  return mapper


# Highlights stay newline-separated, as TFDS gives them.
map_cnn_dailymail = _summ('cnn_dailymail', 'article', 'highlights')
map_billsum = _summ('billsum', 'text', 'summary')
map_xsum = _summ('xsum', 'document', 'summary')
map_aeslc = _summ('aeslc', 'email_body', 'subject_line')
# Source articles stay joined by '|||||', as TFDS gives them.
map_multi_news = _summ('multi_news', 'document', 'summary')


# ---------------------------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------------------------

# Datasets whose mapper adds the optional `group` field (module docstring).
GROUPED: frozenset[str] = frozenset({'multirc', 'eraser_multi_rc'})

MAPPERS: dict[str, Mapper] = {
    # Classification.
    'cola': map_cola, 'sst2': map_sst2, 'mrpc': map_mrpc, 'qqp': map_qqp, 'mnli': map_mnli,
    'qnli': map_qnli, 'rte': map_rte, 'wnli': map_wnli, 'boolq': map_boolq,
    'multirc': map_multirc, 'wic': map_wic, 'wsc': map_wsc, 'cb': map_cb, 'copa': map_copa,
    'ag_news': map_ag_news, 'imdb': map_imdb, 'multi_nli': map_multi_nli, 'snli': map_snli,
    'hans': map_hans, 'rotten_tomatoes': map_rotten_tomatoes,
    'yelp_polarity': map_yelp_polarity, 'eraser_multi_rc': map_eraser_multi_rc,
    'wiki_qa': map_wiki_qa, 'trec': map_trec, 'scitail': map_scitail,
    # Summarization.
    'cnn_dailymail': map_cnn_dailymail, 'billsum': map_billsum, 'xsum': map_xsum,
    'aeslc': map_aeslc, 'multi_news': map_multi_news,
    # Multiple choice.
    'math_qa': map_math_qa, 'openbookqa': map_openbookqa, 'swag': map_swag,
    'hellaswag': map_hellaswag, 'race': map_race, 'commonsense_qa': map_commonsense_qa,
    'cosmos_qa': map_cosmos_qa, 'arc_easy': map_arc_easy, 'arc_challenge': map_arc_challenge,
    'sciq': map_sciq,
    # Extractive QA.
    'squad': map_squad, 'natural_questions': map_natural_questions, 'drop': map_drop,
    'record': map_record, 'hotpot_qa': map_hotpot_qa, 'trivia_qa': map_trivia_qa,
}

# Mappers used for a dataset's evaluation split instead of its `MAPPERS` entry, where scoring
# as the official script does needs records that training drops (see `mapper_for`).
EVAL_MAPPERS: dict[str, Mapper] = {
    'squad': map_squad_eval, 'natural_questions': map_natural_questions_eval,
    'trivia_qa': map_trivia_qa_eval, 'hotpot_qa': map_hotpot_qa_eval,
    'record': map_record_eval, 'drop': map_drop_eval,
}

# Datasets whose evaluation mapper adds the optional `answer_spans` field (module docstring).
STRUCTURED_ANSWERS: frozenset[str] = frozenset({'drop'})


def mapper_for(slug: str, evaluation: bool = False) -> Mapper:
  """The mapper of dataset `slug` for training (`MAPPERS`) or evaluation (`EVAL_MAPPERS`, else
  the training mapper)."""
  if slug not in MAPPERS:
    raise ValueError(f'no mapper for dataset {slug!r}; known: {sorted(MAPPERS)}')
  return EVAL_MAPPERS.get(slug, MAPPERS[slug]) if evaluation else MAPPERS[slug]


# ---------------------------------------------------------------------------------------------
# Drop accounting.
# ---------------------------------------------------------------------------------------------


class DropCounter:
  """Applies mappers, dropping bad records and counting them per dataset and reason.

  A bad record never crashes a run and is never trained on: it is dropped, counted under its
  reason, and the first record of each (dataset, reason) is logged so that a systematic
  problem (e.g. a renamed field) is visible at once, not only in the end-of-run summary.
  Thread-safe, since input pipelines may call it from several threads.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._kept: collections.Counter[str] = collections.Counter()
    self._emitted: collections.Counter[str] = collections.Counter()
    self._dropped: dict[str, collections.Counter[str]] = collections.defaultdict(
        collections.Counter)

  def apply(self, slug: str, raw: dict, mapper: Mapper | None = None) -> list[Example]:
    """Maps one raw record of dataset `slug` (with `mapper`, default its training mapper);
    returns [] (and counts why) if it is bad."""
    mapper = mapper or mapper_for(slug)
    try:
      examples = mapper(raw)
    except BadRecord as e:
      self._drop(slug, e.reason, raw)
      return []
    except KeyError as e:
      self._drop(slug, f'missing field {e.args[0] if e.args else "?"}', raw)
      return []
    except (TypeError, IndexError, AttributeError) as e:
      # Mapper code indexing a field of an unexpected shape (None, a scalar for a list ...).
      self._drop(slug, f'malformed field ({type(e).__name__})', raw, str(e))
      return []
    with self._lock:
      if examples:
        self._kept[slug] += 1
        self._emitted[slug] += len(examples)
      else:
        self._dropped[slug]['no examples'] += 1
    return examples

  def _drop(self, slug: str, reason: str, raw: Any, detail: str = '') -> None:
    with self._lock:
      first = self._dropped[slug][reason] == 0
      self._dropped[slug][reason] += 1
    if first:
      logging.warning('Dropping bad %s record (%s%s); further ones are only counted: %.300r',
                      slug, reason, f': {detail}' if detail else '', raw)

  @property
  def counts(self) -> dict[str, dict[str, Any]]:
    """{slug: {'kept': records kept, 'examples': examples emitted, 'dropped': {reason: n}}}."""
    with self._lock:
      slugs = sorted(set(self._kept) | set(self._dropped))
      return {s: {'kept': self._kept[s], 'examples': self._emitted[s],
                  'dropped': dict(sorted(self._dropped[s].items()))} for s in slugs}

  def summary(self) -> str:
    """One line per dataset: kept, examples, dropped in total and per reason."""
    lines = []
    for slug, c in self.counts.items():
      dropped = sum(c['dropped'].values())
      line = f'{slug}: kept {c["kept"]} records ({c["examples"]} examples), dropped {dropped}'
      if dropped:
        line += ' (' + ', '.join(f'{r}: {n}' for r, n in c['dropped'].items()) + ')'
      lines.append(line)
    return '\n'.join(lines) if lines else 'no records seen'

  def log_summary(self) -> None:
    """Logs `summary()` at INFO level, one line per dataset."""
    for line in self.summary().splitlines():
      logging.info('Preprocessing: %s', line)


# Process-wide drop accounting of every task's mapper (thread-safe; `counts`, `summary`).
DROP_COUNTER = DropCounter()


# ---------------------------------------------------------------------------------------------
# Raw records in, checked family examples out.
# ---------------------------------------------------------------------------------------------

# The fields of each family's examples and their python types (module docstring); the seqio
# tasks' tf.data signatures (tasks.FAMILY_SIGNATURES) are derived from these.
FAMILY_FIELDS: Mapping[Family, Mapping[str, type]] = {
    Family.CLASSIFICATION: {'text_a': str, 'text_b': str, 'label': int},
    Family.MULTIPLE_CHOICE: {'context': str, 'question': str, 'choices': list, 'label': int},
    Family.SPAN: {'context': str, 'question': str, 'answer_start': int, 'answer_end': int,
                  'answers': list},
    Family.SUMMARIZATION: {'document': str, 'summary': str},
}

# Optional fields, present exactly for the datasets whose mapper emits them: `group`, the
# question of a MultiRC answer option (GROUPED). Host-side evaluation metadata: batching.py
# reads only the family's fields, so training is unaffected.
GROUP_FIELD = 'group'
# `answer_spans`, evaluation splits only (STRUCTURED_ANSWERS, i.e. DROP): JSON of the gold
# answers, each a list of spans, for the official DROP metric.
ANSWER_SPANS_FIELD = 'answer_spans'


def example_fields(record: DatasetRecord, evaluation: bool = False) -> dict[str, type]:
  """The fields (name -> python type; `list` = list of str) of a task's family examples; with
  `evaluation`, of its evaluation-split examples (`mapper_for(slug, True)`)."""
  fields = dict(FAMILY_FIELDS[record.family])
  if record.slug in GROUPED:
    fields[GROUP_FIELD] = str
  if evaluation and record.slug in STRUCTURED_ANSWERS:
    fields[ANSWER_SPANS_FIELD] = str
  return fields


def to_python(value: Any) -> Any:
  """A raw record as TFDS yields it (numpy, bytes) -> plain python, recursively.

  bytes -> str, arrays -> lists, numpy scalars -> python scalars, dicts stay dicts (a TFDS
  Sequence of dicts stays a dict of lists).
  """
  if isinstance(value, bytes):  # Also np.bytes_.
    # 'replace' rather than failing a whole stream on one badly encoded record.
    return value.decode('utf-8', errors='replace')
  if isinstance(value, dict):
    return {k: to_python(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):  # tfds.data_source's Sequence-of-dict features.
    return [to_python(v) for v in value]
  if isinstance(value, np.ndarray):
    if value.ndim == 0:
      return to_python(value.item())
    return [to_python(v) for v in value]
  if isinstance(value, np.generic):
    return to_python(value.item())
  return value


def check_family_example(example: Mapping[str, Any], record: DatasetRecord,
                         evaluation: bool = False) -> dict[str, Any]:
  """Returns the example restricted to the task's fields, raising on a malformed one.

  Mappers must raise BadRecord for records they cannot map; an example that reaches this point
  malformed is a mapper bug, so it fails loudly instead of being trained on. With `evaluation`
  (examples of an evaluation mapper), the evaluation fields are kept too, and a span example
  may have answer_start = answer_end = 0: a question whose answer is in no window.
  """
  family, num_classes, task_name = record.family, record.num_classes, record.task_name
  fields = example_fields(record, evaluation)
  missing = [k for k in fields if k not in example]
  if missing:
    raise ValueError(f'{task_name}: mapper output lacks {missing}: {example!r:.300}')
  out = {}
  for key, kind in fields.items():
    value = example[key]
    if kind is str:
      ok = isinstance(value, str)
    elif kind is list:
      ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
      value = list(value)
    else:
      ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
      value = int(value)
    if not ok:
      raise ValueError(f'{task_name}: field {key!r} has the wrong type: {example!r:.300}')
    out[key] = value
  problem = None
  if family == Family.CLASSIFICATION and not 0 <= out['label'] < num_classes:
    problem = f'label {out["label"]} not in [0, {num_classes})'
  elif family == Family.MULTIPLE_CHOICE and not 0 <= out['label'] < len(out['choices']):
    problem = f'label {out["label"]} not in [0, {len(out["choices"])}) choices'
  elif family == Family.SPAN and not (
      0 <= out['answer_start'] < out['answer_end'] <= len(out['context']) or
      (evaluation and out['answer_start'] == out['answer_end'] == 0)):
    problem = (f'span [{out["answer_start"]}, {out["answer_end"]}) outside the context '
               f'({len(out["context"])} chars)')
  if problem:
    raise ValueError(f'{task_name}: mapper emitted an invalid example ({problem}): '
                     f'{example!r:.300}')
  return out
