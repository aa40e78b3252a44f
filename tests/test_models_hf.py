"""Parity of the NNX RoBERTa/BART backbones with Hugging Face `transformers` (PyTorch, CPU).

Every numerical check compares against the PyTorch reference built here from a tiny random
config (nothing is downloaded). Tolerances: 1e-4 max abs for HF parity in float32, 1e-5 for a
packed segment against the same segment run alone.
"""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from muppet_jax import errors
from muppet_jax.models import attention
from muppet_jax.models import bart
from muppet_jax.models import hf
from muppet_jax.models import roberta

PAD = 1
TOL = 1e-4
PACK_TOL = 1e-5
LOGICAL_NAMES = {'vocab', 'embed', 'mlp', 'heads', 'positions', None}

# A padded batch with rows of different lengths (pad id 1 only at the end of rows).
IDS = np.array([
    [0, 5, 6, 7, 8, 9, 10, 2],
    [0, 7, 2, 1, 1, 1, 1, 1],
    [0, 11, 12, 13, 14, 2, 1, 1],
])
MASK = (IDS != PAD).astype(np.int64)
DEC_IDS = np.array([
    [2, 0, 21, 22, 23, 2],
    [2, 0, 24, 2, 1, 1],
    [2, 0, 25, 26, 2, 1],
])
DEC_MASK = (DEC_IDS != PAD).astype(np.int64)


def _roberta_config(**overrides) -> transformers.RobertaConfig:
  kw = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=40, type_vocab_size=1,
            layer_norm_eps=1e-5, pad_token_id=PAD)
  kw.update(overrides)
  return transformers.RobertaConfig(**kw)


def _bart_config(**overrides) -> transformers.BartConfig:
  kw = dict(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
            decoder_ffn_dim=37, max_position_embeddings=40, pad_token_id=PAD,
            dropout=0.1, attention_dropout=0.1, activation_dropout=0.1)
  kw.update(overrides)
  return transformers.BartConfig(**kw)


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
  """Every parameter random and O(0.1-1), unlike HF init (zero biases, unit LayerNorms, std
  0.02 weights), under which swapped biases or a wrong activation variant would go unseen."""
  with torch.no_grad():
    for name, param in model.named_parameters():
      if 'norm' in name.lower() and name.endswith('weight'):
        param.copy_(1 + 0.2 * torch.randn_like(param))
      else:
        param.copy_(0.2 * torch.randn_like(param))
  return model.eval()


def _torch_roberta(**overrides) -> transformers.RobertaModel:
  torch.manual_seed(0)
  return _randomize(transformers.RobertaModel(_roberta_config(**overrides)))


def _torch_bart(**overrides) -> transformers.BartForConditionalGeneration:
  torch.manual_seed(0)
  model = _randomize(transformers.BartForConditionalGeneration(_bart_config(**overrides)))
  with torch.no_grad():  # A buffer, not a parameter: make it non-zero too.
    model.final_logits_bias.normal_()
  return model


def _t(x: np.ndarray) -> torch.Tensor:
  return torch.tensor(np.asarray(x), dtype=torch.long)


def _max_diff(ours, ref, mask=None) -> float:
  diff = np.abs(np.asarray(ours, np.float32) - np.asarray(ref, np.float32))
  return float(diff[np.asarray(mask, bool)].max() if mask is not None else diff.max())


def _save_torch_bin(model: torch.nn.Module, path: str, shards: int = 1) -> None:
  """The legacy pytorch_model.bin layout (transformers 5 only writes safetensors)."""
  os.makedirs(path, exist_ok=True)
  model.config.save_pretrained(path)
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  if shards == 1:
    torch.save(state, os.path.join(path, 'pytorch_model.bin'))
    return
  names = sorted(state)
  weight_map = {}
  for i in range(shards):
    file = f'pytorch_model-{i + 1:05d}-of-{shards:05d}.bin'
    part = {n: state[n] for n in names[i::shards]}
    torch.save(part, os.path.join(path, file))
    weight_map.update({n: file for n in part})
  with open(os.path.join(path, 'pytorch_model.bin.index.json'), 'w') as f:
    json.dump({'metadata': {}, 'weight_map': weight_map}, f)


@pytest.fixture(scope='module')
def roberta_ref(tmp_path_factory):
  model = _torch_roberta()
  path = str(tmp_path_factory.mktemp('roberta'))
  model.save_pretrained(path)
  with torch.no_grad():
    out = model(_t(IDS), attention_mask=_t(MASK))
  return dict(model=model, path=path, hidden=out.last_hidden_state.numpy(),
              pooled=out.pooler_output.numpy())


@pytest.fixture(scope='module')
def bart_ref(tmp_path_factory):
  model = _torch_bart()
  path = str(tmp_path_factory.mktemp('bart'))
  model.save_pretrained(path)
  return dict(model=model, path=path)


