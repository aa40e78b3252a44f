"""`SubBatchBuilder`: one task's family examples -> fixed-shape sub-batches, one at a time."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from muppet_jax.data.batching import packing
from muppet_jax.data.batching import span
from muppet_jax.data.batching import summarization
from muppet_jax.data.batching.examples import SubBatch
from muppet_jax.data.batching.layout import Layout
from muppet_jax.data.batching.stream import ExampleStream
from muppet_jax.data.features import BatchShape, Family, TaskTable
from muppet_jax.data.vocab import HFVocabulary

MODEL_TYPES = ('roberta', 'bart')


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
        looking at the answer (span.py). Training builders leave it off (no
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
    self._pad = vocab.pad_id
    self._specs = shape.field_specs()
    kw = dict(model_type=model_type, span_stride=span_stride, evaluation=evaluation)
    self._layouts: dict[Family, Layout] = {
        Family.CLASSIFICATION: packing.ClassificationLayout(shape, vocab, task_table, **kw),
        Family.MULTIPLE_CHOICE: packing.MultipleChoiceLayout(shape, vocab, task_table, **kw),
        Family.SPAN: span.SpanLayout(shape, vocab, task_table, **kw),
        Family.SUMMARIZATION: summarization.SummarizationLayout(shape, vocab, task_table, **kw),
    }

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
    prepare = self._layouts[family].prepare
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
    n = self._layouts[stream.family].fill(stream, arrays, meta)
    return SubBatch(arrays, n, int(np.count_nonzero(arrays['segment_ids'])),
                    None if meta is None else tuple(meta))
