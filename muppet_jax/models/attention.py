"""Building blocks shared by the RoBERTa and BART backbones.

* Attention masks from padding masks and packed-row segment ids (same segment, optionally
  causal), as boolean `[batch, 1, queries, keys]` arrays (True = may attend).
* Multi-head attention through `jax.nn.dot_product_attention`, so that XLA (or cuDNN on GPU)
  can use a fused kernel; a plain softmax path is used only when attention-probability dropout
  is active, since the fused kernels have no dropout.
* Parameter factories that attach logical axis names, activations by their Hugging Face names,
  and per-layer rematerialisation.

Logical axis names (the `out_sharding` metadata of every parameter, which
`sharding.state_shardings` reads from each variable and maps onto the mesh with
`sharding.LOGICAL_RULES`; one name per array dimension):

| name | dimension |
|---|---|
| `vocab` | vocabulary rows of token embeddings (and of BART's `final_logits_bias`) |
| `positions` | rows of learned position tables |
| `embed` | the model width (`hidden_size` / `d_model`), the residual stream |
| `heads` | the flattened `num_heads * head_dim` axis of q/k/v outputs and out-projection inputs |
| `mlp` | the feed-forward width (`intermediate_size` / `*_ffn_dim`), and the pooler output |
| `layers` | the leading layer axis of a scanned layer stack (`model.scan_layers`), replicated |
| `None` | replicated (RoBERTa's one-row token-type table) |

So the query kernel is `('embed', 'heads')`, the attention output kernel `('heads', 'embed')`,
fc1 `('embed', 'mlp')`, fc2 `('mlp', 'embed')`, word embeddings `('vocab', 'embed')`; biases and
LayerNorm vectors carry the name of their one dimension. Variables are created unsharded unless
a mesh is active (`jax.set_mesh`), in which case Flax shards them eagerly with the logical axis
rules in context.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array
Dtype = Any

# Remat modes accepted by `config.model.remat`.
REMAT_MODES = ('none', 'full', 'dots_saveable')

# Same constant as jax.nn.dot_product_attention's XLA path: finite, so that a query row whose
# keys are all masked (padding rows of packed batches) gets a uniform softmax instead of NaN.
_LARGE_NEGATIVE = -0.7 * float(np.finfo(np.float32).max)


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------


def make_attention_mask(
    *,
    query_length: int,
    key_length: int,
    key_mask: Array | None = None,
    query_segment_ids: Array | None = None,
    key_segment_ids: Array | None = None,
    causal: bool = False,
) -> Array | None:
  """Builds a boolean attention mask (True = the query may attend to the key).

  Args:
    query_length: T, number of queries.
    key_length: S, number of keys.
    key_mask: `[batch, S]` (bool or 0/1 ints): keys that are real tokens (HF `attention_mask`).
    query_segment_ids: `[batch, T]` int: packed segment of each query, 0 = padding.
    key_segment_ids: `[batch, S]` int: packed segment of each key, 0 = padding. Given both
      segment arrays, a query attends only to keys of its own (non-zero) segment, which makes the
      mask block-diagonal for self-attention over packed rows; for cross attention it pairs
      decoder segment k with encoder segment k.
    causal: queries attend only to keys at the same or an earlier index (query t <-> key t).

  Returns:
    `[batch or 1, 1, T, S]` bool, or None when nothing is masked.
  """
  mask = None

  def conj(a: Array | None, b: Array) -> Array:
    return b if a is None else jnp.logical_and(a, b)

  if key_mask is not None:
    mask = conj(mask, key_mask.astype(bool)[:, None, None, :])
  if (query_segment_ids is None) != (key_segment_ids is None):
    raise ValueError('query_segment_ids and key_segment_ids must be given together.')
  if query_segment_ids is not None:
    same = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
    same = jnp.logical_and(same, key_segment_ids[:, None, :] > 0)
    mask = conj(mask, same[:, None, :, :])
  if causal:
    tri = jnp.arange(query_length)[:, None] >= jnp.arange(key_length)[None, :]
    mask = conj(mask, tri[None, None, :, :])
  return mask


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------


def split_heads(x: Array, num_heads: int) -> Array:
  """`[batch, length, heads * head_dim]` -> `[batch, length, heads, head_dim]`."""
  return x.reshape(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


def merge_heads(x: Array) -> Array:
  """`[batch, length, heads, head_dim]` -> `[batch, length, heads * head_dim]`."""
  return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None,
    *,
    dropout: nnx.Dropout | None = None,
    deterministic: bool = True,
    implementation: str | None = None,
) -> Array:
  """Scaled dot-product attention, scale `head_dim ** -0.5` (as HF RoBERTa and BART).

  Logits and softmax are computed in float32 whatever the input dtype.

  Args:
    query: `[batch, T, heads, head_dim]`.
    key: `[batch, S, heads, head_dim]`.
    value: `[batch, S, heads, head_dim]`.
    mask: bool, broadcastable to `[batch, heads, T, S]`, True = attend; or None.
    dropout: dropout on the attention probabilities (HF `attention_probs_dropout_prob` /
      `attention_dropout`), applied only when `deterministic` is False.
    deterministic: no dropout when True.
    implementation: passed to `jax.nn.dot_product_attention` (None = let JAX choose, 'xla',
      'cudnn').

  Returns:
    `[batch, T, heads, head_dim]` in the dtype of `query`.
  """
  if deterministic or dropout is None or dropout.rate == 0.0:
    # Fused path: XLA/cuDNN may pick a flash-attention kernel. Fully masked query rows get a
    # uniform softmax over a finite large negative, never NaN.
    return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation=implementation)
  # Training with attention dropout: the fused kernels have no dropout, so spell it out. Keep the
  # same numerics as the fused XLA path (float32 logits and softmax, finite mask value). Heads
  # go first ([batch, heads, length, head_dim]) so both products are plain batched matmuls, and
  # the scale multiplies the queries rather than the T x S logits: together ~25% less time for
  # this block's forward and backward on CPU than einsums over [batch, length, heads, head_dim]
  # (bench/README.md).
  scale = query.shape[-1] ** -0.5
  q, k, v = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))  # [B, N, T|S, H]
  logits = jnp.matmul(q * jnp.asarray(scale, q.dtype), jnp.swapaxes(k, -1, -2),
                      preferred_element_type=jnp.float32)  # [B, N, T, S]
  if mask is not None:
    logits = jnp.where(mask, logits, _LARGE_NEGATIVE)
  probs = jax.nn.softmax(logits, axis=-1)
  probs = dropout(probs, deterministic=False).astype(value.dtype)
  return jnp.swapaxes(jnp.matmul(probs, v), 1, 2)


# ---------------------------------------------------------------------------------------------
# Parameter factories (logical axis names, HF-style init)
# ---------------------------------------------------------------------------------------------


def _eager_sharding() -> bool:
  # Shard at creation only when a mesh is active (and Flax's global switch allows it), so that
  # models can be built on a plain CPU host without any mesh or axis rules.
  return nnx.using_eager_sharding() and not jax.sharding.get_abstract_mesh().empty


def partitioned(init: nnx.Initializer, names: tuple[str | None, ...]) -> nnx.Initializer:
  """Wraps an initializer so that the created variable carries logical axis `names`."""
  return nnx.with_partitioning(init, names, eager_sharding=_eager_sharding())


def dense(
    in_features: int,
    out_features: int,
    names: tuple[str | None, str | None],
    *,
    init_std: float,
    dtype: Dtype,
    param_dtype: Dtype,
    rngs: nnx.Rngs,
) -> nnx.Linear:
  """`nnx.Linear` with kernel `[in, out]` named `names`, bias named `names[1:]`.

  Initialised as HF does: kernel ~ N(0, init_std), bias zeros.
  """
  return nnx.Linear(
      in_features,
      out_features,
      dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=partitioned(nnx.initializers.normal(init_std), names),
      bias_init=partitioned(nnx.initializers.zeros_init(), names[1:]),
      rngs=rngs,
  )


def _zero_row(init: nnx.Initializer, row: int | None) -> nnx.Initializer:
  """HF zeroes the `padding_idx` row of an embedding at init."""
  if row is None:
    return init

  def wrapped(key, shape, dtype=jnp.float32):
    return init(key, shape, dtype).at[row].set(0)

  return wrapped


def embed(
    num_embeddings: int,
    features: int,
    names: tuple[str | None, str | None],
    *,
    init_std: float,
    param_dtype: Dtype,
    rngs: nnx.Rngs,
    padding_idx: int | None = None,
) -> nnx.Embed:
  """`nnx.Embed` with table `[num_embeddings, features]` named `names`.

  Lookups return the parameter dtype (no cast to the compute dtype): embeddings are summed and
  normalised in float32, and an R3F perturbation of ~1e-5 would vanish in bfloat16.
  """
  return nnx.Embed(
      num_embeddings,
      features,
      dtype=param_dtype,
      param_dtype=param_dtype,
      embedding_init=partitioned(
          _zero_row(nnx.initializers.normal(init_std), padding_idx), names),
      rngs=rngs,
  )


def layer_norm(
    features: int,
    *,
    epsilon: float,
    dtype: Dtype,
    param_dtype: Dtype,
    rngs: nnx.Rngs,
) -> nnx.LayerNorm:
  """LayerNorm over the `embed` axis; statistics in float32, output in `dtype`."""
  return nnx.LayerNorm(
      features,
      epsilon=epsilon,
      dtype=dtype,
      param_dtype=param_dtype,
      scale_init=partitioned(nnx.initializers.ones_init(), ('embed',)),
      bias_init=partitioned(nnx.initializers.zeros_init(), ('embed',)),
      rngs=rngs,
  )


# ---------------------------------------------------------------------------------------------
# Activations and remat
# ---------------------------------------------------------------------------------------------

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'gelu': functools.partial(jax.nn.gelu, approximate=False),  # HF 'gelu' is the erf form.
    'gelu_new': functools.partial(jax.nn.gelu, approximate=True),
    'gelu_pytorch_tanh': functools.partial(jax.nn.gelu, approximate=True),
    'gelu_fast': functools.partial(jax.nn.gelu, approximate=True),
    'relu': jax.nn.relu,
    'silu': jax.nn.silu,
    'swish': jax.nn.silu,
    'tanh': jnp.tanh,
}


def activation(name: str) -> Callable[[Array], Array]:
  """The activation a HF config names (`hidden_act` / `activation_function`)."""
  try:
    return _ACTIVATIONS[name]
  except KeyError:
    raise ValueError(
        f'Unsupported activation {name!r}; supported: {sorted(_ACTIVATIONS)}.') from None


def check_remat(remat: str) -> str:
  if remat not in REMAT_MODES:
    raise ValueError(f'remat must be one of {REMAT_MODES}, got {remat!r}.')
  return remat


def apply_layer(layer: nnx.Module, remat: str, *args: Any, **static_kwargs: Any) -> Any:
  """Calls `layer(*args, **static_kwargs)`, rematerialised as `remat` says.

  'full' recomputes everything in the backward pass; 'dots_saveable' keeps the matmul outputs
  (`jax.checkpoint_policies.dots_saveable`). `args` are arrays (or None); `static_kwargs` are
  Python values such as `deterministic`, closed over so that they stay static under remat.
  """
  if remat == 'none':
    return layer(*args, **static_kwargs)

  def call(layer, *args):
    return layer(*args, **static_kwargs)

  policy = jax.checkpoint_policies.dots_saveable if remat == 'dots_saveable' else None
  return nnx.remat(call, policy=policy)(layer, *args)


# ---------------------------------------------------------------------------------------------
# Layer stacks: unrolled (a Python list) or scanned (parameters stacked on a leading axis)
# ---------------------------------------------------------------------------------------------

# Logical name of the leading layer axis of stacked (scanned) layer parameters.
LAYERS_AXIS = 'layers'
_LAYERS_METADATA = {nnx.PARTITION_NAME: LAYERS_AXIS}


def make_layers(make: Callable[[nnx.Rngs], nnx.Module], num_layers: int, *, scan: bool,
                rngs: nnx.Rngs) -> nnx.Module:
  """`num_layers` layers `make(rngs)`: an `nnx.List` when `scan` is False, else one module
  whose variables are stacked on a leading axis of size `num_layers` (logical name 'layers';
  the RNG streams of its dropouts are split too, so every layer draws its own masks).

  Flax NNX's "scan over layers" pattern: `nnx.split_rngs` + `nnx.vmap` at creation.
  """
  if not scan:
    return nnx.List([make(rngs) for _ in range(num_layers)])

  @nnx.split_rngs(splits=num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=_LAYERS_METADATA)
  def create(rngs):
    return make(rngs)

  return create(rngs)


def run_layers(layers: nnx.Module, scan: bool, remat: str, hidden: Array, *args: Any,
               **static_kwargs: Any) -> Array:
  """`hidden = layer(hidden, *args, **static_kwargs)` for every layer in order.

  Unrolled (`scan` False): a Python loop over the `nnx.List`. Scanned: one `nnx.scan` over the
  stacked layer (`args` are closed over, the same for every layer), so that the program holds
  one layer body whatever the depth; remat applies inside the body as in the unrolled case.
  """
  if not scan:
    for layer in layers:
      hidden = apply_layer(layer, remat, hidden, *args, **static_kwargs)
    return hidden

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, transform_metadata=_LAYERS_METADATA)
  def body(hidden, layer):
    return apply_layer(layer, remat, hidden, *args, **static_kwargs)

  return body(hidden, layers)


def num_stacked(layers: nnx.Module) -> int:
  """Number of layers of a stacked layer module (the leading axis of its parameters)."""
  for _, v in nnx.iter_graph(layers):
    if isinstance(v, nnx.Param):
      return int(v.shape[0])
  raise ValueError('The layer stack has no parameters.')


def layer_list(layers: nnx.Module, scan: bool) -> list[nnx.Module]:
  """The layers as a list of modules. Scanned stacks are sliced: each entry is a new module
  holding slice i of every stacked variable (reads only: changes to it, e.g. of dropout RNG
  counts, are not written back to the stack). Used by incremental decoding."""
  if not scan:
    return list(layers)
  graphdef, state = nnx.split(layers)

  def take(i):
    def one(x):
      if isinstance(x, nnx.Variable):
        meta = dict(x.get_metadata())
        names = meta.get('out_sharding')
        y = x.replace(x.get_value()[i])
        if names and names[0] == LAYERS_AXIS:
          y.set_metadata(out_sharding=tuple(names[1:]))
        return y
      return x[i]
    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))

  return [nnx.merge(graphdef, take(i)) for i in range(num_stacked(layers))]
