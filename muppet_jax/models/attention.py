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

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from muppet_jax.models import dropout as dropout_lib
from muppet_jax.models.kernels import flash_attention

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


@flax.struct.dataclass
class AttentionMask:
  """Who may attend to whom, as segment ids (the form the fused kernels take).

  Query i may attend to key j when `q_segments[i] == kv_segments[j] != 0` (and j <= i when
  `causal`): packed rows attend within their segment, padding keys (0) never receive
  attention, and a query of segment 0 attends to nothing (its softmax is then uniform over
  the finite mask value, as before). `dense()` is the boolean `[B, 1, T, S]` form.
  """

  q_segments: Array  # [batch or 1, T] int32.
  kv_segments: Array  # [batch or 1, S] int32.
  causal: bool = flax.struct.field(pytree_node=False, default=False)

  def dense(self) -> Array:
    """`[batch or 1, 1, T, S]` bool, True = may attend."""
    return flash_attention.dense_mask(self.q_segments, self.kv_segments, self.causal)


def make_attention_mask(
    *,
    query_length: int,
    key_length: int,
    key_mask: Array | None = None,
    query_segment_ids: Array | None = None,
    key_segment_ids: Array | None = None,
    causal: bool = False,
) -> AttentionMask | None:
  """The attention mask of a batch (True = the query may attend to the key).

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
    An `AttentionMask` (`.dense()`: `[batch or 1, 1, T, S]` bool), or None when nothing is
    masked.
  """
  if (query_segment_ids is None) != (key_segment_ids is None):
    raise ValueError('query_segment_ids and key_segment_ids must be given together.')
  if key_mask is None and query_segment_ids is None and not causal:
    return None
  if query_segment_ids is not None:
    q = query_segment_ids.astype(jnp.int32)
    kv = key_segment_ids.astype(jnp.int32)
  else:  # One segment: every query, every key (but the masked ones).
    batch = key_mask.shape[0] if key_mask is not None else 1
    q = jnp.ones((batch, query_length), jnp.int32)
    kv = jnp.ones((batch, key_length), jnp.int32)
  if key_mask is not None:
    kv = jnp.where(key_mask.astype(bool), kv, 0)
  return AttentionMask(q_segments=q, kv_segments=kv, causal=causal)


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------


def split_heads(x: Array, num_heads: int) -> Array:
  """`[batch, length, heads * head_dim]` -> `[batch, length, heads, head_dim]`."""
  return x.reshape(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


def merge_heads(x: Array) -> Array:
  """`[batch, length, heads, head_dim]` -> `[batch, length, heads * head_dim]`."""
  return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


# `model.attention`: how attention is computed.
IMPLEMENTATIONS = ('auto', 'xla', 'pallas', 'cudnn')


def check_implementation(implementation: str) -> str:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'model.attention must be one of {IMPLEMENTATIONS}, got '
                     f'{implementation!r}.')
  return implementation


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: AttentionMask | Array | None,
    *,
    dropout: dropout_lib.Dropout | None = None,
    deterministic: bool = True,
    implementation: str = 'xla',
) -> Array:
  """Scaled dot-product attention, scale `head_dim ** -0.5` (as HF RoBERTa and BART).

  Logits and softmax are computed in float32 whatever the input dtype.

  Args:
    query: `[batch, T, heads, head_dim]`.
    key: `[batch, S, heads, head_dim]`.
    value: `[batch, S, heads, head_dim]`.
    mask: an `AttentionMask`, a bool array broadcastable to `[batch, heads, T, S]` (True =
      attend; the XLA path only), or None.
    dropout: dropout on the attention probabilities (HF `attention_probs_dropout_prob` /
      `attention_dropout`), applied only when `deterministic` is False.
    deterministic: no dropout when True.
    implementation: 'xla' (XLA's fused attention when there is no dropout, else the explicit
      float32 softmax path), 'pallas' (the flash kernel with in-kernel dropout,
      `kernels/flash_attention.py`: compiled on TPU, in Pallas' interpret mode elsewhere),
      'cudnn' (cuDNN's fused attention, GPU only) or 'auto' (the kernel where the program is
      lowered for TPU, 'xla' everywhere else; chosen at lowering, so `--mode compile` for a
      TPU slice gets the kernel on a CPU host).

  Returns:
    `[batch, T, heads, head_dim]` in the dtype of `query`.
  """
  rate = 0.0 if deterministic or dropout is None else float(dropout.rate)
  key_for_dropout = dropout.next_key() if rate > 0 else None
  if implementation == 'xla' or not isinstance(mask, (AttentionMask, type(None))):
    return _xla_attention(query, key, value, mask, rate, key_for_dropout)
  if implementation == 'cudnn':
    return _cudnn_attention(query, key, value, mask, rate)
  flash = functools.partial(_flash_attention, query, key, value, mask, rate, key_for_dropout)
  if implementation == 'auto' and _free_axes():
    # A tensor-parallel mesh axis XLA partitions: the kernel would need its own shard_map
    # inside the step's; 'auto' keeps XLA's attention there ('pallas' tries the nested one).
    return _xla_attention(query, key, value, mask, rate, key_for_dropout)
  if implementation == 'pallas':
    return jax.lax.platform_dependent(tpu=functools.partial(flash, interpret=False),
                                      default=functools.partial(flash, interpret=True))
  return jax.lax.platform_dependent(  # 'auto'
      tpu=functools.partial(flash, interpret=False),
      default=lambda: _xla_attention(query, key, value, mask, rate, key_for_dropout))


