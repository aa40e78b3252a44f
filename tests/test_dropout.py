"""The half-bits dropout (`models/dropout.py`): its statistics, checked against the Bernoulli
distribution it stands for, and its nnx.Dropout-compatible behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from muppet_jax.models import dropout as dropout_lib


def test_quantized_rate():
  assert dropout_lib.quantized_rate(0.1) == 6554 / 65536
  assert dropout_lib.quantized_rate(0.5) == 0.5
  assert abs(dropout_lib.quantized_rate(0.3) - 0.3) <= 0.5 / 65536


@pytest.mark.parametrize('rate', [0.1, 0.3])
def test_drop_frequency_matches_the_rate_within_sampling_error(rate):
  n_rows, n_cols = 256, 4096
  keep = np.asarray(dropout_lib.keep_mask(jax.random.key(0), rate, (n_rows, n_cols)))
  p = dropout_lib.quantized_rate(rate)
  sigma = np.sqrt(p * (1 - p) / keep.size)
  assert abs((1 - keep.mean()) - p) < 5 * sigma
  # Both 16-bit halves of every word and every generator piece drop at the rate...
  half = n_cols // 2
  for part in (keep[:, :half], keep[:, half:], keep[:n_rows // 8], keep[-n_rows // 8:]):
    assert abs((1 - part.mean()) - p) < 5 * sigma * np.sqrt(keep.size / part.size)
  # ...independently: the two positions decided by one word, and rows of different pieces,
  # are uncorrelated (|r| ~ 1/sqrt(n) under independence).
  def corr(a, b):
    return np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1]
  limit = 5 / np.sqrt(n_rows * half)
  assert abs(corr(keep[:, :half], keep[:, half:])) < limit
  assert abs(corr(keep[: n_rows // 2], keep[n_rows // 2:])) < 5 / np.sqrt(keep.size / 2)


def test_every_position_is_dropped_at_the_rate_over_many_keys():
  shape = (8, 9)  # Odd last dimension: the last word's high half is discarded.
  keys = jax.random.split(jax.random.key(1), 2000)
  keep = np.asarray(jax.vmap(lambda k: dropout_lib.keep_mask(k, 0.1, shape))(keys))
  assert keep.shape == (2000,) + shape
  p = dropout_lib.quantized_rate(0.1)
  sigma = np.sqrt(p * (1 - p) / 2000)
  assert np.max(np.abs((1 - keep.mean(axis=0)) - p)) < 5 * sigma


def test_layer_is_unbiased_and_its_gradient_is_the_scaled_mask():
  layer = dropout_lib.Dropout(0.1, rngs=nnx.Rngs(dropout=0))
  x = jnp.full((64, 512), 2.0)
  key = jax.random.key(7)
  y = layer(x, deterministic=False, rngs=key)
  keep = dropout_lib.keep_mask(key, 0.1, x.shape)
  scale = 1 / (1 - 6554 / 65536)
  np.testing.assert_allclose(np.asarray(y), np.where(keep, 2.0 * scale, 0.0), rtol=1e-6)
  assert abs(float(y.mean()) / 2.0 - 1.0) < 5 * np.sqrt(0.1 / 0.9 / x.size)
  grad = jax.grad(lambda v: jnp.sum(layer(v, deterministic=False, rngs=key)))(x)
  np.testing.assert_allclose(np.asarray(grad), np.where(keep, scale, 0.0), rtol=1e-6)


def test_same_key_same_mask_other_key_other_mask_and_streams_advance():
  x = jnp.ones((4, 16))
  a = dropout_lib.Dropout(0.5, rngs=nnx.Rngs(dropout=3))
  b = dropout_lib.Dropout(0.5, rngs=nnx.Rngs(dropout=3))
  first = a(x, deterministic=False)
  np.testing.assert_array_equal(np.asarray(first), np.asarray(b(x, deterministic=False)))
  second = a(x, deterministic=False)  # The stream advances: a new mask.
  assert not np.array_equal(np.asarray(first), np.asarray(second))


def test_deterministic_rate_zero_rate_one_and_broadcast_dims():
  x = jax.random.normal(jax.random.key(0), (3, 5, 7))
  layer = dropout_lib.Dropout(0.4, rngs=nnx.Rngs(dropout=0))
  np.testing.assert_array_equal(np.asarray(layer(x, deterministic=True)), np.asarray(x))
  zero = dropout_lib.Dropout(0.0, rngs=nnx.Rngs(dropout=0))
  np.testing.assert_array_equal(np.asarray(zero(x, deterministic=False)), np.asarray(x))
  one = dropout_lib.Dropout(1.0, rngs=nnx.Rngs(dropout=0))
  assert not np.any(np.asarray(one(x, deterministic=False)))
  shared = dropout_lib.Dropout(0.4, broadcast_dims=(-2,), rngs=nnx.Rngs(dropout=0))
  y = np.asarray(shared(x, deterministic=False))
  dropped = y == 0
  assert np.all(dropped == dropped[:, :1, :])  # One mask shared along the broadcast axis.
  with pytest.raises(ValueError, match='rngs'):
    dropout_lib.Dropout(0.4)(x, deterministic=False)


def test_hardware_generator_masks():
  """With an 'rbg' key (the accelerators' generator, train.rng_impl) the mask is one 16-bit
  word per position straight from the generator: the same quantized rate, a keep rate within
  5 standard deviations, the same mask for the same key, another for another key, and not
  the threefry mask of the same seed."""
  shape = (64, 1024)
  key = jax.random.key(5, impl='rbg')
  keep = np.asarray(dropout_lib.keep_mask(key, 0.1, shape))
  p = 1 - dropout_lib.quantized_rate(0.1)
  assert abs(keep.mean() - p) < 5 * np.sqrt(p * (1 - p) / keep.size)
  np.testing.assert_array_equal(keep, np.asarray(dropout_lib.keep_mask(key, 0.1, shape)))
  other = np.asarray(dropout_lib.keep_mask(jax.random.key(6, impl='rbg'), 0.1, shape))
  assert abs((keep == other).mean() - (p * p + (1 - p) ** 2)) < 0.01
  threefry = np.asarray(dropout_lib.keep_mask(jax.random.key(5), 0.1, shape))
  assert not np.array_equal(keep, threefry)
  # The words are the generator's 16-bit draws, compared with the quantized threshold.
  words = np.asarray(jax.random.bits(key, shape, jnp.uint16))
  np.testing.assert_array_equal(keep, words >= round(0.1 * 2 ** 16))
