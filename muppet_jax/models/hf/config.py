"""HF configs of our backbones: made from `config.model`'s shape fields, and built into models."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import transformers
from flax import nnx

from muppet_jax.models import bart
from muppet_jax.models import roberta

Backbone = roberta.RobertaModel | bart.BartModel
HFConfig = transformers.RobertaConfig | transformers.BartConfig
Dtype = Any


def config_from_shape(
    model_type: str,
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    vocab_size: int,
    dropout: float,
    attention_dropout: float,
    pad_token_id: int = 1,
    bos_token_id: int = 0,
    eos_token_id: int = 2,
) -> HFConfig:
  """A `RobertaConfig` or `BartConfig` for random init from `config.model` shape fields.

  Values not given follow the released checkpoints (roberta-base/large: `type_vocab_size=1`,
  `layer_norm_eps=1e-5`, gelu; bart-base/large: gelu, no embedding scale, decoder start = eos).
  For BART, `num_layers` is per stack and `max_position_embeddings` excludes the offset of 2;
  for RoBERTa it includes the padding offset (514 for 512 tokens), as in HF configs.
  """
  if vocab_size <= 0:
    raise ValueError(f'vocab_size must be positive, got {vocab_size} (resolve 0 = the '
                     'tokenizer size before calling).')
  if model_type == 'roberta':
    return transformers.RobertaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size,
        hidden_act='gelu', hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=attention_dropout,
        max_position_embeddings=max_position_embeddings, type_vocab_size=1,
        layer_norm_eps=1e-5, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
        eos_token_id=eos_token_id, architectures=['RobertaModel'])
  if model_type == 'bart':
    return transformers.BartConfig(
        vocab_size=vocab_size, d_model=hidden_size, encoder_layers=num_layers,
        decoder_layers=num_layers, encoder_attention_heads=num_heads,
        decoder_attention_heads=num_heads, encoder_ffn_dim=intermediate_size,
        decoder_ffn_dim=intermediate_size, max_position_embeddings=max_position_embeddings,
        activation_function='gelu', dropout=dropout, attention_dropout=attention_dropout,
        activation_dropout=0.0, scale_embedding=False, pad_token_id=pad_token_id,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        decoder_start_token_id=eos_token_id, forced_eos_token_id=eos_token_id,
        architectures=['BartForConditionalGeneration'])
  raise ValueError(f"model_type must be 'roberta' or 'bart', got {model_type!r}.")


def build(
    hf_config: HFConfig,
    *,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    remat: str = 'none',
    scan_layers: bool = False,
    attention_implementation: str = 'xla',
    vocab_multiple: int = 0,
    rngs: nnx.Rngs | None = None,
) -> Backbone:
  """A randomly initialised backbone for `hf_config` (`rngs` default: `nnx.Rngs(0)`).

  `scan_layers` stacks each layer stack's parameters on a leading axis (run with a scan); the
  HF names and values are the same either way (see `to_hf_state_dict`). `vocab_multiple`
  rounds the token-embedding table's rows up to a multiple of it (zero rows; HF files keep
  `hf_config.vocab_size` rows, see `to_hf_state_dict`).
  """
  rngs = nnx.Rngs(0) if rngs is None else rngs
  kw = dict(dtype=dtype, param_dtype=param_dtype, remat=remat, scan_layers=scan_layers,
            attention_implementation=attention_implementation, vocab_multiple=vocab_multiple,
            rngs=rngs)
  if hf_config.model_type == 'roberta':
    return roberta.RobertaModel(hf_config, **kw)
  if hf_config.model_type == 'bart':
    return bart.BartModel(hf_config, **kw)
  raise ValueError(f'Unsupported model_type {hf_config.model_type!r} (roberta or bart).')


def _model_type(model: Backbone) -> str:
  if isinstance(model, roberta.RobertaModel):
    return 'roberta'
  if isinstance(model, bart.BartModel):
    return 'bart'
  raise TypeError(f'Expected a RobertaModel or BartModel, got {type(model).__name__}.')


def usable_positions(hf_config: HFConfig) -> int:
  """Tokens per sequence the backbone can embed, special tokens included.

  RoBERTa's positions start after the padding index (`max_position_embeddings -
  pad_token_id - 1`, 512 for the released 514); BART's learned positions start at 0 (its
  table has 2 extra rows, not counted in `max_position_embeddings`).
  """
  if hf_config.model_type == 'roberta':
    return hf_config.max_position_embeddings - hf_config.pad_token_id - 1
  return hf_config.max_position_embeddings