def set_implementation(model: nnx.Module, implementation: str) -> None:
  """Sets `model.attention` on every attention layer of `model` (modules that have an
  `implementation` attribute)."""
  check_implementation(implementation)
  for _, module in nnx.iter_graph(model):
    if isinstance(module, nnx.Module) and hasattr(module, 'implementation'):
      module.implementation = implementation


def _xla_attention(query, key, value, mask, rate: float, dropout_key) -> Array:
  dense = mask.dense() if isinstance(mask, AttentionMask) else mask
  if rate == 0.0:
    # Fused path: XLA/cuDNN may pick a flash-attention kernel. Fully masked query rows get a
    # uniform softmax over a finite large negative, never NaN.
    return jax.nn.dot_product_attention(query, key, value, mask=dense)
  # Training with attention dropout: jax.nn.dot_product_attention has no dropout, so spell it
  # out. Keep the same numerics as the fused XLA path (float32 logits and softmax, finite mask
  # value). Heads go first ([batch, heads, length, head_dim]) so both products are plain
  # batched matmuls, and the scale multiplies the queries rather than the T x S logits:
  # together ~25% less time for this block's forward and backward on CPU than einsums over
  # [batch, length, heads, head_dim] (bench/README.md).
  scale = query.shape[-1] ** -0.5
  q, k, v = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))  # [B, N, T|S, H]
  logits = jnp.matmul(q * jnp.asarray(scale, q.dtype), jnp.swapaxes(k, -1, -2),
                      preferred_element_type=jnp.float32)  # [B, N, T, S]
  if dense is not None:
    logits = jnp.where(dense, logits, _LARGE_NEGATIVE)
  probs = jax.nn.softmax(logits, axis=-1)
  probs = dropout_lib.apply(probs, dropout_key, rate).astype(value.dtype)
  return jnp.swapaxes(jnp.matmul(probs, v), 1, 2)


def _flash_attention(query, key, value, mask, rate: float, dropout_key, *,
                     interpret: bool) -> Array:
  batch, q_len = query.shape[:2]
  kv_len = key.shape[1]
  if mask is None:
    mask = AttentionMask(q_segments=jnp.ones((batch, q_len), jnp.int32),
                         kv_segments=jnp.ones((batch, kv_len), jnp.int32))
  q_segments = jnp.broadcast_to(mask.q_segments, (batch, q_len))
  kv_segments = jnp.broadcast_to(mask.kv_segments, (batch, kv_len))
  # The kernel's layout, length minor: [B, N, H, T|S]. XLA writes it straight from the q/k/v
  # projections' matmuls (and reads the output's transpose straight into the out projection).
  q, k, v = (jnp.transpose(x, (0, 2, 3, 1)) for x in (query, key, value))
  seed = (jnp.zeros((2,), jnp.int32) if dropout_key is None
          else flash_attention.seed_from_key(dropout_key))

  def kernel(q, k, v, q_segments, kv_segments, seed):
    return flash_attention.flash_attention(
        q, k, v, q_segments, kv_segments, causal=mask.causal, dropout_rate=rate, seed=seed,
        interpret=interpret)

  out = _manual(kernel, q, k, v, q_segments, kv_segments, seed)
  return jnp.transpose(out, (0, 3, 1, 2))  # -> [B, T, N, H]


