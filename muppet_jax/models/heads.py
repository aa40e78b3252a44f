"""MUPPET's task heads (paper section 3.5) and their Hugging Face parameter names.

- `ClassificationHeads`: one head per classification dataset, each in the layout of HF's
  `RobertaClassificationHead` / `BartClassificationHead` (dropout, dense, tanh, dropout,
  out_proj). The heads are stored stacked (`[num_heads, ...]`) and selected with a dynamic index,
  and every head's out_proj is `max_classes` wide with the unused classes masked, so that 26
  heads compile to the same program as 2 (adding a task adds rows, not code).
- `MultipleChoiceHead`: one shared head, one score per choice. RoBERTa: HF
  `RobertaForMultipleChoice` (the backbone's pooler, dropout, `classifier` Linear(H, 1)). BART
  (HF has no BartForMultipleChoice): a `BartClassificationHead` with one output on the choice's
  final `</s>` decoder state.
- `SpanHead`: one shared `qa_outputs` Linear(H, 2), as HF `*ForQuestionAnswering`.

Head dropout (`model.head_dropout`) is the rate of every classification and multiple-choice
head's dropout layers; its default 0.0 is fairseq's `pooler_dropout` default, the authors'
setting (HF's heads use 0.1).

R4F (`train.r4f`; Aghajanyan et al. 2020, fairseq `--spectral-norm-classification-head`):
fairseq wraps the `out_proj` of every registered classification head in
`torch.nn.utils.spectral_norm`. Its sentence-ranking (multiple-choice) head is such a
classification head with one output (fairseq's sentence_ranking task registers it with
`num_classes=1`), so R4F normalises it too: here the classification heads' `out_proj` and the
multiple-choice head's last projection (`classifier` for RoBERTa, `out_proj` for BART). For a
one-output projection `[H, 1]` the largest singular value is the vector's L2 norm. The span
head has no fairseq counterpart that R4F touches and is left alone. Exported heads carry the
effective (normalised) weight.

Summarization has no head: BART's tied LM head (the backbone's `lm_logits`).

Parameters carry logical axis names (`embed`, `mlp`, plus `heads_stack` for the stacked axis,
which `sharding.LOGICAL_RULES` keeps unsharded). Functions at the end map each head to and from
HF state-dict names (PyTorch `weight` = our `kernel` transposed) for export and import.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from muppet_jax.models import attention
from muppet_jax.models import dropout as dropout_lib

# Kind of multiple-choice head: the HF RobertaForMultipleChoice layout, or the documented BART
# form (a one-output BartClassificationHead).
ChoiceHeadStyle = Literal['roberta', 'bart']


def logit_floor(dtype) -> jax.Array:
  """The most negative finite value of `dtype`: what masked classes/positions score."""
  return jnp.asarray(jnp.finfo(dtype).min, dtype)


class StackedLinear(nnx.Module):
  """`num` independent Linear(in, out) layers, one selected per call by a traced index.

  Parameters: `kernel [num, in, out]`, `bias [num, out]`. Selecting with a dynamic index (not a
  Python int) is what keeps the compiled program independent of `num`.
  """

  def __init__(self, num: int, in_features: int, out_features: int, axes: tuple, *,
               init_std: float, dtype, param_dtype, rngs: nnx.Rngs):
    kernel_init = attention.partitioned(nnx.initializers.normal(init_std),
                                        ('heads_stack',) + axes)
    bias_init = attention.partitioned(nnx.initializers.zeros_init(), ('heads_stack', axes[1]))
    self.kernel = nnx.Param(kernel_init(rngs.params(), (num, in_features, out_features),
                                        param_dtype))
    self.bias = nnx.Param(bias_init(rngs.params(), (num, out_features), param_dtype))
    self.dtype = dtype

  def select(self, index: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Kernel `[in, out]` and bias `[out]` of layer `index` ([] int, clipped into range)."""
    index = jnp.clip(jnp.asarray(index, jnp.int32), 0, self.kernel.shape[0] - 1)
    kernel = jax.lax.dynamic_index_in_dim(self.kernel[...], index, 0, keepdims=False)
    bias = jax.lax.dynamic_index_in_dim(self.bias[...], index, 0, keepdims=False)
    return kernel, bias

  def apply(self, x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    return x @ kernel + bias


def spectral_normalize(kernel: jax.Array, column_mask: jax.Array | None = None,
                       iterations: int = 30, eps: float = 1e-12) -> jax.Array:
  """`kernel / sigma_max(kernel)`, torch `spectral_norm` semantics, without persistent state.

  torch.nn.utils.spectral_norm (what fairseq's `--spectral-norm-classification-head`, i.e. R4F,
  wraps out_proj in) estimates sigma = u^T W v by power iteration with u, v treated as constants
  (no gradient through them), keeping u between steps and doing one iteration per step. Here
  u, v are recomputed at every call: `iterations` steps from a fixed start vector, under
  stop_gradient, so the gradient is torch's (d sigma / d W = u v^T) and there is no mutable state
  to thread through `lax.switch`, accumulation and checkpoints.

  Args:
    kernel: `[in, out]` (our layout, torch weight transposed; sigma is the same).
    column_mask: `[out]` bool, output columns that exist (a task's classes); masked columns are
      zeroed before the estimate so that unused classes of a stacked head do not count.
    iterations: power iterations per call.
    eps: torch's normalisation epsilon.

  Returns:
    `[in, out]` normalised kernel (masked columns zero), in float32 or wider.
  """
  w = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
  if column_mask is not None:
    w = w * column_mask.astype(w.dtype)[None, :]
  w_const = jax.lax.stop_gradient(w)

  def normalize(x):
    return x / jnp.maximum(jnp.linalg.norm(x), eps)

  def power_step(_, u):  # u: [out], v: [in]
    v = normalize(w_const @ u)
    return normalize(w_const.T @ v)

  # A fixed, generic start (constant of the program, never orthogonal in practice to the top
  # singular vector): u0 = W^T v0. Derived from W so that inside shard_map the loop carry is
  # device-varying like W.
  v0 = jnp.asarray(np.random.default_rng(0).normal(size=w.shape[0]), w.dtype)
  u0 = w_const.T @ v0
  u = jax.lax.fori_loop(0, iterations, power_step, normalize(u0))
  v = normalize(w_const @ u)
  u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
  sigma = v @ w @ u
  return w / sigma


class ClassificationHeads(nnx.Module):
  """One HF-layout classification head per dataset, stacked, selected by the task's head index.

  Parameters (T = num_heads, H = hidden, K = max_classes):
    dense.kernel [T, H, H] ('heads_stack', 'embed', 'mlp'), dense.bias [T, H]
    out_proj.kernel [T, H, K] ('heads_stack', 'mlp', None), out_proj.bias [T, K]
  Head t's first `num_classes[t]` columns of out_proj are its classes (HF `num_labels`).
  """

  def __init__(self, num_heads: int, hidden: int, max_classes: int, *, dropout: float = 0.0,
               spectral_norm: bool = False, spectral_norm_iterations: int = 30,
               init_std: float = 0.02, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    """Builds the stack.

    Args:
      num_heads: classification datasets (`TaskTable.num_classification_heads`); at least 1.
      hidden: the backbone's hidden size H.
      max_classes: width K of every out_proj (`TaskTable.max_classes`).
      dropout: rate of the head's two dropout layers (`model.head_dropout`; exported as HF
        `classifier_dropout`).
      spectral_norm: R4F (config `train.r4f`): out_proj weight divided by its largest singular
        value, computed over the task's own classes (`spectral_normalize`).
      spectral_norm_iterations: power iterations per call when `spectral_norm`.
      init_std: HF `initializer_range` / `init_std` (normal kernels, zero biases).
      dtype, param_dtype: compute and parameter dtypes.
      rngs: `params` for init; the dropout stream is kept for training-mode calls.
    """
    self.num_heads = max(1, num_heads)
    self.max_classes = max_classes
    self.spectral_norm = spectral_norm
    self.spectral_norm_iterations = spectral_norm_iterations
    kw = dict(init_std=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dense = StackedLinear(self.num_heads, hidden, hidden, ('embed', 'mlp'), **kw)
    self.out_proj = StackedLinear(self.num_heads, hidden, max_classes, ('mlp', None), **kw)
    self.dropout = dropout_lib.Dropout(dropout, rngs=rngs)
    self.dtype = dtype

  def out_proj_kernel(self, head_index: jax.Array, num_classes: jax.Array) -> jax.Array:
    """Head `head_index`'s effective out_proj kernel `[H, K]` (spectrally normalised for R4F)."""
    kernel, _ = self.out_proj.select(head_index)
    if self.spectral_norm:
      kernel = spectral_normalize(kernel, jnp.arange(self.max_classes) < num_classes,
                                  self.spectral_norm_iterations)
    return kernel

  def __call__(self, features: jax.Array, head_index: jax.Array, num_classes: jax.Array,
               deterministic: bool = True) -> jax.Array:
    """Class logits of one task's head.

    Args:
      features: `[E, H]` the examples' `<s>` (RoBERTa) / final `</s>` decoder (BART) states.
      head_index: `[]` int32 row of the task's head (`TaskTable.head_index`); traced.
      num_classes: `[]` int32 the task's class count; classes >= it are masked.
      deterministic: False applies dropout (rngs from construction / `nnx.reseed`).

    Returns:
      `[E, K]` logits in `dtype`, masked classes at the dtype's most negative value.
    """
    x = self.dropout(features, deterministic=deterministic)
    x = jnp.tanh(self.dense.apply(x, *self.dense.select(head_index)))
    x = self.dropout(x, deterministic=deterministic)
    _, bias = self.out_proj.select(head_index)
    logits = self.out_proj.apply(x, self.out_proj_kernel(head_index, num_classes), bias)
    valid = jnp.arange(self.max_classes) < num_classes
    return jnp.where(valid, logits, logit_floor(logits.dtype))


class MultipleChoiceHead(nnx.Module):
  """The shared multiple-choice head: one score per choice.

  style 'roberta' (HF RobertaForMultipleChoice): input = the backbone's pooler output on the
    choice's `<s>` (dense + tanh, part of the backbone), then dropout and `classifier`
    Linear(H, 1). Parameters: classifier.kernel [H, 1], classifier.bias [1].
  style 'bart' (no HF class exists; exported as a one-label BartClassificationHead): input = the
    choice's final `</s>` decoder state; dropout, `dense`, tanh, dropout, `out_proj` Linear(H, 1).
  With `spectral_norm` (R4F) the last projection's kernel `[H, 1]` is divided by its largest
  singular value, i.e. its L2 norm (the parameters are unchanged; only the computation is).
  """

  def __init__(self, hidden: int, *, style: ChoiceHeadStyle = 'roberta', dropout: float = 0.0,
               spectral_norm: bool = False, spectral_norm_iterations: int = 30,
               init_std: float = 0.02, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    """Builds the head.

    Args:
      hidden: the backbone's hidden size H.
      style: 'roberta' or 'bart' (see the class docstring).
      dropout: rate of the head's dropout layers (`model.head_dropout`).
      spectral_norm: R4F (config `train.r4f`): normalise the last projection's kernel.
      spectral_norm_iterations: power iterations per call when `spectral_norm`.
      init_std: HF `initializer_range` / `init_std` (normal kernels, zero biases).
      dtype, param_dtype: compute and parameter dtypes.
      rngs: `params` for init; the dropout stream is kept for training-mode calls.
    """
    if style not in ('roberta', 'bart'):
      raise ValueError(f'unknown multiple-choice head style {style!r}')
    self.style = style
    self.spectral_norm = spectral_norm
    self.spectral_norm_iterations = spectral_norm_iterations
    self.dtype = dtype
    kw = dict(init_std=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if style == 'roberta':
      self.classifier = attention.dense(hidden, 1, ('embed', None), **kw)
    else:
      self.dense = attention.dense(hidden, hidden, ('embed', 'mlp'), **kw)
      self.out_proj = attention.dense(hidden, 1, ('mlp', None), **kw)
    self.dropout = dropout_lib.Dropout(dropout, rngs=rngs)

  @property
  def score_layer(self) -> nnx.Linear:
    """The last projection Linear(H, 1): `classifier` (RoBERTa) or `out_proj` (BART)."""
    return self.classifier if self.style == 'roberta' else self.out_proj

  def score_kernel(self) -> jax.Array:
    """The last projection's effective kernel `[H, 1]` (spectrally normalised for R4F)."""
    kernel = self.score_layer.kernel[...]
    if self.spectral_norm:
      kernel = spectral_normalize(kernel, iterations=self.spectral_norm_iterations)
    return kernel

  def __call__(self, features: jax.Array, deterministic: bool = True) -> jax.Array:
    """Scores `[...]` for features `[..., H]` (RoBERTa: pooled; BART: `</s>` decoder states)."""
    x = self.dropout(features, deterministic=deterministic)
    if self.style == 'bart':
      x = jnp.tanh(self.dense(x))
      x = self.dropout(x, deterministic=deterministic)
    layer = self.score_layer
    if not self.spectral_norm:
      return layer(x)[..., 0]
    x, kernel, bias = (a.astype(self.dtype) for a in (x, self.score_kernel(), layer.bias[...]))
    return (x @ kernel + bias)[..., 0]


class SpanHead(nnx.Module):
  """The shared span head: HF `qa_outputs` Linear(H, 2) -> start and end logits per token."""

  def __init__(self, hidden: int, *, init_std: float = 0.02, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.qa_outputs = attention.dense(hidden, 2, ('embed', None), init_std=init_std, dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs)

  def __call__(self, hidden: jax.Array,
               position_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Start and end logits `[R, L]` from hidden states `[R, L, H]`; invalid positions masked."""
    logits = self.qa_outputs(hidden)
    start, end = logits[..., 0], logits[..., 1]
    if position_mask is not None:
      floor = logit_floor(logits.dtype)
      start, end = jnp.where(position_mask, start, floor), jnp.where(position_mask, end, floor)
    return start, end


# --- Hugging Face state-dict names -------------------------------------------------------------
# PyTorch nn.Linear stores weight [out, in]; our kernels are [in, out].

def _np(x) -> np.ndarray:
  return np.asarray(jax.device_get(x), np.float32)


def _linear_to_hf(layer: nnx.Linear, prefix: str) -> dict[str, np.ndarray]:
  return {f'{prefix}weight': _np(layer.kernel[...]).T.copy(),
          f'{prefix}bias': _np(layer.bias[...]).copy()}


def _linear_from_hf(layer: nnx.Linear, tensors: dict, prefix: str) -> None:
  kernel = np.asarray(tensors[f'{prefix}weight']).T
  if kernel.shape != layer.kernel.shape:
    raise ValueError(f'{prefix}weight: expected {layer.kernel.shape[::-1]}, got '
                     f'{kernel.shape[::-1]}')
  layer.kernel[...] = jnp.asarray(kernel, layer.kernel.dtype)
  layer.bias[...] = jnp.asarray(tensors[f'{prefix}bias'], layer.bias.dtype)


def classification_head_to_hf(heads: ClassificationHeads, index: int, num_classes: int,
                              prefix: str = 'classifier.') -> dict[str, np.ndarray]:
  """Head `index` as an HF classification head with `num_classes` labels.

  `prefix`: 'classifier.' for RobertaForSequenceClassification, 'classification_head.' for
  BartForSequenceClassification. With R4F the exported out_proj is the effective (spectrally
  normalised) weight, so the HF model computes what the trained head computed.

  Returns:
    {prefix + 'dense.weight' [H, H], 'dense.bias' [H], 'out_proj.weight' [k, H],
     'out_proj.bias' [k]} as float32 numpy arrays.
  """
  if not 0 <= index < heads.num_heads or not 1 <= num_classes <= heads.max_classes:
    raise ValueError(f'head {index} / {num_classes} classes out of range')
  dense_k, dense_b = heads.dense.select(jnp.int32(index))
  _, out_b = heads.out_proj.select(jnp.int32(index))
  out_k = heads.out_proj_kernel(jnp.int32(index), jnp.int32(num_classes))
  return {
      f'{prefix}dense.weight': _np(dense_k).T.copy(),
      f'{prefix}dense.bias': _np(dense_b),
      f'{prefix}out_proj.weight': _np(out_k)[:, :num_classes].T.copy(),
      f'{prefix}out_proj.bias': _np(out_b)[:num_classes].copy(),
  }


def classification_head_from_hf(heads: ClassificationHeads, index: int,
                                tensors: dict[str, np.ndarray],
                                prefix: str = 'classifier.') -> int:
  """Writes an HF classification head into row `index` (in place); returns its label count.

  Columns beyond the HF head's labels are left as they are (they are masked for this task). With
  R4F the written kernel is the raw weight W (the head then computes with W / sigma(W)).
  """
  dense_w = np.asarray(tensors[f'{prefix}dense.weight'])
  out_w = np.asarray(tensors[f'{prefix}out_proj.weight'])
  k = out_w.shape[0]
  if k > heads.max_classes:
    raise ValueError(f'{prefix}: {k} labels > max_classes {heads.max_classes}')
  d, o = heads.dense, heads.out_proj
  d.kernel[...] = d.kernel[...].at[index].set(jnp.asarray(dense_w.T, d.kernel.dtype))
  d.bias[...] = d.bias[...].at[index].set(jnp.asarray(tensors[f'{prefix}dense.bias'],
                                                      d.bias.dtype))
  o.kernel[...] = o.kernel[...].at[index, :, :k].set(jnp.asarray(out_w.T, o.kernel.dtype))
  o.bias[...] = o.bias[...].at[index, :k].set(jnp.asarray(tensors[f'{prefix}out_proj.bias'],
                                                          o.bias.dtype))
  return k


def multiple_choice_head_to_hf(head: MultipleChoiceHead,
                               prefix: str | None = None) -> dict[str, np.ndarray]:
  """RoBERTa: {'classifier.weight' [1, H], 'classifier.bias' [1]} (RobertaForMultipleChoice;
  the pooler is the backbone's `roberta.pooler.dense`). BART: a one-label
  `classification_head.{dense,out_proj}.{weight,bias}` (BartForSequenceClassification layout).
  With R4F the exported last projection is the effective (normalised) weight, so the HF model
  computes what the trained head computed.
  """
  if head.style == 'roberta':
    prefix = prefix or 'classifier.'
    tensors = {}
  else:
    prefix = prefix or 'classification_head.'
    tensors = _linear_to_hf(head.dense, prefix + 'dense.')
    prefix += 'out_proj.'
  return {**tensors, f'{prefix}weight': _np(head.score_kernel()).T.copy(),
          f'{prefix}bias': _np(head.score_layer.bias[...]).copy()}


def multiple_choice_head_from_hf(head: MultipleChoiceHead, tensors: dict[str, np.ndarray],
                                 prefix: str | None = None) -> None:
  """Inverse of `multiple_choice_head_to_hf` (in place). With R4F the written kernel is the
  raw weight W (the head then computes with W / ||W||)."""
  if head.style == 'roberta':
    _linear_from_hf(head.classifier, tensors, prefix or 'classifier.')
  else:
    prefix = prefix or 'classification_head.'
    _linear_from_hf(head.dense, tensors, prefix + 'dense.')
    _linear_from_hf(head.out_proj, tensors, prefix + 'out_proj.')


def span_head_to_hf(head: SpanHead, prefix: str = 'qa_outputs.') -> dict[str, np.ndarray]:
  """{'qa_outputs.weight' [2, H], 'qa_outputs.bias' [2]} (HF *ForQuestionAnswering)."""
  return _linear_to_hf(head.qa_outputs, prefix)


def span_head_from_hf(head: SpanHead, tensors: dict[str, np.ndarray],
                      prefix: str = 'qa_outputs.') -> None:
  """Inverse of `span_head_to_hf` (in place)."""
  _linear_from_hf(head.qa_outputs, tensors, prefix)
