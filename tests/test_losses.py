"""Losses, log(n) scaling and the symmetric KL against hand computations in NumPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from muppet_jax import losses


def _np_log_softmax(x, mask=None):
  x = np.asarray(x, np.float64)
  if mask is not None:
    x = np.where(mask, x, -np.inf)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_cross_entropy_by_hand():
  logits = np.array([[1., 2., 0.5], [0., 0., 0.]], np.float32)
  labels = np.array([1, 2])
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  # Example 0: -log(e^2 / (e^1 + e^2 + e^0.5)); example 1: uniform over 3 -> log 3.
  want0 = -(2. - math.log(math.exp(1.) + math.exp(2.) + math.exp(.5)))
  np.testing.assert_allclose(np.asarray(got), [want0, math.log(3.)], rtol=1e-6)
  assert got.dtype == jnp.float32


def test_cross_entropy_masked_classes_and_bf16():
  # A 2-class task in a 4-wide stacked head: classes 2, 3 must not take probability mass.
  logits = np.array([[0.3, -0.2, 50., 50.], [1., 1., 9., -9.]], np.float32)
  mask = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], bool)
  labels = np.array([0, 1])
  got = losses.cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels),
                             jnp.asarray(mask))
  assert got.dtype == jnp.float32
  want = -_np_log_softmax(np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float64)[:, :2])
  np.testing.assert_allclose(np.asarray(got), [want[0, 0], want[1, 1]], rtol=1e-6)
  # Gradients into masked classes are exactly zero and finite everywhere.
  g = jax.grad(lambda x: losses.cross_entropy(x, jnp.asarray(labels), jnp.asarray(mask)).sum())(
      jnp.asarray(logits))
  assert np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_array_equal(np.asarray(g)[:, 2:], 0.)


def test_sentence_ranking_with_padded_choices():
  scores = np.array([[2., 1., 7., 7.], [0.5, -0.5, 0., 3.], [0., 0., 0., 0.]], np.float32)
  choice_mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)  # row 2: padding
  labels = np.array([1, 3, 0])
  got = np.asarray(losses.sentence_ranking(jnp.asarray(scores), jnp.asarray(labels),
                                           jnp.asarray(choice_mask)))
  ls0 = _np_log_softmax(scores[0, :2])
  ls1 = _np_log_softmax(scores[1])
  np.testing.assert_allclose(got[:2], [-ls0[1], -ls1[3]], rtol=1e-6)
  assert np.isfinite(got[2])  # A padding example stays finite (masked out later).
  g = jax.grad(lambda s: losses.sentence_ranking(s, jnp.asarray(labels),
                                                 jnp.asarray(choice_mask)).sum())(
                                                     jnp.asarray(scores))
  assert np.all(np.isfinite(np.asarray(g)))


def test_span_loss_by_hand():
  rng = np.random.default_rng(0)
  start_logits = rng.normal(size=(2, 6)).astype(np.float32)
  end_logits = rng.normal(size=(2, 6)).astype(np.float32)
  position_mask = np.array([[1, 0, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], bool)
  start, end = np.array([2, 0]), np.array([4, 2])
  got = np.asarray(losses.span_loss(*map(jnp.asarray, (start_logits, end_logits, start, end,
                                                       position_mask))))
  ls = _np_log_softmax(start_logits, position_mask)
  le = _np_log_softmax(end_logits, position_mask)
  want = [0.5 * (-ls[i, start[i]] - le[i, end[i]]) for i in range(2)]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def _fairseq_label_smoothed(lprobs, target, epsilon):
  """fairseq.criterions.label_smoothed_cross_entropy.label_smoothed_nll_loss, per token."""
  nll = -np.take_along_axis(lprobs, target[..., None], -1)[..., 0]
  smooth = -lprobs.sum(-1)
  eps_i = epsilon / (lprobs.shape[-1] - 1)
  return (1. - epsilon - eps_i) * nll + eps_i * smooth


@pytest.mark.parametrize('smoothing', [0.0, 0.1, 0.3])
def test_label_smoothed_cross_entropy_vs_fairseq(smoothing):
  rng = np.random.default_rng(1)
  e, t, v = 3, 5, 11
  logits = rng.normal(size=(e, t, v)).astype(np.float32) * 3
  targets = rng.integers(0, v, size=(e, t))
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
  targets[~mask] = 0
  got = np.asarray(losses.label_smoothed_cross_entropy(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), smoothing))
  per_token = _fairseq_label_smoothed(_np_log_softmax(logits), targets, smoothing)
  want = [per_token[0, :3].mean(), per_token[1].mean(), 0.]
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
  if smoothing == 0.:
    np.testing.assert_allclose(got[:2], [-np.mean([_np_log_softmax(logits)[0, i, targets[0, i]]
                                                   for i in range(3)]),
                                         -np.mean([_np_log_softmax(logits)[1, i, targets[1, i]]
                                                   for i in range(5)])], rtol=2e-6)


def test_label_smoothing_is_cross_entropy_against_smoothed_target():
  # Equivalent form: CE against q = (1 - eps) on the target and eps / (V - 1) elsewhere.
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(1, 1, 7)).astype(np.float32)
  eps = 0.2
  q = np.full(7, eps / 6)
  q[3] = 1 - eps
  got = losses.label_smoothed_cross_entropy(jnp.asarray(logits), jnp.array([[3]]),
                                            jnp.array([[True]]), eps)
  np.testing.assert_allclose(float(got[0]), -(q * _np_log_softmax(logits[0, 0])).sum(), rtol=1e-6)


def test_log_n_scale_factors():
  loss = jnp.ones(6)
  # classes (2, 3), valid choices (5), candidate positions (137), vocabulary (50265), padding (0)
  n = jnp.array([2., 3., 5., 137., 50265., 0.])
  got = np.asarray(losses.log_n_scale(loss, n))
  want = [1 / math.log(2), 1 / math.log(3), 1 / math.log(5), 1 / math.log(137),
          1 / math.log(50265), 1 / math.log(2)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(losses.log_n_scale(loss, n, enabled=False)), 1.)
  # A uniform prediction has scaled loss 1 whatever n is (the point of eq. 1).
  for k in (2, 3, 7):
    ce = losses.cross_entropy(jnp.zeros((1, k)), jnp.array([0]))
    np.testing.assert_allclose(float(losses.log_n_scale(ce, jnp.array([k]))[0]), 1., rtol=1e-6)


def test_masked_mean():
  v = jnp.array([1., 2., 3., jnp.nan])
  m = jnp.array([True, False, True, False])
  assert float(losses.masked_mean(v, m)) == 2.
  assert float(losses.masked_mean(v, jnp.zeros(4, bool))) == 0.
  per_token = jnp.array([[1., 3., 100.], [2., 2., 2.]])
  tok_mask = jnp.array([[1, 1, 0], [0, 0, 0]], bool)
  np.testing.assert_allclose(np.asarray(losses.masked_mean(per_token, tok_mask, axis=-1)),
                             [2., 0.])


def test_masked_sum():
  v = jnp.array([1., 2., 3., jnp.nan])  # a NaN in a masked slot must not leak
  m = jnp.array([True, False, True, False])
  assert float(losses.masked_sum(v, m)) == 4.
  assert float(losses.masked_sum(v, jnp.zeros(4, bool))) == 0.
  per_token = jnp.array([[1., 3., 100.], [2., 2., 2.]], jnp.bfloat16)
  tok_mask = jnp.array([[1, 1, 0], [0, 0, 0]], bool)
  got = losses.masked_sum(per_token, tok_mask, axis=-1)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(got), [4., 0.])


def _np_symmetric_kl(p_logits, q_logits, mask=None):
  lp = _np_log_softmax(p_logits, mask)
  lq = _np_log_softmax(q_logits, mask)
  p, q = np.exp(lp), np.exp(lq)
  with np.errstate(invalid='ignore'):
    kl_pq = np.where(p > 0, p * (lp - lq), 0.)
    kl_qp = np.where(q > 0, q * (lq - lp), 0.)
  return (kl_pq + kl_qp).sum(-1)


def test_symmetric_kl_vs_float64_numpy():
  rng = np.random.default_rng(3)
  p = rng.normal(size=(4, 6)).astype(np.float32)
  q = (p + rng.normal(scale=0.5, size=(4, 6))).astype(np.float32)
  mask = np.ones((4, 6), bool)
  mask[1, 4:] = False
  mask[2, 1] = False
  got = np.asarray(losses.symmetric_kl(jnp.asarray(p), jnp.asarray(q), jnp.asarray(mask)))
  np.testing.assert_allclose(got, _np_symmetric_kl(p, q, mask), rtol=1e-5, atol=1e-7)
  got_nomask = np.asarray(losses.symmetric_kl(jnp.asarray(p), jnp.asarray(q)))
  np.testing.assert_allclose(got_nomask, _np_symmetric_kl(p, q), rtol=1e-5, atol=1e-7)
  # Equals fairseq's _get_symm_kl * batch size when summed: KL(p||q) + KL(q||p).
  np.testing.assert_allclose(float(losses.symmetric_kl(jnp.asarray(p), jnp.asarray(p)).sum()),
                             0., atol=1e-7)
  # Masked logits do not matter, even huge ones, and gradients stay finite.
  p2 = p.copy()
  p2[1, 4:] = 1e4
  got2 = losses.symmetric_kl(jnp.asarray(p2), jnp.asarray(q), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got2), got, rtol=1e-6)
  g = jax.grad(lambda a: losses.symmetric_kl(a, jnp.asarray(q), jnp.asarray(mask)).sum())(
      jnp.asarray(p2))
  assert np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_array_equal(np.asarray(g)[~mask], 0.)


def test_symmetric_kl_per_token_then_per_example():
  rng = np.random.default_rng(4)
  p = rng.normal(size=(2, 3, 9)).astype(np.float32)
  q = (p + rng.normal(scale=0.3, size=p.shape)).astype(np.float32)
  tok_mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
  per_token = losses.symmetric_kl(jnp.asarray(p), jnp.asarray(q))
  assert per_token.shape == (2, 3)
  per_example = np.asarray(losses.masked_mean(per_token, jnp.asarray(tok_mask), axis=-1))
  ref = _np_symmetric_kl(p, q)
  np.testing.assert_allclose(per_example, [ref[0, :2].mean(), ref[1, 0]], rtol=1e-5)
  # The authors' seq2seq weight: the sum over each example's real tokens (T_e times the mean).
  summed = np.asarray(losses.masked_sum(per_token, jnp.asarray(tok_mask), axis=-1))
  np.testing.assert_allclose(summed, [ref[0, :2].sum(), ref[1, 0]], rtol=1e-5)


def test_symmetric_kl_small_perturbation_is_second_order():
  # R3F's noise is tiny: the term is O(delta^2) and positive.
  p = jnp.array([[0.1, -0.4, 0.9]])
  d = jnp.array([[1., -2., 0.5]])
  k1 = float(losses.symmetric_kl(p, p + 1e-2 * d)[0])
  k2 = float(losses.symmetric_kl(p, p + 2e-2 * d)[0])
  assert k1 > 0
  np.testing.assert_allclose(k2 / k1, 4., rtol=1e-2)
