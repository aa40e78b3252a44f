"""The per-slot objective: family dispatch, log(n) scaling, R3F (values, gradients, stop-gradient)
and the compile cost of many classification heads."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from muppet_jax import config_lib, objective
from muppet_jax.data.features import BatchShape, Family, TaskTable
from muppet_jax.models import muppet

PAD, BOS, EOS = 1, 0, 2
FD_STEP = 1e-2  # parameters are ~N(0, 0.2)
VOCAB, HIDDEN = 40, 16
SHAPE = BatchShape(rows=2, length=12, max_examples=4, max_choices=3, decoder_length=5)

# Tasks of the RoBERTa tests: two classification tasks, one multiple-choice, one span task.
TABLE = TaskTable.build(['c2', 'c3', 'mc', 'span'],
                        [Family.CLASSIFICATION, Family.CLASSIFICATION, Family.MULTIPLE_CHOICE,
                         Family.SPAN], [2, 3, 0, 0])
BART_TABLE = TaskTable.build(['c2', 'summ'], [Family.CLASSIFICATION, Family.SUMMARIZATION],
                             [2, 0])


def _hf_config(kind: str):
  if kind == 'roberta':
    return transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=SHAPE.length + 4, type_vocab_size=1,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, initializer_range=0.2,
        hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.1)
  return transformers.BartConfig(
      vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=1, decoder_layers=1,
      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
      decoder_ffn_dim=32, max_position_embeddings=SHAPE.length + 4, pad_token_id=PAD,
      bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=EOS, init_std=0.2,
      dropout=0.3)


def _model(kind='roberta', table=TABLE, dtype='float32', seed=0, **train):
  config = config_lib.default()
  config.model.type = kind
  config.model.dtype = config.model.param_dtype = dtype
  for key, value in train.items():
    config.train[key] = value
  model = muppet.build_model(config, _hf_config(kind), table,
                             rngs=nnx.Rngs(params=seed, dropout=seed + 1))
  return model, config


def _settings(config, **overrides):
  s = objective.ObjectiveSettings.from_config(config, VOCAB)
  return objective.ObjectiveSettings(**{**s.__dict__, **overrides})


def _pack(rows: list[list[int]], seed: int = 0) -> tuple[dict[str, np.ndarray], list]:
  """Packs segments of the given lengths into rows: `<s> random... </s>` each.

  Returns the zero-filled sub-batch with input_ids / segment_ids / positions set, and per
  segment (row, start, end) in order.
  """
  rng = np.random.default_rng(seed)
  b = SHAPE.zeros()
  b['input_ids'][:] = PAD
  segments = []
  for r, lengths in enumerate(rows):
    col = 0
    for k, n in enumerate(lengths):
      b['input_ids'][r, col:col + n] = np.concatenate([[BOS], rng.integers(3, VOCAB, n - 2),
                                                       [EOS]])
      b['segment_ids'][r, col:col + n] = k + 1
      b['positions'][r, col:col + n] = np.arange(n)
      segments.append((r, col, col + n))
      col += n
  return b, segments


def _classification_batch(task_id=1, labels=(2, 0, 1)):
  b, segs = _pack([[5, 4], [6]])
  b['task_id'], b['family_id'] = np.int32(task_id), np.int32(Family.CLASSIFICATION)
  for e, (r, s, _) in enumerate(segs):
    b['example_index'][e, 0] = r * SHAPE.length + s
    b['choice_mask'][e, 0] = True
    b['example_mask'][e] = True
    b['labels'][e] = labels[e]
    b['loss_n'][e] = TABLE.num_classes[task_id]
  return b


def _choice_batch():
  # Example 0 has 3 choices, example 1 has 2 (its third is padding); example 2, 3: empty.
  b, segs = _pack([[4, 4, 4], [5, 5]], seed=1)
  b['task_id'], b['family_id'] = np.int32(2), np.int32(Family.MULTIPLE_CHOICE)
  for k, (e, c) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]):
    r, s, _ = segs[k]
    b['example_index'][e, c] = r * SHAPE.length + s
    b['choice_mask'][e, c] = True
  b['example_mask'][:2] = True
  b['labels'][:2] = [2, 1]
  b['loss_n'][:2] = [3, 2]
  return b


def _span_batch():
  b, _ = _pack([[10], [7]], seed=2)
  b['task_id'], b['family_id'] = np.int32(3), np.int32(Family.SPAN)
  b['span_mask'][0, [0, 5, 6, 7, 8]] = True  # <s> and the context tokens
  b['span_mask'][1, [0, 3, 4, 5]] = True
  b['span_start'][:2], b['span_end'][:2] = [5, 4], [7, 5]
  b['example_mask'][:2] = True
  b['loss_n'][:2] = b['span_mask'].sum(-1)
  return b


def _summarization_batch():
  b, _ = _pack([[10], [7]], seed=3)
  b['task_id'], b['family_id'] = np.int32(1), np.int32(Family.SUMMARIZATION)
  rng = np.random.default_rng(4)
  targets = [np.concatenate([rng.integers(3, VOCAB, 3), [EOS]]),
             np.concatenate([rng.integers(3, VOCAB, 1), [EOS]])]
  b['decoder_input_ids'][:] = PAD
  for r, t in enumerate(targets):
    b['decoder_target_ids'][r, :len(t)] = t
    b['decoder_input_ids'][r, :len(t)] = np.concatenate([[EOS], t[:-1]])
    b['decoder_mask'][r, :len(t)] = True
  b['example_mask'][:2] = True
  b['loss_n'][:2] = VOCAB
  return b


def _jnp(b):
  return jax.tree.map(jnp.asarray, b)


def _loss(model, b, settings, table=TABLE, key=0, deterministic=True):
  """slot_loss, eagerly (its lax.switch is compiled anew at every call)."""
  return objective.slot_loss(model, _jnp(b), jax.random.key(key), task_table=table,
                             settings=settings, deterministic=deterministic)


@functools.cache
def _compiled_loss(table_name: str, settings: objective.ObjectiveSettings):
  table = {'roberta': TABLE, 'bart': BART_TABLE}[table_name]
  return jax.jit(lambda m, b, k: objective.slot_loss(m, b, k, task_table=table,
                                                     settings=settings, deterministic=True))


def _jit_loss(model, b, settings, table_name='roberta', key=0):
  """slot_loss (dropout off) through one compiled program per (table, settings): the tests
  that share them compile once."""
  return _compiled_loss(table_name, settings)(model, _jnp(b), jax.random.key(key))


# --- Values against hand computations ------------------------------------------------------------


@pytest.mark.parametrize('scaling', [True, False])
def test_classification_slot_loss(scaling):
  model, config = _model()
  settings = _settings(config, loss_scaling=scaling)
  b = _classification_batch()
  loss, m = _jit_loss(model, b, settings)
  logits = np.asarray(model.classify(_jnp(b)).logits, np.float64)[:3, :3]
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -log_probs[np.arange(3), b['labels'][:3]]
  scale = np.log(3.) if scaling else 1.
  np.testing.assert_allclose(float(loss), (ce / scale).mean(), rtol=1e-5)
  np.testing.assert_allclose(float(m.unscaled_loss), ce.mean(), rtol=1e-5)
  assert float(m.loss) == float(loss) == float(m.task_loss)
  assert float(m.sym_kl) == 0. and float(m.num_examples) == 3.
  assert float(m.correct) == (log_probs.argmax(-1) == b['labels'][:3]).sum()


def test_multiple_choice_slot_loss_masks_padded_choices():
  model, config = _model()
  b = _choice_batch()
  loss, m = _jit_loss(model, b, _settings(config))
  scores = np.asarray(model.choose(_jnp(b)).logits, np.float64)
  want = []
  for e, n in enumerate([3, 2]):
    s = scores[e, :n]
    want.append(-(s[b['labels'][e]] - np.log(np.exp(s).sum())) / np.log(n))
  np.testing.assert_allclose(float(loss), np.mean(want), rtol=1e-5)
  assert float(m.num_examples) == 2.


def test_span_slot_loss_scales_by_candidate_positions():
  model, config = _model()
  b = _span_batch()
  loss, m = _jit_loss(model, b, _settings(config))
  out = model.span(_jnp(b))
  want = []
  for r in range(2):
    valid = b['span_mask'][r]
    per = []
    for logits, gold in ((out.start_logits, b['span_start'][r]), (out.end_logits,
                                                                  b['span_end'][r])):
      x = np.asarray(logits, np.float64)[r]
      per.append(-(x[gold] - np.log(np.exp(x[valid]).sum())))
    want.append(np.mean(per) / np.log(valid.sum()))
  np.testing.assert_allclose(float(loss), np.mean(want), rtol=1e-5)
  # Predictions: the best valid span.
  preds = objective.slot_predictions(model, _jnp(b), task_table=TABLE, settings=_settings(config))
  starts, ends = np.asarray(out.start_logits, np.float64), np.asarray(out.end_logits, np.float64)
  for r in range(2):
    s, e = int(preds.span_start[r]), int(preds.span_end[r])
    # A context span: the `<s>` at 0 ("not in this window") is a training target only.
    assert b['span_mask'][r, s] and b['span_mask'][r, e] and 0 < s <= e
    cols = [c for c in np.flatnonzero(b['span_mask'][r]) if c > 0]
    best = max((starts[r, i] + ends[r, j], i, j) for i in cols for j in cols if i <= j < i + 30)
    assert (s, e) == best[1:]
    np.testing.assert_allclose(float(preds.span_score[r]), best[0], rtol=1e-5)


def test_summarization_slot_loss_label_smoothing_and_vocab_scaling():
  model, config = _model('bart', BART_TABLE)
  settings = _settings(config, label_smoothing=0.1)
  b = _summarization_batch()
  loss, m = _jit_loss(model, b, settings, 'bart')
  logits = np.asarray(model.summarize(_jnp(b)).logits, np.float64)
  lprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  eps, eps_i = 0.1, 0.1 / (VOCAB - 1)
  want = []
  for r in range(2):
    mask = b['decoder_mask'][r]
    t = b['decoder_target_ids'][r][mask]
    lp = lprobs[r][mask]
    per_token = (1 - eps - eps_i) * -lp[np.arange(len(t)), t] + eps_i * -lp.sum(-1)
    want.append(per_token.mean() / np.log(VOCAB))
  np.testing.assert_allclose(float(loss), np.mean(want), rtol=1e-5)
  assert float(m.correct) == 0.


def test_absent_family_gives_zeros_and_empty_slot_is_finite():
  model, config = _model()
  b = _summarization_batch()  # a family this (RoBERTa) run does not have
  loss, m = _jit_loss(model, b, _settings(config))
  assert float(loss) == 0. and float(m.unscaled_loss) == 0.
  b = _classification_batch()
  b['example_mask'][:] = False
  loss, m = _jit_loss(model, b, _settings(config))
  assert float(loss) == 0. and float(m.num_examples) == 0.
  with pytest.raises(ValueError, match='model.type=bart'):
    objective.run_families(BART_TABLE, _settings(config))


def test_dropout_depends_only_on_the_rng_and_leaves_the_model_alone():
  table = TaskTable.build(['c2', 'c3'], [Family.CLASSIFICATION] * 2, [2, 3])
  model, config = _model(table=table)
  settings = _settings(config)
  snapshot = lambda: [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x) for x in jax.tree.leaves(nnx.state(model))]
  before = snapshot()
  b = _classification_batch()
  f = jax.jit(lambda m, k: objective.slot_loss(m, _jnp(b), k, task_table=table,
                                               settings=settings, deterministic=False)[0])
  a1, a2, c = f(model, jax.random.key(5)), f(model, jax.random.key(5)), f(model, jax.random.key(6))
  assert float(a1) == float(a2) != float(c)
  # Raw uint32 keys work too and give the same masks as the typed key with the same data.
  assert float(f(model, jax.random.key_data(jax.random.key(5)))) == float(a1)
  # Called eagerly (no jit boundary to hide mutations) the model's state is unchanged too.
  _loss(model, b, settings, table, key=5, deterministic=False)
  for x, y in zip(before, snapshot()):
    np.testing.assert_array_equal(x, y)


def test_inside_shard_map_with_devices_on_different_families():
  """Per-device lax.switch under shard_map (R4F and dropout on): no collective inside the
  branches, branch outputs of matching types, and the averaged gradient equals the average of
  the per-slot gradients computed one at a time. (R3F adds no new kind of op; left out to keep
  the compile short.)"""
  table = TaskTable.build(['c2', 'c3', 'span'],
                          [Family.CLASSIFICATION, Family.CLASSIFICATION, Family.SPAN], [2, 3, 0])
  model, config = _model(table=table, r4f=True)
  settings = _settings(config)
  graphdef, params, rest = _flat_params(model)
  slots = [_classification_batch(), _span_batch()]
  slots[1]['task_id'] = np.int32(2)
  keys = [jax.random.key(20), jax.random.key(21)]

  def loss(params, rest, b, key):
    m = nnx.merge(graphdef, params, rest)
    return objective.slot_loss(m, b, key, task_table=table, settings=settings)[0]

  grad = jax.jit(jax.grad(loss))
  want = jax.tree.map(lambda a, b: (a + b) / 2,
                      *[grad(params, rest, _jnp(b), k) for b, k in zip(slots, keys)])

  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ('data',))
  spec = jax.sharding.PartitionSpec

  def per_device(params, rest, batch, key_data):
    vary = lambda tree: jax.tree.map(lambda p: jax.lax.pcast(p, 'data', to='varying'), tree)
    g = jax.grad(loss)(vary(params), vary(rest), jax.tree.map(lambda x: x[0], batch),
                       key_data[0])
    return jax.lax.pmean(g, 'data')

  batch = jax.tree.map(lambda *x: jnp.stack(x), *[_jnp(b) for b in slots])
  key_data = jnp.stack([jax.random.key_data(k) for k in keys])
  got = jax.jit(jax.shard_map(per_device, mesh=mesh,
                              in_specs=(spec(), spec(), spec('data'), spec('data')),
                              out_specs=spec()))(params, rest, batch, key_data)
  scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(want))
  err = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(got),
                                                          jax.tree.leaves(want)))
  assert err < 1e-5 * scale, (err, scale)


# --- R3F --------------------------------------------------------------------------------------


def test_r3f_second_forward_only_when_enabled(monkeypatch):
  calls = []
  original = muppet.MuppetModel.encode_tokens
  monkeypatch.setattr(muppet.MuppetModel, 'encode_tokens',
                      lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
  # A classification-only run: no lax.switch (which would trace every family's branch).
  table = TaskTable.build(['c2', 'c3'], [Family.CLASSIFICATION] * 2, [2, 3])
  model, config = _model(table=table)
  b = _classification_batch()
  _loss(model, b, _settings(config, r3f=False), table)
  assert len(calls) == 1
  calls.clear()
  _loss(model, b, _settings(config, r3f=True), table)
  assert len(calls) == 2


# Independent references: the noise and the symmetric KL written here, not taken from our code.


def _test_noise(slot_key, shape, eps, kind):
  """R3F's embedding noise by its documented recipe: the slot key splits into (dropout key,
  noise key); U(-eps, eps) or eps * N(0, 1) in float32 from the noise key."""
  _, noise_key = jax.random.split(slot_key)
  if kind == 'uniform':
    return jax.random.uniform(noise_key, shape, jnp.float32, -eps, eps)
  return eps * jax.random.normal(noise_key, shape, jnp.float32)


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _np_symm_kl(clean_logits, noised_logits):
  """fairseq `_get_symm_kl` without its batch reduction, float64: F.kl_div(log q, p, 'sum') +
  F.kl_div(log p, q, 'sum') = sum_v p (log p - log q) + q (log q - log p), per leading index."""
  log_p, log_q = _np_log_softmax(clean_logits), _np_log_softmax(noised_logits)
  p, q = np.exp(log_p), np.exp(log_q)
  return (p * (log_p - log_q)).sum(-1) + (q * (log_q - log_p)).sum(-1)


CLS_TABLE = TaskTable.build(['c2', 'c3'], [Family.CLASSIFICATION] * 2, [2, 3])


@pytest.mark.parametrize('noise,scale_by_log_n,loss_scaling',
                         [('uniform', False, True), ('normal', True, True),
                          ('uniform', True, False)])
def test_r3f_term_equals_manual_computation(noise, scale_by_log_n, loss_scaling):
  """Classification R3F against NumPy: ce / log(n) + lambda * symKL [/ log(n)] per example."""
  model, config = _model(table=CLS_TABLE)
  settings = _settings(config, r3f=True, r3f_eps=1.0, r3f_noise=noise, r3f_lambda=0.7,
                       r3f_scale_by_log_n=scale_by_log_n, loss_scaling=loss_scaling)
  b = _classification_batch()
  jb = _jnp(b)
  loss, m = jax.jit(lambda mdl, k: objective.slot_loss(
      mdl, jb, k, task_table=CLS_TABLE, settings=settings, deterministic=True))(
          model, jax.random.key(3))
  emb = model.embed_tokens(jb['input_ids'])
  noised_emb = emb + _test_noise(jax.random.key(3), emb.shape, 1.0, noise).astype(emb.dtype)
  clean = np.asarray(model.classify(jb).logits, np.float64)[:3, :3]  # task 1: 3 classes
  noised = np.asarray(model.classify(jb, noised_emb).logits, np.float64)[:3, :3]
  kl = _np_symm_kl(clean, noised)
  ce = -_np_log_softmax(clean)[np.arange(3), b['labels'][:3]]
  log_n = np.log(3.) if loss_scaling else 1.
  kl_scale = log_n if scale_by_log_n else 1.
  want = np.mean(ce / log_n + 0.7 * kl / kl_scale)
  np.testing.assert_allclose(float(m.sym_kl), kl.mean(), rtol=1e-4)
  assert float(m.sym_kl) > 1e-2  # the noise is large enough for the term to matter
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(m.task_loss), np.mean(ce / log_n), rtol=1e-5)
  # The other weighting (KL / log 3 vs KL) differs by far more than the tolerance.
  other = np.mean(ce / log_n + 0.7 * kl / (1. if scale_by_log_n else np.log(3.)))
  if loss_scaling:
    assert abs(other - want) > 100 * 1e-5 * abs(want)


def _fairseq_r3f_sentence(clean_logits, noised_logits, targets, smoothing, r3f_lambda):
  """fairseq's label_smoothed_cross_entropy_r3f on a batch of ONE target sentence, per token
  of its gradient normaliser (sample_size = ntokens), in float64.

  loss = sum_t ls_nll_t + lambda * symm_kl * sample_size, with symm_kl = (sum over the
  sentence's tokens of the per-token symmetric KL) / batch size (1); the trainer divides by
  sample_size. Returns (label-smoothed CE per token, lambda-free KL weight per sentence)."""
  lprobs = _np_log_softmax(clean_logits)  # [T, V]
  vocab = lprobs.shape[-1]
  nll = -lprobs[np.arange(len(targets)), targets]
  smooth = -lprobs.sum(-1)
  eps_i = smoothing / (vocab - 1)
  ls_loss_sum = ((1. - smoothing - eps_i) * nll + eps_i * smooth).sum()
  sample_size = len(targets)  # ntokens (sentence_avg off)
  symm_kl = _np_symm_kl(clean_logits, noised_logits).sum() / 1  # / noised_logits.size(0)
  total = ls_loss_sum + r3f_lambda * symm_kl * sample_size
  ce_per_token = ls_loss_sum / sample_size
  kl_weight = (total / sample_size - ce_per_token) / r3f_lambda
  return ce_per_token, kl_weight


def test_summarization_r3f_weight_is_the_fairseq_sum_over_target_tokens():
  """Default settings: each example's loss is fairseq's per-sentence objective with the CE
  log(V)-scaled (the KL is not, train.r3f.scale_by_log_n=False); 'mean' divides each
  example's KL by its real target token count."""
  model, config = _model('bart', BART_TABLE)
  config.train.r3f.enabled = True
  config.train.r3f.lambda_ = 0.6
  config.train.r3f.eps = 0.2
  config.train.r3f.noise = 'normal'
  settings = _settings(config)  # token_reduction and scale_by_log_n from the defaults
  assert (settings.r3f_token_reduction, settings.r3f_scale_by_log_n) == ('sum', False)
  b = _summarization_batch()
  jb = _jnp(b)
  key = jax.random.key(9)
  emb = model.embed_tokens(jb['input_ids'])
  noised_emb = emb + _test_noise(key, emb.shape, 0.2, 'normal').astype(emb.dtype)
  clean = np.asarray(model.summarize(jb).logits, np.float64)
  noised = np.asarray(model.summarize(jb, noised_emb).logits, np.float64)
  want, kl_sum = [], []
  lengths = b['decoder_mask'].sum(-1)[:2]
  assert list(lengths) == [4, 2]
  for r in range(2):
    mask = b['decoder_mask'][r]  # padding target positions are excluded (docs/FIDELITY.md)
    ce, kl = _fairseq_r3f_sentence(clean[r][mask], noised[r][mask],
                                   b['decoder_target_ids'][r][mask], 0.1, 0.6)
    want.append(ce / np.log(VOCAB) + 0.6 * kl)
    kl_sum.append(kl)

  f = lambda s, bb: jax.jit(lambda mdl, k: objective.slot_loss(
      mdl, _jnp(bb), k, task_table=BART_TABLE, settings=s, deterministic=True))(model, key)
  loss, m = f(settings, b)
  np.testing.assert_allclose(float(loss), np.mean(want), rtol=1e-5)
  np.testing.assert_allclose(float(m.sym_kl), np.mean(kl_sum), rtol=1e-4)
  assert min(kl_sum) > 1e-3

  # 'mean': per example KL / T_e; the per-example ratio sum / mean is T_e.
  mean_settings = _settings(config, r3f_token_reduction='mean')
  loss_mean, m_mean = f(mean_settings, b)
  np.testing.assert_allclose(float(m_mean.sym_kl), np.mean(np.array(kl_sum) / lengths),
                             rtol=1e-4)
  ce_scaled = [w - 0.6 * k for w, k in zip(want, kl_sum)]
  np.testing.assert_allclose(
      float(loss_mean), np.mean(np.array(ce_scaled) + 0.6 * np.array(kl_sum) / lengths),
      rtol=1e-5)
  for e in range(2):
    one = {k: v.copy() for k, v in b.items()}
    one['example_mask'][:] = False
    one['example_mask'][e] = True
    (_, ms), (_, mm) = f(settings, one), f(mean_settings, one)
    np.testing.assert_allclose(float(ms.sym_kl) / float(mm.sym_kl), lengths[e], rtol=1e-5)

  # scale_by_log_n: the summed KL is divided by log(V) as well.
  loss_scaled, _ = f(_settings(config, r3f_scale_by_log_n=True), b)
  np.testing.assert_allclose(
      float(loss_scaled), np.mean(np.array(ce_scaled) + 0.6 * np.array(kl_sum) / np.log(VOCAB)),
      rtol=1e-5)


def test_r3f_settings_reject_unknown_token_reduction():
  with pytest.raises(ValueError, match='token_reduction'):
    objective.ObjectiveSettings(r3f_token_reduction='max')
  config = config_lib.default()
  assert config.train.r3f.token_reduction == 'sum' and not config.train.r3f.scale_by_log_n


def _flat_params(model):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, params, rest


def _fd_check(f, params, picks, h=FD_STEP):
  """Finite differences of scalar f(params) at the (path, index) coordinates in `picks`.

  Five-point central stencil (truncation error O(h^4)), so that a step large enough for float32
  rounding (~1e-7 relative in f) still gives ~1e-4 relative accuracy.
  """
  flat = dict(nnx.to_flat_state(params))
  out = []
  for path, index in picks:
    def shifted(delta):
      variable = flat[path]
      new = dict(flat)
      new[path] = variable.replace(variable[...].at[index].add(delta))
      return float(f(nnx.from_flat_state(new)))
    out.append((-shifted(2 * h) + 8 * shifted(h) - 8 * shifted(-h) + shifted(-2 * h)) / (12 * h))
  return np.array(out)


def _grad_at(grads, picks):
  flat = dict(nnx.to_flat_state(grads))
  return np.array([float(flat[path][...][index]) for path, index in picks])


FD_RTOL, FD_ATOL = 1e-3, 3e-5  # float32: f is rounded at ~1e-7, the stencil amplifies by ~1e2


def _r3f_gradient_check(kind, table, b, key, picks):
  """jax.grad of slot_loss (R3F on, dropout off) against finite differences at `picks`.

  Also checks that the R3F term's share of those gradients is well above the tolerance (so the
  comparison would catch a missing or wrong gradient path of the second forward).
  Returns (graphdef, params, rest, settings, grads, objective function of params).
  """
  model, config = _model(kind, table)
  settings = _settings(config, r3f=True, r3f_eps=0.3, r3f_noise='normal')
  graphdef, params, rest = _flat_params(model)

  def make_f(settings):
    @jax.jit
    def f(params):
      m = nnx.merge(graphdef, params, rest)
      return objective.slot_loss(m, b, key, task_table=table, settings=settings,
                                 deterministic=True)[0]
    return f

  f = make_f(settings)
  grads = jax.jit(jax.grad(f))(params)
  fd, g = _fd_check(f, params, picks), _grad_at(grads, picks)
  # The gradient without the R3F term, by finite differences too (a forward compile only).
  g_no_r3f = _fd_check(make_f(_settings(config, r3f=False)), params, picks)
  err = np.abs(g - fd)
  print(f'\nR3F {kind}: grad {g}\n  finite differences {fd}\n  |diff| {err} (max rel '
        f'{np.max(err / np.abs(fd)):.2e}); R3F share of the gradient {np.abs(g - g_no_r3f)}')
  np.testing.assert_allclose(g, fd, rtol=FD_RTOL, atol=FD_ATOL)
  assert np.all(np.abs(g - g_no_r3f) > 10 * FD_ATOL)
  return graphdef, params, rest, settings, grads, f


def test_r3f_classification_gradient_finite_differences_and_stop_gradient():
  table = TaskTable.build(['c2', 'c3'], [Family.CLASSIFICATION] * 2, [2, 3])
  b = _jnp(_classification_batch())
  key = jax.random.key(11)
  # Parameters off the noised path's stop-gradient: gradient == finite differences.
  picks = [(('backbone', 'encoder', 'layer', 0, 'attention', 'self', 'query', 'kernel'), (3, 5)),
           (('backbone', 'embeddings', 'position_embeddings', 'embedding'), (4, 2)),
           (('classification_heads', 'out_proj', 'kernel'), (1, 7, 2)),
           (('classification_heads', 'dense', 'kernel'), (1, 3, 4))]
  graphdef, params, rest, settings, grads, f = _r3f_gradient_check('roberta', table, b, key, picks)

  # The word-embedding table: the noised path starts from stop_gradient(embeddings), so its
  # gradient is that of an objective whose noised input embeddings are constants.
  model = nnx.merge(graphdef, params, rest)
  emb = model.embed_tokens(b['input_ids'])
  frozen = emb + _test_noise(key, emb.shape, settings.r3f_eps, settings.r3f_noise)

  def f_explicit(params, noised_source):
    """The objective written out here (jnp, differentiable): task 1 has 3 classes."""
    m = nnx.merge(graphdef, params, rest)
    clean = jax.nn.log_softmax(m.classify(b).logits[:, :3].astype(jnp.float32))
    noised = jax.nn.log_softmax(m.classify(b, noised_source(m)).logits[:, :3]
                                .astype(jnp.float32))
    ce = -jnp.take_along_axis(clean, b['labels'][:, None], axis=-1)[:, 0]
    kl = jnp.sum((jnp.exp(clean) - jnp.exp(noised)) * (clean - noised), axis=-1)
    per = ce / np.log(3.) + kl
    real = b['example_mask'].astype(jnp.float32)
    return jnp.sum(per * real) / jnp.sum(real)

  table_path = ('backbone', 'embeddings', 'word_embeddings', 'embedding')
  grad_of = lambda source: np.asarray(dict(nnx.to_flat_state(
      jax.jit(jax.grad(f_explicit), static_argnums=1)(params, source)))[table_path][...])
  g_table = np.asarray(dict(nnx.to_flat_state(grads))[table_path][...])
  g_frozen = grad_of(lambda m: frozen)
  g_through = grad_of(lambda m: m.embed_tokens(b['input_ids']) + (frozen - emb))
  np.testing.assert_allclose(float(f(params)), float(f_explicit(params, lambda m: frozen)),
                             rtol=1e-6)
  np.testing.assert_allclose(g_table, g_frozen, rtol=1e-4, atol=1e-7)
  # ... which differs from letting the gradient through the noised lookup as well.
  print('word-embedding gradient: max |ours - frozen-noise formula|',
        np.abs(g_table - g_frozen).max(), '; max |through the noised pass - frozen|',
        np.abs(g_through - g_frozen).max())
  assert np.abs(g_through - g_frozen).max() > 100 * np.abs(g_table - g_frozen).max()


def test_r3f_summarization_gradient_finite_differences():
  b = _jnp(_summarization_batch())
  token = int(b['input_ids'][0, 2])
  # No stop-gradient for seq2seq: the shared table's gradient includes the noised pass.
  picks = [(('backbone', 'shared', 'embedding'), (token, 1)),
           (('backbone', 'shared', 'embedding'), (token, 9)),
           (('backbone', 'encoder', 'layers', 0, 'fc1', 'kernel'), (2, 3)),
           (('backbone', 'decoder', 'layers', 0, 'encoder_attn', 'v_proj', 'kernel'), (5, 1))]
  _r3f_gradient_check('bart', BART_TABLE, b, jax.random.key(12), picks)


# --- Compile cost of many classification heads --------------------------------------------------


def _compile_stats(num_heads: int, deterministic: bool = True,
                   r3f: bool = False) -> tuple[int, int]:
  """(compiled program text size, StableHLO text size) of the jitted value-and-gradient of
  `slot_loss` for a run with `num_heads` classification tasks."""
  names = [f'c{i}' for i in range(num_heads)]
  table = TaskTable.build(names, [Family.CLASSIFICATION] * num_heads,
                          [2 + i % 4 for i in range(num_heads)])
  model, config = _model(table=table)
  settings = _settings(config, r3f=r3f)
  graphdef, params, rest = _flat_params(model)
  b = _jnp(_classification_batch(task_id=1))

  def f(params, rest, batch, key):
    m = nnx.merge(graphdef, params, rest)
    return objective.slot_loss(m, batch, key, task_table=table, settings=settings,
                               deterministic=deterministic)[0]

  lowered = jax.jit(jax.value_and_grad(f)).lower(params, rest, b, jax.random.key(0))
  return len(lowered.compile().as_text()), len(lowered.as_text())


def test_program_size_does_not_grow_with_heads():
  """The stacked heads are indexed by the traced task id: 26 classification tasks compile to
  the same program as 2. Program sizes are asserted, not compile time (noisy on a shared
  host)."""
  size2, hlo2 = _compile_stats(2)
  size26, hlo26 = _compile_stats(26)
  print(f'\n2 heads: compiled text {size2} chars, StableHLO {hlo2} chars; 26 heads: compiled '
        f'text {size26} chars, StableHLO {hlo26} chars; ratios: compiled size '
        f'{size26 / size2:.4f}, StableHLO {hlo26 / hlo2:.4f}')
  assert size26 <= 1.10 * size2
  assert hlo26 <= 1.10 * hlo2


@pytest.mark.parametrize('kind,batch_fn,table', [
    ('roberta', _span_batch, TABLE), ('bart', _summarization_batch, BART_TABLE)])
def test_r3f_one_pass_equals_two_passes(kind, batch_fn, table):
  """train.r3f.one_pass: the clean and noised inputs as one doubled batch give the loss, the
  symmetric KL and the gradients of the two-pass step (dropout off: the passes then differ
  only in how the rows are grouped): the backbone pass the classification, multiple-choice
  and span heads share (here through the span head), and BART's summarization."""
  model, config = _model(kind, table=table)
  b = _jnp(batch_fn())
  results = {}
  for one_pass in (False, True):
    settings = _settings(config, r3f=True, r3f_eps=0.5, r3f_one_pass=one_pass)

    def loss(m, settings=settings):
      return objective.slot_loss(m, b, jax.random.key(5), task_table=table, settings=settings,
                                 deterministic=True)

    (value, metrics), grads = jax.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    results[one_pass] = value, metrics, jax.tree.leaves(nnx.state(grads, nnx.Param))
  (v2, m2, g2), (v1, m1, g1) = results[False], results[True]
  assert float(m2.sym_kl) > 1e-4  # The KL term is in play.
  np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5)
  np.testing.assert_allclose(float(m1.sym_kl), float(m2.sym_kl), rtol=1e-4, atol=1e-7)
  scale = max(float(jnp.max(jnp.abs(g))) for g in g2)
  for a, e in zip(g1, g2):
    np.testing.assert_allclose(a, e, atol=1e-5 * scale, rtol=0)


def test_r3f_one_pass_runs_the_backbone_once(monkeypatch):
  calls = []
  original = muppet.MuppetModel.encode_tokens
  monkeypatch.setattr(muppet.MuppetModel, 'encode_tokens',
                      lambda self, batch, *a, **k: calls.append(batch['input_ids'].shape[0])
                      or original(self, batch, *a, **k))
  model, config = _model(table=CLS_TABLE)
  _loss(model, _classification_batch(), _settings(config, r3f=True, r3f_one_pass=True),
        CLS_TABLE)
  assert calls == [2 * SHAPE.rows]  # One pass over the doubled rows.
