"""Classification and multiple choice: segments packed first-fit into the rows.

Layout (token sequences as in Hugging Face RoBERTa / BART):
- classification: `<s> A </s>` or `<s> A </s></s> B </s>`, pairs truncated longest-first to L.
- multiple choice: one segment per choice, `<s> context question </s></s> choice </s>`; the
  context is truncated first (from its end), then the question, never the choice (unless a
  single choice alone would not fit). All choices of an example land in the same sub-batch.

Packing: classification and multiple-choice segments are placed first-fit into the R rows (up
to L tokens per row), in stream order. The first example that does not fit ends the sub-batch
and starts the next one (it stays in the stream's lookahead): no example is dropped, reordered
or duplicated, so "examples consumed" is a plain count and a resumed run can skip exactly that
many (pipeline.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from muppet_jax.data.batching.examples import ExampleMeta, PackedExample
from muppet_jax.data.batching.layout import Layout
from muppet_jax.data.batching.stream import ExampleStream


class PackedLayout(Layout):
  """What classification and multiple choice share: segments, labels, first-fit packing."""

  def _check_label(self, task_name: str, label, n: int, what: str) -> int:
    if not isinstance(label, (int, np.integer)) or not 0 <= label < n:
      raise ValueError(
          f'task {task_name!r}: label {label!r} is out of range for {n} {what}; the dataset '
          f'mapper must drop such examples.')
    return int(label)

  def _segment(self, a: Sequence[int], b: Sequence[int] | None) -> np.ndarray:
    """`<s> a </s>` or `<s> a </s></s> b </s>`, assuming the lengths already fit."""
    if b is None:
      return np.array([self._cls, *a, self._sep], np.int32)
    return np.array([self._cls, *a, self._sep, self._sep, *b, self._sep], np.int32)

  def fill(self, stream: ExampleStream, arrays: dict[str, np.ndarray],
           meta: list[ExampleMeta | None] | None) -> int:
    """First-fit packing of classification / multiple-choice segments; returns examples."""
    rows, length, max_examples = self.shape.rows, self.shape.length, self.shape.max_examples
    free = [length] * rows
    segments_in_row = [0] * rows
    ids, seg_ids, pos = arrays['input_ids'], arrays['segment_ids'], arrays['positions']
    bart = self.model_type == 'bart'
    e = 0
    while e < max_examples:
      item = stream.peek()
      if item is None:
        break
      placement = _first_fit(free, [len(s) for s in item.segments])
      if placement is None:
        break  # Does not fit: it opens the next sub-batch (stays in the lookahead).
      stream.pop()
      for c, (segment, row) in enumerate(zip(item.segments, placement)):
        n = len(segment)
        col = length - free[row]
        free[row] -= n
        segments_in_row[row] += 1
        ids[row, col:col + n] = segment
        seg_ids[row, col:col + n] = segments_in_row[row]
        pos[row, col:col + n] = self._arange[:n]
        arrays['example_index'][e, c] = row * length + col + (n - 1 if bart else 0)
        arrays['choice_mask'][e, c] = True
      arrays['labels'][e] = item.label
      arrays['example_mask'][e] = True
      arrays['loss_n'][e] = item.loss_n
      if meta is not None:
        meta[e] = dataclasses.replace(item.meta, index=stream.consumed - 1)
      e += 1
    return e


class ClassificationLayout(PackedLayout):
  """`<s> A </s>` or `<s> A </s></s> B </s>`, one segment per example."""

  def prepare(self, task_name: str, task_id: int, raw: list[dict]) -> list[PackedExample]:
    num_classes = int(self.task_table.num_classes[task_id])
    labels = [self._check_label(task_name, ex['label'], num_classes, 'classes') for ex in raw]
    a_ids = self.vocab.encode_batch([ex['text_a'] for ex in raw])
    b_ids = self.vocab.encode_batch([ex.get('text_b') or '' for ex in raw])
    length = self.shape.length
    out = []
    for ex, a, b, label in zip(raw, a_ids, b_ids, labels):
      if ex.get('text_b'):
        na, nb = _truncate_longest_first(len(a), len(b), length - 4)
        segment = self._segment(a[:na], b[:nb])
      else:
        segment = self._segment(a[:length - 2], None)
      meta = ExampleMeta(group=str(ex.get('group', ''))) if self.evaluation else None
      out.append(PackedExample((segment,), label, float(num_classes), meta))
    return out


class MultipleChoiceLayout(PackedLayout):
  """One segment per choice; all choices of an example land in the same sub-batch."""

  def prepare(self, task_name: str, task_id: int, raw: list[dict]) -> list[PackedExample]:
    del task_id
    max_choices, rows, length = self.shape.max_choices, self.shape.rows, self.shape.length
    for ex in raw:
      n = len(ex['choices'])
      if not 1 <= n <= max_choices:
        raise ValueError(f'task {task_name!r}: an example has {n} choices; data.max_choices '
                         f'is {max_choices}.')
      self._check_label(task_name, ex['label'], n, 'choices')
    contexts = self.vocab.encode_batch([ex['context'] for ex in raw])
    # The question follows the context in one segment: a leading space tokenizes it as in
    # the joined text "context question" (byte-level BPE marks word starts by the space).
    questions = self.vocab.encode_batch([
        (' ' + ex['question']) if ex['context'] and ex['question'] else ex['question']
        for ex in raw])
    flat_choices = self.vocab.encode_batch([c for ex in raw for c in ex['choices']])
    out, k = [], 0
    for ex, context, question in zip(raw, contexts, questions):
      n = len(ex['choices'])
      # A segment may use at most L // ceil(n / R) tokens, so that all n choices always fit
      # into an empty sub-batch (first-fit then puts ceil(n / R) segments in every row).
      cap = length // -(-n // rows) - 4
      segments = []
      for choice in flat_choices[k:k + n]:
        choice = choice[:cap - 1]  # Only a choice longer than a whole segment is cut.
        budget = cap - len(choice)
        ctx = context[:max(0, budget - len(question))]
        segments.append(self._segment([*ctx, *question[:budget - len(ctx)]], choice))
      k += n
      meta = ExampleMeta() if self.evaluation else None
      out.append(PackedExample(tuple(segments), int(ex['label']), float(n), meta))
    return out


def _truncate_longest_first(na: int, nb: int, budget: int) -> tuple[int, int]:
  """Lengths after removing tokens from the longer text, one at a time (HF 'longest_first')."""
  excess = na + nb - budget
  if excess <= 0:
    return na, nb
  cut = min(excess, abs(na - nb))
  if na > nb:
    na -= cut
  else:
    nb -= cut
  excess -= cut
  # Equal lengths now: alternate, the second text first (as transformers does on ties).
  return na - excess // 2, nb - (excess - excess // 2)


def _first_fit(free: list[int], lengths: Sequence[int]) -> list[int] | None:
  """Rows for segments of `lengths` (first row with room each), or None if one does not fit."""
  trial = list(free)
  rows = []
  for n in lengths:
    for row, room in enumerate(trial):
      if room >= n:
        trial[row] -= n
        rows.append(row)
        break
    else:
      return None
  return rows

