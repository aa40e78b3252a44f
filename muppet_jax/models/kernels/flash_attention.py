"""Flash attention for TPU with attention-probability dropout inside the kernel (Pallas).

Training with the paper's attention dropout (0.1) on XLA's attention path writes and reads the
`[batch, heads, T, S]` logits, probabilities and dropout masks in HBM several times per layer;
the upstream Pallas flash/splash kernels have no dropout. This kernel keeps every
`[block_q, block_k]` tile in VMEM: the forward runs the online softmax over key blocks, and the
dropout mask of each tile is drawn inside the kernel, so that the two backward kernels (dq, and
dk/dv) regenerate exactly the forward's mask and no `[B, H, T, S]` tensor reaches HBM.

    out = dropout(softmax(scale * q k^T + mask)) v,   dropout(p) = p * keep / (1 - rate)

Masking follows `attention.make_attention_mask` exactly: query i may attend to key j when their
segment ids are equal and the key's is non-zero (and j <= i when causal); a query that may
attend to nothing (padding) gets a uniform softmax over all keys, as the XLA path's finite
mask value gives. The dropout keep mask comes from one of two generators, drawn per tile:

- 'hardware': the TPU's hardware generator (`pltpu.prng_seed` / `pltpu.prng_random_bits`),
  seeded per (seed, batch row, head, query block, key block). The default on TPU.
- 'counter': a counter-based hash of (seed, batch row, head, query index, key index) computed
  on the vector unit, independent of the block sizes. Pallas' TPU interpret mode (the CPU
  emulation the tests use) returns zeros for the hardware generator in JAX 0.10, so interpret
  mode uses this one; it can also be chosen on TPU.

A bit word w keeps its position when w >= round(rate * 2^32) (as unsigned); kept values are
scaled by 1 / (1 - that quantized rate). `keep_mask` returns the mask the kernels use, from the
same per-tile code, so tests can apply it in the plain-JAX reference (`reference`).

Layout: q `[B, N, H, T]`, k and v `[B, N, H, S]`, the output `[B, N, H, T]`: heads before
head_dim before length, the length minor. TPU arrays are stored in tiles of 128 lanes on the
minor dimension, so a head_dim-minor layout would store (and move) head_dim 64 twice over; with
the length minor nothing is padded and the projections' matmuls write and read this layout
directly. Every kernel computes its tiles transposed, `[block_k, block_q]` (keys on
sublanes, queries on lanes), so that the per-query statistics are rows. Segment ids `[B, T]` /
`[B, S]` int32. Each kernel declares a `pl.CostEstimate` computed by walking its
grid (`block_loop_cost`): XLA's cost analysis of the compiled step reports these figures.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from muppet_jax.models.kernels.block_cost import (NUM_LANES, Operand, block_loop_cost,
                                                  padded_block_bytes)

# The XLA path's mask value (attention.py): finite, so a fully masked row is uniform, not NaN.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
NUM_SUBLANES = 8
GENERATORS = ('hardware', 'counter')

# murmur3's 32-bit finaliser constants (as int32) and the golden-ratio increment.
_M1 = np.int32(np.uint32(0x85EBCA6B).view(np.int32))
_M2 = np.int32(np.uint32(0xC2B2AE35).view(np.int32))
_GOLDEN = np.int32(np.uint32(0x9E3779B9).view(np.int32))
_INT_MIN = np.int32(-2 ** 31)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes: `block_q` queries x `block_k` keys per grid step, the same in the forward and
  both backward kernels (the 'hardware' generator draws one mask per tile)."""

  block_q: int
  block_k: int

  @classmethod
  def for_lengths(cls, q_len: int, kv_len: int, limit: int = 512) -> 'BlockSizes':
    """The largest tiles up to `limit` that divide the lengths (multiples of 128 when the
    length is longer than `limit`)."""
    return cls(block_q=_block(q_len, limit), block_k=_block(kv_len, limit))


