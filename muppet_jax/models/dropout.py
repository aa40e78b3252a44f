"""Dropout whose keep mask costs half the random bits of `nnx.Dropout`.

Why: with the paper's dropout 0.1 on hidden states and attention probabilities, a RoBERTa-base
training step draws ~37M mask values per 8 x 128 tokens. `nnx.Dropout` draws one 32-bit word
per value (`jax.random.bernoulli`), and on CPU that random-number generation alone was ~28% of
the forward pass (bench/README.md). Each 32-bit word here decides two positions, one per 16-bit
half, which halves the generator's work with no loss in quality for the rates used in practice:
the drop rate is quantized to a multiple of 2^-16 (0.1 -> 6554 / 65536 = 0.1000061), and the
kept values are scaled by the inverse of the *quantized* keep probability, so the layer stays
unbiased (E[output] = input).

The generator draws whole words along the last axis, in several independent pieces along the
first axis (separate keys): XLA:CPU runs independent random-number ops on different cores,
while one large op runs on one (measured in bench/README.md). With the hardware generator
(`train.rng_impl` 'rbg', the default on TPU and GPU) the generator is cheap and the traffic is
what counts: it draws one 16-bit word per position directly, the same resolution. The masks
depend only on the key and the shape, never on the device layout.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

# Resolution of the drop rate: each mask position reads one 16-bit half of a random word.
_LEVELS = 1 << 16
# Independent generator pieces along the first axis (see the module docstring).
_PIECES = 8
# Key implementations that are a hardware generator (XLA's RngBitGenerator): rng.py.
_HARDWARE_IMPLS = ('rbg', 'unsafe_rbg')


def quantized_rate(rate: float) -> float:
  """The drop probability actually applied for `rate` (a multiple of 2^-16)."""
  return round(rate * _LEVELS) / _LEVELS


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
  """Boolean keep mask of `shape`: True with probability `1 - quantized_rate(rate)`.

  Args:
    key: a JAX PRNG key (typed or raw uint32 data).
    rate: drop probability in [0, 1).
    shape: the mask's shape (rank >= 1).

  Returns:
    `bool[shape]`.
  """
  if not shape:
    shape = (1,)
    scalar = True
  else:
    scalar = False
  typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
  if typed and str(jax.random.key_impl(key)) in _HARDWARE_IMPLS:
    # The accelerator's generator (train.rng_impl rbg / unsafe_rbg): 16-bit words straight
    # from it, one per position, which XLA reads into the consumer's fusion; splitting 32-bit
    # words into halves would write and read the words, the halves and the mask in HBM.
    bits = jax.random.bits(key, shape, jnp.uint16)
    keep = bits >= jnp.uint16(round(rate * _LEVELS))
    return keep[0] if scalar else keep
  last = shape[-1]
  words_shape = tuple(shape[:-1]) + ((last + 1) // 2,)
  lead = words_shape[0]
  pieces = math.gcd(lead, _PIECES) if len(shape) > 1 else 1
  keys = jax.random.split(key, pieces)
  piece_shape = (lead // pieces,) + words_shape[1:]
  words = jnp.concatenate(
      [jax.random.bits(keys[i], piece_shape, jnp.uint32) for i in range(pieces)], axis=0)
  halves = jnp.concatenate([words & 0xFFFF, words >> 16], axis=-1)[..., :last]
  keep = halves >= jnp.uint32(round(rate * _LEVELS))
  return keep[0] if scalar else keep


def apply(inputs: jax.Array, key: jax.Array, rate: float) -> jax.Array:
  """`inputs` with each value dropped with probability `quantized_rate(rate)` (the mask from
  `key`), the rest scaled by the inverse of the keep probability."""
  if rate == 0.0:
    return inputs
  if rate == 1.0:  # Avoid 0/0 in the scale (and NaN gradients).
    return jnp.zeros_like(inputs)
  keep = keep_mask(key, rate, inputs.shape)
  scale = 1.0 / (1.0 - quantized_rate(rate))
  return jnp.where(keep, inputs * jnp.asarray(scale, inputs.dtype), jnp.zeros_like(inputs))


class Dropout(nnx.Dropout):
  """`nnx.Dropout` (same constructor, RNG streams and `deterministic` handling) with the
  half-bits mask of `keep_mask`. Rates are quantized to multiples of 2^-16."""

  def next_key(self, rngs=None) -> jax.Array:
    """The next key of this layer's RNG stream: what `__call__` draws its mask from (the
    fused attention kernel draws its own mask from it instead)."""
    rngs = self.rngs if rngs is None else rngs
    if rngs is None:
      raise ValueError('Dropout is active but has no `rngs` (constructor or call).')
    if isinstance(rngs, nnx.Rngs):
      return rngs[self.rng_collection]()
    if isinstance(rngs, nnx.RngStream):
      return rngs()
    return rngs

  def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None) -> jax.Array:
    deterministic = self.deterministic if deterministic is None else deterministic
    if deterministic is None:
      raise ValueError('Dropout needs `deterministic` (constructor or call).')
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:  # Avoid 0/0 in the scale (and NaN gradients).
      return jnp.zeros_like(inputs)
    key = self.next_key(rngs)
    shared = {d % inputs.ndim for d in self.broadcast_dims}
    mask_shape = tuple(1 if d in shared else n for d, n in enumerate(inputs.shape))
    keep = jnp.broadcast_to(keep_mask(key, self.rate, mask_shape), inputs.shape)
    scale = 1.0 / (1.0 - quantized_rate(self.rate))
    return jnp.where(keep, inputs * jnp.asarray(scale, inputs.dtype), jnp.zeros_like(inputs))
