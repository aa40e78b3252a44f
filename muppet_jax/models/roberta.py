"""Flax NNX RoBERTa encoder, structured like Hugging Face `RobertaModel` (post-LN, with pooler).

Attribute names mirror the HF parameter names one-to-one (`embeddings.word_embeddings`,
`encoder.layer.{i}.attention.self.query`, `...attention.output.LayerNorm`, `pooler.dense`, ...),
so that `hf.py` maps parameters mechanically: a path plus `kernel` (transposed) / `embedding` /
`scale` / `bias` <-> the same path plus `weight` / `bias`. Logical axis names: see the
docstring of `attention.py`.

Inputs follow `docs/ARCHITECTURE.md` section 3: without `segment_ids`/`positions` the model
reproduces `transformers` exactly (positions from `input_ids != pad`, HF
`create_position_ids_from_input_ids`); with the packed layout of section 2 each segment attends
only to itself and takes positions `padding_idx + 1 + positions`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import transformers
from flax import nnx

from muppet_jax.models import attention
from muppet_jax.models import dropout as dropout_lib

Array = jax.Array
Dtype = Any


def position_ids(
    input_ids: Array | None,
    padding_idx: int,
    *,
    shape: tuple[int, int],
    positions: Array | None = None,
    segment_ids: Array | None = None,
    attention_mask: Array | None = None,
) -> Array:
  """Rows of RoBERTa's position table, `[batch, length]` int32.

  Args:
    input_ids: `[batch, length]` or None (then positions are sequential, as HF does for
      `inputs_embeds`).
    padding_idx: `pad_token_id`; real positions start at `padding_idx + 1`.
    shape: `(batch, length)`.
    positions: packed per-segment positions (0-based within each segment); when given, real
      tokens get `padding_idx + 1 + positions` and padding gets `padding_idx`. Padding is
      `segment_ids == 0` if given, else `attention_mask == 0` if given, else `input_ids == pad`.
    segment_ids: `[batch, length]`, 0 = padding.
    attention_mask: `[batch, length]`, 0 = padding.

  Returns:
    `[batch, length]` int32 position ids.
  """
  if positions is not None:
    if segment_ids is not None:
      real = segment_ids > 0
    elif attention_mask is not None:
      real = attention_mask.astype(bool)
    elif input_ids is not None:
      real = input_ids != padding_idx
    else:
      real = jnp.ones(shape, bool)
    return jnp.where(real, positions + padding_idx + 1, padding_idx).astype(jnp.int32)
  if input_ids is None:
    return jnp.broadcast_to(jnp.arange(shape[1], dtype=jnp.int32) + padding_idx + 1, shape)
  # HF create_position_ids_from_input_ids: count real tokens, keep pads at padding_idx.
  real = (input_ids != padding_idx).astype(jnp.int32)
  return (jnp.cumsum(real, axis=1) * real + padding_idx).astype(jnp.int32)


class RobertaEmbeddings(nnx.Module):
  """Word + position + token-type(0) embeddings, LayerNorm, dropout."""

  def __init__(self, config: transformers.RobertaConfig, *, dtype: Dtype, param_dtype: Dtype,
               vocab_multiple: int = 0, rngs: nnx.Rngs):
    h, std = config.hidden_size, config.initializer_range
    self.word_embeddings = attention.embed(
        config.vocab_size, h, ('vocab', 'embed'), init_std=std, param_dtype=param_dtype,
        padding_idx=config.pad_token_id, rows_multiple=vocab_multiple, rngs=rngs)
    self.position_embeddings = attention.embed(
        config.max_position_embeddings, h, ('positions', 'embed'), init_std=std,
        param_dtype=param_dtype, padding_idx=config.pad_token_id, rngs=rngs)
    self.token_type_embeddings = attention.embed(
        config.type_vocab_size, h, (None, 'embed'), init_std=std, param_dtype=param_dtype,
        rngs=rngs)
    self.LayerNorm = attention.layer_norm(  # pylint: disable=invalid-name  (HF name)
        h, epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dropout = dropout_lib.Dropout(config.hidden_dropout_prob, rngs=rngs)

  def __call__(self, token_embeddings: Array, position_ids: Array, *,
               deterministic: bool) -> Array:
    """`[B, L, H]` raw token embeddings + `[B, L]` position ids -> `[B, L, H]` (compute dtype)."""
    # Sum in float32: LayerNorm follows, and the R3F noise on token_embeddings is tiny.
    x = token_embeddings.astype(jnp.float32)
    x = x + self.position_embeddings(position_ids).astype(jnp.float32)
    # RoBERTa never uses token types: HF gathers type 0 for every token.
    x = x + self.token_type_embeddings.embedding[0].astype(jnp.float32)
    x = self.LayerNorm(x)
    return self.dropout(x, deterministic=deterministic)


class RobertaSelfAttention(nnx.Module):
  """q/k/v projections and attention; returns the merged context `[B, L, H]`."""

  def __init__(self, config: transformers.RobertaConfig, *, dtype: Dtype, param_dtype: Dtype,
               rngs: nnx.Rngs):
    h, std = config.hidden_size, config.initializer_range
    if h % config.num_attention_heads:
      raise ValueError(f'hidden_size {h} is not a multiple of num_attention_heads '
                       f'{config.num_attention_heads}.')
    self.num_heads = config.num_attention_heads
    kw = dict(init_std=std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.query = attention.dense(h, h, ('embed', 'heads'), **kw)
    self.key = attention.dense(h, h, ('embed', 'heads'), **kw)
    self.value = attention.dense(h, h, ('embed', 'heads'), **kw)
    self.dropout = dropout_lib.Dropout(config.attention_probs_dropout_prob, rngs=rngs)
    self.implementation = 'xla'  # `model.attention`; set by `attention.set_implementation`.

  def __call__(self, hidden: Array, mask: attention.AttentionMask | None, *,
               deterministic: bool) -> Array:
    q = attention.split_heads(self.query(hidden), self.num_heads)
    k = attention.split_heads(self.key(hidden), self.num_heads)
    v = attention.split_heads(self.value(hidden), self.num_heads)
    ctx = attention.dot_product_attention(
        q, k, v, mask, dropout=self.dropout, deterministic=deterministic,
        implementation=self.implementation)
    return attention.merge_heads(ctx)


class RobertaSelfOutput(nnx.Module):
  """Attention output projection, dropout, residual, LayerNorm (post-LN)."""

  def __init__(self, config: transformers.RobertaConfig, *, dtype: Dtype, param_dtype: Dtype,
               rngs: nnx.Rngs):
    h = config.hidden_size
    self.dense = attention.dense(h, h, ('heads', 'embed'), init_std=config.initializer_range,
                                 dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.LayerNorm = attention.layer_norm(  # pylint: disable=invalid-name  (HF name)
        h, epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dropout = dropout_lib.Dropout(config.hidden_dropout_prob, rngs=rngs)

  def __call__(self, context: Array, residual: Array, *, deterministic: bool) -> Array:
    x = self.dropout(self.dense(context), deterministic=deterministic)
    return self.LayerNorm(x + residual)


class RobertaAttention(nnx.Module):
  """HF `RobertaAttention`: `self` (attention proper) + `output` (projection, LN)."""

  def __init__(self, config: transformers.RobertaConfig, *, dtype: Dtype, param_dtype: Dtype,
               rngs: nnx.Rngs):
    # `self.self` mirrors the HF parameter path `attention.self.query`.
    self.self = RobertaSelfAttention(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.output = RobertaSelfOutput(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, hidden: Array, mask: Array | None, *, deterministic: bool) -> Array:
    context = self.self(hidden, mask, deterministic=deterministic)
    return self.output(context, hidden, deterministic=deterministic)


class RobertaIntermediate(nnx.Module):
  """Feed-forward up-projection and activation."""

  def __init__(self, config: transformers.RobertaConfig, *, dtype: Dtype, param_dtype: Dtype,
               rngs: nnx.Rngs):
    self.dense = attention.dense(
        config.hidden_size, config.intermediate_size, ('embed', 'mlp'),
        init_std=config.initializer_range, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act = attention.activation(config.hidden_act)

  def __call__(self, hidden: Array) -> Array:
    return self.act(self.dense(hidden))


class RobertaOutput(nnx.Module):
  """Feed-forward down-projection, dropout, residual, LayerNorm (post-LN)."""

  def __init__(self, config: transformers.RobertaConfig, *, dtype: Dtype, param_dtype: Dtype,
               rngs: nnx.Rngs):
    h = config.hidden_size
    self.dense = attention.dense(config.intermediate_size, h, ('mlp', 'embed'),
                                 init_std=config.initializer_range, dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs)
    self.LayerNorm = attention.layer_norm(  # pylint: disable=invalid-name  (HF name)
        h, epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dropout = dropout_lib.Dropout(config.hidden_dropout_prob, rngs=rngs)

  def __call__(self, hidden: Array, residual: Array, *, deterministic: bool) -> Array:
    x = self.dropout(self.dense(hidden), deterministic=deterministic)
    return self.LayerNorm(x + residual)


class RobertaLayer(nnx.Module):
  """One post-LN transformer layer: `[B, L, H]` -> `[B, L, H]`."""

  def __init__(self, config: transformers.RobertaConfig, *, dtype: Dtype, param_dtype: Dtype,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attention = RobertaAttention(config, **kw)
    self.intermediate = RobertaIntermediate(config, **kw)
    self.output = RobertaOutput(config, **kw)

  def __call__(self, hidden: Array, mask: Array | None, *, deterministic: bool) -> Array:
    hidden = self.attention(hidden, mask, deterministic=deterministic)
    return self.output(self.intermediate(hidden), hidden, deterministic=deterministic)


class RobertaEncoder(nnx.Module):
  """The layer stack, `layer.{i}` as in HF; with `scan_layers` one `RobertaLayer` whose
  parameters are stacked on a leading layer axis (HF's `layer.{i}` is slice i), run by a scan."""

  def __init__(self, config: transformers.RobertaConfig, *, dtype: Dtype, param_dtype: Dtype,
               remat: str, rngs: nnx.Rngs, scan_layers: bool = False):
    self.remat = attention.check_remat(remat)
    self.scan_layers = bool(scan_layers)
    self.layer = attention.make_layers(
        lambda r: RobertaLayer(config, dtype=dtype, param_dtype=param_dtype, rngs=r),
        config.num_hidden_layers, scan=self.scan_layers, rngs=rngs)

  def __call__(self, hidden: Array, mask: Array | None, *, deterministic: bool) -> Array:
    return attention.run_layers(self.layer, self.scan_layers, self.remat, hidden, mask,
                                deterministic=deterministic)


class RobertaPooler(nnx.Module):
  """HF `RobertaPooler`: dense + tanh on the first token."""

  def __init__(self, config: transformers.RobertaConfig, *, dtype: Dtype, param_dtype: Dtype,
               rngs: nnx.Rngs):
    h = config.hidden_size
    # ('embed', 'mlp'): a square matrix must not name the same mesh axis twice.
    self.dense = attention.dense(h, h, ('embed', 'mlp'), init_std=config.initializer_range,
                                 dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, hidden: Array) -> Array:
    return jnp.tanh(self.dense(hidden[:, 0]))


def check_config(config: transformers.RobertaConfig) -> None:
  """Rejects RobertaConfig features this encoder does not implement."""
  if getattr(config, 'is_decoder', False) or getattr(config, 'add_cross_attention', False):
    raise NotImplementedError('RoBERTa as a decoder (is_decoder / add_cross_attention) is not '
                              'supported.')
  kind = getattr(config, 'position_embedding_type', 'absolute')
  if kind not in (None, 'absolute'):
    raise NotImplementedError(f'position_embedding_type={kind!r} is not supported.')


class RobertaModel(nnx.Module):
  """RoBERTa encoder with pooler, numerically equal to HF `RobertaModel` in float32.

  Attributes mirror HF: `embeddings`, `encoder.layer[i]`, `pooler`.
  """

  def __init__(
      self,
      hf_config: transformers.RobertaConfig,
      *,
      dtype: Dtype = jnp.float32,
      param_dtype: Dtype = jnp.float32,
      remat: str = 'none',
      scan_layers: bool = False,
      attention_implementation: str = 'xla',
      vocab_multiple: int = 0,
      rngs: nnx.Rngs,
  ):
    """Builds a randomly initialised model (HF init: N(0, initializer_range), zero biases).

    Args:
      hf_config: the `transformers.RobertaConfig` (shape, dropout rates, activation, eps).
      dtype: compute dtype (activations, matmuls). LayerNorm statistics and softmax are float32.
      param_dtype: parameter dtype.
      remat: per-layer rematerialisation, 'none' | 'full' | 'dots_saveable'.
      scan_layers: stack the layers' parameters on a leading axis and run them with a scan
        (one compiled layer body whatever the depth); same numerics and HF names.
      attention_implementation: `model.attention` ('auto', 'xla', 'pallas', 'cudnn'; see
        `attention.dot_product_attention`).
      vocab_multiple: the word-embedding table's rows are `hf_config.vocab_size` rounded up to
        a multiple of this (`model.vocab_multiple`; 0 = no padding), so that they split evenly
        over devices. The extra rows are zero and never looked up; `hf.save` drops them.
      rngs: `nnx.Rngs`; `params` (or `default`) initialises, `dropout` (or `default`) seeds the
        dropout streams stored on the module.
    """
    check_config(hf_config)
    self.padding_idx = hf_config.pad_token_id
    self.hidden_size = hf_config.hidden_size
    self.vocab_size = hf_config.vocab_size  # Real rows of the table (the rest is padding).
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.embeddings = RobertaEmbeddings(hf_config, vocab_multiple=vocab_multiple, **kw)
    self.encoder = RobertaEncoder(hf_config, remat=remat, scan_layers=scan_layers, **kw)
    self.pooler = RobertaPooler(hf_config, **kw)
    attention.set_implementation(self, attention_implementation)

  def embed_tokens(self, input_ids: Array) -> Array:
    """Raw token-embedding lookup `[B, L]` -> `[B, L, H]` (parameter dtype); the R3F hook input."""
    return self.embeddings.word_embeddings(input_ids)

  def __call__(
      self,
      input_ids: Array | None,
      attention_mask: Array | None = None,
      *,
      segment_ids: Array | None = None,
      positions: Array | None = None,
      input_embeddings: Array | None = None,
      deterministic: bool = True,
  ) -> Array:
    """Last hidden state.

    Args:
      input_ids: `[B, L]` int token ids (may be None when `input_embeddings` is given; positions
        are then sequential, as HF does for `inputs_embeds`).
      attention_mask: `[B, L]`, 1 = real token (keys with 0 are masked).
      segment_ids: `[B, L]` packed segment numbers, 0 = padding: attention within a segment.
      positions: `[B, L]` 0-based positions within each segment.
      input_embeddings: `[B, L, H]`, replaces `embed_tokens(input_ids)` (before positions and
        LayerNorm), e.g. `embed_tokens(ids) + noise` for R3F.
      deterministic: dropout off when True.

    Returns:
      `[B, L, H]` in the compute dtype.
    """
    if input_embeddings is None:
      if input_ids is None:
        raise ValueError('Give input_ids or input_embeddings.')
      input_embeddings = self.embed_tokens(input_ids)
    batch, length = input_embeddings.shape[:2]
    pos = position_ids(input_ids, self.padding_idx, shape=(batch, length), positions=positions,
                       segment_ids=segment_ids, attention_mask=attention_mask)
    mask = attention.make_attention_mask(
        query_length=length, key_length=length, key_mask=attention_mask,
        query_segment_ids=segment_ids, key_segment_ids=segment_ids)
    hidden = self.embeddings(input_embeddings, pos, deterministic=deterministic)
    return self.encoder(hidden, mask, deterministic=deterministic)

  def pool(self, hidden: Array) -> Array:
    """HF pooler output: `[B, L, H]` -> `[B, H]`, tanh(dense(hidden[:, 0]))."""
    return self.pooler(hidden)
