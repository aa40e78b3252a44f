"""Which parameters get weight decay (`optim.decay_norms_and_biases`), on a real model's tree."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import transformers
from flax import nnx

from muppet_jax import config_lib, optim
from muppet_jax.data.features import Family, TaskTable
from muppet_jax.models import muppet

LR, WD = 0.1, 0.5


def _params(kind: str):
  """A tiny model's `nnx.Param` state, flattened to {dotted path: array}, and the state."""
  config = config_lib.default()
  config.model.type = kind
  if kind == 'roberta':
    hf_config = transformers.RobertaConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=20, type_vocab_size=1, pad_token_id=1)
  else:
    hf_config = transformers.BartConfig(
        vocab_size=30, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
        max_position_embeddings=20, pad_token_id=1)
  table = TaskTable.build(['c', 'mc'], [Family.CLASSIFICATION, Family.MULTIPLE_CHOICE], [2, 0])
  model = muppet.build_model(config, hf_config, table, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  flat = {'.'.join(str(k) for k in path): np.asarray(v[...])
          for path, v in nnx.to_flat_state(state)}
  return flat, state


def _is_bias_or_norm(name: str) -> bool:
  """Biases and LayerNorm parameters, recognised from the names written in this test."""
  last = name.split('.')[-1]
  return last in ('bias', 'final_logits_bias') or 'layer_norm' in name.lower() or (
      'layernorm' in name.lower())


def _one_step_with_zero_gradients(state, decay_all: bool):
  cfg = ml_collections.ConfigDict(dict(
      learning_rate=LR, warmup_steps=0, end_learning_rate=LR, decay_power=1.0, b1=0.9,
      b2=0.999, eps=1e-8, weight_decay=WD, clip_norm=0.0, decay_norms_and_biases=decay_all))
  tx = optim.build(cfg, total_steps=10)
  zeros = jax.tree.map(jnp.zeros_like, state)
  updates, _ = tx.update(zeros, tx.init(state), state)
  return {'.'.join(str(k) for k in path): np.asarray(v[...])
          for path, v in nnx.to_flat_state(updates)}


@pytest.mark.parametrize('kind', ['roberta', 'bart'])
def test_decay_norms_and_biases_covers_or_skips_them(kind):
  flat, state = _params(kind)
  biases_and_norms = [n for n in flat if _is_bias_or_norm(n)]
  weights = [n for n in flat if not _is_bias_or_norm(n)]
  # The tree really has both kinds: LayerNorm scales and biases, kernels and embeddings.
  assert any(n.endswith('scale') for n in biases_and_norms)
  assert any(n.endswith('bias') for n in biases_and_norms)
  assert any(n.endswith('kernel') for n in weights) and any('embedding' in n for n in weights)
  for decay_all in (True, False):
    updates = _one_step_with_zero_gradients(state, decay_all)
    assert set(updates) == set(flat)
    for name, value in flat.items():
      # AdamW with a zero gradient moves a decayed leaf by exactly -lr * wd * value.
      decayed = decay_all or name in weights
      want = -LR * WD * value if decayed else np.zeros_like(value)
      np.testing.assert_allclose(updates[name], want, rtol=1e-6, atol=1e-9, err_msg=name)
    # The comparison has teeth: some skipped leaf is nonzero (LayerNorm scales start at 1).
    assert max(np.abs(flat[n]).max() for n in biases_and_norms) == 1.


def test_default_is_fairseq_decay_everything_and_state_trees_match():
  config = config_lib.default()
  assert config.optim.decay_norms_and_biases is True
  _, state = _params('roberta')
  trees = []
  for decay_all in (True, False):
    cfg = config.optim.copy_and_resolve_references()
    cfg.decay_norms_and_biases = decay_all
    trees.append(jax.tree.structure(optim.build(cfg, 10).init(state)))
  # The same optimizer-state tree either way: a checkpoint restores under both settings.
  assert trees[0] == trees[1]