def _block(length: int, limit: int) -> int:
  if length <= limit:
    return length
  for size in range(limit, 0, -NUM_LANES):
    if length % size == 0:
      return size
  raise ValueError(f'attention length {length} has no block size that is a multiple of '
                   f'{NUM_LANES} and at most {limit}: pad the sequence to a multiple of 128')


def quantized_rate(rate: float) -> float:
  """The drop probability the kernel applies: rate rounded to a multiple of 2^-32."""
  return _threshold(rate) / 2.0 ** 32


def _threshold(rate: float) -> int:
  return min(int(round(rate * 2.0 ** 32)), 2 ** 32 - 1)


def seed_from_key(key: jax.Array) -> jax.Array:
  """Two int32 seed words from a JAX PRNG key (any implementation): the kernel's seed."""
  if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  return jax.lax.bitcast_convert_type(jax.random.bits(key, (2,), jnp.uint32), jnp.int32)


# ---------------------------------------------------------------------------------------------
# The reference (plain JAX), the semantics every kernel is tested against
# ---------------------------------------------------------------------------------------------


def dense_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, causal: bool) -> jax.Array:
  """`[B, 1, T, S]` bool: same non-zero segment (and key <= query when causal)."""
  same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  mask = jnp.logical_and(same, kv_segment_ids[:, None, :] > 0)
  if causal:
    t, s = q_segment_ids.shape[1], kv_segment_ids.shape[1]
    mask = jnp.logical_and(mask, jnp.arange(t)[:, None] >= jnp.arange(s)[None, :])
  return mask[:, None]


def reference(q, k, v, q_segment_ids, kv_segment_ids, *, causal: bool = False,
              scale: float | None = None, keep: jax.Array | None = None,
              rate: float = 0.0) -> jax.Array:
  """The XLA path of attention.py in the kernel's layout (q `[B, N, H, T]`, k and v
  `[B, N, H, S]`): float32 logits and softmax, the finite mask value, and dropout as
  `probs * keep / (1 - quantized_rate(rate))` with `keep` `[B, N, T, S]` (e.g.
  `keep_mask(...)`, the kernels' own mask). Returns `[B, N, H, T]`."""
  scale = q.shape[2] ** -0.5 if scale is None else scale
  logits = jnp.einsum('bndt,bnds->bnts', q, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(dense_mask(q_segment_ids, kv_segment_ids, causal), logits, MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1)
  if keep is not None and rate > 0:
    probs = jnp.where(keep, probs / (1.0 - quantized_rate(rate)), 0.0)
  return jnp.einsum('bnts,bnds->bndt', probs.astype(v.dtype), v,
                    preferred_element_type=jnp.float32).astype(q.dtype)


# ---------------------------------------------------------------------------------------------
# Random bits of one tile
# ---------------------------------------------------------------------------------------------


def _fmix(x):
  """murmur3's finaliser on int32 (wrapping multiplies, logical shifts): a bijection that
  spreads every input bit over the output word."""
  x = x ^ jax.lax.shift_right_logical(x, 16)
  x = x * _M1
  x = x ^ jax.lax.shift_right_logical(x, 13)
  x = x * _M2
  return x ^ jax.lax.shift_right_logical(x, 16)


def _tile_bits(seed_ref, b, h, qi, ki, *, num_heads: int, num_k_blocks: int, kv_len: int,
               block_q: int, block_k: int, generator: str):
  """int32 random words of tile (qi, ki) of (batch row b, head h), `[block_k, block_q]`
  (keys on sublanes, queries on lanes: the orientation every kernel computes in)."""
  if generator == 'hardware':
    # The generator takes two seed words: the row/head and the tile enter one each, through a
    # bijection (an odd multiplier), so every tile of a call has its own seed pair.
    pltpu.prng_seed(seed_ref[0] + (b * num_heads + h) * _GOLDEN,
                    seed_ref[1] + (qi * num_k_blocks + ki) * _GOLDEN)
    return pltpu.prng_random_bits((block_k, block_q))
  shape = (block_k, block_q)
  rows = jax.lax.broadcasted_iota(jnp.int32, shape, 1) + qi * block_q  # Query index.
  cols = jax.lax.broadcasted_iota(jnp.int32, shape, 0) + ki * block_k  # Key index.
  stream = _fmix(seed_ref[0] + (b * num_heads + h + 1) * _GOLDEN)
  key = _fmix(seed_ref[1] ^ stream)
  return _fmix(_fmix((rows * kv_len + cols) ^ stream) + key)


def _keep(bits, rate: float):
  """bits (int32) -> keep (bool): the unsigned word >= round(rate * 2^32), compared signed after
  flipping the sign bit (the vector unit has no unsigned compare in every generation)."""
  return (bits ^ _INT_MIN) >= np.int32(_threshold(rate) - 2 ** 31)


def _out(shape, dtype, like) -> jax.ShapeDtypeStruct:
  """An output shape that varies over the same mesh axes as `like` (inside shard_map)."""
  return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.typeof(like).mat)