def _bart_reference(model, ids=IDS, mask=MASK, dec_ids=DEC_IDS, dec_mask=DEC_MASK):
  with torch.no_grad():
    out = model(_t(ids), attention_mask=_t(mask),
                decoder_input_ids=None if dec_ids is None else _t(dec_ids),
                decoder_attention_mask=None if dec_mask is None else _t(dec_mask),
                output_hidden_states=True)
  return dict(decoder=out.decoder_hidden_states[-1].numpy(), logits=out.logits.numpy(),
              encoder=out.encoder_last_hidden_state.numpy())


def _torch_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# RoBERTa
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('layout,scan', [('safetensors', False), ('sharded_safetensors', False),
                                         ('bin', False), ('sharded_bin', False),
                                         ('safetensors', True)])
def test_roberta_matches_transformers(roberta_ref, layout, scan, tmp_path):
  if layout == 'safetensors':
    path = roberta_ref['path']
  elif layout == 'sharded_safetensors':
    path = str(tmp_path)
    roberta_ref['model'].save_pretrained(path, max_shard_size='20KB')
    assert os.path.exists(os.path.join(path, 'model.safetensors.index.json'))
  else:
    path = str(tmp_path)
    _save_torch_bin(roberta_ref['model'], path, shards=3 if layout == 'sharded_bin' else 1)
  model, config = hf.load(path, scan_layers=scan)
  assert isinstance(model, roberta.RobertaModel) and config.model_type == 'roberta'
  assert model.encoder.scan_layers == scan
  hidden = model(jnp.asarray(IDS), jnp.asarray(MASK))
  assert hidden.shape == (3, 8, 32)
  assert _max_diff(hidden, roberta_ref['hidden'], MASK) < TOL
  assert _max_diff(model.pool(hidden), roberta_ref['pooled']) < TOL


def test_roberta_from_classification_checkpoint(tmp_path, caplog):
  """`roberta.` prefix, no pooler, a classifier head: the head is ignored, the pooler kept."""
  torch.manual_seed(1)
  ref = _randomize(transformers.RobertaForSequenceClassification(_roberta_config(num_labels=3)))
  ref.save_pretrained(str(tmp_path))
  tensors = hf.read_tensors(str(tmp_path))
  model = hf.build(_roberta_config())
  report = hf.from_hf_state_dict(model, tensors)
  assert sorted(report.ignored) == sorted(k for k in tensors if k.startswith('classifier.'))
  assert sorted(report.defaulted) == ['pooler.dense.bias', 'pooler.dense.weight']
  with torch.no_grad():
    expected = ref.roberta(_t(IDS), attention_mask=_t(MASK)).last_hidden_state.numpy()
  assert _max_diff(model(jnp.asarray(IDS), jnp.asarray(MASK)), expected, MASK) < TOL
  hf.load(str(tmp_path))  # The public path accepts it too.


@pytest.mark.parametrize('act', ['gelu_new', 'relu'])
def test_roberta_activations(act, tmp_path):
  ref = _torch_roberta(hidden_act=act)
  ref.save_pretrained(str(tmp_path))
  model, _ = hf.load(str(tmp_path))
  with torch.no_grad():
    expected = ref(_t(IDS), attention_mask=_t(MASK)).last_hidden_state.numpy()
  assert _max_diff(model(jnp.asarray(IDS), jnp.asarray(MASK)), expected, MASK) < TOL


@pytest.mark.parametrize('scan', [False, True])
def test_roberta_save_roundtrip(roberta_ref, scan, tmp_path):
  model, config = hf.load(roberta_ref['path'], scan_layers=scan)
  hf.save(model, config, str(tmp_path))
  saved = safetensors.numpy.load_file(str(tmp_path / 'model.safetensors'))
  original = _torch_state(roberta_ref['model'])
  assert set(saved) == set(original)
  for name, value in original.items():
    assert saved[name].flags['C_CONTIGUOUS'], name
    assert np.array_equal(saved[name], value), name
  reloaded, info = transformers.AutoModel.from_pretrained(str(tmp_path), output_loading_info=True)
  assert isinstance(reloaded, transformers.RobertaModel)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  assert not info['mismatched_keys'], info


