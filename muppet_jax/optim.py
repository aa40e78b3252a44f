"""The optax chain of the paper (Tables 7-8), built from `config.optim`.

Adam (0.9, 0.999, eps 1e-8) with decoupled weight decay 0.01 on weights only (not on biases,
LayerNorm scales or BART's final_logits_bias), a linear warmup to the peak learning rate and a
polynomial decay to `end_learning_rate` at `train.steps` (fairseq's `polynomial_decay`), and
optional global-norm clipping.
"""

from __future__ import annotations

import jax
import optax

# Parameter leaf names that never get weight decay (fairseq/HF convention).
_NO_DECAY_NAMES = frozenset({'bias', 'scale', 'final_logits_bias'})


def learning_rate_schedule(optim_config, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then polynomial decay to the end rate at total_steps."""
  warmup = max(0, min(int(optim_config.warmup_steps), total_steps))
  peak = float(optim_config.learning_rate)
  decay = optax.polynomial_schedule(
      init_value=peak, end_value=float(optim_config.end_learning_rate),
      power=float(optim_config.decay_power), transition_steps=max(1, total_steps - warmup))
  if warmup == 0:
    return decay
  ramp = optax.linear_schedule(init_value=0.0, end_value=peak, transition_steps=warmup)
  return optax.join_schedules([ramp, decay], boundaries=[warmup])


def weight_decay_mask(params):
  """True for the leaves that get weight decay: everything but biases and norm scales."""

  def decays(path, _):
    last = path[-1]
    name = getattr(last, 'key', getattr(last, 'name', str(last)))
    return str(name) not in _NO_DECAY_NAMES

  return jax.tree_util.tree_map_with_path(decays, params)


def build(optim_config, total_steps: int) -> optax.GradientTransformation:
  """The full optimizer: [clip] -> AdamW(schedule, masked weight decay)."""
  schedule = learning_rate_schedule(optim_config, total_steps)
  adamw = optax.adamw(
      learning_rate=schedule, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
      weight_decay=optim_config.weight_decay, mask=weight_decay_mask)
  if optim_config.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim_config.clip_norm), adamw)
  return adamw
