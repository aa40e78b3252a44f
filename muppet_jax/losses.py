"""MUPPET's per-family losses, log(n) loss scaling and R3F's symmetric KL.

Pure functions on arrays. Every loss returns one value per example (`[E]`), so that the
objective can scale each example by 1/log(n) (paper eq. 1) before averaging; padding examples
get finite values that the caller masks out.

Numerics: log-softmaxes are computed in at least float32 (bf16/fp16 logits are upcast, float64
stays float64 so that finite-difference tests can run in double precision). Masked classes
(choices, positions) get a large finite negative logit rather than -inf: exp() underflows to
exactly 0, so the probabilities are those of a true -inf mask, but no `0 * inf` can turn a
forward value or a gradient into NaN, and a row with nothing valid (a padding example) stays
finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Logit given to masked entries. Finite on purpose (see the module docstring); far below any
# real logit, so exp(MASK_LOGIT - max) == 0 in float32.
MASK_LOGIT = -1e30


def _upcast(x: jax.Array) -> jax.Array:
  """Casts to float32, or keeps float64: losses are never computed in bf16/fp16."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _masked_log_softmax(logits: jax.Array, mask: jax.Array | None,
                        axis: int = -1) -> jax.Array:
  """log_softmax over `axis` in >= float32 with `mask == False` entries excluded."""
  logits = _upcast(logits)
  if mask is not None:
    logits = jnp.where(mask, logits, MASK_LOGIT)
  return jax.nn.log_softmax(logits, axis=axis)


def masked_mean(values: jax.Array, mask: jax.Array, axis: int | None = None) -> jax.Array:
  """Mean of `values` where `mask` is True; 0 where nothing is valid.

  Args:
    values: any shape, e.g. `[E]` per-example losses or `[E, T]` per-token values.
    mask: broadcastable to `values`, bool or 0/1.
    axis: axis to reduce (None = all). `masked_mean(kl [E, T], mask [E, T], axis=-1)` is the
      per-example mean over valid tokens.

  Returns:
    `values` reduced over `axis` (a scalar for axis=None).
  """
  values = _upcast(values)
  mask = jnp.broadcast_to(mask, values.shape).astype(values.dtype)
  total = jnp.sum(jnp.where(mask > 0, values, 0.), axis=axis)
  count = jnp.sum(mask, axis=axis)
  return total / jnp.maximum(count, 1.)


def masked_sum(values: jax.Array, mask: jax.Array, axis: int | None = None) -> jax.Array:
  """Sum of `values` where `mask` is True (0 where nothing is valid).

  Args:
    values: any shape, e.g. `[E, T]` per-token values.
    mask: broadcastable to `values`, bool or 0/1.
    axis: axis to reduce (None = all). `masked_sum(kl [E, T], mask [E, T], axis=-1)` is the
      per-example sum over valid tokens (R3F's summarization weight).

  Returns:
    `values` reduced over `axis`, in float32 or wider.
  """
  values = _upcast(values)
  mask = jnp.broadcast_to(mask, values.shape)
  return jnp.sum(jnp.where(mask > 0, values, 0.), axis=axis)


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  valid_mask: jax.Array | None = None) -> jax.Array:
  """Per-example softmax cross entropy over the valid classes.

  Args:
    logits: `[E, K]` class scores (any float dtype; computed in float32).
    labels: `[E]` int, index of the correct class (must be a valid class for real examples).
    valid_mask: `[E, K]` (or broadcastable) bool, classes that exist for the example; None =
      all `K` classes.

  Returns:
    `[E]` float32, `-log softmax(logits)[label]` with masked classes excluded from the softmax.
  """
  log_probs = _masked_log_softmax(logits, valid_mask)
  # Clipped so that a padding example's label can never gather out of bounds (NaN fill).
  labels = jnp.clip(labels.astype(jnp.int32), 0, logits.shape[-1] - 1)
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def sentence_ranking(choice_logits: jax.Array, labels: jax.Array,
                     choice_mask: jax.Array) -> jax.Array:
  """Per-example sentence-ranking loss: cross entropy over the example's valid choices.

  Args:
    choice_logits: `[E, C]` one score per choice.
    labels: `[E]` index of the correct choice.
    choice_mask: `[E, C]` bool, real choices (padding choices are excluded from the softmax).

  Returns:
    `[E]` float32.
  """
  return cross_entropy(choice_logits, labels, choice_mask)


def span_loss(start_logits: jax.Array, end_logits: jax.Array, start: jax.Array,
              end: jax.Array, position_mask: jax.Array) -> jax.Array:
  """Per-example span-prediction loss: mean of the start and end cross entropies.

  As Hugging Face's `*ForQuestionAnswering` ((start CE + end CE) / 2), with the softmax over the
  example's candidate positions only.

  Args:
    start_logits, end_logits: `[E, L]` per-token scores.
    start, end: `[E]` int, token index of the answer's first / last token.
    position_mask: `[E, L]` bool, candidate positions (context tokens and the `<s>` that stands
      for "no answer in this window").

  Returns:
    `[E]` float32.
  """
  return 0.5 * (cross_entropy(start_logits, start, position_mask) +
                cross_entropy(end_logits, end, position_mask))


