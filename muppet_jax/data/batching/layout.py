"""The interface of a family's layout: tokenize examples (`prepare`), place them (`fill`)."""

from __future__ import annotations

import abc

import numpy as np

from muppet_jax.data.batching.examples import ExampleMeta, Prepared
from muppet_jax.data.batching.stream import ExampleStream
from muppet_jax.data.features import BatchShape, TaskTable
from muppet_jax.data.vocab import HFVocabulary


class Layout(abc.ABC):
  """How one family's examples are tokenized and laid out in the arrays of a sub-batch.

  `SubBatchBuilder` holds one layout per family. A layout is stateless apart from its
  configuration (the lookahead lives in each `ExampleStream`), like the builder.
  """

  def __init__(self, shape: BatchShape, vocab: HFVocabulary, task_table: TaskTable, *,
               model_type: str, span_stride: int, evaluation: bool):
    """Args: as `SubBatchBuilder`'s."""
    self.shape = shape
    self.vocab = vocab
    self.task_table = task_table
    self.model_type = model_type
    self.span_stride = span_stride
    self.evaluation = evaluation
    self._cls = vocab.cls_id
    self._sep = vocab.sep_id
    self._eos = vocab.eos_id
    self._pad = vocab.pad_id
    self._vocab_size = vocab.vocab_size
    self._arange = np.arange(max(shape.length, shape.decoder_length), dtype=np.int32)

  @abc.abstractmethod
  def prepare(self, task_name: str, task_id: int, raw: list[dict]) -> list[Prepared]:
    """Tokenizes a chunk of task `task_name`'s family examples and cuts them to fit a row."""

  @abc.abstractmethod
  def fill(self, stream: ExampleStream, arrays: dict[str, np.ndarray],
           meta: list[ExampleMeta | None] | None) -> int:
    """Places prepared examples from the front of `stream` into `arrays` (and their metadata
    into `meta`, evaluation builders only); returns the sub-batch's `num_examples`."""