def _vocab_grad(model, table_of, use):
  """Gradient of sum(use(model)) with respect to the token-embedding table."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params):
    return jnp.sum(use(nnx.merge(graphdef, params, rest)))

  return np.asarray(table_of(nnx.merge(graphdef, jax.grad(loss)(params), rest))[...])


@pytest.mark.parametrize('model_type', ['roberta', 'bart'])
def test_padded_vocabulary_runs_and_saves_as_transformers(roberta_ref, bart_ref, model_type,
                                                           tmp_path):
  """`vocab_multiple`: 100 rows become 128 (zeros); outputs, LM logits and the saved checkpoint
  are transformers' own, and the extra rows get no gradient."""
  ref = roberta_ref if model_type == 'roberta' else bart_ref
  model, config = hf.load(ref['path'], vocab_multiple=64)
  assert config.vocab_size == 100  # The transformers config keeps the real vocabulary.
  table_of = ((lambda m: m.embeddings.word_embeddings.embedding) if model_type == 'roberta'
              else (lambda m: m.shared.embedding))
  table = np.asarray(table_of(model)[...])
  state = _torch_state(ref['model'])
  hf_table = state['embeddings.word_embeddings.weight' if model_type == 'roberta'
                   else 'model.shared.weight']
  assert table.shape == (128, 32)
  np.testing.assert_array_equal(table[:100], hf_table)
  np.testing.assert_array_equal(table[100:], 0)
  ids, mask = jnp.asarray(IDS), jnp.asarray(MASK)
  if model_type == 'roberta':
    assert _max_diff(model(ids, mask), ref['hidden'], MASK) < TOL
    use = lambda m: m(ids, mask)  # pylint: disable=unnecessary-lambda-assignment
  else:
    expected = _bart_reference(ref['model'])
    hidden = model(ids, mask, jnp.asarray(DEC_IDS), jnp.asarray(DEC_MASK))
    logits = model.lm_logits(hidden)
    assert logits.shape == (3, 6, 100)  # No logits for the padding rows.
    assert _max_diff(logits, expected['logits'], DEC_MASK) < TOL
    use = lambda m: m.lm_logits(  # pylint: disable=unnecessary-lambda-assignment
        m(ids, mask, jnp.asarray(DEC_IDS), jnp.asarray(DEC_MASK)))
  grad = _vocab_grad(model, table_of, use)
  assert np.abs(grad[:100]).max() > 0
  np.testing.assert_array_equal(grad[100:], 0)
  hf.save(model, config, str(tmp_path))
  saved = safetensors.numpy.load_file(str(tmp_path / 'model.safetensors'))
  original = safetensors.numpy.load_file(os.path.join(ref['path'], 'model.safetensors'))
  assert set(saved) == set(original)
  for name, value in original.items():
    assert np.array_equal(saved[name], value), name
  # A random-init padded model: real rows random (the padding index zero), extra rows zero.
  built = hf.build(config, vocab_multiple=48, rngs=nnx.Rngs(0))
  table = np.asarray(table_of(built)[...])
  assert table.shape == (144, 32) and np.all(table[100:] == 0) and np.all(table[PAD] == 0)
  assert np.abs(table[:100]).sum(axis=1).min() == 0 and np.count_nonzero(
      np.abs(table[:100]).sum(axis=1)) == 99
  assert attention.padded_rows(50265, 128) == 50304 and attention.padded_rows(100, 0) == 100


def test_roberta_packed_segments_match_unpacked(roberta_ref):
  model, _ = hf.load(roberta_ref['path'])
  segments = [[0, 5, 6, 7, 2], [0, 8, 9, 10, 11, 12, 2], [0, 13, 2]]
  length = 18
  ids, seg, pos = (np.full((1, length), PAD), np.zeros((1, length), np.int64),
                   np.zeros((1, length), np.int64))
  start = 0
  for k, tokens in enumerate(segments, 1):
    n = len(tokens)
    ids[0, start:start + n], seg[0, start:start + n], pos[0, start:start + n] = tokens, k, range(n)
    start += n
  packed = np.asarray(model(jnp.asarray(ids), jnp.asarray(seg > 0), segment_ids=jnp.asarray(seg),
                            positions=jnp.asarray(pos)))
  assert np.isfinite(packed).all()  # Padding rows (fully masked queries) stay finite.
  start = 0
  for tokens in segments:
    with torch.no_grad():
      alone = roberta_ref['model'](_t([tokens])).last_hidden_state.numpy()[0]
    assert _max_diff(packed[0, start:start + len(tokens)], alone) < PACK_TOL
    start += len(tokens)


def test_roberta_errors_name_the_tensor(roberta_ref):
  good = hf.read_tensors(roberta_ref['path'])
  model = hf.build(_roberta_config())

  missing = dict(good)
  del missing['encoder.layer.1.output.dense.weight']
  with pytest.raises(ValueError, match=r'Missing.*encoder\.layer\.1\.output\.dense\.weight'):
    hf.from_hf_state_dict(model, missing)

  unexpected = dict(good, **{'encoder.layer.0.attention.self.rotary.weight': np.zeros(3)})
  with pytest.raises(ValueError, match=r'Unexpected.*encoder\.layer\.0\.attention\.self\.rotary'):
    hf.from_hf_state_dict(model, unexpected)

  bad_shape = dict(good, **{'embeddings.word_embeddings.weight': np.zeros((99, 32), np.float32)})
  with pytest.raises(ValueError, match=r'embeddings\.word_embeddings\.weight.*\(99, 32\)'):
    hf.from_hf_state_dict(model, bad_shape)