# ---------------------------------------------------------------------------------------------
# The three kernels
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything static about one call (hashable: part of the custom_vjp's nondiff args)."""

  causal: bool
  scale: float
  rate: float
  generator: str
  block_q: int
  block_k: int
  interpret: bool


def _interpret_params(static: _Static):
  return pltpu.InterpretParams() if static.interpret else False


def _tile(q_ref, k_ref, q_seg_ref, kv_seg_ref, qi, ki, static: _Static):
  """The scaled, masked scores of tile (qi, ki), transposed: `[block_k, block_q]`, and the
  mask (True = may attend). q_ref `[H, bq]`, k_ref `[H, bk]` (length minor), the query
  segment ids a row `[1, bq]`, the key ids a column `[bk, 1]`."""
  k = k_ref[...]
  s_t = jnp.dot(k.T, q_ref[...], preferred_element_type=jnp.float32) * static.scale
  kv_seg = kv_seg_ref[:, :1]
  mask = jnp.logical_and(q_seg_ref[:1, :] == kv_seg, kv_seg != 0)
  if static.causal:
    queries = jax.lax.broadcasted_iota(jnp.int32, s_t.shape, 1) + qi * static.block_q
    keys = jax.lax.broadcasted_iota(jnp.int32, s_t.shape, 0) + ki * static.block_k
    mask = jnp.logical_and(mask, queries >= keys)
  return jnp.where(mask, s_t, MASK_VALUE), mask


def _dropout_keep(seed_ref, b, h, qi, ki, static: _Static, num_heads: int, num_k_blocks: int,
                  kv_len: int):
  bits = _tile_bits(seed_ref, b, h, qi, ki, num_heads=num_heads, num_k_blocks=num_k_blocks,
                    kv_len=kv_len, block_q=static.block_q, block_k=static.block_k,
                    generator=static.generator)
  return _keep(bits, static.rate)


def _forward_kernel(seed_ref, q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, o_ref, stats_ref,
                    m_scratch, l_scratch, acc_scratch, *, static: _Static, num_heads: int,
                    num_k_blocks: int, kv_len: int):
  """Grid (b, h, query block, key block), key blocks innermost: the online softmax over the
  key blocks, per query (a lane): running max m and sum l `[1, bq]`, output `[H, bq]`."""
  b, h, qi, ki = (pl.program_id(i) for i in range(4))

  @pl.when(ki == 0)
  def _():
    m_scratch[...] = jnp.full(m_scratch.shape, -jnp.inf, jnp.float32)
    l_scratch[...] = jnp.zeros(l_scratch.shape, jnp.float32)
    acc_scratch[...] = jnp.zeros(acc_scratch.shape, jnp.float32)

  s_t, _ = _tile(q_ref, k_ref, q_seg_ref, kv_seg_ref, qi, ki, static)  # [bk, bq]
  m_prev, l_prev = m_scratch[:1, :], l_scratch[:1, :]  # [1, bq]
  m_next = jnp.maximum(m_prev, jnp.max(s_t, axis=0, keepdims=True))
  p_t = jnp.exp(s_t - m_next)
  alpha = jnp.exp(m_prev - m_next)
  l_scratch[...] = jnp.broadcast_to(alpha * l_prev + jnp.sum(p_t, axis=0, keepdims=True),
                                    l_scratch.shape)
  m_scratch[...] = jnp.broadcast_to(m_next, m_scratch.shape)
  if static.rate > 0:
    p_t = jnp.where(_dropout_keep(seed_ref, b, h, qi, ki, static, num_heads, num_k_blocks,
                                  kv_len), p_t, 0.0)
  acc_scratch[...] = acc_scratch[...] * alpha + jnp.dot(
      v_ref[...], p_t.astype(v_ref.dtype), preferred_element_type=jnp.float32)  # [H, bq]

  @pl.when(ki == num_k_blocks - 1)
  def _():
    l = l_scratch[:1, :]
    o_ref[...] = (acc_scratch[...] / (l * (1.0 - quantized_rate(static.rate)))).astype(
        o_ref.dtype)
    # The row max and sum (not their logsumexp: for a fully masked row m is the mask value,
    # which absorbs log(l) in float32), as rows: the residual is [B, N, 2, T].
    stats_ref[0:1, :] = m_scratch[:1, :]
    stats_ref[1:2, :] = l


def _probabilities(s_t, stats_ref):
  """Softmax probabilities of a transposed tile from the forward's row max and sum."""
  return jnp.exp(s_t - stats_ref[0:1, :]) * (1.0 / stats_ref[1:2, :])


def _dq_kernel(seed_ref, q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, stats_ref, di_ref, do_ref,
               dq_ref, dq_scratch, *, static: _Static, num_heads: int, num_k_blocks: int,
               kv_len: int):
  """Grid (b, h, query block, key block), key blocks innermost: dq `[H, bq]`."""
  b, h, qi, ki = (pl.program_id(i) for i in range(4))

  @pl.when(ki == 0)
  def _():
    dq_scratch[...] = jnp.zeros(dq_scratch.shape, jnp.float32)

  s_t, mask = _tile(q_ref, k_ref, q_seg_ref, kv_seg_ref, qi, ki, static)
  p_t = _probabilities(s_t, stats_ref)
  dp_t = jnp.dot(v_ref[...].T, do_ref[...], preferred_element_type=jnp.float32)  # [bk, bq]
  if static.rate > 0:
    keep = _dropout_keep(seed_ref, b, h, qi, ki, static, num_heads, num_k_blocks, kv_len)
    dp_t = jnp.where(keep, dp_t * (1.0 / (1.0 - quantized_rate(static.rate))), 0.0)
  ds_t = jnp.where(mask, p_t * (dp_t - di_ref[...]), 0.0) * static.scale
  k = k_ref[...]
  dq_scratch[...] += jnp.dot(k, ds_t.astype(k.dtype), preferred_element_type=jnp.float32)

  @pl.when(ki == num_k_blocks - 1)
  def _():
    dq_ref[...] = dq_scratch[...].astype(dq_ref.dtype)


_NT = (((1,), (1,)), ((), ()))  # Contract the minor dimension of both operands.


def _dkv_kernel(seed_ref, q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, stats_ref, di_ref, do_ref,
                dk_ref, dv_ref, dk_scratch, dv_scratch, *, static: _Static, num_heads: int,
                num_k_blocks: int, kv_len: int):
  """Grid (b, h, key block, query block), query blocks innermost: dk, dv `[H, bk]`."""
  b, h, ki, qi = (pl.program_id(i) for i in range(4))

  @pl.when(qi == 0)
  def _():
    dk_scratch[...] = jnp.zeros(dk_scratch.shape, jnp.float32)
    dv_scratch[...] = jnp.zeros(dv_scratch.shape, jnp.float32)

  s_t, mask = _tile(q_ref, k_ref, q_seg_ref, kv_seg_ref, qi, ki, static)
  p_t = _probabilities(s_t, stats_ref)
  do = do_ref[...]  # [H, bq]
  dp_t = jnp.dot(v_ref[...].T, do, preferred_element_type=jnp.float32)  # [bk, bq]
  pd_t = p_t
  if static.rate > 0:
    keep = _dropout_keep(seed_ref, b, h, qi, ki, static, num_heads, num_k_blocks, kv_len)
    inverse = 1.0 / (1.0 - quantized_rate(static.rate))
    pd_t = jnp.where(keep, p_t * inverse, 0.0)
    dp_t = jnp.where(keep, dp_t * inverse, 0.0)
  dv_scratch[...] += jax.lax.dot_general(do, pd_t.astype(do.dtype), _NT,
                                         preferred_element_type=jnp.float32)  # [H, bk]
  ds_t = jnp.where(mask, p_t * (dp_t - di_ref[...]), 0.0) * static.scale
  q = q_ref[...]
  dk_scratch[...] += jax.lax.dot_general(q, ds_t.astype(q.dtype), _NT,
                                         preferred_element_type=jnp.float32)

  @pl.when(qi == pl.num_programs(3) - 1)
  def _():
    dk_ref[...] = dk_scratch[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_scratch[...].astype(dv_ref.dtype)


# ---------------------------------------------------------------------------------------------
# pallas_call wrappers
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Segments:
  """Segment ids in the layouts the kernels read: query ids as rows (repeated over the 8
  sublanes), key ids as columns (repeated over the 128 lanes)."""

  q_row: jax.Array  # [B, 8, T]
  kv_col: jax.Array  # [B, S, 128]


def _segments(q_segment_ids, kv_segment_ids) -> _Segments:
  q = q_segment_ids.astype(jnp.int32)
  kv = kv_segment_ids.astype(jnp.int32)
  b, t = q.shape
  s = kv.shape[1]
  return _Segments(q_row=jnp.broadcast_to(q[:, None, :], (b, NUM_SUBLANES, t)),
                   kv_col=jnp.broadcast_to(kv[:, :, None], (b, s, NUM_LANES)))


def _specs(static: _Static, head_dim: int, queries_inner: bool):
  """Block specs and index maps, and the operands' block bytes, for a grid whose two inner
  axes are (query block, key block) or, `queries_inner`, (key block, query block)."""
  bq, bk = static.block_q, static.block_k

  def qk(fn):  # fn(b, h, qi, ki) as an index map over the grid's order.
    if queries_inner:
      return lambda b, h, j, i, *_: fn(b, h, i, j)
    return lambda b, h, i, j, *_: fn(b, h, i, j)

  maps = dict(
      q=qk(lambda b, h, i, j: (b, h, 0, i)), kv=qk(lambda b, h, i, j: (b, h, 0, j)),
      q_row=qk(lambda b, h, i, j: (b, 0, i)), kv_col=qk(lambda b, h, i, j: (b, j, 0)),
      stats=qk(lambda b, h, i, j: (b, h, 0, i)))
  specs = dict(
      q=pl.BlockSpec((None, None, head_dim, bq), maps['q']),
      kv=pl.BlockSpec((None, None, head_dim, bk), maps['kv']),
      q_row=pl.BlockSpec((None, NUM_SUBLANES, bq), maps['q_row']),
      kv_col=pl.BlockSpec((None, bk, NUM_LANES), maps['kv_col']),
      stats=pl.BlockSpec((None, None, 2, bq), maps['stats']),
      di=pl.BlockSpec((None, None, 1, bq), maps['stats']))
  return specs, maps


def _forward_call(seed, q, k, v, segments: _Segments, static: _Static):
  batch, heads, head_dim, q_len = q.shape
  kv_len = k.shape[3]
  bq, bk = static.block_q, static.block_k
  grid = (batch, heads, q_len // bq, kv_len // bk)
  specs, maps = _specs(static, head_dim, queries_inner=False)
  cost = block_loop_cost(grid, [
      Operand(padded_block_bytes((head_dim, bq), q.dtype), maps['q']),
      Operand(padded_block_bytes((head_dim, bk), k.dtype), maps['kv']),
      Operand(padded_block_bytes((head_dim, bk), v.dtype), maps['kv']),
      Operand(padded_block_bytes((NUM_SUBLANES, bq), jnp.int32), maps['q_row']),
      Operand(padded_block_bytes((bk, NUM_LANES), jnp.int32), maps['kv_col']),
      Operand(padded_block_bytes((head_dim, bq), q.dtype), maps['q'], output=True),
      Operand(padded_block_bytes((2, bq), jnp.float32), maps['stats'], output=True),
  ], step_flops=forward_step_flops(static, head_dim), step_transcendentals=bq * bk + bq)
  kernel = functools.partial(_forward_kernel, static=static, num_heads=heads,
                             num_k_blocks=kv_len // bk, kv_len=kv_len)
  return pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=grid,
          in_specs=[specs['q'], specs['kv'], specs['kv'], specs['q_row'], specs['kv_col']],
          out_specs=[specs['q'], specs['stats']],
          scratch_shapes=[pltpu.VMEM((NUM_SUBLANES, bq), jnp.float32),
                          pltpu.VMEM((NUM_SUBLANES, bq), jnp.float32),
                          pltpu.VMEM((head_dim, bq), jnp.float32)]),
      out_shape=[_out(q.shape, q.dtype, q), _out((batch, heads, 2, q_len), jnp.float32, q)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=('parallel', 'parallel', 'parallel', 'arbitrary')),
      cost_estimate=cost, interpret=_interpret_params(static), name='flash_attention_fwd',
  )(seed, q, k, v, segments.q_row, segments.kv_col)


def forward_step_flops(static: _Static, head_dim: int) -> int:
  """FLOPs of one forward grid step: the two matmuls (2 x bq x bk x H each) and the
  element-wise work on the tile (scale, mask select, max, subtract, sum, dropout select:
  ~6 per element; the exp is a transcendental)."""
  tile = static.block_q * static.block_k
  return 4 * tile * head_dim + 6 * tile + (2 if static.rate > 0 else 0) * tile


def backward_step_flops(static: _Static, head_dim: int, kernel: str) -> int:
  """FLOPs of one grid step of the dq kernel (3 matmuls) or the dk/dv kernel (4 matmuls),
  plus ~8 element-wise operations per tile element (scale, mask, subtract, multiply, ...)."""
  tile = static.block_q * static.block_k
  matmuls = 3 if kernel == 'dq' else 4
  return 2 * matmuls * tile * head_dim + 8 * tile + (3 if static.rate > 0 else 0) * tile


def _backward_calls(seed, q, k, v, segments: _Segments, stats, di, do, static: _Static):
  batch, heads, head_dim, q_len = q.shape
  kv_len = k.shape[3]
  bq, bk = static.block_q, static.block_k
  common = dict(static=static, num_heads=heads, num_k_blocks=kv_len // bk, kv_len=kv_len)
  params = pltpu.CompilerParams(
      dimension_semantics=('parallel', 'parallel', 'parallel', 'arbitrary'))
  qb = padded_block_bytes((head_dim, bq), q.dtype)
  kb = padded_block_bytes((head_dim, bk), k.dtype)

  def operands(maps, outputs):
    return [Operand(qb, maps['q']), Operand(kb, maps['kv']), Operand(kb, maps['kv']),
            Operand(padded_block_bytes((NUM_SUBLANES, bq), jnp.int32), maps['q_row']),
            Operand(padded_block_bytes((bk, NUM_LANES), jnp.int32), maps['kv_col']),
            Operand(padded_block_bytes((2, bq), jnp.float32), maps['stats']),
            Operand(padded_block_bytes((1, bq), jnp.float32), maps['stats']),
            Operand(qb, maps['q'])] + outputs

  args = (seed, q, k, v, segments.q_row, segments.kv_col, stats, di, do)
  # dq: grid over (b, h, query block, key block), key blocks innermost.
  specs, maps = _specs(static, head_dim, queries_inner=False)
  grid = (batch, heads, q_len // bq, kv_len // bk)
  in_specs = [specs['q'], specs['kv'], specs['kv'], specs['q_row'], specs['kv_col'],
              specs['stats'], specs['di'], specs['q']]
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, **common),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=grid, in_specs=in_specs, out_specs=specs['q'],
          scratch_shapes=[pltpu.VMEM((head_dim, bq), jnp.float32)]),
      out_shape=_out(q.shape, q.dtype, q), compiler_params=params,
      cost_estimate=block_loop_cost(grid, operands(maps, [Operand(qb, maps['q'], output=True)]),
                                    backward_step_flops(static, head_dim, 'dq'), bq * bk),
      interpret=_interpret_params(static), name='flash_attention_dq',
  )(*args)
  # dk, dv: grid over (b, h, key block, query block), query blocks innermost.
  specs, maps = _specs(static, head_dim, queries_inner=True)
  grid = (batch, heads, kv_len // bk, q_len // bq)
  in_specs = [specs['q'], specs['kv'], specs['kv'], specs['q_row'], specs['kv_col'],
              specs['stats'], specs['di'], specs['q']]
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, **common),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=grid, in_specs=in_specs,
          out_specs=[specs['kv'], specs['kv']],
          scratch_shapes=[pltpu.VMEM((head_dim, bk), jnp.float32),
                          pltpu.VMEM((head_dim, bk), jnp.float32)]),
      out_shape=[_out(k.shape, k.dtype, k), _out(v.shape, v.dtype, v)],
      compiler_params=params,
      cost_estimate=block_loop_cost(
          grid, operands(maps, [Operand(kb, maps['kv'], output=True),
                                Operand(kb, maps['kv'], output=True)]),
          backward_step_flops(static, head_dim, 'dkv'), bq * bk),
      interpret=_interpret_params(static), name='flash_attention_dkv',
  )(*args)
  return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# Differentiable entry point
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attention(seed, q, k, v, q_segment_ids, kv_segment_ids, static: _Static):
  out, _ = _forward_call(seed, q, k, v, _segments(q_segment_ids, kv_segment_ids), static)
  return out