def _free_axes() -> tuple[str, ...]:
  """The mesh axes of the current context that are not manual (and have > 1 device)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return ()
  return tuple(a for a in mesh.axis_names if a not in mesh.manual_axes and mesh.shape[a] > 1)


def _manual(kernel, q, k, v, q_segments, kv_segments, seed):
  """Runs `kernel` where every mesh axis is manual: a Pallas TPU kernel cannot be partitioned
  by XLA. Inside the train step's shard_map only `data` is manual; the other axes (`model`)
  become manual here, heads split over `model` as the projections' logical axes put them
  (replicated when `model` does not divide the heads)."""
  mesh = jax.sharding.get_abstract_mesh()
  free = _free_axes()
  if not free:
    return kernel(q, k, v, q_segments, kv_segments, seed)
  heads = 'model' if ('model' in free and q.shape[1] % mesh.shape['model'] == 0) else None
  qkv = P(None, heads, None, None)
  return jax.shard_map(kernel, mesh=mesh, in_specs=(qkv, qkv, qkv, P(), P(), P()),
                       out_specs=qkv, axis_names=frozenset(free))(
                           q, k, v, q_segments, kv_segments, seed)


def _cudnn_attention(query, key, value, mask, rate: float) -> Array:
  """cuDNN's fused attention (GPU). JAX 0.10 takes cuDNN's dropout seed as a compile-time
  constant, so every call of a compiled step would draw the same mask: with dropout this
  raises instead (use 'auto'/'xla' for training with attention dropout on GPU)."""
  if rate > 0:
    raise ValueError(
        "model.attention='cudnn' cannot train with attention dropout: JAX's cuDNN attention "
        'takes the dropout seed as a compile-time constant (the same mask at every step). Use '
        "model.attention='auto' (or 'xla'), or model.attention_dropout=0.")
  dense = mask.dense() if isinstance(mask, AttentionMask) else mask
  return jax.nn.dot_product_attention(query, key, value, mask=dense, implementation='cudnn')


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


def padded_rows(num: int, multiple: int) -> int:
  """`num` rounded up to a multiple of `multiple` (0 or 1: `num` itself)."""
  return num if multiple <= 1 else -(-num // multiple) * multiple


def _zero_rows(init: nnx.Initializer, row: int | None, used_rows: int) -> nnx.Initializer:
  """HF zeroes the `padding_idx` row of an embedding at init; rows from `used_rows` on (the
  padding of a vocabulary rounded up, `embed`) are zero too."""

  def wrapped(key, shape, dtype=jnp.float32):
    table = init(key, shape, dtype)
    if row is not None:
      table = table.at[row].set(0)
    return table.at[used_rows:].set(0) if used_rows < shape[0] else table

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
    rows_multiple: int = 0,
) -> nnx.Embed:
  """`nnx.Embed` with table `[rows, features]` named `names`, `rows = num_embeddings` rounded
  up to a multiple of `rows_multiple` (`model.vocab_multiple`; the extra rows start at zero).

  Lookups return the parameter dtype (no cast to the compute dtype): embeddings are summed and
  normalised in float32, and an R3F perturbation of ~1e-5 would vanish in bfloat16.
  """
  return nnx.Embed(
      padded_rows(num_embeddings, rows_multiple),
      features,
      dtype=param_dtype,
      param_dtype=param_dtype,
      embedding_init=partitioned(
          _zero_rows(nnx.initializers.normal(init_std), padding_idx, num_embeddings), names),
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