def _copy_checkpoint(src: str, dst) -> str:
  os.makedirs(dst, exist_ok=True)
  for name in os.listdir(src):
    with open(os.path.join(src, name), 'rb') as f, open(os.path.join(dst, name), 'wb') as g:
      g.write(f.read())
  return str(dst)


@pytest.mark.parametrize('weights', ['model.safetensors', 'pytorch_model.bin'])
def test_damaged_weights_file_is_named(roberta_ref, weights, tmp_path):
  """A truncated weights file fails with a UserError naming the file (safetensors and torch
  errors alone do not say which file they were reading)."""
  path = _copy_checkpoint(roberta_ref['path'], tmp_path / 'ckpt')
  if weights == 'pytorch_model.bin':
    os.remove(os.path.join(path, 'model.safetensors'))
    _save_torch_bin(roberta_ref['model'], path)
  file = os.path.join(path, weights)
  size = os.path.getsize(file)
  with open(file, 'r+b') as f:
    f.truncate(size // 3)
  with pytest.raises(hf.WeightsFileError, match=re.escape(
      f'cannot read {file} ({size // 3} bytes)') + '.*damaged, truncated'):
    hf.load(path)
  assert isinstance(hf.WeightsFileError('x'), errors.UserError)


def test_damaged_config_and_index_are_named(roberta_ref, tmp_path):
  path = _copy_checkpoint(roberta_ref['path'], tmp_path / 'ckpt')
  with open(os.path.join(path, 'config.json'), 'w') as f:
    f.write('{"model_type": "roberta", "hidden_')  # Cut off mid-file.
  with pytest.raises(hf.WeightsFileError, match=r'cannot read .*ckpt/config\.json'):
    hf.load(path)
  sharded = tmp_path / 'sharded'
  _save_torch_bin(roberta_ref['model'], str(sharded), shards=2)
  with open(sharded / 'pytorch_model.bin.index.json', 'w') as f:
    f.write('{"weight_map": ')
  with pytest.raises(hf.WeightsFileError, match=r'pytorch_model\.bin\.index\.json'):
    hf.read_tensors(str(sharded))


def test_missing_sources_are_told_apart_from_hub_ids(roberta_ref, tmp_path, monkeypatch):
  """A local path that does not exist is reported as such before anything is loaded; a value
  of hub-id form is only refused when downloads are off."""
  missing = str(tmp_path / 'no_such_model')
  with pytest.raises(hf.SourceNotFoundError,
                     match=r"model\.init_from='.*no_such_model' does not exist"):
    hf.check_source(missing, 'model.init_from')
  with pytest.raises(hf.SourceNotFoundError, match='does not exist'):
    hf.load(missing)  # Not sent to the hub as a "repo id".
  with pytest.raises(hf.SourceNotFoundError, match='has no config.json'):
    hf.check_source(str(tmp_path), 'model.init_from')
  with pytest.raises(hf.SourceNotFoundError, match='is a file'):
    hf.check_source(os.path.join(roberta_ref['path'], 'config.json'), 'model.init_from')
  hf.check_source(roberta_ref['path'], 'model.init_from')  # A checkpoint directory: fine.
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  with pytest.raises(hf.SourceNotFoundError, match='HF_HUB_OFFLINE is set'):
    hf.check_source('FacebookAI/roberta-base', 'model.init_from')
  monkeypatch.setenv('HF_HUB_OFFLINE', '0')
  hf.check_source('FacebookAI/roberta-base', 'model.init_from')  # Downloaded later, online.
  for path_like in ('./model', '../model', '/abs/model', '~/model', 'a/b/c'):
    assert not hf.is_hub_id(path_like), path_like
  for hub_id in ('roberta-base', 'FacebookAI/roberta-large', 'facebook/bart-base'):
    assert hf.is_hub_id(hub_id), hub_id


def test_usable_positions():
  """RoBERTa: positions after the padding index (514 -> 512 with pad id 1); BART: all."""
  assert hf.usable_positions(_roberta_config(max_position_embeddings=514)) == 512
  assert hf.usable_positions(_roberta_config(max_position_embeddings=130)) == 128
  assert hf.usable_positions(_bart_config(max_position_embeddings=1024)) == 1024


def test_roberta_input_embeddings_hook_and_bf16(roberta_ref):
  model, _ = hf.load(roberta_ref['path'])
  ids, mask = jnp.asarray(IDS), jnp.asarray(MASK)
  embeddings = model.embed_tokens(ids)
  assert embeddings.shape == (3, 8, 32)
  np.testing.assert_array_equal(model(ids, mask, input_embeddings=embeddings), model(ids, mask))
  noise = 1e-2 * jax.random.normal(jax.random.key(0), embeddings.shape)
  noised = model(ids, mask, input_embeddings=embeddings + noise)
  assert _max_diff(noised, model(ids, mask)) > 1e-3  # The hook really feeds the encoder.

  fast, _ = hf.load(roberta_ref['path'], dtype=jnp.bfloat16)
  hidden = fast(ids, mask)
  assert hidden.dtype == jnp.bfloat16
  assert fast.encoder.layer[0].attention.self.query.kernel.dtype == jnp.float32
  assert _max_diff(hidden, roberta_ref['hidden'], MASK) < 0.1  # LayerNorm outputs are O(1).


def test_roberta_bf16_params_save(roberta_ref, tmp_path):
  model, config = hf.load(roberta_ref['path'], param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
  hf.save(model, config, str(tmp_path))
  saved = safetensors.numpy.load_file(str(tmp_path / 'model.safetensors'))
  for name, value in _torch_state(roberta_ref['model']).items():
    assert saved[name].dtype == jnp.bfloat16, name
    assert np.array_equal(saved[name], value.astype(jnp.bfloat16)), name
  reloaded, info = transformers.AutoModel.from_pretrained(str(tmp_path), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  assert reloaded.dtype == torch.bfloat16


def test_roberta_dropout_and_remat(roberta_ref):
  ids, mask = jnp.asarray(IDS), jnp.asarray(MASK)
  plain, _ = hf.load(roberta_ref['path'], rngs=nnx.Rngs(params=0, dropout=1))
  a = plain(ids, mask, deterministic=False)
  b = plain(ids, mask, deterministic=False)
  assert _max_diff(a, b) > 1e-3  # The dropout stream advances between calls.
  assert _max_diff(a, roberta_ref['hidden'], MASK) > 1e-3
  no_dropout, _ = hf.load(roberta_ref['path'], overrides={'hidden_dropout_prob': 0.0,
                                                          'attention_probs_dropout_prob': 0.0})
  assert _max_diff(no_dropout(ids, mask, deterministic=False), roberta_ref['hidden'], MASK) < TOL

  def loss(model):
    return jnp.sum(model(ids, mask) ** 2)

  reference_grads = nnx.grad(loss)(plain)
  for remat in ('full', 'dots_saveable'):
    model, _ = hf.load(roberta_ref['path'], remat=remat)
    assert _max_diff(model(ids, mask), roberta_ref['hidden'], MASK) < TOL
    grads = nnx.grad(loss)(model)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(reference_grads)):
      np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def _hf_named(model, tree) -> dict[str, np.ndarray]:
  """`tree` (a state of `model`'s shape, e.g. gradients) by HF tensor names."""
  nnx.update(model, tree)
  return hf.to_hf_state_dict(model)


@pytest.mark.parametrize('model_type', ['roberta', 'bart'])
def test_scan_layers_same_loss_and_grads(roberta_ref, bart_ref, model_type):
  """Scanned layers (parameters stacked by the HF round trip) give the unrolled loss and
  gradients, with and without remat inside the scan; dropout runs inside the scan, each
  layer with its own masks, and reseeding the stacked streams reproduces them."""
  from muppet_jax import objective  # pylint: disable=import-outside-toplevel

  path = (roberta_ref if model_type == 'roberta' else bart_ref)['path']
  ids, mask = jnp.asarray(IDS), jnp.asarray(MASK)

  def loss(model):
    return jnp.sum(model(ids, mask) ** 2)

  unrolled, _ = hf.load(path)
  ref_loss, ref_grads = nnx.value_and_grad(loss)(unrolled)
  ref_grads = _hf_named(hf.load(path)[0], ref_grads)
  for remat in ('none', 'dots_saveable'):
    scanned, _ = hf.load(path, remat=remat, scan_layers=True)
    value, grads = nnx.value_and_grad(loss)(scanned)
    np.testing.assert_allclose(value, ref_loss, rtol=1e-5)
    grads = _hf_named(hf.load(path, scan_layers=True)[0], grads)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
      np.testing.assert_allclose(g, ref_grads[name], rtol=1e-4, atol=1e-4, err_msg=name)

  scanned, _ = hf.load(path, scan_layers=True, rngs=nnx.Rngs(params=0, dropout=1))
  streams = [v for _, v in nnx.iter_graph(scanned.encoder.layer if model_type == 'roberta'
                                          else scanned.encoder.layers)
             if isinstance(v, nnx.RngStream)]
  assert streams and all(s.key.shape == (2,) for s in streams)  # One key per layer.
  keys = jax.random.key_data(streams[0].key[...])
  assert not np.array_equal(keys[0], keys[1])
  outputs = []
  for _ in range(2):
    objective._reseed(scanned, jax.random.key(7))  # pylint: disable=protected-access
    outputs.append(scanned(ids, mask, deterministic=False))
  outputs.append(scanned(ids, mask, deterministic=False))  # The streams advanced.
  assert _max_diff(outputs[0], outputs[1]) == 0
  assert _max_diff(outputs[0], outputs[2]) > 1e-3
  assert _max_diff(outputs[0], scanned(ids, mask)) > 1e-3


@pytest.mark.parametrize('scan', [False, True])
def test_logical_axis_names(roberta_ref, bart_ref, scan):
  for path in (roberta_ref['path'], bart_ref['path']):
    model, _ = hf.load(path, scan_layers=scan)
    count = 0
    for name, variable in nnx.iter_graph(model):
      if isinstance(variable, (nnx.Param, bart.Buffer)):
        names = variable.get_metadata().get('out_sharding')
        assert names is not None and len(names) == variable.ndim, name
        stacked = scan and name[0] in ('encoder', 'decoder') and name[1] in ('layer', 'layers')
        if stacked:  # Scanned stacks: a leading 'layers' axis (replicated), one tensor a layer.
          assert names[0] == attention.LAYERS_AXIS and variable.shape[0] == 2, name
          names = names[1:]
        assert set(names) <= LOGICAL_NAMES, name
        count += 2 if stacked else 1
    assert count == len(hf.to_hf_state_dict(model))
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  layer = specs['encoder']['layers'] if scan else specs['encoder']['layers'][0]
  assert tuple(layer['self_attn']['q_proj']['kernel'].get_value()) == (
      ('layers', 'embed', 'heads') if scan else ('embed', 'heads'))
  assert tuple(specs['shared']['embedding'].get_value()) == ('vocab', 'embed')


def test_roberta_large_shape_runs_on_cpu():
  config = hf.config_from_shape(
      'roberta', hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096,
      max_position_embeddings=514, vocab_size=50265, dropout=0.1, attention_dropout=0.1)
  model = hf.build(config, rngs=nnx.Rngs(0))
  ids = jnp.asarray(np.r_[0, np.arange(100, 114), 2][None])
  hidden = model(ids, jnp.ones_like(ids))
  assert hidden.shape == (1, 16, 1024) and np.isfinite(np.asarray(hidden)).all()
  params = sum(v.size for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Param))
  assert 355_000_000 < params < 356_000_000  # roberta-large with pooler: 355.4M.


# ---------------------------------------------------------------------------------------------
# BART
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'overrides,scan', [({}, False), ({'scale_embedding': True, 'activation_function': 'relu'},
                                     False), ({}, True)],
    ids=['default', 'scaled_relu', 'scan_layers'])