def _attention_fwd(seed, q, k, v, q_segment_ids, kv_segment_ids, static):
  out, stats = _forward_call(seed, q, k, v, _segments(q_segment_ids, kv_segment_ids), static)
  return out, (seed, q, k, v, q_segment_ids, kv_segment_ids, out, stats)


def _attention_bwd(static, residuals, d_out):
  seed, q, k, v, q_segment_ids, kv_segment_ids, out, stats = residuals
  # D_i = sum_d dO_id O_id = sum_j dP_ij P_ij (dropout included): the softmax backward's row
  # term, [B, N, 1, T] like the statistics' rows.
  di = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=2, keepdims=True)
  dq, dk, dv = _backward_calls(seed, q, k, v, _segments(q_segment_ids, kv_segment_ids),
                               stats, di, d_out, static)
  return None, dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def default_generator(interpret: bool) -> str:
  return 'counter' if interpret else 'hardware'


def flash_attention(q, k, v, q_segment_ids, kv_segment_ids, *, causal: bool = False,
                    scale: float | None = None, dropout_rate: float = 0.0,
                    seed: jax.Array | None = None, generator: str | None = None,
                    block_sizes: BlockSizes | None = None,
                    interpret: bool | None = None) -> jax.Array:
  """Attention with in-kernel dropout.

  Args:
    q: `[B, N, H, T]` (length minor: see the module doc).
    k, v: `[B, N, H, S]`.
    q_segment_ids: `[B, T]` int, 0 = padding.
    kv_segment_ids: `[B, S]` int, 0 = padding (never attended to).
    causal: also mask keys after the query (self-attention, T == S positions).
    scale: logit scale (default `H ** -0.5`).
    dropout_rate: attention-probability dropout; 0 = none.
    seed: int32 `[2]` (`seed_from_key(key)`); required when dropout_rate > 0.
    generator: 'hardware' or 'counter' (default: 'hardware' on TPU, 'counter' in interpret
      mode, where the hardware generator returns zeros).
    block_sizes: tile sizes (default `BlockSizes.for_lengths(T, S)`).
    interpret: run in Pallas' TPU interpret mode (default: when the backend is not TPU).

  Returns:
    `[B, N, H, T]` in q's dtype.
  """
  if interpret is None:
    interpret = jax.default_backend() != 'tpu'
  generator = generator or default_generator(interpret)
  if generator not in GENERATORS:
    raise ValueError(f'generator must be one of {GENERATORS}, got {generator!r}')
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f'dropout_rate must be in [0, 1), got {dropout_rate}')
  if dropout_rate > 0 and seed is None:
    raise ValueError('flash_attention with dropout needs a seed (seed_from_key(key))')
  blocks = block_sizes or BlockSizes.for_lengths(q.shape[3], k.shape[3])
  if q.shape[3] % blocks.block_q or k.shape[3] % blocks.block_k:
    raise ValueError(f'block sizes {blocks} do not divide the lengths {q.shape[3]}, '
                     f'{k.shape[3]}')
  static = _Static(causal=bool(causal), scale=float(q.shape[2] ** -0.5 if scale is None
                                                      else scale),
                   rate=float(dropout_rate), generator=generator, block_q=blocks.block_q,
                   block_k=blocks.block_k, interpret=bool(interpret))
  if seed is None:
    seed = jnp.zeros((2,), jnp.int32)
  return _attention(seed.astype(jnp.int32), q, k, v, q_segment_ids.astype(jnp.int32),
                    kv_segment_ids.astype(jnp.int32), static)


