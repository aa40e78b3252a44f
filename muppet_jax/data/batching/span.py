"""Span (MRC) examples: long contexts cut into sliding windows, one window per row.

Each row is `<s> question </s></s> context-window </s>`. Long contexts are cut into sliding
windows overlapping by `span_stride` tokens; a window that does not hold the whole answer
points start = end = 0 (the `<s>`: "no answer here").

An evaluation builder lays out EVERY window of an MRC question, without looking at the answer:
a question with more windows than rows starts in an empty sub-batch and continues, R windows at
a time, in the following ones (its last windows share a sub-batch with the next questions), so
that its best span can be picked over all of them (training keeps at most R windows, those that
hold the answer first).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from muppet_jax.data.batching.examples import ExampleMeta, SpanExample, SpanWindow
from muppet_jax.data.batching.layout import Layout
from muppet_jax.data.batching.stream import ExampleStream


class SpanLayout(Layout):
  """`<s> question </s></s> context-window </s>`, one window per row."""

  def prepare(self, task_name: str, task_id: int, raw: list[dict]) -> list[SpanExample]:
    del task_id
    length, rows = self.shape.length, self.shape.rows
    questions = self.vocab.encode_batch([ex['question'] for ex in raw])
    contexts = self.vocab.encode_batch_with_offsets([ex['context'] for ex in raw])
    out = []
    for ex, question, context in zip(raw, questions, contexts):
      question = question[:(length - 4) // 2]  # The context keeps at least half the row.
      budget = length - 4 - len(question)
      step = budget - self.span_stride
      first_col = len(question) + 3  # After `<s> question </s></s>`.
      offsets = np.asarray(context.offsets, np.int64).reshape(-1, 2)
      answer = _answer_tokens(task_name, ex, offsets)
      ids = np.asarray(context.ids, np.int32)
      starts = [0]
      while starts[-1] + budget < len(ids):
        starts.append(starts[-1] + step)
      # Evaluation keeps every window (`_fill_span` spreads them over sub-batches): the answer
      # must not choose what the model sees.
      if len(starts) > rows and not self.evaluation:
        # More windows than rows: keep the windows that hold the answer, then the earliest
        # others, in context order (windows of one example stay in one sub-batch).
        holds = [s for s in starts if answer and s <= answer[0] and answer[1] < s + budget]
        rest = [s for s in starts if s not in holds]
        starts = sorted((holds + rest)[:rows])
      windows = []
      for s in starts:
        window = ids[s:s + budget]
        tokens = np.concatenate([
            np.array([self._cls, *question, self._sep, self._sep], np.int32), window,
            np.array([self._sep], np.int32)])
        if answer and s <= answer[0] and answer[1] < s + len(window):
          start, end = first_col + answer[0] - s, first_col + answer[1] - s
        else:
          start = end = 0
        windows.append(SpanWindow(tokens, first_col, first_col + len(window), start, end, s))
      meta = None
      if self.evaluation:
        gold_spans = tuple(tuple(str(s) for s in gold)
                           for gold in json.loads(ex.get('answer_spans') or '[]'))
        meta = ExampleMeta(context=ex['context'], answers=tuple(ex.get('answers') or ()),
                           gold_spans=gold_spans, offsets=offsets)
      out.append(SpanExample(tuple(windows), meta))
    return out

  def fill(self, stream: ExampleStream, arrays: dict[str, np.ndarray],
           meta: list[ExampleMeta | None] | None) -> int:
    """One window per row; all windows of an example in the same sub-batch, except in
    evaluation, where an example with more windows than rows starts in an empty sub-batch and
    continues in the next ones (`stream.windows_placed` remembers where)."""
    rows = self.shape.rows
    row, count = 0, 0
    while True:
      item = stream.peek()
      if item is None:
        break
      placed = stream.windows_placed
      windows = item.windows[placed:]
      if len(windows) > rows - row and not (self.evaluation and row == 0):
        break  # Does not fit: it opens the next sub-batch.
      windows = windows[:rows - row]
      index = stream.consumed  # The example's position (it is popped after its last window).
      if placed + len(windows) == len(item.windows):
        stream.pop()
        stream.windows_placed = 0
      else:
        stream.windows_placed = placed + len(windows)
      count += 1
      for w in windows:
        if meta is not None:
          meta[row] = dataclasses.replace(item.meta, index=index, window=w)
        n = len(w.tokens)
        arrays['input_ids'][row, :n] = w.tokens
        arrays['segment_ids'][row, :n] = 1
        arrays['positions'][row, :n] = self._arange[:n]
        arrays['span_mask'][row, 0] = True
        arrays['span_mask'][row, w.context_begin:w.context_end] = True
        arrays['span_start'][row] = w.start
        arrays['span_end'][row] = w.end
        arrays['example_mask'][row] = True
        arrays['loss_n'][row] = 1 + w.context_end - w.context_begin
        row += 1
    return count


def _answer_tokens(task_name: str, ex: dict, offsets: np.ndarray) -> tuple[int, int] | None:
  """(first, last) context token of the answer, or None (unanswerable / no token overlaps).

  `offsets` are the context tokens' [n, 2] character (start, end).
  """
  begin, end = ex['answer_start'], ex['answer_end']
  if end <= begin:
    return None
  if not 0 <= begin < end <= len(ex['context']):
    raise ValueError(
        f'task {task_name!r}: answer offsets [{begin}, {end}) are outside the context '
        f'({len(ex["context"])} characters); the dataset mapper must drop such examples.')
  if not len(offsets):
    return None
  # Tokens overlapping [begin, end): byte-level BPE may include a leading space in a token's
  # offsets, so overlap (not containment) is the test.
  hit = np.flatnonzero((offsets[:, 1] > begin) & (offsets[:, 0] < end))
  if not hit.size:
    return None
  return int(hit[0]), int(hit[-1])
