"""Mappers of the extractive-QA (span) datasets, for training, and how answers are located.

Each returns `[{'context', 'question', 'answer_start', 'answer_end', 'answers'}]` (formats.py):
the character offsets of the first gold answer found in the context. A record whose answer
cannot be located is dropped here; evaluation.py keeps it for scoring.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from muppet_jax.data.mappers.fields import (BadRecord, Example, _dedup, _field, _int, _str,
                                            _text, _texts)
from muppet_jax.data.mappers.formats import _span_example


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

