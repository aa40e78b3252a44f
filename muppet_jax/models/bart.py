"""Flax NNX BART encoder-decoder, structured like Hugging Face `BartForConditionalGeneration`.

Attribute names mirror the HF parameter names (`shared`, `encoder.layers.{i}.self_attn.q_proj`,
`decoder.layers.{i}.encoder_attn_layer_norm`, `final_logits_bias`, ...) so that `hf.py` maps
them mechanically; HF's tied copies (`encoder.embed_tokens`, `decoder.embed_tokens`,
`lm_head`) are the one `shared` table here. Logical axis names: see `attention.py`.

Numerics follow HF BART (post-LN layers, learned positions offset by 2, `layernorm_embedding`,
`embed_scale = sqrt(d_model)` when `scale_embedding`), so that in float32 the outputs equal the
PyTorch ones. With the packed layout of `docs/ARCHITECTURE.md` section 2, encoder segment k
attends only to itself, decoder segment k attends causally to itself and crosses only to encoder
segment k, and positions come from the per-segment `positions` (+2).

`final_logits_bias` is a non-trainable `Buffer` (HF registers it as a buffer, fairseq has none):
the optimizer (`wrt=nnx.Param`) leaves it alone, an exhaustive state split keeps it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import transformers
from flax import nnx

from muppet_jax.models import attention
from muppet_jax.models import dropout as dropout_lib

Array = jax.Array
Dtype = Any

# BART's learned position tables have two extra leading rows (fairseq's padding offset).
POSITION_OFFSET = 2
# HF BART uses nn.LayerNorm's default epsilon everywhere.
LAYER_NORM_EPS = 1e-5


class Buffer(nnx.Variable):
  """A non-trainable array that is part of the checkpoint (HF `register_buffer`)."""


# ---------------------------------------------------------------------------------------------
# Decoder input preparation
# ---------------------------------------------------------------------------------------------


def shift_tokens_right(input_ids: Array, pad_token_id: int, decoder_start_token_id: int) -> Array:
  """HF `shift_tokens_right`: `[B, L]` -> `[B, L]` starting with the start token, -100 -> pad."""
  shifted = jnp.concatenate(
      [jnp.full_like(input_ids[:, :1], decoder_start_token_id), input_ids[:, :-1]], axis=1)
  return jnp.where(shifted == -100, pad_token_id, shifted)


def shift_tokens_right_per_segment(input_ids: Array, segment_ids: Array, pad_token_id: int,
                                   decoder_start_token_id: int) -> Array:
  """`shift_tokens_right` applied to each packed segment on its own.

  Args:
    input_ids: `[B, L]`.
    segment_ids: `[B, L]`, 0 = padding, segments contiguous.
    pad_token_id: written at padding positions (and where a shifted token is -100).
    decoder_start_token_id: first token of every segment.

  Returns:
    `[B, L]`: at the first token of each segment the start token, elsewhere the previous token
    of the same segment, `pad_token_id` on padding.
  """
  previous = jnp.concatenate([jnp.full_like(input_ids[:, :1], pad_token_id), input_ids[:, :-1]],
                             axis=1)
  previous_segment = jnp.concatenate([jnp.zeros_like(segment_ids[:, :1]), segment_ids[:, :-1]],
                                     axis=1)
  starts = segment_ids != previous_segment
  shifted = jnp.where(starts, decoder_start_token_id, previous)
  shifted = jnp.where(shifted == -100, pad_token_id, shifted)
  return jnp.where(segment_ids > 0, shifted, pad_token_id)


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """Projected keys and values of one attention layer, `[B, S, heads, head_dim]` each."""

  key: Array
  value: Array


class BartAttention(nnx.Module):
  """HF `BartAttention`: q/k/v/out projections with biases."""

  def __init__(self, d_model: int, num_heads: int, dropout: float, *, init_std: float,
               dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
    if d_model % num_heads:
      raise ValueError(f'd_model {d_model} is not a multiple of the number of heads {num_heads}.')
    self.num_heads = num_heads
    kw = dict(init_std=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.k_proj = attention.dense(d_model, d_model, ('embed', 'heads'), **kw)
    self.v_proj = attention.dense(d_model, d_model, ('embed', 'heads'), **kw)
    self.q_proj = attention.dense(d_model, d_model, ('embed', 'heads'), **kw)
    self.out_proj = attention.dense(d_model, d_model, ('heads', 'embed'), **kw)
    self.dropout = dropout_lib.Dropout(dropout, rngs=rngs)
    self.implementation = 'xla'  # `model.attention`; set by `attention.set_implementation`.

  def project_kv(self, source: Array) -> KVCache:
    """`[B, S, H]` -> keys and values `[B, S, heads, head_dim]`."""
    return KVCache(key=attention.split_heads(self.k_proj(source), self.num_heads),
                   value=attention.split_heads(self.v_proj(source), self.num_heads))

  def attend(self, hidden: Array, kv: KVCache, mask: Array | None, *,
             deterministic: bool) -> Array:
    """Queries from `hidden` `[B, T, H]` over `kv`; returns `[B, T, H]` (after out_proj)."""
    q = attention.split_heads(self.q_proj(hidden), self.num_heads)
    ctx = attention.dot_product_attention(q, kv.key, kv.value, mask, dropout=self.dropout,
                                          deterministic=deterministic,
                                          implementation=self.implementation)
    return self.out_proj(attention.merge_heads(ctx))

  def __call__(self, hidden: Array, source: Array, mask: Array | None, *,
               deterministic: bool) -> Array:
    """Attention of `hidden` `[B, T, H]` over `source` `[B, S, H]` -> `[B, T, H]`."""
    return self.attend(hidden, self.project_kv(source), mask, deterministic=deterministic)


def _ffn(layer: nnx.Module, hidden: Array, deterministic: bool) -> Array:
  """BART's feed-forward block with its own dropouts, before the residual."""
  x = layer.activation_fn(layer.fc1(hidden))
  x = layer.activation_dropout(x, deterministic=deterministic)
  x = layer.fc2(x)
  return layer.dropout(x, deterministic=deterministic)


