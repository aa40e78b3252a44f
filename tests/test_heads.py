"""Task heads: stacking and masking, R4F, and parity with `transformers` task models.

Tiny random PyTorch models are saved with `save_pretrained`, the backbone is read with
`hf.load`, the head tensors with `hf.read_tensors` + our HF-name mapping, and the logits of
`MuppetModel`'s family forwards are compared with the PyTorch task model's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from muppet_jax import config_lib
from muppet_jax.data.features import BatchShape, Family, TaskTable
from muppet_jax.models import heads, hf, muppet

PAD, BOS, EOS = 1, 0, 2
VOCAB, HIDDEN, LENGTH = 64, 16, 12
TOL = 1e-4


def _roberta_config(**kw) -> transformers.RobertaConfig:
  return transformers.RobertaConfig(
      vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=32, max_position_embeddings=LENGTH + 4, type_vocab_size=1,
      pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, initializer_range=0.2, **kw)


def _bart_config(**kw) -> transformers.BartConfig:
  return transformers.BartConfig(
      vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=1, decoder_layers=1,
      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
      decoder_ffn_dim=32, max_position_embeddings=LENGTH + 4, pad_token_id=PAD, bos_token_id=BOS,
      eos_token_id=EOS, decoder_start_token_id=EOS, forced_eos_token_id=EOS, init_std=0.2, **kw)


def _rows(lengths, seed=0) -> tuple[np.ndarray, np.ndarray]:
  """One `<s> ... </s>` example per row, right-padded: input_ids and attention mask [R, L]."""
  rng = np.random.default_rng(seed)
  ids = np.full((len(lengths), LENGTH), PAD, np.int64)
  for r, n in enumerate(lengths):
    ids[r, :n] = np.concatenate([[BOS], rng.integers(3, VOCAB, n - 2), [EOS]])
  return ids, (ids != PAD).astype(np.int64)


def _batch(ids: np.ndarray, max_examples: int, max_choices: int = 1) -> dict[str, np.ndarray]:
  """Our sub-batch layout for one segment per row."""
  r, l = ids.shape
  b = BatchShape(rows=r, length=l, max_examples=max_examples, max_choices=max_choices,
                 decoder_length=1).zeros()
  real = ids != PAD
  b['input_ids'] = ids.astype(np.int32)
  b['segment_ids'] = real.astype(np.int32)
  b['positions'] = np.where(real, np.arange(l)[None], 0).astype(np.int32)
  return b


def _build(tmp_path, torch_model, task_table: TaskTable):
  """Saves `torch_model`, loads its backbone with `hf.load`, wraps it in a MuppetModel."""
  torch_model.save_pretrained(tmp_path)
  backbone, hf_config = hf.load(str(tmp_path))
  config = config_lib.default()
  config.model.type = hf_config.model_type
  model = muppet.build_model(config, hf_config, task_table, rngs=nnx.Rngs(params=1, dropout=2),
                             backbone=backbone)
  return model, hf.read_tensors(str(tmp_path))


def _torch_head_params(module: torch.nn.Module, prefix: str) -> dict[str, np.ndarray]:
  return {prefix + k: v.detach().numpy() for k, v in module.state_dict().items()}


# --- Stacked classification heads -------------------------------------------------------------


def test_stacked_heads_select_by_traced_index_and_mask_classes():
  h = heads.ClassificationHeads(3, HIDDEN, 5, dropout=0.1, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (4, HIDDEN))
  f = jax.jit(lambda i, k: h(x, i, k))
  for index, k in [(0, 2), (2, 5), (1, 3)]:
    logits = np.asarray(f(jnp.int32(index), jnp.int32(k)))
    kernel, bias = h.dense.kernel[index], h.dense.bias[index]
    hidden = np.tanh(np.asarray(x) @ np.asarray(kernel) + np.asarray(bias))
    want = hidden @ np.asarray(h.out_proj.kernel[index]) + np.asarray(h.out_proj.bias[index])
    np.testing.assert_allclose(logits[:, :k], want[:, :k], rtol=1e-5, atol=1e-6)
    assert np.all(logits[:, k:] <= np.finfo(np.float32).min)
  assert h.dense.kernel.get_metadata()['out_sharding'] == (
      'heads_stack', 'embed', 'mlp')


def test_classification_head_matches_hf_module_and_round_trips():
  config = _roberta_config(num_labels=3)
  torch_head = transformers.RobertaForSequenceClassification(config).classifier.eval()
  ours = heads.ClassificationHeads(4, HIDDEN, 5, dropout=0.1, rngs=nnx.Rngs(0))
  tensors = _torch_head_params(torch_head, 'classifier.')
  assert heads.classification_head_from_hf(ours, 2, tensors) == 3
  features = np.random.default_rng(0).normal(size=(6, HIDDEN)).astype(np.float32)
  with torch.no_grad():
    want = torch_head(torch.from_numpy(features)[:, None, :]).numpy()
  got = np.asarray(ours(jnp.asarray(features), jnp.int32(2), jnp.int32(3)))
  np.testing.assert_allclose(got[:, :3], want, atol=1e-6, rtol=1e-5)
  exported = heads.classification_head_to_hf(ours, 2, 3)
  assert exported.keys() == tensors.keys()
  for name in tensors:
    np.testing.assert_array_equal(exported[name], tensors[name])


# --- R4F ---------------------------------------------------------------------------------------


def test_spectral_normalize_matches_svd_and_torch_gradient():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(HIDDEN, 5)).astype(np.float32)
  mask = np.array([1, 1, 1, 0, 0], bool)
  got = np.asarray(heads.spectral_normalize(jnp.asarray(kernel), jnp.asarray(mask)))
  sub = kernel[:, :3]
  np.testing.assert_allclose(got[:, :3], sub / np.linalg.svd(sub, compute_uv=False)[0],
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(got[:, 3:], 0.)
  np.testing.assert_allclose(np.linalg.svd(got, compute_uv=False)[0], 1., rtol=1e-4)

  # Gradient: torch spectral_norm (u, v constants, converged by many power iterations).
  probe = rng.normal(size=(HIDDEN, 3)).astype(np.float32)
  layer = torch.nn.Linear(HIDDEN, 3, bias=False)
  with torch.no_grad():
    layer.weight.copy_(torch.from_numpy(sub.T.copy()))
  layer = torch.nn.utils.spectral_norm(layer, n_power_iterations=200)
  # Forward in training mode: power iterations (no grad), then W / sigma with grad through W.
  (layer(torch.eye(HIDDEN)) * torch.from_numpy(probe)).sum().backward()
  torch_grad = layer.weight_orig.grad.numpy().T
  ours = jax.grad(lambda k: jnp.sum(heads.spectral_normalize(k)[:, :3] * probe))(jnp.asarray(sub))
  np.testing.assert_allclose(np.asarray(ours), torch_grad, rtol=1e-3, atol=1e-5)


def test_r4f_heads_export_the_effective_weight():
  h = heads.ClassificationHeads(2, HIDDEN, 4, spectral_norm=True, rngs=nnx.Rngs(0))
  config = _roberta_config(num_labels=3)
  torch_head = transformers.RobertaForSequenceClassification(config).classifier.eval()
  tensors = heads.classification_head_to_hf(h, 1, 3)
  torch_head.load_state_dict({k[len('classifier.'):]: torch.from_numpy(v.copy())
                              for k, v in tensors.items()})
  np.testing.assert_allclose(
      np.linalg.svd(tensors['classifier.out_proj.weight'], compute_uv=False)[0], 1., rtol=1e-4)
  x = np.random.default_rng(1).normal(size=(3, HIDDEN)).astype(np.float32)
  with torch.no_grad():
    want = torch_head(torch.from_numpy(x)[:, None]).numpy()
  got = np.asarray(h(jnp.asarray(x), jnp.int32(1), jnp.int32(3)))[:, :3]
  np.testing.assert_allclose(got, want, atol=1e-5)


def _r4f_choice_model(kind: str, r4f: bool) -> muppet.MuppetModel:
  config = config_lib.default()
  config.model.type = kind
  config.train.r4f = r4f
  hf_config = _roberta_config() if kind == 'roberta' else _bart_config()
  table = TaskTable.build(['cls', 'mc'], [Family.CLASSIFICATION, Family.MULTIPLE_CHOICE], [2, 0])
  return muppet.build_model(config, hf_config, table, rngs=nnx.Rngs(params=3, dropout=4))


@pytest.mark.parametrize('kind', ['roberta', 'bart'])
def test_r4f_normalises_the_multiple_choice_head(kind):
  """fairseq's sentence-ranking head is a one-output classification head, so R4F normalises its
  out_proj too: W [H, 1] / sigma_max(W), sigma_max of a vector being its L2 norm."""
  head = _r4f_choice_model(kind, r4f=True).choice_head
  layer = head.classifier if kind == 'roberta' else head.out_proj
  raw = np.asarray(layer.kernel[...], np.float64)  # [H, 1]
  assert abs(np.linalg.norm(raw) - 1.) > 0.1  # the raw weight is not normalised already
  effective = np.asarray(head.score_kernel(), np.float64)
  np.testing.assert_allclose(np.linalg.svd(effective, compute_uv=False)[0], 1., rtol=1e-5)
  np.testing.assert_allclose(effective, raw / np.linalg.svd(raw, compute_uv=False)[0],
                             rtol=1e-5, atol=1e-7)
  # The scores use the normalised weight (hand computation of the head's layers in NumPy).
  x = np.random.default_rng(5).normal(size=(2, 3, HIDDEN))
  h = x
  if kind == 'bart':
    h = np.tanh(x @ np.asarray(head.dense.kernel[...]) + np.asarray(head.dense.bias[...]))
  bias = np.asarray(layer.bias[...], np.float64)
  want = (h @ (raw / np.linalg.norm(raw)) + bias)[..., 0]
  got = np.asarray(head(jnp.asarray(x, jnp.float32)), np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # The export carries the effective weight: the transformers module computes the same scores.
  tensors = heads.multiple_choice_head_to_hf(head)
  if kind == 'roberta':
    weight = tensors['classifier.weight']
    theirs = x @ weight.T.astype(np.float64) + tensors['classifier.bias']
  else:
    torch_head = transformers.BartForSequenceClassification(
        _bart_config(num_labels=1)).classification_head.eval()
    torch_head.load_state_dict({k[len('classification_head.'):]: torch.from_numpy(v.copy())
                                for k, v in tensors.items()})
    weight = tensors['classification_head.out_proj.weight']
    with torch.no_grad():
      theirs = torch_head(torch.from_numpy(x.astype(np.float32))).numpy()
  np.testing.assert_allclose(np.linalg.norm(weight), 1., rtol=1e-5)
  np.testing.assert_allclose(theirs[..., 0], want, rtol=1e-4, atol=1e-5)
  # Without R4F the same head computes with the raw weight.
  plain = _r4f_choice_model(kind, r4f=False).choice_head
  np.testing.assert_array_equal(np.asarray(plain.score_kernel()),
                                np.asarray((plain.classifier if kind == 'roberta' else
                                            plain.out_proj).kernel[...]))


# --- Head dropout (model.head_dropout) ----------------------------------------------------------


def _dropout_model(kind: str, head_dropout: float | None) -> muppet.MuppetModel:
  """A model whose checkpoint config asks for head dropout (HF classifier_dropout 0.2, hidden
  dropout 0.3): `model.head_dropout` must win."""
  config = config_lib.default()
  config.model.type = kind
  if head_dropout is not None:
    config.model.head_dropout = head_dropout
  if kind == 'roberta':
    hf_config = _roberta_config(hidden_dropout_prob=0.3, classifier_dropout=0.2)
  else:
    hf_config = _bart_config(dropout=0.3, classifier_dropout=0.2)
  table = TaskTable.build(['cls', 'mc'], [Family.CLASSIFICATION, Family.MULTIPLE_CHOICE], [3, 0])
  return muppet.build_model(config, hf_config, table, rngs=nnx.Rngs(params=0, dropout=1))


@pytest.mark.parametrize('kind', ['roberta', 'bart'])
def test_head_dropout_applies_to_every_classification_and_choice_head(kind):
  features = jax.random.normal(jax.random.key(0), (4, HIDDEN))
  choice_features = jax.random.normal(jax.random.key(1), (4, 3, HIDDEN))
  index, k = jnp.int32(0), jnp.int32(3)
  for rate in (None, 0.0, 0.5):  # None: the default
    model = _dropout_model(kind, rate)
    cls_head, choice_head = model.classification_heads, model.choice_head
    assert cls_head.dropout.rate == choice_head.dropout.rate == (rate or 0.0)
    runs = {name: [np.asarray(f(deterministic=d)) for d in (True, False, False)]
            for name, f in (
                ('classification', lambda deterministic: cls_head(
                    features, index, k, deterministic=deterministic)[:, :3]),
                ('choice', lambda deterministic: choice_head(
                    choice_features, deterministic=deterministic)))}
    for name, (eval_out, train_a, train_b) in runs.items():
      if not rate:  # 0.0 (fairseq's pooler_dropout default): training mode is deterministic.
        np.testing.assert_array_equal(train_a, eval_out, err_msg=name)
        np.testing.assert_array_equal(train_b, eval_out, err_msg=name)
      else:  # Dropout on: masks differ between calls and from evaluation mode.
        assert np.abs(train_a - eval_out).max() > 1e-3, name
        assert np.abs(train_a - train_b).max() > 1e-3, name


def test_head_dropout_rejects_a_rate_outside_zero_one():
  with pytest.raises(ValueError, match='model.head_dropout'):
    _dropout_model('roberta', 1.5)


# --- Parity with transformers task models -------------------------------------------------------


def test_roberta_sequence_classification_parity(tmp_path):
  torch_model = transformers.RobertaForSequenceClassification(_roberta_config(num_labels=3))
  table = TaskTable.build(['other', 'nli', 'mc'], [Family.CLASSIFICATION] * 2 +
                          [Family.MULTIPLE_CHOICE], [2, 3, 0])
  model, tensors = _build(tmp_path, torch_model.eval(), table)
  heads.classification_head_from_hf(model.classification_heads, 1, tensors)
  ids, mask = _rows([12, 7, 4])
  with torch.no_grad():
    want = torch_model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
  b = _batch(ids, max_examples=4)
  b['task_id'] = np.int32(1)
  b['example_index'][:3, 0] = np.arange(3) * LENGTH  # each row's <s>
  got = np.asarray(model.classify(jax.tree.map(jnp.asarray, b)).logits)
  np.testing.assert_allclose(got[:3, :3], want, atol=TOL)
  print('roberta seq-cls max |diff|', np.abs(got[:3, :3] - want).max())


def test_roberta_multiple_choice_parity(tmp_path):
  torch_model = transformers.RobertaForMultipleChoice(_roberta_config())
  table = TaskTable.build(['cls', 'mc'], [Family.CLASSIFICATION, Family.MULTIPLE_CHOICE], [2, 0])
  model, tensors = _build(tmp_path, torch_model.eval(), table)
  heads.multiple_choice_head_from_hf(model.choice_head, tensors)
  num_examples, num_choices = 2, 3
  ids, mask = _rows([9, 6, 12, 5, 8, 10], seed=3)  # example e, choice c = row e * C + c
  with torch.no_grad():
    want = torch_model(torch.from_numpy(ids).view(num_examples, num_choices, LENGTH),
                       attention_mask=torch.from_numpy(mask).view(
                           num_examples, num_choices, LENGTH)).logits.numpy()
  b = _batch(ids, max_examples=6, max_choices=num_choices)
  b['task_id'], b['family_id'] = np.int32(1), np.int32(Family.MULTIPLE_CHOICE)
  b['example_index'][:2] = np.arange(6).reshape(2, 3) * LENGTH
  b['choice_mask'][:2] = True
  got = np.asarray(model.choose(jax.tree.map(jnp.asarray, b)).logits)
  np.testing.assert_allclose(got[:2], want, atol=TOL)
  exported = heads.multiple_choice_head_to_hf(model.choice_head)
  for name in ('classifier.weight', 'classifier.bias'):
    np.testing.assert_array_equal(exported[name], tensors[name])
  print('roberta multiple-choice max |diff|', np.abs(got[:2] - want).max())


@pytest.mark.parametrize('kind', ['roberta', 'bart'])
def test_question_answering_parity(tmp_path, kind):
  if kind == 'roberta':
    torch_model = transformers.RobertaForQuestionAnswering(_roberta_config())
  else:
    torch_model = transformers.BartForQuestionAnswering(_bart_config())
  table = TaskTable.build(['squad'], [Family.SPAN], [0])
  model, tensors = _build(tmp_path, torch_model.eval(), table)
  heads.span_head_from_hf(model.span_head, tensors)
  ids, mask = _rows([12, 8, 5], seed=5)
  with torch.no_grad():
    out = torch_model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
  b = _batch(ids, max_examples=3)
  b['span_mask'] = mask.astype(bool)
  got = model.span(jax.tree.map(jnp.asarray, b))
  real = mask.astype(bool)
  for ours, theirs in ((got.start_logits, out.start_logits), (got.end_logits, out.end_logits)):
    ours, theirs = np.asarray(ours), theirs.numpy()
    np.testing.assert_allclose(ours[real], theirs[real], atol=TOL)
    assert np.all(ours[~real] <= np.finfo(np.float32).min)
  exported = heads.span_head_to_hf(model.span_head)
  np.testing.assert_array_equal(exported['qa_outputs.weight'], tensors['qa_outputs.weight'])
  print(f'{kind} QA max |diff|',
        np.abs(np.asarray(got.start_logits)[real] - out.start_logits.numpy()[real]).max())


def test_bart_sequence_classification_parity(tmp_path):
  torch_model = transformers.BartForSequenceClassification(_bart_config(num_labels=3))
  table = TaskTable.build(['a', 'b'], [Family.CLASSIFICATION] * 2, [3, 2])
  model, tensors = _build(tmp_path, torch_model.eval(), table)
  heads.classification_head_from_hf(model.classification_heads, 0, tensors,
                                    prefix='classification_head.')
  lengths = [12, 7, 4]
  ids, mask = _rows(lengths, seed=7)
  with torch.no_grad():
    want = torch_model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
  b = _batch(ids, max_examples=3)
  b['task_id'] = np.int32(0)
  b['example_index'][:, 0] = np.arange(3) * LENGTH + np.array(lengths) - 1  # each row's </s>
  got = np.asarray(model.classify(jax.tree.map(jnp.asarray, b)).logits)
  np.testing.assert_allclose(got, want, atol=TOL)
  exported = heads.classification_head_to_hf(model.classification_heads, 0, 3,
                                             prefix='classification_head.')
  for name, value in exported.items():
    np.testing.assert_array_equal(value, tensors[name])
  print('bart seq-cls max |diff|', np.abs(got - want).max())


def test_bart_multiple_choice_head_round_trips():
  h = heads.MultipleChoiceHead(HIDDEN, style='bart', rngs=nnx.Rngs(0))
  torch_head = transformers.BartForSequenceClassification(
      _bart_config(num_labels=1)).classification_head.eval()
  heads.multiple_choice_head_from_hf(h, _torch_head_params(torch_head, 'classification_head.'))
  x = np.random.default_rng(2).normal(size=(2, 3, HIDDEN)).astype(np.float32)
  with torch.no_grad():
    want = torch_head(torch.from_numpy(x)).numpy()[..., 0]
  np.testing.assert_allclose(np.asarray(h(jnp.asarray(x))), want, atol=1e-6)
  assert set(heads.multiple_choice_head_to_hf(h)) == {
      'classification_head.dense.weight', 'classification_head.dense.bias',
      'classification_head.out_proj.weight', 'classification_head.out_proj.bias'}