def label_smoothed_cross_entropy(logits: jax.Array, targets: jax.Array, target_mask: jax.Array,
                                 smoothing: float) -> jax.Array:
  """Per-example label-smoothed token cross entropy, averaged over the example's valid tokens.

  Follows fairseq's `label_smoothed_nll_loss` (fairseq/criterions/label_smoothed_cross_entropy.py,
  current version) token by token:

      eps_i = smoothing / (V - 1)
      loss  = (1 - smoothing - eps_i) * nll + eps_i * smooth,
      nll = -log p(target),  smooth = -sum_v log p(v),

  i.e. cross entropy against the target distribution that puts `1 - smoothing` on the target
  and `smoothing / (V - 1)` on every other token. (fairseq before 2021 used `eps_i = smoothing /
  V` and `(1 - smoothing) * nll`; the two differ by O(smoothing / V).) fairseq then sums over all
  tokens of the batch; here each example's tokens are averaged ("averaged over tokens", paper
  Table 2) so that the per-example loss can be log(V)-scaled and averaged like the other families.

  Args:
    logits: `[E, T, V]` decoder logits.
    targets: `[E, T]` int target tokens.
    target_mask: `[E, T]` bool, real target tokens (padding contributes nothing).
    smoothing: label-smoothing epsilon (config `train.label_smoothing`, 0.1 by default).

  Returns:
    `[E]` float32; 0 for an example without valid tokens.
  """
  logits = _upcast(logits)
  vocab = logits.shape[-1]
  # log p(v) = logit_v - lse; computing nll and smooth from the logsumexp avoids materialising a
  # second [E, T, V] array of log-probabilities.
  lse = jax.nn.logsumexp(logits, axis=-1)
  targets = jnp.clip(targets.astype(jnp.int32), 0, vocab - 1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = lse - target_logit
  smooth = vocab * lse - jnp.sum(logits, axis=-1)
  eps_i = smoothing / (vocab - 1)
  per_token = (1. - smoothing - eps_i) * nll + eps_i * smooth
  return masked_mean(per_token, target_mask, axis=-1)


def log_n_scale(loss: jax.Array, n: jax.Array, enabled: bool = True) -> jax.Array:
  """MUPPET loss scaling (paper eq. 1): each example's loss divided by log(n) of that example.

  n is the number of classes (classification), valid choices (multiple choice), candidate
  positions (span) or the vocabulary size (summarization), so that a uniform prediction has
  scaled loss 1 whatever the task.

  Args:
    loss: `[E]` per-example losses.
    n: `[E]` the example's n. Values below 2 (padding examples, a one-choice example whose loss
      is 0 anyway) are treated as 2 so that nothing divides by log(1) = 0 or log(0).
    enabled: False returns `loss` unchanged (the unscaled ablation, `train.loss_scaling=False`).

  Returns:
    `[E]` scaled losses.
  """
  if not enabled:
    return loss
  n = jnp.maximum(_upcast(jnp.asarray(n)), 2.)
  return loss / jnp.log(n)


def symmetric_kl(p_logits: jax.Array, q_logits: jax.Array, mask: jax.Array | None = None,
                 axis: int = -1) -> jax.Array:
  """R3F's symmetric KL, KL(p || q) + KL(q || p), summed over the output axis.

  As the authors' `_get_symm_kl` (fairseq examples/rxf): softmax / log-softmax in float32,
  `F.kl_div(..., 'sum')` in both directions; here without the batch reduction, so the caller
  gets one value per example (classification, choices; span: per start/end distribution) or per
  token (seq2seq: `masked_sum(kl, target_mask, axis=-1)` is the authors' per-sentence weight,
  `masked_mean` the per-token mean).

  Args:
    p_logits, q_logits: logits of the same shape, e.g. `[E, K]` or `[E, T, V]`.
    mask: broadcastable to the logits, bool; False entries (padded classes, choices, positions)
      are excluded from both softmaxes and from the sum. None = all entries.
    axis: the output (class) axis.

  Returns:
    The logits' shape without `axis`, float32 (float64 for float64 inputs).
  """
  log_p = _masked_log_softmax(p_logits, mask, axis)
  log_q = _masked_log_softmax(q_logits, mask, axis)
  # (p - q) * (log p - log q) == p (log p - log q) + q (log q - log p), one pass.
  terms = (jnp.exp(log_p) - jnp.exp(log_q)) * (log_p - log_q)
  if mask is not None:
    terms = jnp.where(jnp.broadcast_to(mask, terms.shape), terms, 0.)
  return jnp.sum(terms, axis=axis)
