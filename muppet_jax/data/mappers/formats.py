"""The family formats: their fields, the constructors that build them, and the final check.

Every mapper returns a list of examples in its family's format:

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

The evaluation examples of the datasets in `STRUCTURED_ANSWERS` (DROP) add `'answer_spans':
str`: a JSON list of the gold answers, each a list of spans, as the official drop_eval.py
flattens numbers, dates and multi-span answers (`evaluation.map_drop_eval`).

Label orders are each dataset's own (every classification dataset has its own head), so e.g.
WNLI keeps [not_entailment, entailment] and CB keeps [entailment, contradiction, neutral].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.data.features import Family
from muppet_jax.data.mappers.fields import BadRecord, Example, _label, _nonempty

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
# question of a MultiRC answer option (GROUPED). Host-side evaluation metadata: batching
# reads only the family's fields, so training is unaffected.
GROUP_FIELD = 'group'
# Datasets whose mapper adds the optional `group` field (module docstring).
GROUPED: frozenset[str] = frozenset({'multirc', 'eraser_multi_rc'})

# `answer_spans`, evaluation splits only (STRUCTURED_ANSWERS, i.e. DROP): JSON of the gold
# answers, each a list of spans, for the official DROP metric.
ANSWER_SPANS_FIELD = 'answer_spans'
# Datasets whose evaluation mapper adds the optional `answer_spans` field (module docstring).
STRUCTURED_ANSWERS: frozenset[str] = frozenset({'drop'})


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


# ---------------------------------------------------------------------------------------------
# Checking mapper output against its family's format.
# ---------------------------------------------------------------------------------------------


def example_fields(record: DatasetRecord, evaluation: bool = False) -> dict[str, type]:
  """The fields (name -> python type; `list` = list of str) of a task's family examples; with
  `evaluation`, of its evaluation-split examples (`mapper_for(slug, True)`)."""
  fields = dict(FAMILY_FIELDS[record.family])
  if record.slug in GROUPED:
    fields[GROUP_FIELD] = str
  if evaluation and record.slug in STRUCTURED_ANSWERS:
    fields[ANSWER_SPANS_FIELD] = str
  return fields


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