def test_bart_matches_transformers(overrides, scan, tmp_path):
  ref_model = _torch_bart(**overrides)
  ref_model.save_pretrained(str(tmp_path))
  model, config = hf.load(str(tmp_path), scan_layers=scan)
  assert model.encoder.scan_layers == model.decoder.scan_layers == scan
  assert isinstance(model, bart.BartModel) and config.model_type == 'bart'
  ref = _bart_reference(ref_model)
  ids, mask = jnp.asarray(IDS), jnp.asarray(MASK)
  hidden = model(ids, mask, jnp.asarray(DEC_IDS), jnp.asarray(DEC_MASK))
  assert hidden.shape == (3, 6, 32)
  assert _max_diff(hidden, ref['decoder'], DEC_MASK) < TOL
  assert _max_diff(model.lm_logits(hidden), ref['logits'], DEC_MASK) < TOL
  assert _max_diff(model.encode(ids, mask), ref['encoder'], MASK) < TOL


def test_bart_derives_decoder_inputs_like_transformers(bart_ref):
  model, _ = hf.load(bart_ref['path'])
  ref = _bart_reference(bart_ref['model'], dec_ids=None, dec_mask=None)
  hidden = model(jnp.asarray(IDS), jnp.asarray(MASK))
  assert _max_diff(hidden, ref['decoder']) < TOL  # HF: no decoder padding mask, all rows.
  np.testing.assert_array_equal(
      bart.shift_tokens_right(jnp.asarray(IDS), PAD, 2),
      transformers.models.bart.modeling_bart.shift_tokens_right(_t(IDS), PAD, 2).numpy())


