"""The optax chain of the paper (Tables 7-8), built from `config.optim`.

Adam (0.9, 0.999, eps 1e-8) with decoupled weight decay 0.01, a linear warmup to the peak
learning rate and a polynomial decay to `end_learning_rate` at `train.steps` (fairseq's
`polynomial_decay`), and optional global-norm clipping.

Which parameters decay (`optim.decay_norms_and_biases`):
- True (default): every parameter, as the authors' fairseq runs did. fairseq's `Adam`
  (fairseq/optim/adam.py) is decoupled weight decay applied to every parameter of its single
  parameter group, `p -= lr * weight_decay * p`, biases and LayerNorm weights included.
- False: weights only; biases, LayerNorm scales and BART's `final_logits_bias` are skipped. This
  is the BERT / Hugging Face convention (BERT's `AdamWeightDecayOptimizer` excludes `bias` and
  `LayerNorm`; HF's `Trainer` excludes biases and LayerNorm weights), not fairseq's.
"""

from __future__ import annotations

import jax
import optax

# Parameter leaf names that the BERT / Hugging Face convention never decays
# (`optim.decay_norms_and_biases=False`).
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


def weight_decay_mask(params, decay_norms_and_biases: bool = False):
  """Per-leaf bool pytree: True for the leaves that get weight decay.

  Args:
    params: the parameter pytree (leaf names as in our modules: `kernel`, `bias`, `scale`,
      `embedding`, `final_logits_bias`).
    decay_norms_and_biases: True decays every leaf (fairseq); False skips biases, LayerNorm
      scales and `final_logits_bias` (BERT / Hugging Face).
  """

  def decays(path, _):
    if decay_norms_and_biases:
      return True
    # The parameter's name is the last dict key: an `nnx.State` leaf path ends with the
    # Variable's `.value` attribute (GetAttrKey), which names no parameter.
    keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return not keys or str(keys[-1]) not in _NO_DECAY_NAMES

  return jax.tree_util.tree_map_with_path(decays, params)


def build(optim_config, total_steps: int) -> optax.GradientTransformation:
  """The full optimizer: [clip] -> AdamW(schedule, weight decay on the masked leaves)."""
  schedule = learning_rate_schedule(optim_config, total_steps)
  decay_all = bool(optim_config.decay_norms_and_biases)
  adamw = optax.adamw(
      learning_rate=schedule, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
      weight_decay=optim_config.weight_decay,
      # A mask even when it is all True (fairseq): the optimizer state then has the same tree
      # whichever convention a run uses, so a checkpoint restores under either setting.
      mask=lambda params: weight_decay_mask(params, decay_all))
  if optim_config.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim_config.clip_norm), adamw)
  return adamw
