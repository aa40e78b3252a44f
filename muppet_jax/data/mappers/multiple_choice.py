"""Mappers of the multiple-choice datasets (commonsense and science QA, RACE, MathQA).

Each returns `[{'context': str, 'question': str, 'choices': list[str], 'label': int}]`
(formats.py); RACE returns one example per question of the article.
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
from collections.abc import Iterable, Mapping

from muppet_jax.data.mappers.fields import (BadRecord, Example, _field, _label, _letter, _str,
                                            _text, _texts)
from muppet_jax.data.mappers.formats import _multiple_choice


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

