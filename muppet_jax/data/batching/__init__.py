"""Family examples -> fixed-shape device sub-batches (docs/ARCHITECTURE.md section 2).

One sub-batch holds examples of exactly one task. Every task of a run produces the same field
shapes (`BatchShape.field_specs`), so one compiled program serves them all. Token sequences are
laid out as in Hugging Face RoBERTa / BART, one layout per family: classification and multiple
choice segments packed first-fit into the rows (packing.py), span (MRC) contexts cut into
sliding windows, one per row (span.py), summarization one example per row (summarization.py).
No example is dropped, reordered or duplicated, so "examples consumed" is a plain count and a
resumed run can skip exactly that many (pipeline.py).

Evaluation (`SubBatchBuilder(..., evaluation=True)`): each sub-batch also carries host-side
metadata, `SubBatch.meta`, one `ExampleMeta` per example slot (aligned with `example_mask`; for
span and summarization slot e is row e): the example's position in its stream, its question
group (MultiRC), the raw context, gold answers and token character offsets of each MRC window,
and the raw reference summary. It never goes to the device (the arrays and their shapes are
the same as in training). An evaluation builder also lays out every window of an MRC question
(span.py).

Bad inputs raise `ValueError` naming the task (label out of range, more choices than
`data.max_choices`, span offsets outside the context): the dataset mappers are responsible for
dropping such examples, and silently skipping them here would hide a broken mapper. An
unanswerable span example (SQuAD 2.0 style) is one with `answer_end <= answer_start`.

The parts, one file each:

- `builder`: `SubBatchBuilder`, which wraps a task's examples in a stream and fills one
  sub-batch at a time with the family's layout.
- `examples`: what passes between them: prepared (tokenized, laid out) examples, their
  evaluation metadata (`ExampleMeta`), the filled `SubBatch`.
- `stream`: `ExampleStream`, one task's examples tokenized ahead, with the position of what
  is consumed (for checkpoints).
- `layout`: the interface of a family's layout (`prepare`, `fill`).
- `packing`, `span`, `summarization`: the layouts.
"""

from muppet_jax.data.batching.builder import MODEL_TYPES, SubBatchBuilder
from muppet_jax.data.batching.examples import (ExampleMeta, PackedExample, Prepared,
                                               Seq2SeqExample, SpanExample, SpanWindow,
                                               SubBatch)
from muppet_jax.data.batching.stream import ExampleStream
