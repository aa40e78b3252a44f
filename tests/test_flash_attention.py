"""The Pallas flash-attention kernel with in-kernel dropout, in Pallas' TPU interpret mode.

Every check compares the kernel with the plain-JAX reference of the XLA path
(`flash_attention.reference`: float32 logits and softmax, the finite mask value, dropout as
probs * keep / (1 - rate)), on packed rows with several segments and padding. With dropout the
reference applies the kernel's own mask (`keep_mask`, drawn by the same per-tile code), so
outputs and gradients must agree exactly up to float rounding. The cost estimate is checked
against a formula written out by hand from the block loop.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from muppet_jax.models.kernels import flash_attention as fa

B, N, H = 2, 2, 64
BLOCKS = fa.BlockSizes(block_q=128, block_k=128)


def _segments(length: int) -> jax.Array:
  """Row 0: three packed segments and padding; row 1: one segment, padded at the end."""
  seg = np.zeros((B, length), np.int32)
  seg[0, :100], seg[0, 100:180], seg[0, 180:length - 20] = 1, 2, 3
  seg[1, :length - 7] = 1
  return jnp.asarray(seg)


def _qkv(q_len: int, kv_len: int, dtype=jnp.float32):
  """q `[B, N, H, T]`, k and v `[B, N, H, S]` (the kernel's layout, length minor)."""
  ks = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(ks[0], (B, N, H, q_len), dtype)
  k = jax.random.normal(ks[1], (B, N, H, kv_len), dtype)
  v = jax.random.normal(ks[2], (B, N, H, kv_len), dtype)
  d_out = jax.random.normal(ks[3], (B, N, H, q_len), jnp.float32)
  return q, k, v, d_out


def _loss_and_grads(fn, q, k, v, d_out):
  def loss(q, k, v):
    return jnp.sum(fn(q, k, v).astype(jnp.float32) * d_out)
  return fn(q, k, v), jax.grad(loss, (0, 1, 2))(q, k, v)


def _assert_close(actual, expected, atol):
  out_a, grads_a = actual
  out_e, grads_e = expected
  np.testing.assert_allclose(out_a, out_e, atol=atol, rtol=0)
  for name, a, e in zip('qkv', grads_a, grads_e):
    scale = float(jnp.max(jnp.abs(e)))
    np.testing.assert_allclose(a, e, atol=atol * max(1.0, scale), rtol=0, err_msg=f'd{name}')


@pytest.mark.parametrize('causal', [False, True])
def test_no_dropout_equals_reference_on_packed_rows(causal):
  q, k, v, d_out = _qkv(256, 256)
  seg = _segments(256)
  kernel = lambda q, k, v: fa.flash_attention(q, k, v, seg, seg, causal=causal,
                                               block_sizes=BLOCKS, interpret=True)
  reference = lambda q, k, v: fa.reference(q, k, v, seg, seg, causal=causal)
  _assert_close(_loss_and_grads(kernel, q, k, v, d_out),
                _loss_and_grads(reference, q, k, v, d_out), atol=2e-5)


def test_cross_attention_with_other_lengths_and_blocks():
  """T != S (BART's cross attention), two key blocks per query block: the online softmax
  across key blocks."""
  q, k, v, d_out = _qkv(128, 384)
  q_seg, kv_seg = _segments(128), _segments(384)
  kernel = lambda q, k, v: fa.flash_attention(q, k, v, q_seg, kv_seg, block_sizes=BLOCKS,
                                               interpret=True)
  reference = lambda q, k, v: fa.reference(q, k, v, q_seg, kv_seg)
  _assert_close(_loss_and_grads(kernel, q, k, v, d_out),
                _loss_and_grads(reference, q, k, v, d_out), atol=2e-5)


@pytest.mark.parametrize('causal', [False, True])
def test_dropout_equals_reference_with_the_kernels_own_mask(causal):
  q, k, v, d_out = _qkv(256, 256)
  seg = _segments(256)
  seed = fa.seed_from_key(jax.random.key(7))
  keep = fa.keep_mask(seed, (B, N, 256, 256), 0.1, block_sizes=BLOCKS, interpret=True)
  kernel = lambda q, k, v: fa.flash_attention(q, k, v, seg, seg, causal=causal,
                                               dropout_rate=0.1, seed=seed,
                                               block_sizes=BLOCKS, interpret=True)
  reference = lambda q, k, v: fa.reference(q, k, v, seg, seg, causal=causal, keep=keep,
                                           rate=0.1)
  _assert_close(_loss_and_grads(kernel, q, k, v, d_out),
                _loss_and_grads(reference, q, k, v, d_out), atol=2e-5)
  # And the mask matters: without it the outputs differ.
  plain = fa.reference(q, k, v, seg, seg, causal=causal)
  assert float(jnp.max(jnp.abs(kernel(q, k, v) - plain))) > 0.1


def test_bfloat16_inputs():
  q, k, v, d_out = _qkv(256, 256, jnp.bfloat16)
  seg = _segments(256)
  kernel = lambda q, k, v: fa.flash_attention(q, k, v, seg, seg, block_sizes=BLOCKS,
                                               interpret=True)
  reference = lambda q, k, v: fa.reference(q, k, v, seg, seg)
  out_k, out_r = kernel(q, k, v), reference(q, k, v)
  assert out_k.dtype == jnp.bfloat16
  np.testing.assert_allclose(out_k.astype(jnp.float32), out_r.astype(jnp.float32), atol=3e-2)


def test_keep_rate_and_independence():
  shape = (B, N, 256, 256)
  seed = fa.seed_from_key(jax.random.key(1))
  keep = np.asarray(fa.keep_mask(seed, shape, 0.1, block_sizes=BLOCKS, interpret=True))
  # Keep rate within 5 standard deviations of 0.9.
  n = keep.size
  assert abs(keep.mean() - 0.9) < 5 * math.sqrt(0.9 * 0.1 / n)
  # The same key: the same mask; another key (another step): another mask.
  again = np.asarray(fa.keep_mask(seed, shape, 0.1, block_sizes=BLOCKS, interpret=True))
  np.testing.assert_array_equal(keep, again)
  other = np.asarray(fa.keep_mask(fa.seed_from_key(jax.random.key(2)), shape, 0.1,
                                  block_sizes=BLOCKS, interpret=True))

  def agreement(a, b):  # Independent Bernoulli(0.9) masks agree on 0.9^2 + 0.1^2 = 0.82.
    return float((a == b).mean())

  assert abs(agreement(keep, other) - 0.82) < 0.01
  # Rows and heads, query blocks and key blocks all draw their own bits.
  assert abs(agreement(keep[0, 0], keep[0, 1]) - 0.82) < 0.01  # Heads.
  assert abs(agreement(keep[0, 0], keep[1, 0]) - 0.82) < 0.01  # Batch rows.
  tile = lambda qi, ki: keep[0, 0, qi * 128:(qi + 1) * 128, ki * 128:(ki + 1) * 128]
  assert abs(agreement(tile(0, 0), tile(1, 0)) - 0.82) < 0.02  # Query blocks.
  assert abs(agreement(tile(0, 0), tile(0, 1)) - 0.82) < 0.02  # Key blocks.


def test_counter_generator_does_not_depend_on_the_block_sizes():
  seed = fa.seed_from_key(jax.random.key(3))
  shape = (1, 1, 256, 256)
  small = fa.keep_mask(seed, shape, 0.1, generator='counter', block_sizes=BLOCKS,
                       interpret=True)
  large = fa.keep_mask(seed, shape, 0.1, generator='counter',
                       block_sizes=fa.BlockSizes(256, 256), interpret=True)
  np.testing.assert_array_equal(small, large)


def test_quantized_rate_scaling():
  assert fa.quantized_rate(0.1) == pytest.approx(0.1, abs=2 ** -32)
  assert fa.quantized_rate(0.0) == 0.0


def test_cost_estimate_from_the_block_loop_matches_the_formula():
  """Forward kernel, grid (B, N, T/bq, S/bk), key blocks innermost: q is fetched once per query
  block; k and v once per grid step when there are several key blocks, once per (row, head)
  when one block holds all keys; the output once per query block. The segment ids' blocks are
  indexed by (row, query block) and (row, key block): with one block on an axis they stay put
  across the heads (and the other axis) of a row. The length is the minor (lane) dimension:
  nothing is padded."""
  lanes = 128
  for q_len, kv_len, blocks in ((256, 256, BLOCKS), (256, 256, fa.BlockSizes(256, 256)),
                                (128, 384, BLOCKS)):
    static = fa._Static(causal=False, scale=H ** -0.5, rate=0.1, generator='counter',
                        block_q=blocks.block_q, block_k=blocks.block_k, interpret=True)
    q = jax.ShapeDtypeStruct((B, N, H, q_len), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((B, N, H, kv_len), jnp.bfloat16)
    nq, nk = q_len // blocks.block_q, kv_len // blocks.block_k
    grid_steps = B * N * nq * nk
    q_bytes = B * N * q_len * H * 2
    kv_fetches = grid_steps if nk > 1 else B * N
    kv_bytes = 2 * kv_fetches * blocks.block_k * H * 2
    q_rows = (B * N * nq if nq > 1 else B) * 8 * blocks.block_q * 4
    kv_columns = (grid_steps if nk > 1 else B) * blocks.block_k * lanes * 4
    outputs = B * N * q_len * H * 2 + B * N * q_len * 2 * 4  # o, stats (2 rows, float32)
    expected_bytes = q_bytes + kv_bytes + q_rows + kv_columns + outputs
    expected_flops = grid_steps * (4 * blocks.block_q * blocks.block_k * H
                                   + 8 * blocks.block_q * blocks.block_k)
    captured = {}
    original = fa.pl.pallas_call

    def spy(*args, cost_estimate=None, **kwargs):
      captured['cost'] = cost_estimate
      return original(*args, cost_estimate=cost_estimate, **kwargs)

    fa.pl.pallas_call = spy
    try:
      jax.eval_shape(lambda q, k: fa._forward_call(
          jnp.zeros((2,), jnp.int32), q, k, k,
          fa._segments(jnp.ones((B, q_len), jnp.int32), jnp.ones((B, kv_len), jnp.int32)),
          static), q, k)
    finally:
      fa.pl.pallas_call = original
    cost = captured['cost']
    assert cost.flops == expected_flops
    assert cost.bytes_accessed == expected_bytes, (q_len, kv_len, blocks)
    assert cost.transcendentals == grid_steps * (blocks.block_q * blocks.block_k
                                                 + blocks.block_q)


def test_block_loop_cost_counts_changes_of_block_index():
  """A 2 x 3 grid: an operand indexed by the outer axis is fetched twice, one indexed by the
  inner axis six times, a constant one once; an output by the outer axis written twice."""
  cost = fa.block_loop_cost(
      (2, 3),
      [fa.Operand(10, lambda i, j: (i,)), fa.Operand(100, lambda i, j: (j,)),
       fa.Operand(1000, lambda i, j: (0,)), fa.Operand(7, lambda i, j: (i,), output=True)],
      step_flops=5, step_transcendentals=1)
  assert cost.bytes_accessed == 2 * 10 + 6 * 100 + 1000 + 2 * 7
  assert cost.flops == 30 and cost.transcendentals == 6


def test_hardware_generator_lowers_in_interpret_mode():
  """In interpret mode (JAX 0.10) the hardware generator yields zero words, which drop every
  probability: the kernel still agrees with the reference under its own (all-dropped) mask,
  i.e. the wiring of seed, tile and mask is the same as for the counter generator; the real
  generator is compiled for a TPU in tests/test_compile.py (slow, libtpu)."""
  q, k, v, _ = _qkv(128, 128)
  seg = _segments(128)
  seed = fa.seed_from_key(jax.random.key(5))
  keep = fa.keep_mask(seed, (B, N, 128, 128), 0.1, generator='hardware',
                      block_sizes=BLOCKS, interpret=True)
  out = fa.flash_attention(q, k, v, seg, seg, dropout_rate=0.1, seed=seed,
                           generator='hardware', block_sizes=BLOCKS, interpret=True)
  np.testing.assert_allclose(out, fa.reference(q, k, v, seg, seg, keep=keep, rate=0.1),
                             atol=1e-6)


def test_bad_arguments():
  q, k, v, _ = _qkv(128, 128)
  seg = _segments(128)
  with pytest.raises(ValueError, match='needs a seed'):
    fa.flash_attention(q, k, v, seg, seg, dropout_rate=0.1, interpret=True)
  with pytest.raises(ValueError, match='generator'):
    fa.flash_attention(q, k, v, seg, seg, generator='mersenne', interpret=True)
  with pytest.raises(ValueError, match='multiple of 128'):
    fa.BlockSizes.for_lengths(1000, 1000)
