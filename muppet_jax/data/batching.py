"""Family examples -> fixed-shape device sub-batches (docs/ARCHITECTURE.md section 2).

One sub-batch holds examples of exactly one task. Every task of a run produces the same field
shapes (`BatchShape.field_specs`), so one compiled program serves them all.

Layout (token sequences as in Hugging Face RoBERTa / BART):
- classification: `<s> A </s>` or `<s> A </s></s> B </s>`, pairs truncated longest-first to L.
- multiple choice: one segment per choice, `<s> context question </s></s> choice </s>`; the
  context is truncated first (from its end), then the question, never the choice (unless a
  single choice alone would not fit). All choices of an example land in the same sub-batch.
- span (MRC): `<s> question </s></s> context-window </s>`, one window per row. Long contexts
  are cut into sliding windows overlapping by `span_stride` tokens; a window that does not
  hold the whole answer points start = end = 0 (the `<s>`: "no answer here").
- summarization (BART only): encoder `<s> document </s>`, decoder target `summary </s>`,
  decoder input `</s> summary` (target shifted right, starting with `decoder_start` = `</s>`).
  One example per row.

Packing: classification and multiple-choice segments are placed first-fit into the R rows (up
to L tokens per row), in stream order. The first example that does not fit ends the sub-batch
and starts the next one (it stays in the stream's lookahead): no example is dropped, reordered
or duplicated, so "examples consumed" is a plain count and a resumed run can skip exactly that
many (pipeline.py).

Evaluation (`SubBatchBuilder(..., evaluation=True)`): each sub-batch also carries host-side
metadata, `SubBatch.meta`, one `ExampleMeta` per example slot (aligned with `example_mask`; for
span and summarization slot e is row e): the example's position in its stream, its question
group (MultiRC), the raw context, gold answers and token character offsets of each MRC window,
and the raw reference summary. It never goes to the device (the arrays and their shapes are
the same as in training). An evaluation builder also lays out EVERY window of an MRC question,
without looking at the answer: a question with more windows than rows starts in an empty
sub-batch and continues, R windows at a time, in the following ones (its last windows share a
sub-batch with the next questions), so that its best span can be picked over all of them
(training keeps at most R windows, those that hold the answer first).

Bad inputs raise `ValueError` naming the task (label out of range, more choices than
`data.max_choices`, span offsets outside the context): the dataset mappers are responsible for
dropping such examples, and silently skipping them here would hide a broken mapper. An
unanswerable span example (SQuAD 2.0 style) is one with `answer_end <= answer_start`.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Union

import numpy as np

from muppet_jax.data.features import BatchShape, Family, TaskTable
from muppet_jax.data.vocab import HFVocabulary

MODEL_TYPES = ('roberta', 'bart')


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


# --- Streams -----------------------------------------------------------------------------------


class ExampleStream:
  """One task's family examples, tokenized ahead in chunks, with the position of what is consumed.

  The builder takes examples off the front only when they go into a sub-batch (`pop`);
  examples tokenized ahead are lookahead, not consumed. `consumed` counts the examples that
  went into sub-batches, and, when the underlying iterator is checkpointable (grain's
  `get_state()` / `set_state()`, e.g. `streams.FamilyStream`), `position()` is the iterator
  state of the first example not consumed yet: restoring a fresh iterator to it continues the
  stream identically, whatever was tokenized ahead.

  Create streams with `SubBatchBuilder.stream`.
  """

  def __init__(self, task_name: str, task_id: int, family: Family, examples: Iterable[dict],
               prepare: Callable[[list[dict]], list[Prepared]], chunk_size: int):
    self.task_name = task_name
    self.task_id = task_id
    self.family = family
    self._examples = iter(examples)
    self._prepare = prepare
    self._chunk_size = chunk_size
    self._buffer: collections.deque[Prepared] = collections.deque()
    # The iterator state before each buffered example (checkpointable iterators only).
    self._tracks_position = hasattr(self._examples, 'get_state')
    self._positions: collections.deque = collections.deque()
    self._exhausted = False
    self.consumed = 0
    # Evaluation builders: windows of the front span example already placed in earlier
    # sub-batches (a question with more windows than rows spans several sub-batches).
    self.windows_placed = 0

  def peek(self) -> Prepared | None:
    """The next example (tokenized), or None at the end of the iterator."""
    if not self._buffer and not self._exhausted:
      # Tokenizing a chunk at once goes through the Rust tokenizer's batch path.
      if self._tracks_position:
        raw = []
        for _ in range(self._chunk_size):
          position = self._examples.get_state()
          try:
            raw.append(next(self._examples))
          except StopIteration:
            break
          self._positions.append(position)
      else:
        raw = list(itertools.islice(self._examples, self._chunk_size))
      self._exhausted = len(raw) < self._chunk_size
      self._buffer.extend(self._prepare(raw))
    return self._buffer[0] if self._buffer else None

  def pop(self) -> Prepared:
    """Consumes the example `peek` returned."""
    self.consumed += 1
    if self._tracks_position:
      self._positions.popleft()
    return self._buffer.popleft()

  def position(self):
    """The underlying iterator's state at the first example not consumed (checkpointable
    iterators only)."""
    if not self._tracks_position:
      raise TypeError(f'the examples of {self.task_name} come from an iterator without '
                      'get_state(); its position cannot be saved')
    return self._positions[0] if self._positions else self._examples.get_state()


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


# --- Builder -----------------------------------------------------------------------------------


class SubBatchBuilder:
  """Builds fixed-shape sub-batches from one task's family examples at a time.

  Stateless apart from its configuration: the lookahead lives in each `ExampleStream`, so
  one builder serves every task and slot (and may be shared across threads as long as each
  stream is used by one thread at a time).
  """

  def __init__(self, shape: BatchShape, vocab: HFVocabulary, task_table: TaskTable, *,
               model_type: str = 'roberta', span_stride: int = 128, chunk_size: int = 64,
               evaluation: bool = False):
    """Args:
      shape: the per-slot sizes (R, L, E, C, Ld).
      vocab: the run's tokenizer.
      task_table: task names -> family, classes.
      model_type: 'roberta' (example_index at each segment's `<s>`) or 'bart' (at each
        segment's last `</s>`, which the decoder reads; also enables summarization).
      span_stride: tokens of overlap between consecutive windows of a long MRC context
        (config.data.span_stride); must be < (L - 4) // 2 (checked when a span task's stream
        is created).
      chunk_size: examples tokenized at once by a stream (lookahead, not consumed).
      evaluation: build for evaluation: fill `SubBatch.meta`, and pick MRC windows without
        looking at the answer (module docstring). Training builders leave it off (no
        metadata is kept, and no time spent on it).
    """
    if model_type not in MODEL_TYPES:
      raise ValueError(f'model_type must be one of {MODEL_TYPES}, got {model_type!r}')
    if shape.length < 16:
      raise ValueError(f'data.length must be >= 16, got {shape.length}')
    self.shape = shape
    self.vocab = vocab
    self.task_table = task_table
    self.model_type = model_type
    self.span_stride = span_stride
    self.chunk_size = chunk_size
    self.evaluation = evaluation
    self._cls = vocab.cls_id
    self._sep = vocab.sep_id
    self._eos = vocab.eos_id
    self._pad = vocab.pad_id
    self._vocab_size = vocab.vocab_size
    self._specs = shape.field_specs()
    self._arange = np.arange(max(shape.length, shape.decoder_length), dtype=np.int32)

  # --- Public API ------------------------------------------------------------------------------

  def stream(self, task_name: str, examples: Iterable[dict]) -> ExampleStream:
    """Wraps an iterator of one task's family examples (docs: family formats) for `build`."""
    task_id = self.task_table.task_id(task_name)
    family = Family(int(self.task_table.families[task_id]))
    if family == Family.SUMMARIZATION and self.model_type != 'bart':
      raise ValueError(f'task {task_name!r} is summarization, which needs model.type = bart')
    limit = (self.shape.length - 4) // 2  # The context part of a row is at least this long.
    if family == Family.SPAN and not 0 <= self.span_stride < limit:
      raise ValueError(
          f'task {task_name!r}: data.span_stride ({self.span_stride}) must be in [0, {limit}): '
          f'the overlap of MRC windows must be smaller than the context part of a '
          f'{self.shape.length}-token row.')
    prepare = {
        Family.CLASSIFICATION: self._prepare_classification,
        Family.MULTIPLE_CHOICE: self._prepare_multiple_choice,
        Family.SPAN: self._prepare_span,
        Family.SUMMARIZATION: self._prepare_summarization,
    }[family]
    return ExampleStream(task_name, task_id, family, examples,
                         lambda raw: prepare(task_name, task_id, raw), self.chunk_size)

  def build(self, stream: ExampleStream) -> SubBatch:
    """Fills one sub-batch from the front of `stream`.

    Returns:
      The sub-batch. `num_examples` is 0 (and the sub-batch empty) only when the stream is
      exhausted.
    """
    arrays = {name: np.zeros(shape, dtype) for name, (shape, dtype) in self._specs.items()}
    arrays['input_ids'].fill(self._pad)
    arrays['task_id'][...] = stream.task_id
    arrays['family_id'][...] = int(stream.family)
    meta = [None] * self.shape.max_examples if self.evaluation else None
    if stream.family in (Family.CLASSIFICATION, Family.MULTIPLE_CHOICE):
      n = self._fill_packed(stream, arrays, meta)
    elif stream.family == Family.SPAN:
      n = self._fill_span(stream, arrays, meta)
    else:
      n = self._fill_seq2seq(stream, arrays, meta)
    return SubBatch(arrays, n, int(np.count_nonzero(arrays['segment_ids'])),
                    None if meta is None else tuple(meta))

  # --- Tokenize and lay out ----------------------------------------------------------------------

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

  def _prepare_classification(self, task_name: str, task_id: int,
                              raw: list[dict]) -> list[PackedExample]:
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

  def _prepare_multiple_choice(self, task_name: str, task_id: int,
                               raw: list[dict]) -> list[PackedExample]:
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

  def _prepare_span(self, task_name: str, task_id: int, raw: list[dict]) -> list[SpanExample]:
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

  def _prepare_summarization(self, task_name: str, task_id: int,
                             raw: list[dict]) -> list[Seq2SeqExample]:
    del task_name, task_id
    documents = self.vocab.encode_batch([ex['document'] for ex in raw])
    summaries = self.vocab.encode_batch([ex['summary'] for ex in raw])
    length, target_length = self.shape.length, self.shape.decoder_length
    return [
        Seq2SeqExample(
            np.array([self._cls, *document[:length - 2], self._eos], np.int32),
            # Cut the summary, not its `</s>`: the model must learn to stop.
            np.array([*summary[:target_length - 1], self._eos], np.int32),
            ExampleMeta(reference=ex['summary']) if self.evaluation else None)
        for ex, document, summary in zip(raw, documents, summaries)
    ]

  # --- Fill ------------------------------------------------------------------------------------

  def _fill_packed(self, stream: ExampleStream, arrays: dict[str, np.ndarray],
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

  def _fill_span(self, stream: ExampleStream, arrays: dict[str, np.ndarray],
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

  def _fill_seq2seq(self, stream: ExampleStream, arrays: dict[str, np.ndarray],
                    meta: list[ExampleMeta | None] | None) -> int:
    """One summarization example per row."""
    arrays['decoder_input_ids'].fill(self._pad)
    arrays['decoder_target_ids'].fill(self._pad)
    row = 0
    while row < self.shape.rows and stream.peek() is not None:
      item = stream.pop()
      n, m = len(item.encoder), len(item.target)
      arrays['input_ids'][row, :n] = item.encoder
      arrays['segment_ids'][row, :n] = 1
      arrays['positions'][row, :n] = self._arange[:n]
      arrays['decoder_target_ids'][row, :m] = item.target
      # decoder_start_token_id = `</s>` for BART; then the target shifted right.
      arrays['decoder_input_ids'][row, 0] = self._eos
      arrays['decoder_input_ids'][row, 1:m] = item.target[:-1]
      arrays['decoder_mask'][row, :m] = True
      arrays['example_mask'][row] = True
      arrays['loss_n'][row] = self._vocab_size
      if meta is not None:
        meta[row] = dataclasses.replace(item.meta, index=stream.consumed - 1)
      row += 1
    return row


# --- Helpers -----------------------------------------------------------------------------------


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
