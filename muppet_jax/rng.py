"""Which random-number generator the train step draws dropout masks and R3F noise from.

`train.rng_impl`:
- 'threefry': JAX's default, a counter-based generator computed in software (XLA ops). On a TPU
  the dropout bits of every layer cost HBM traffic and vector-unit time.
- 'rbg' / 'unsafe_rbg': XLA's RngBitGenerator, the accelerator's hardware generator (what T5X,
  MaxText and Praxis train with). 'unsafe_rbg' also splits and folds keys with it (cheaper,
  without threefry's guarantees for derived keys).
- 'auto' (default): 'rbg' when the step is built for a TPU or a GPU, 'threefry' on CPU.

Every key of the step derives from the state's base key by `fold_in(step)`, `fold_in(slot)`
and splits, inside the per-device program (shard_map), so the masks depend on the key and the
slot only: not on the device layout (D x A invariance) and not on where a run resumes. Random
bits are drawn for device-local arrays, never for a sharded one, so XLA's flag for
partitioned generation (`xla_tpu_spmd_rng_bit_generator_unsafe`) is not needed. The base key's
data has the implementation's shape (threefry 2 words, rbg 4): a checkpoint restores only with
the generator it was written with.
"""

from __future__ import annotations

import jax

IMPLS = ('auto', 'threefry', 'rbg', 'unsafe_rbg')


def resolve(name: str, platform: str) -> str:
  """'auto' -> the generator for `platform` ('tpu', 'gpu', 'cuda', 'rocm', 'cpu')."""
  if name not in IMPLS:
    raise ValueError(f'train.rng_impl must be one of {IMPLS}, got {name!r}')
  if name != 'auto':
    return name
  return 'threefry' if platform == 'cpu' else 'rbg'


def jax_impl(name: str) -> str:
  """The name `jax.random` uses ('threefry' is 'threefry2x32')."""
  return 'threefry2x32' if name == 'threefry' else name


def base_key_data(seed: int, name: str) -> jax.Array:
  """The state's base key (raw uint32 data) for a resolved generator `name`."""
  return jax.random.key_data(jax.random.key(seed, impl=jax_impl(name)))


def wrap(data: jax.Array, name: str) -> jax.Array:
  """A typed key from the state's key data."""
  return jax.random.wrap_key_data(data, impl=jax_impl(name))
