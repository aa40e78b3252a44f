"""Mappers of the extractive-QA evaluation splits (`registry.EVAL_MAPPERS`).

Scoring as the official scripts do needs records that training drops
(`mapper_for(slug, evaluation=True)`): the extractive-QA sets keep every question, also one
whose answer cannot be located in the context (then answer_start = answer_end = 0, which
batching treats as "not in any window", and `answers` holds every gold text to score against);
DROP keeps its whole validation split, and its evaluation examples add `'answer_spans': str`
(formats.STRUCTURED_ANSWERS): a JSON list of the gold answers, each a list of spans, as the
official drop_eval.py flattens numbers, dates and multi-span answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from muppet_jax.data.mappers.fields import (BadRecord, Example, _dedup, _field, _str, _text,
                                            _texts)
from muppet_jax.data.mappers.formats import _span_example
from muppet_jax.data.mappers.span import (_RECORD_HIGHLIGHT, _RECORD_HIGHLIGHT_AFTER_PUNCT,
                                          _find_bounded, _map_mrqa, map_hotpot_qa, map_record,
                                          map_squad)

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

