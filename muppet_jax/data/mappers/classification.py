"""Mappers of the classification datasets (`NUM_CLASSES` classes each, in the dataset's order).

Each returns `[{'text_a': str, 'text_b': str, 'label': int}]` (formats.py); MultiRC and ERASER
MultiRC add `group`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from muppet_jax.data.mappers.fields import (BadRecord, Example, Mapper, _field, _int,
                                            _text)
from muppet_jax.data.mappers.formats import _classification

# Classes per classification dataset, in each dataset's own label order (TFDS ClassLabel or
# HF ClassLabel). tests/test_mappers.py checks these against the catalogue.
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

