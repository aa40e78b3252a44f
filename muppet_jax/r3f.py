"""R3F's inputs (Aghajanyan et al. 2020; the objective is in objective.py): the noised token
embeddings of the second forward, and the doubled batch of `train.r3f.one_pass`, which runs the
clean and the noised rows through the backbone as one batch (the weights read once, the matmuls
twice as big; the same loss and gradients as two passes)."""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]


class Settings(Protocol):
  """What the noise needs of `objective.ObjectiveSettings`."""

  r3f_eps: float
  r3f_noise: str  # 'uniform' | 'normal'


class _Model(Protocol):
  def embed_tokens(self, input_ids: jax.Array) -> jax.Array: ...


def noise(key: jax.Array, shape: tuple[int, ...], dtype,
              settings: Settings) -> jax.Array:
  """R3F's embedding noise: U(-eps, eps) or N(0, eps) (eps the standard deviation), as
  fairseq's `torch.distributions.Uniform(-eps, eps)` / `Normal(0, eps)`."""
  eps = settings.r3f_eps
  if settings.r3f_noise == 'uniform':
    noise = jax.random.uniform(key, shape, jnp.float32, -eps, eps)
  else:
    noise = eps * jax.random.normal(key, shape, jnp.float32)
  return noise.astype(dtype)


def noised_embeddings(model: _Model, input_ids: jax.Array, key: jax.Array,
                       settings: Settings, stop_gradient: bool) -> jax.Array:
  """R3F's noised raw token embeddings `[R, L, H]` (in the lookup's dtype: the backbones look up
  in the parameter dtype, float32 by default, so that a 1e-5 perturbation survives; in
  bfloat16 it would mostly round away)."""
  embeddings = model.embed_tokens(input_ids)
  if stop_gradient:
    embeddings = jax.lax.stop_gradient(embeddings)
  return embeddings + noise(key, embeddings.shape, embeddings.dtype, settings)


# The per-row fields the backbone reads (`encode_tokens`, `summarize`); a doubled batch
# repeats them for R3F's noised half.
_ROW_FIELDS = ('input_ids', 'segment_ids', 'positions', 'decoder_input_ids', 'decoder_mask')


def doubled(batch: Batch) -> Batch:
  """`batch` with its per-row fields repeated: rows R..2R-1 are rows 0..R-1 again."""
  return {k: (jnp.concatenate([v, v], axis=0) if k in _ROW_FIELDS else v)
          for k, v in batch.items()}


def halves(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  rows = x.shape[0] // 2
  return x[:rows], x[rows:]


def clean_and_noised_embeddings(model: _Model, input_ids: jax.Array, key: jax.Array,
                                 settings: Settings, stop_gradient: bool
                                 ) -> jax.Array:
  """`[2R, L, H]`: the clean token embeddings, then R3F's noised ones (from the same lookup;
  the noised half from its stop_gradient for the classification variant)."""
  clean = model.embed_tokens(input_ids)
  base = jax.lax.stop_gradient(clean) if stop_gradient else clean
  noised = base + noise(key, clean.shape, clean.dtype, settings)
  return jnp.concatenate([clean, noised], axis=0)