def test_bart_save_roundtrip_and_tied_weights(bart_ref, tmp_path):
  model, config = hf.load(bart_ref['path'])
  hf.save(model, config, str(tmp_path))
  saved = safetensors.numpy.load_file(str(tmp_path / 'model.safetensors'))
  original = safetensors.numpy.load_file(os.path.join(bart_ref['path'], 'model.safetensors'))
  assert set(saved) == set(original)  # Tied weights once, as model.shared.weight.
  assert not any('embed_tokens' in k or k.startswith('lm_head') for k in saved)
  for name, value in original.items():
    assert np.array_equal(saved[name], value), name
  # Every tied copy in the torch model equals what we saved as shared.
  state = _torch_state(bart_ref['model'])
  for tied in ('model.encoder.embed_tokens.weight', 'model.decoder.embed_tokens.weight',
               'lm_head.weight'):
    assert np.array_equal(state[tied], saved['model.shared.weight'])
  reloaded, info = transformers.BartForConditionalGeneration.from_pretrained(
      str(tmp_path), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  for name, value in state.items():
    assert np.array_equal(reloaded.state_dict()[name].numpy(), value), name


def test_bart_tied_copies_and_zero_bias(bart_ref, tmp_path):
  """Old checkpoints carry every tied copy; a zero final_logits_bias is left out on save."""
  tensors = _torch_state(bart_ref['model'])  # Includes lm_head and both embed_tokens.
  tensors['final_logits_bias'] = np.zeros_like(tensors['final_logits_bias'])
  tensors['model.encoder.version'] = np.array([2.0], np.float32)
  model = hf.build(_bart_config())
  report = hf.from_hf_state_dict(model, tensors)
  assert not report.ignored and not report.defaulted
  config = _bart_config()
  hf.save(model, config, str(tmp_path))
  assert 'final_logits_bias' not in safetensors.numpy.load_file(
      str(tmp_path / 'model.safetensors'))
  for cls in (transformers.AutoModel, transformers.BartForConditionalGeneration):
    _, info = cls.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info['missing_keys'] and not info['unexpected_keys'], (cls, info)

  untied = dict(tensors, **{'lm_head.weight': tensors['lm_head.weight'] + 1})
  with pytest.raises(ValueError, match=r'lm_head\.weight.*tied'):
    hf.from_hf_state_dict(model, untied)
  with pytest.raises(ValueError, match=r'Missing.*model\.decoder\.layers\.0\.fc1\.bias'):
    hf.from_hf_state_dict(model, {k: v for k, v in tensors.items()
                                  if k != 'model.decoder.layers.0.fc1.bias'})


def test_bart_model_checkpoint_without_prefix(bart_ref, tmp_path):
  """A saved HF `BartModel` (no `model.` prefix, no final_logits_bias) loads."""
  bart_ref['model'].model.save_pretrained(str(tmp_path))
  model, _ = hf.load(str(tmp_path))
  ref = _bart_reference(bart_ref['model'])
  hidden = model(jnp.asarray(IDS), jnp.asarray(MASK), jnp.asarray(DEC_IDS), jnp.asarray(DEC_MASK))
  assert _max_diff(hidden, ref['decoder'], DEC_MASK) < TOL
  assert not np.any(np.asarray(model.final_logits_bias[...]))


def _pack(segments: list[list[int]], length: int):
  ids, seg, pos = (np.full((1, length), PAD), np.zeros((1, length), np.int64),
                   np.zeros((1, length), np.int64))
  start = 0
  for k, tokens in enumerate(segments, 1):
    n = len(tokens)
    ids[0, start:start + n], seg[0, start:start + n], pos[0, start:start + n] = tokens, k, range(n)
    start += n
  return ids, seg, pos


def test_bart_packed_segments_match_unpacked(bart_ref):
  model, _ = hf.load(bart_ref['path'])
  sources = [[0, 5, 6, 7, 2], [0, 8, 9, 10, 11, 12, 2], [0, 13, 2]]
  targets = [[2, 0, 30, 2], [2, 0, 31, 32, 33, 2], [2, 0, 2]]
  ids, seg, pos = _pack(sources, 18)
  dec_ids, dec_seg, dec_pos = _pack(targets, 15)
  j = lambda x: jnp.asarray(x)  # noqa: E731
  explicit = np.asarray(model(j(ids), j(seg > 0), j(dec_ids), j(dec_seg > 0), segment_ids=j(seg),
                              positions=j(pos), decoder_segment_ids=j(dec_seg),
                              decoder_positions=j(dec_pos)))
  derived = np.asarray(model(j(ids), j(seg > 0), segment_ids=j(seg), positions=j(pos)))
  assert np.isfinite(explicit).all() and np.isfinite(derived).all()
  start = dec_start = 0
  for source, target in zip(sources, targets):
    with torch.no_grad():
      alone = bart_ref['model'](_t([source]), decoder_input_ids=_t([target]),
                                output_hidden_states=True).decoder_hidden_states[-1].numpy()[0]
      shifted = bart_ref['model'](_t([source]),
                                  output_hidden_states=True).decoder_hidden_states[-1].numpy()[0]
    assert _max_diff(explicit[0, dec_start:dec_start + len(target)], alone) < PACK_TOL
    assert _max_diff(derived[0, start:start + len(source)], shifted) < PACK_TOL
    start += len(source)
    dec_start += len(target)


def test_shift_tokens_right_per_segment():
  ids = jnp.asarray([[0, 5, 2, 0, 6, 7, 2, 1, 1]])
  seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0, 0]])
  np.testing.assert_array_equal(bart.shift_tokens_right_per_segment(ids, seg, PAD, 2),
                                [[2, 0, 5, 2, 0, 6, 7, 1, 1]])


