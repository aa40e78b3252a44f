"""Summarization (BART only): one example per row.

Encoder `<s> document </s>`, decoder target `summary </s>`, decoder input `</s> summary` (the
target shifted right, starting with `decoder_start` = `</s>`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from muppet_jax.data.batching.examples import ExampleMeta, Seq2SeqExample
from muppet_jax.data.batching.layout import Layout
from muppet_jax.data.batching.stream import ExampleStream


class SummarizationLayout(Layout):
  """Encoder `<s> document </s>`; decoder target `summary </s>`, input `</s> summary`."""

  def prepare(self, task_name: str, task_id: int, raw: list[dict]) -> list[Seq2SeqExample]:
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

  def fill(self, stream: ExampleStream, arrays: dict[str, np.ndarray],
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