def _mask_kernel(seed_ref, keep_ref, *, static: _Static, num_heads: int, num_k_blocks: int,
                 kv_len: int):
  b, h, qi, ki = (pl.program_id(i) for i in range(4))
  keep = _dropout_keep(seed_ref, b, h, qi, ki, static, num_heads, num_k_blocks, kv_len)
  keep_ref[...] = keep.astype(jnp.int32).T  # [bk, bq] -> [bq, bk].


def keep_mask(seed: jax.Array, shape: tuple[int, int, int, int], rate: float, *,
              generator: str | None = None, block_sizes: BlockSizes | None = None,
              interpret: bool | None = None) -> jax.Array:
  """The dropout keep mask `[B, N, T, S]` (bool) that `flash_attention` applies for `seed`,
  drawn by the same per-tile code as the kernels."""
  if interpret is None:
    interpret = jax.default_backend() != 'tpu'
  generator = generator or default_generator(interpret)
  batch, heads, q_len, kv_len = shape
  blocks = block_sizes or BlockSizes.for_lengths(q_len, kv_len)
  static = _Static(causal=False, scale=1.0, rate=float(rate), generator=generator,
                   block_q=blocks.block_q, block_k=blocks.block_k, interpret=bool(interpret))
  grid = (batch, heads, q_len // blocks.block_q, kv_len // blocks.block_k)
  keep = pl.pallas_call(
      functools.partial(_mask_kernel, static=static, num_heads=heads,
                        num_k_blocks=kv_len // blocks.block_k, kv_len=kv_len),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=grid, in_specs=[],
          out_specs=pl.BlockSpec((None, None, blocks.block_q, blocks.block_k),
                                 lambda b, h, i, j, *_: (b, h, i, j))),
      out_shape=_out(shape, jnp.int32, seed),
      interpret=_interpret_params(static), name='flash_attention_keep_mask',
  )(seed.astype(jnp.int32))
  return keep.astype(bool)