class BartEncoderLayer(nnx.Module):
  """Post-LN encoder layer: self-attention, feed-forward. `[B, L, H]` -> `[B, L, H]`."""

  def __init__(self, config: transformers.BartConfig, *, dtype: Dtype, param_dtype: Dtype,
               rngs: nnx.Rngs):
    d, std = config.d_model, config.init_std
    dense_kw = dict(init_std=std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    ln_kw = dict(epsilon=LAYER_NORM_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.self_attn = BartAttention(d, config.encoder_attention_heads, config.attention_dropout,
                                   **dense_kw)
    self.self_attn_layer_norm = attention.layer_norm(d, **ln_kw)
    self.fc1 = attention.dense(d, config.encoder_ffn_dim, ('embed', 'mlp'), **dense_kw)
    self.fc2 = attention.dense(config.encoder_ffn_dim, d, ('mlp', 'embed'), **dense_kw)
    self.final_layer_norm = attention.layer_norm(d, **ln_kw)
    self.activation_fn = attention.activation(config.activation_function)
    self.dropout = dropout_lib.Dropout(config.dropout, rngs=rngs)
    self.activation_dropout = dropout_lib.Dropout(config.activation_dropout, rngs=rngs)

  def __call__(self, hidden: Array, mask: Array | None, *, deterministic: bool) -> Array:
    x = self.self_attn(hidden, hidden, mask, deterministic=deterministic)
    hidden = self.self_attn_layer_norm(hidden + self.dropout(x, deterministic=deterministic))
    return self.final_layer_norm(hidden + _ffn(self, hidden, deterministic))


class BartDecoderLayer(nnx.Module):
  """Post-LN decoder layer: causal self-attention, cross attention, feed-forward."""

  def __init__(self, config: transformers.BartConfig, *, dtype: Dtype, param_dtype: Dtype,
               rngs: nnx.Rngs):
    d, std = config.d_model, config.init_std
    dense_kw = dict(init_std=std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    ln_kw = dict(epsilon=LAYER_NORM_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    heads = config.decoder_attention_heads
    self.self_attn = BartAttention(d, heads, config.attention_dropout, **dense_kw)
    self.self_attn_layer_norm = attention.layer_norm(d, **ln_kw)
    self.encoder_attn = BartAttention(d, heads, config.attention_dropout, **dense_kw)
    self.encoder_attn_layer_norm = attention.layer_norm(d, **ln_kw)
    self.fc1 = attention.dense(d, config.decoder_ffn_dim, ('embed', 'mlp'), **dense_kw)
    self.fc2 = attention.dense(config.decoder_ffn_dim, d, ('mlp', 'embed'), **dense_kw)
    self.final_layer_norm = attention.layer_norm(d, **ln_kw)
    self.activation_fn = attention.activation(config.activation_function)
    self.dropout = dropout_lib.Dropout(config.dropout, rngs=rngs)
    self.activation_dropout = dropout_lib.Dropout(config.activation_dropout, rngs=rngs)

  def forward(self, hidden: Array, self_kv: KVCache, self_mask: Array | None, cross_kv: KVCache,
              cross_mask: Array | None, *, deterministic: bool) -> Array:
    """The layer given precomputed self-attention keys/values (a decode cache) and cross ones.

    Args:
      hidden: `[B, T, H]` layer input.
      self_kv: keys/values `[B, S_dec, heads, head_dim]` the queries may see (for full-sequence
        decoding `self_attn.project_kv(hidden)`).
      self_mask: `[B|1, 1, T, S_dec]` bool.
      cross_kv: `encoder_attn.project_kv(encoder_hidden)`, `[B, S_enc, heads, head_dim]`.
      cross_mask: `[B|1, 1, T, S_enc]` bool.
      deterministic: dropout off when True.

    Returns:
      `[B, T, H]`.
    """
    x = self.self_attn.attend(hidden, self_kv, self_mask, deterministic=deterministic)
    hidden = self.self_attn_layer_norm(hidden + self.dropout(x, deterministic=deterministic))
    x = self.encoder_attn.attend(hidden, cross_kv, cross_mask, deterministic=deterministic)
    hidden = self.encoder_attn_layer_norm(hidden + self.dropout(x, deterministic=deterministic))
    return self.final_layer_norm(hidden + _ffn(self, hidden, deterministic))

  def __call__(self, hidden: Array, self_mask: Array | None, encoder_hidden: Array,
               cross_mask: Array | None, *, deterministic: bool) -> Array:
    """`[B, T, H]` decoder states, `[B, S, H]` encoder states -> `[B, T, H]`."""
    return self.forward(hidden, self.self_attn.project_kv(hidden), self_mask,
                        self.encoder_attn.project_kv(encoder_hidden), cross_mask,
                        deterministic=deterministic)


# ---------------------------------------------------------------------------------------------
# Stacks
# ---------------------------------------------------------------------------------------------


class _Stack(nnx.Module):
  """Shared embedding-side pieces of BART's encoder and decoder."""

  def _init_embedding_side(self, config: transformers.BartConfig, *, dtype: Dtype,
                           param_dtype: Dtype, rngs: nnx.Rngs) -> None:
    self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
    self.embed_positions = attention.embed(
        config.max_position_embeddings + POSITION_OFFSET, config.d_model, ('positions', 'embed'),
        init_std=config.init_std, param_dtype=param_dtype, rngs=rngs)
    self.layernorm_embedding = attention.layer_norm(
        config.d_model, epsilon=LAYER_NORM_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dropout = dropout_lib.Dropout(config.dropout, rngs=rngs)

  def embed(self, token_embeddings: Array, positions: Array, *, deterministic: bool) -> Array:
    """Raw token embeddings `[B, L, H]` + 0-based positions `[B, L]` -> layer input `[B, L, H]`."""
    # Sum in float32 (LayerNorm follows; R3F noise is ~1e-5), output in the compute dtype.
    x = token_embeddings.astype(jnp.float32) * self.embed_scale
    x = x + self.embed_positions(positions + POSITION_OFFSET).astype(jnp.float32)
    x = self.layernorm_embedding(x)
    return self.dropout(x, deterministic=deterministic)


class BartEncoder(_Stack):
  """HF `BartEncoder` without its (tied) `embed_tokens`: takes raw token embeddings."""

  def __init__(self, config: transformers.BartConfig, *, dtype: Dtype, param_dtype: Dtype,
               remat: str, rngs: nnx.Rngs, scan_layers: bool = False):
    self._init_embedding_side(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.remat = attention.check_remat(remat)
    self.scan_layers = bool(scan_layers)
    self.layers = attention.make_layers(
        lambda r: BartEncoderLayer(config, dtype=dtype, param_dtype=param_dtype, rngs=r),
        config.encoder_layers, scan=self.scan_layers, rngs=rngs)

  def __call__(self, token_embeddings: Array, positions: Array, mask: Array | None, *,
               deterministic: bool) -> Array:
    hidden = self.embed(token_embeddings, positions, deterministic=deterministic)
    return attention.run_layers(self.layers, self.scan_layers, self.remat, hidden, mask,
                                deterministic=deterministic)


class BartDecoder(_Stack):
  """HF `BartDecoder` without its (tied) `embed_tokens`: takes raw token embeddings."""

  def __init__(self, config: transformers.BartConfig, *, dtype: Dtype, param_dtype: Dtype,
               remat: str, rngs: nnx.Rngs, scan_layers: bool = False):
    self._init_embedding_side(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.remat = attention.check_remat(remat)
    self.scan_layers = bool(scan_layers)
    self.layers = attention.make_layers(
        lambda r: BartDecoderLayer(config, dtype=dtype, param_dtype=param_dtype, rngs=r),
        config.decoder_layers, scan=self.scan_layers, rngs=rngs)

  def __call__(self, token_embeddings: Array, positions: Array, self_mask: Array | None,
               encoder_hidden: Array, cross_mask: Array | None, *, deterministic: bool) -> Array:
    hidden = self.embed(token_embeddings, positions, deterministic=deterministic)
    return attention.run_layers(self.layers, self.scan_layers, self.remat, hidden, self_mask,
                                encoder_hidden, cross_mask, deterministic=deterministic)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeCache:
  """State of incremental decoding (`BartModel.init_cache` / `decode_step`).

  Attributes:
    self_attn: per decoder layer, keys/values of the tokens decoded so far,
      `[B, max_length, heads, head_dim]` (rows >= `index` unused).
    cross_attn: per decoder layer, projected encoder states `[B, S, heads, head_dim]`.
    encoder_mask: `[B, S]` bool, real encoder tokens.
    index: `[]` int32, number of decoder tokens already in the cache.
  """

  self_attn: list[KVCache]
  cross_attn: list[KVCache]
  encoder_mask: Array
  index: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeStep:
  """Result of `BartModel.decode_step`: hidden states of the new tokens and the next cache."""

  hidden: Array  # [B, T, H]
  cache: DecodeCache


def check_config(config: transformers.BartConfig) -> None:
  """Rejects BartConfig features this model does not implement."""
  for flag in ('normalize_before', 'add_final_layer_norm', 'normalize_embedding_before'):
    if getattr(config, flag, False):
      raise NotImplementedError(
          f'{flag}=True (mBART-style pre-LN) is not supported: HF BartModel is post-LN.')
  if not getattr(config, 'tie_word_embeddings', True):
    raise NotImplementedError('Untied BART LM heads (tie_word_embeddings=False) are not supported.')


class BartModel(nnx.Module):
  """BART encoder-decoder with the tied LM head of HF `BartForConditionalGeneration`.

  Attributes mirror HF (`model.` prefix dropped): `shared`, `encoder`, `decoder`, plus
  `final_logits_bias`.
  """

  def __init__(
      self,
      hf_config: transformers.BartConfig,
      *,
      dtype: Dtype = jnp.float32,
      param_dtype: Dtype = jnp.float32,
      remat: str = 'none',
      scan_layers: bool = False,
      attention_implementation: str = 'xla',
      vocab_multiple: int = 0,
      rngs: nnx.Rngs,
  ):
    """Builds a randomly initialised model (HF init: N(0, init_std), zero biases).

    Args:
      hf_config: the `transformers.BartConfig` (shape, dropout, attention_dropout,
        activation_dropout, activation_function, scale_embedding, special token ids).
      dtype: compute dtype. LayerNorm statistics, softmax and LM logits are float32.
      param_dtype: parameter dtype.
      remat: per-layer rematerialisation, 'none' | 'full' | 'dots_saveable'.
      scan_layers: stack each stack's layer parameters on a leading axis and run them with a
        scan (one compiled layer body per stack whatever the depth); same numerics, HF names.
      attention_implementation: `model.attention` ('auto', 'xla', 'pallas', 'cudnn'; see
        `attention.dot_product_attention`). Incremental decoding always uses 'xla'.
      vocab_multiple: the shared table's rows are `hf_config.vocab_size` rounded up to a
        multiple of this (`model.vocab_multiple`; 0 = no padding), so that they split evenly
        over devices. The extra rows are zero, never looked up, outside the LM head's logits
        (`lm_logits` has `vocab_size` of them); `hf.save` drops them.
      rngs: `nnx.Rngs`; `params` (or `default`) initialises, `dropout` (or `default`) seeds the
        dropout streams stored on the module.
    """
    check_config(hf_config)
    self.pad_token_id = hf_config.pad_token_id
    self.decoder_start_token_id = hf_config.decoder_start_token_id
    self.dtype = dtype
    self.vocab_size = hf_config.vocab_size  # Real rows of `shared` (the rest is padding).
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.shared = attention.embed(hf_config.vocab_size, hf_config.d_model, ('vocab', 'embed'),
                                  init_std=hf_config.init_std, param_dtype=param_dtype,
                                  padding_idx=hf_config.pad_token_id,
                                  rows_multiple=vocab_multiple, rngs=rngs)
    self.encoder = BartEncoder(hf_config, remat=remat, scan_layers=scan_layers, **kw)
    self.decoder = BartDecoder(hf_config, remat=remat, scan_layers=scan_layers, **kw)
    self.final_logits_bias = Buffer(jnp.zeros((hf_config.vocab_size,), param_dtype),
                                    out_sharding=('vocab',), eager_sharding=False)
    attention.set_implementation(self, attention_implementation)

  def embed_tokens(self, input_ids: Array) -> Array:
    """Raw shared-embedding lookup `[B, L]` -> `[B, L, H]`, before `embed_scale` (R3F hook)."""
    return self.shared(input_ids)

  def encode(
      self,
      input_ids: Array | None,
      attention_mask: Array | None = None,
      *,
      segment_ids: Array | None = None,
      positions: Array | None = None,
      input_embeddings: Array | None = None,
      deterministic: bool = True,
  ) -> Array:
    """Encoder last hidden state `[B, L, H]`.

    Args:
      input_ids: `[B, L]` (may be None when `input_embeddings` is given).
      attention_mask: `[B, L]`, 1 = real token.
      segment_ids: `[B, L]` packed segments, 0 = padding.
      positions: `[B, L]` 0-based positions within each segment (default `0..L-1`, as HF).
      input_embeddings: `[B, L, H]`, replaces `embed_tokens(input_ids)` before `embed_scale`
        and positions (R3F).
      deterministic: dropout off when True.
    """
    if input_embeddings is None:
      if input_ids is None:
        raise ValueError('Give input_ids or input_embeddings.')
      input_embeddings = self.embed_tokens(input_ids)
    batch, length = input_embeddings.shape[:2]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    mask = attention.make_attention_mask(
        query_length=length, key_length=length, key_mask=attention_mask,
        query_segment_ids=segment_ids, key_segment_ids=segment_ids)
    return self.encoder(input_embeddings, positions, mask, deterministic=deterministic)

  def decode(
      self,
      decoder_input_ids: Array,
      encoder_hidden: Array,
      attention_mask: Array | None = None,
      decoder_attention_mask: Array | None = None,
      *,
      segment_ids: Array | None = None,
      decoder_segment_ids: Array | None = None,
      decoder_positions: Array | None = None,
      deterministic: bool = True,
  ) -> Array:
    """Decoder last hidden state `[B, Ld, H]` over the whole target at once (teacher forcing).

    Args:
      decoder_input_ids: `[B, Ld]`.
      encoder_hidden: `[B, L, H]` from `encode`.
      attention_mask: `[B, L]` encoder padding mask (cross-attention keys).
      decoder_attention_mask: `[B, Ld]` decoder padding mask (self-attention keys); causal always.
      segment_ids: `[B, L]` encoder segments; with `decoder_segment_ids`, decoder segment k
        attends only to encoder segment k.
      decoder_segment_ids: `[B, Ld]` decoder segments, 0 = padding.
      decoder_positions: `[B, Ld]` 0-based positions within each segment (default `0..Ld-1`).
      deterministic: dropout off when True.
    """
    batch, length = decoder_input_ids.shape
    if decoder_positions is None:
      decoder_positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    self_mask = attention.make_attention_mask(
        query_length=length, key_length=length, key_mask=decoder_attention_mask,
        query_segment_ids=decoder_segment_ids, key_segment_ids=decoder_segment_ids, causal=True)
    cross_segments = segment_ids is not None and decoder_segment_ids is not None
    cross_mask = attention.make_attention_mask(
        query_length=length, key_length=encoder_hidden.shape[1], key_mask=attention_mask,
        query_segment_ids=decoder_segment_ids if cross_segments else None,
        key_segment_ids=segment_ids if cross_segments else None)
    return self.decoder(self.embed_tokens(decoder_input_ids), decoder_positions, self_mask,
                        encoder_hidden, cross_mask, deterministic=deterministic)

  def __call__(
      self,
      input_ids: Array | None,
      attention_mask: Array | None = None,
      decoder_input_ids: Array | None = None,
      decoder_attention_mask: Array | None = None,
      *,
      segment_ids: Array | None = None,
      positions: Array | None = None,
      decoder_segment_ids: Array | None = None,
      decoder_positions: Array | None = None,
      input_embeddings: Array | None = None,
      deterministic: bool = True,
  ) -> Array:
    """Decoder last hidden state `[B, Ld, H]` (HF `BartModel(...).last_hidden_state`).

    Without `decoder_input_ids` they are derived from `input_ids` as HF does
    (`shift_tokens_right`), or per segment when `segment_ids` is given, in which case the
    decoder also takes the encoder's segments and positions unless given. `input_embeddings`
    replaces the encoder's token lookup only (R3F perturbs the encoder input, as fairseq).
    See `encode` and `decode` for the arguments.
    """
    if decoder_input_ids is None:
      if input_ids is None:
        raise ValueError('Without decoder_input_ids, input_ids are needed to derive them.')
      if segment_ids is not None:
        decoder_input_ids = shift_tokens_right_per_segment(
            input_ids, segment_ids, self.pad_token_id, self.decoder_start_token_id)
        decoder_segment_ids = segment_ids if decoder_segment_ids is None else decoder_segment_ids
        decoder_positions = positions if decoder_positions is None else decoder_positions
      else:
        decoder_input_ids = shift_tokens_right(input_ids, self.pad_token_id,
                                               self.decoder_start_token_id)
    encoder_hidden = self.encode(input_ids, attention_mask, segment_ids=segment_ids,
                                 positions=positions, input_embeddings=input_embeddings,
                                 deterministic=deterministic)
    return self.decode(decoder_input_ids, encoder_hidden, attention_mask, decoder_attention_mask,
                       segment_ids=segment_ids, decoder_segment_ids=decoder_segment_ids,
                       decoder_positions=decoder_positions, deterministic=deterministic)

  def lm_logits(self, decoder_hidden: Array) -> Array:
    """Tied LM head: `[B, Ld, H]` -> `[B, Ld, V]` float32, V = `vocab_size` (a padded
    table's extra rows get no logits).

    `hidden @ shared.T + final_logits_bias`, the matmul in the compute dtype with float32
    accumulation (HF `lm_head` + `final_logits_bias`).
    """
    table = self.shared.embedding[...]
    if table.shape[0] > self.vocab_size:
      table = table[:self.vocab_size]
    table = table.astype(self.dtype)
    logits = jnp.einsum('bld,vd->blv', decoder_hidden.astype(self.dtype), table,
                        preferred_element_type=jnp.float32)
    return logits + self.final_logits_bias[...].astype(jnp.float32)

  # --- Incremental decoding ------------------------------------------------------------------

  def decoder_layers(self) -> list[BartDecoderLayer]:
    """The decoder layers as a list (slices of the stack when `scan_layers`; read-only)."""
    return attention.layer_list(self.decoder.layers, self.decoder.scan_layers)

  def init_cache(self, encoder_hidden: Array, attention_mask: Array | None = None, *,
                 max_length: int) -> DecodeCache:
    """An empty decode cache for up to `max_length` decoder tokens.

    Args:
      encoder_hidden: `[B, S, H]` from `encode`.
      attention_mask: `[B, S]` encoder padding mask (None: all real).
      max_length: most decoder tokens that `decode_step` will be fed in total.
    """
    batch, source_length = encoder_hidden.shape[:2]
    self_kv, cross_kv = [], []
    for layer in self.decoder_layers():
      cross = layer.encoder_attn.project_kv(encoder_hidden)
      cross_kv.append(cross)
      shape = (batch, max_length) + cross.key.shape[2:]
      self_kv.append(KVCache(key=jnp.zeros(shape, cross.key.dtype),
                             value=jnp.zeros(shape, cross.value.dtype)))
    if attention_mask is None:
      attention_mask = jnp.ones((batch, source_length), bool)
    return DecodeCache(self_attn=self_kv, cross_attn=cross_kv,
                       encoder_mask=attention_mask.astype(bool), index=jnp.zeros((), jnp.int32))

  def decode_step(self, decoder_input_ids: Array, cache: DecodeCache, *,
                  deterministic: bool = True) -> DecodeStep:
    """Feeds `T` new decoder tokens `[B, T]` (usually T = 1) at positions `cache.index...`.

    Equal to the corresponding rows of `decode` on the whole prefix (unpacked rows, no decoder
    padding). Returns their hidden states `[B, T, H]` and the updated cache.
    """
    batch, length = decoder_input_ids.shape
    max_length = cache.self_attn[0].key.shape[1]
    query_positions = cache.index + jnp.arange(length, dtype=jnp.int32)
    self_mask = (jnp.arange(max_length)[None, :] <= query_positions[:, None])[None, None]
    cross_mask = cache.encoder_mask[:, None, None, :]
    hidden = self.decoder.embed(self.embed_tokens(decoder_input_ids),
                                jnp.broadcast_to(query_positions, (batch, length)),
                                deterministic=deterministic)
    new_self = []
    for layer, kv, cross in zip(self.decoder_layers(), cache.self_attn, cache.cross_attn):
      fresh = layer.self_attn.project_kv(hidden)
      start = (0, cache.index, 0, 0)
      kv = KVCache(
          key=jax.lax.dynamic_update_slice(kv.key, fresh.key.astype(kv.key.dtype), start),
          value=jax.lax.dynamic_update_slice(kv.value, fresh.value.astype(kv.value.dtype), start))
      new_self.append(kv)
      hidden = layer.forward(hidden, kv, self_mask, cross, cross_mask, deterministic=deterministic)
    cache = dataclasses.replace(cache, self_attn=new_self, index=cache.index + length)
    return DecodeStep(hidden=hidden, cache=cache)
