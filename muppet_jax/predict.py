"""Per-slot predictions for evaluation: one `lax.switch` on the family, dropout off.

Every branch returns the same fixed-shape `SlotPredictions`, so one compiled eval program
serves every task. Host code (`evaluation.py`) turns them into each dataset's metric.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from muppet_jax.data.features import Family, TaskTable
from muppet_jax.models.muppet import MuppetModel

# Longest answer span (tokens) considered when picking the best start/end pair.
MAX_ANSWER_TOKENS = 30


@flax.struct.dataclass
class SlotPredictions:
  """Predictions of one slot; fields a family does not produce are zeros."""

  label: jax.Array  # [E] int32 predicted class (classification) or choice (multiple choice).
  span_start: jax.Array  # [E] int32 predicted first answer token in row e (span).
  span_end: jax.Array  # [E] int32 predicted last answer token in row e (span).
  token_correct: jax.Array  # [E] int32 teacher-forced argmax hits per row (summarization).
  token_count: jax.Array  # [E] int32 target tokens per row (summarization).


def best_spans(start_logits: jax.Array, end_logits: jax.Array, mask: jax.Array,
               max_tokens: int = MAX_ANSWER_TOKENS) -> tuple[jax.Array, jax.Array]:
  """Highest start + end score with start <= end < start + max_tokens, per row.

  Args:
    start_logits, end_logits: [R, L].
    mask: [R, L] bool candidate positions.
    max_tokens: longest span considered.

  Returns:
    (start [R], end [R]) int32 token positions.
  """
  length = start_logits.shape[-1]
  neg = jnp.finfo(jnp.float32).min / 4
  start = jnp.where(mask, start_logits.astype(jnp.float32), neg)
  end = jnp.where(mask, end_logits.astype(jnp.float32), neg)
  i = jnp.arange(length)
  allowed = (i[None, :] >= i[:, None]) & (i[None, :] < i[:, None] + max_tokens)  # [L(s), L(e)]
  scores = jnp.where(allowed[None], start[:, :, None] + end[:, None, :], 2 * neg)
  flat = jnp.argmax(scores.reshape(scores.shape[0], -1), axis=-1)
  return (flat // length).astype(jnp.int32), (flat % length).astype(jnp.int32)


def slot_predictions(model: MuppetModel, batch: dict[str, jax.Array], *,
                     task_table: TaskTable) -> SlotPredictions:
  """Predictions for one slot's sub-batch (fields of docs/ARCHITECTURE.md section 2)."""
  rows = batch['input_ids'].shape[0]
  # Derived from the batch (not constants) so that, inside shard_map, every branch's outputs
  # carry the same device-varying type.
  zeros = batch['labels'].astype(jnp.int32) * 0

  def pad_rows(x):  # [R] -> [E]: span and summarization examples are rows.
    return zeros.at[:rows].set(x.astype(jnp.int32))

  def classify(b):
    out = model.classify(b, deterministic=True)
    return SlotPredictions(jnp.argmax(out.logits, -1).astype(jnp.int32), zeros, zeros, zeros,
                           zeros)

  def choose(b):
    out = model.choose(b, deterministic=True)
    return SlotPredictions(jnp.argmax(out.logits, -1).astype(jnp.int32), zeros, zeros, zeros,
                           zeros)

  def span(b):
    out = model.span(b, deterministic=True)
    start, end = best_spans(out.start_logits, out.end_logits, out.position_mask)
    return SlotPredictions(zeros, pad_rows(start), pad_rows(end), zeros, zeros)

  def summarize(b):
    out = model.summarize(b, deterministic=True)
    hits = (jnp.argmax(out.logits, -1) == b['decoder_target_ids']) & out.target_mask
    return SlotPredictions(zeros, zeros, zeros, pad_rows(hits.sum(-1)),
                           pad_rows(out.target_mask.sum(-1)))

  branches = {Family.CLASSIFICATION: classify, Family.MULTIPLE_CHOICE: choose,
              Family.SPAN: span, Family.SUMMARIZATION: summarize}
  # Only the families of this run are traced; the others fall back to the first present one
  # (never selected, since no task of theirs exists).
  present = [f for f in Family if task_table.has_family(f)]
  table = [branches[f] if f in present else branches[present[0]] for f in Family]
  return jax.lax.switch(batch['family_id'], table, batch)