def test_bart_input_embeddings_bf16_and_dropout(bart_ref):
  model, _ = hf.load(bart_ref['path'], rngs=nnx.Rngs(params=0, dropout=1))
  ids, mask = jnp.asarray(IDS), jnp.asarray(MASK)
  dec, dec_mask = jnp.asarray(DEC_IDS), jnp.asarray(DEC_MASK)
  clean = model(ids, mask, dec, dec_mask)
  same = model(ids, mask, dec, dec_mask, input_embeddings=model.embed_tokens(ids))
  np.testing.assert_array_equal(same, clean)
  assert _max_diff(model(ids, mask, dec, dec_mask, deterministic=False), clean) > 1e-3

  ref = _bart_reference(bart_ref['model'])
  fast, _ = hf.load(bart_ref['path'], dtype=jnp.bfloat16, remat='full')
  hidden = fast(ids, mask, dec, dec_mask)
  assert hidden.dtype == jnp.bfloat16
  assert _max_diff(hidden, ref['decoder'], DEC_MASK) < 0.1
  logits = fast.lm_logits(hidden)
  assert logits.dtype == jnp.float32
  assert _max_diff(logits, ref['logits'], DEC_MASK) < 0.1


@pytest.mark.parametrize('scan', [False, True])
def test_bart_incremental_decoding_matches_transformers(bart_ref, scan):
  model, _ = hf.load(bart_ref['path'], scan_layers=scan)
  ref = _bart_reference(bart_ref['model'], dec_mask=None)
  ids, mask = jnp.asarray(IDS), jnp.asarray(MASK)
  cache = model.init_cache(model.encode(ids, mask), mask, max_length=DEC_IDS.shape[1] + 2)
  step = nnx.jit(lambda m, tokens, c: m.decode_step(tokens, c))
  # The first two tokens at once (a prompt), then one token at a time under jit.
  out = model.decode_step(jnp.asarray(DEC_IDS[:, :2]), cache)
  hidden = [out.hidden]
  for t in range(2, DEC_IDS.shape[1]):
    out = step(model, jnp.asarray(DEC_IDS[:, t:t + 1]), out.cache)
    hidden.append(out.hidden)
  assert int(out.cache.index) == DEC_IDS.shape[1]
  assert _max_diff(jnp.concatenate(hidden, axis=1), ref['decoder']) < TOL


