"""What the builder passes around: prepared examples, their evaluation metadata, sub-batches."""

from __future__ import annotations

import dataclasses
from typing import Union

import numpy as np


# --- Prepared (tokenized, laid out) examples ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpanWindow:
  """One row of a span example.

  Attributes:
    tokens: `<s> question </s></s> context-window </s>`, [n] int32.
    context_begin: first column of the window's context tokens.
    context_end: one past the last column of the window's context tokens.
    start: column of the answer's first token, 0 if the window does not hold the answer.
    end: column of the answer's last token, 0 if the window does not hold the answer.
    first_token: index, in the tokenized context, of the token at column `context_begin`.
  """

  tokens: np.ndarray
  context_begin: int
  context_end: int
  start: int
  end: int
  first_token: int = 0


@dataclasses.dataclass(frozen=True, eq=False)
class ExampleMeta:
  """Host-side facts about the example in one slot, for evaluation; never sent to the device.

  Attributes:
    index: the example's position in its stream (0-based); all windows (rows) of one span
      example share it.
    group: classification: the question the example belongs to (MultiRC: every answer option
      of a question has the same group), '' when the dataset has none.
    context: span: the raw context text.
    answers: span: every gold answer text of the question.
    gold_spans: span, DROP-style structured golds (the example's `answer_spans`): each gold
      answer as a tuple of spans; () when the dataset has none (each of `answers` is a gold).
    offsets: span: [n, 2] int64 character (start, end) of each token of the tokenized context,
      shared by the example's windows.
    window: span: this row's window (columns of its context tokens, `first_token`).
    reference: summarization: the raw reference summary (not tokenized, not truncated).
  """

  index: int = -1
  group: str = ''
  context: str = ''
  answers: tuple[str, ...] = ()
  gold_spans: tuple[tuple[str, ...], ...] = ()
  offsets: np.ndarray | None = None
  window: SpanWindow | None = None
  reference: str = ''

  def span_text(self, start: int, end: int) -> str:
    """The original context text of the window's columns `start..end` (inclusive).

    Cut from `context` with the tokenizer's character offsets (not decoded from tokens), so
    case, inner whitespace and punctuation are the original's; whitespace at the ends (which
    byte-level BPE may count into a token) is stripped.
    """
    w = self.window
    if w is None or self.offsets is None:
      raise ValueError('span_text needs the metadata of a span window')
    if not w.context_begin <= start <= end < w.context_end:
      raise ValueError(f'columns [{start}, {end}] are not inside the window\'s context '
                       f'[{w.context_begin}, {w.context_end})')
    first = w.first_token + start - w.context_begin
    last = w.first_token + end - w.context_begin
    return self.context[int(self.offsets[first, 0]):int(self.offsets[last, 1])].strip()


@dataclasses.dataclass(frozen=True)
class PackedExample:
  """A classification or multiple-choice example, ready to place.

  Attributes:
    segments: complete token ids of each segment (with `<s>`/`</s>`), one per choice
      (classification: one segment).
    label: class id / index of the correct choice.
    loss_n: n of the log(n) loss scaling (classes / valid choices).
    meta: evaluation metadata (evaluation builders only; `index` is set when placed).
  """

  segments: tuple[np.ndarray, ...]
  label: int
  loss_n: float
  meta: ExampleMeta | None = None


@dataclasses.dataclass(frozen=True)
class SpanExample:
  windows: tuple[SpanWindow, ...]
  meta: ExampleMeta | None = None  # Evaluation builders only (without `window`, `index`).


@dataclasses.dataclass(frozen=True)
class Seq2SeqExample:
  """A summarization example: encoder tokens [n <= L] and decoder target [m <= Ld]."""

  encoder: np.ndarray
  target: np.ndarray
  meta: ExampleMeta | None = None  # Evaluation builders only (`index` is set when placed).


Prepared = Union[PackedExample, SpanExample, Seq2SeqExample]


# --- Sub-batches -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SubBatch:
  """One filled slot.

  Attributes:
    arrays: the fields of `BatchShape.field_specs()` (numpy, exact shapes and dtypes).
    num_examples: examples consumed from the stream (0 only when the stream is exhausted);
      evaluation builders: examples with a row in the sub-batch (one MRC question with more
      windows than rows is in several sub-batches).
    num_tokens: real (non-padding) encoder tokens.
    meta: evaluation builders only (None otherwise): [E] host-side metadata, one per example
      slot, None where `example_mask` is False. Not part of `arrays`: the device program
      never sees it.
  """

  arrays: dict[str, np.ndarray]
  num_examples: int
  num_tokens: int
  meta: tuple[ExampleMeta | None, ...] | None = None
