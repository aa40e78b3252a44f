"""`model.attention`: the backbones with the Pallas flash kernel (interpret mode on CPU) against
the XLA path, on packed rows with several segments and padding.

Without dropout both implementations compute the same function: hidden states and gradients
must agree to float rounding, for RoBERTa's self-attention and for BART's three attentions
(encoder self-attention, causal decoder self-attention, cross-attention pairing decoder
segment k with encoder segment k). With dropout the kernel draws its own masks: the run must
be finite and differ from the dropout-free one.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from muppet_jax.models import attention, hf

L = 128


def _packed():
  seg = np.zeros((2, L), np.int32)
  seg[0, :50], seg[0, 50:110] = 1, 2
  seg[1, :L - 9] = 1
  pos = np.zeros((2, L), np.int32)
  for r in range(2):
    for s in (1, 2):
      idx = np.nonzero(seg[r] == s)[0]
      pos[r, idx] = np.arange(len(idx))
  ids = np.array(jax.random.randint(jax.random.key(0), (2, L), 3, 90))
  ids[seg == 0] = 1
  return jnp.asarray(ids), jnp.asarray(seg), jnp.asarray(pos)


def _roberta(implementation, attention_dropout=0.0):
  config = transformers.RobertaConfig(
      vocab_size=100, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=256, max_position_embeddings=L + 4, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=attention_dropout)
  return hf.build(config, attention_implementation=implementation, scan_layers=True,
                  rngs=nnx.Rngs(0, dropout=1))


def _bart(implementation):
  config = transformers.BartConfig(
      vocab_size=100, d_model=128, encoder_layers=1, decoder_layers=1,
      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=256,
      decoder_ffn_dim=256, max_position_embeddings=L + 4, dropout=0.0, attention_dropout=0.0,
      pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
  return hf.build(config, attention_implementation=implementation, rngs=nnx.Rngs(0))


def _values_and_grads(model, forward):
  """Outputs, and the gradients of every parameter but the attention key biases (their
  gradient is analytically zero, softmax being shift-invariant per query: both sides are
  float rounding noise there)."""
  out = forward(model)
  # A random cotangent: sum(out ** 2) would be flat in everything but the last LayerNorm.
  cotangent = jax.random.normal(jax.random.key(9), out.shape)
  grads = nnx.grad(lambda m: jnp.sum(forward(m).astype(jnp.float32) * cotangent))(model)
  leaves = jax.tree_util.tree_flatten_with_path(nnx.state(grads, nnx.Param))[0]
  return out, [leaf for path, leaf in leaves
               if not re.search(r"'(key|k_proj)'.*'bias'", jax.tree_util.keystr(path))]


def _assert_same(a, b):
  """Equal outputs; equal gradients relative to each tensor's largest entry."""
  (out_a, grads_a), (out_b, grads_b) = a, b
  np.testing.assert_allclose(out_a, out_b, atol=1e-5)
  assert len(grads_a) == len(grads_b) > 10
  for x, y in zip(grads_a, grads_b):
    scale = float(jnp.max(jnp.abs(y)))  # 0: a parameter the forward does not use (pooler).
    np.testing.assert_allclose(x, y, atol=1e-5 * scale, rtol=0)


def test_roberta_pallas_equals_xla_on_packed_rows():
  ids, seg, pos = _packed()
  forward = lambda m: m(ids, segment_ids=seg, positions=pos, deterministic=True)
  _assert_same(_values_and_grads(_roberta('pallas'), forward),
               _values_and_grads(_roberta('xla'), forward))


def test_bart_pallas_equals_xla_on_packed_rows():
  """Encoder self-attention, causal decoder self-attention over packed summaries, and the
  cross-attention between segments."""
  ids, seg, pos = _packed()
  dec_seg = jnp.asarray(np.repeat(np.asarray([[1] * 64 + [2] * 40 + [0] * 24]), 2, 0))
  dec_ids = jnp.where(dec_seg > 0, ids, 1)

  def forward(m):
    encoded = m.encode(ids, seg > 0, segment_ids=seg, positions=pos, deterministic=True)
    return m.decode(dec_ids, encoded, seg > 0, dec_seg > 0, segment_ids=seg,
                    decoder_segment_ids=dec_seg, deterministic=True)

  _assert_same(_values_and_grads(_bart('pallas'), forward),
               _values_and_grads(_bart('xla'), forward))


def test_pallas_dropout_draws_its_own_masks():
  ids, seg, pos = _packed()
  model = _roberta('pallas', attention_dropout=0.1)
  plain = model(ids, segment_ids=seg, positions=pos, deterministic=True)
  first = model(ids, segment_ids=seg, positions=pos, deterministic=False)
  second = model(ids, segment_ids=seg, positions=pos, deterministic=False)
  assert bool(jnp.all(jnp.isfinite(first)))
  assert float(jnp.max(jnp.abs(first - plain))) > 1e-3  # Dropout acts.
  assert float(jnp.max(jnp.abs(first - second))) > 1e-3  # The stream advances.


def test_auto_is_xla_off_tpu():
  """'auto' lowers the XLA path on CPU: the same values as 'xla', bit for bit."""
  ids, seg, pos = _packed()
  forward = lambda m: m(ids, segment_ids=seg, positions=pos, deterministic=True)
  np.testing.assert_array_equal(jax.jit(forward)(_roberta('auto')),
                                jax.jit(forward)(_roberta('xla')))


def test_mask_matches_the_dense_semantics():
  """`make_attention_mask` as segments gives the boolean mask the XLA path always used:
  key padding, packed segments, causal, and their combinations."""
  key_mask = jnp.asarray([[1, 1, 0, 1], [1, 0, 0, 0]])
  segs = jnp.asarray([[1, 1, 2, 0], [1, 2, 2, 0]])
  dense = attention.make_attention_mask(query_length=4, key_length=4, key_mask=key_mask,
                                        query_segment_ids=segs, key_segment_ids=segs,
                                        causal=True).dense()
  same = (segs[:, :, None] == segs[:, None, :]) & (segs[:, None, :] > 0)
  want = same & key_mask.astype(bool)[:, None, :] & jnp.tril(jnp.ones((4, 4), bool))[None]
  np.testing.assert_array_equal(dense[:, 0], want)
  only_keys = attention.make_attention_mask(query_length=3, key_length=4, key_mask=key_mask)
  np.testing.assert_array_equal(only_keys.dense()[:, 0],
                                jnp.broadcast_to(key_mask.astype(bool)[:, None, :], (2, 3, 4)))
  assert attention.make_attention_mask(query_length=3, key_length=3) is None


def test_cudnn_refuses_attention_dropout():
  model = _roberta('cudnn', attention_dropout=0.1)
  ids, seg, pos = _packed()
  with pytest.raises(ValueError, match='compile-time constant'):
    model(ids, segment_ids=seg, positions=pos, deterministic=False)