def test_config_from_shape_builds_exportable_bart(tmp_path):
  config = hf.config_from_shape('bart', hidden_size=32, num_layers=2, num_heads=4,
                                intermediate_size=37, max_position_embeddings=40, vocab_size=100,
                                dropout=0.1, attention_dropout=0.0)
  model = hf.build(config, rngs=nnx.Rngs(3))
  hf.save(model, config, str(tmp_path))
  ref, info = transformers.BartForConditionalGeneration.from_pretrained(
      str(tmp_path), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  ref.eval()
  expected = _bart_reference(ref)
  hidden = model(jnp.asarray(IDS), jnp.asarray(MASK), jnp.asarray(DEC_IDS), jnp.asarray(DEC_MASK))
  assert _max_diff(hidden, expected['decoder'], DEC_MASK) < TOL
  assert _max_diff(model.lm_logits(hidden), expected['logits'], DEC_MASK) < TOL


def test_attention_mask_shapes():
  seg = jnp.asarray([[1, 1, 2, 0]])
  mask = attention.make_attention_mask(query_length=4, key_length=4, query_segment_ids=seg,
                                       key_segment_ids=seg, causal=True)
  np.testing.assert_array_equal(mask.dense()[0, 0], [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0],
                                                     [0, 0, 0, 0]])
  assert attention.make_attention_mask(query_length=3, key_length=3) is None


def test_attention_dropout_path_matches_a_numpy_reference():
  """The explicit (training) path: masked softmax, dropout on the probabilities, values."""
  from muppet_jax.models import dropout as dropout_lib  # pylint: disable=import-outside-toplevel
  b, t, s, n, h = 2, 5, 6, 3, 4
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(b, length, n, h)).astype(np.float32) for length in (t, s, s))
  key_mask = np.ones((b, s), bool)
  key_mask[0, 4:] = False
  key_mask[1, :] = False  # Every key masked: a uniform softmax, as the fused path gives.
  mask = attention.make_attention_mask(query_length=t, key_length=s,
                                       key_mask=jnp.asarray(key_mask))
  layer = dropout_lib.Dropout(0.25, rngs=nnx.Rngs(dropout=5))
  twin = dropout_lib.Dropout(0.25, rngs=nnx.Rngs(dropout=5))  # Same stream: same mask.
  got = attention.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask,
                                        dropout=layer, deterministic=False)
  kept = np.asarray(twin(jnp.ones((b, n, t, s)), deterministic=False))  # 0 or 1 / (1 - p)

  logits = np.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(h)
  logits = np.where(key_mask[:, None, None, :], logits, -1e30)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  want = np.einsum('bnts,bsnh->btnh', probs * kept, v)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  assert 0 < np.mean(kept == 0) < 0.6  # The mask did drop something.
