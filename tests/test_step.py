"""The heterogeneous multi-device step on 8 fake CPU devices (set in conftest.py).

The reference is computed one slot at a time on one device, without shard_map: the step must
return the plain average of the per-slot gradients, whatever the devices x accumulation split.
"""

import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import demo as demo_config
from muppet_jax import objective
from muppet_jax import rng as rng_lib
from muppet_jax import sharding
from muppet_jax import step as step_lib
from muppet_jax.data import batching
from muppet_jax.data import demo
from muppet_jax.data import vocab as vocab_lib
from muppet_jax.data.features import BatchShape, Family, TaskTable
from muppet_jax.models import hf
from muppet_jax.models import muppet

# One slot per entry: every family appears, some tasks twice.
SLOT_TASKS = ('demo_sentiment', 'demo_choice', 'demo_span', 'demo_summarize', 'demo_compare',
              'demo_topic', 'demo_span', 'demo_summarize')


@functools.cache
def _setup(tmp_dir: str):
  config = demo_config.get_config('bart')
  vocab = vocab_lib.HFVocabulary(demo.build_tokenizer(tmp_dir))
  records = demo.RECORDS
  table = TaskTable.build([r.task_name for r in records], [int(r.family) for r in records],
                          [r.num_classes for r in records])
  shape = BatchShape(rows=2, length=64, max_examples=12, max_choices=5, decoder_length=16)
  builder = batching.SubBatchBuilder(shape, vocab, table, model_type='bart', span_stride=16)
  subs = []
  for i, slug in enumerate(SLOT_TASKS):
    examples = demo.examples(slug, 'train')[i * 7:]  # Different examples for repeated tasks.
    subs.append(builder.build(builder.stream(f'muppet_{slug}', examples)).arrays)
  hf_config = hf.config_from_shape(
      'bart', hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
      max_position_embeddings=80, vocab_size=vocab.vocab_size, dropout=0.1,
      attention_dropout=0.1, pad_token_id=vocab.pad_id, bos_token_id=vocab.bos_id,
      eos_token_id=vocab.eos_id)
  model = muppet.build_model(config, hf_config, table, rngs=nnx.Rngs(params=0, dropout=1))
  return config, vocab, table, subs, model


def _reference_grads(model, subs, table, settings, rng, step, rng_impl='threefry'):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  base = rng_lib.wrap(rng, rng_impl)

  def loss(p, sub, key):
    return objective.slot_loss(nnx.merge(graphdef, p, rest), sub, key, task_table=table,
                               settings=settings, deterministic=False)[0]

  grad = jax.jit(jax.grad(loss))
  total = None
  for s, sub in enumerate(subs):
    g = grad(params, sub, step_lib.slot_rng(base, jnp.int32(step), jnp.int32(s)))
    total = g if total is None else jax.tree.map(jnp.add, total, g)
  return jax.tree.map(lambda x: x / len(subs), total)


def _stack(subs, accum, devices):
  """Slot s = a * D + d -> batch[a, d]."""
  return {k: np.stack([np.stack([subs[a * devices + d][k] for d in range(devices)])
                       for a in range(accum)]) for k in subs[0]}


def _max_rel_err(got, want):
  """Per-leaf max |got - want| / max |want|, the denominator floored at 1e-3 x the global max.

  The floor matters for attention key biases: their gradient is analytically zero (softmax is
  invariant to a per-query shift), so both sides are rounding noise around 1e-9.
  """
  global_max = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))
  errs = jax.tree.map(
      lambda g, w: float(jnp.max(jnp.abs(g - w))) / max(float(jnp.max(jnp.abs(w))),
                                                          1e-3 * global_max), got, want)
  return max(jax.tree.leaves(errs))


@pytest.mark.parametrize('r3f,splits', [(False, ((8, 1), (2, 4))), (True, ((4, 2),))])
def test_gradient_is_average_of_per_slot_gradients(tmp_path_factory, r3f, splits):
  config, vocab, table, subs, model = _setup(str(tmp_path_factory.mktemp('tok')))
  assert {int(s['family_id']) for s in subs} == {int(f) for f in Family}
  config = config.copy_and_resolve_references()
  config.train.r3f.enabled = r3f
  settings = objective.ObjectiveSettings.from_config(config, vocab.vocab_size)
  rng = jax.random.key_data(jax.random.key(7))
  step = 3
  want = _reference_grads(model, subs, table, settings, rng, step)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  for devices, accum in splits:
    layout = sharding.make_mesh(_mesh_config(devices))
    fn = jax.jit(step_lib.make_gradient_fn(graphdef, table, settings, layout.mesh))
    batch = sharding.global_batch(layout, _stack(subs, accum, devices))
    got, sums = fn(params, rest, batch, rng, jnp.int32(step))
    jax.block_until_ready(got)
    err = _max_rel_err(got, want)
    assert err < 1e-5, f'{devices} devices x {accum}: relative error {err}'
    assert float(jnp.sum(sums['task_slots'])) == len(subs)
    if not r3f:
      assert float(jnp.sum(sums['task_sym_kl'])) == 0.0


def test_hardware_generator_keeps_the_layout_invariance(tmp_path_factory):
  """train.rng_impl='rbg' (XLA's RngBitGenerator, the accelerators' hardware generator): the
  step's gradient is still the average of the per-slot gradients, each slot's masks drawn from
  its own key, whatever the devices x accumulation split."""
  config, vocab, table, subs, model = _setup(str(tmp_path_factory.mktemp('tok')))
  settings = objective.ObjectiveSettings.from_config(config, vocab.vocab_size)
  rng = rng_lib.base_key_data(11, 'rbg')
  assert rng.shape == (4,)
  want = _reference_grads(model, subs, table, settings, rng, 2, 'rbg')
  threefry = _reference_grads(model, subs, table, settings,
                              jax.random.key_data(jax.random.key(11)), 2)
  assert _max_rel_err(threefry, want) > 1e-3  # Other generator, other masks.
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  for devices, accum in ((8, 1), (2, 4)):
    layout = sharding.make_mesh(_mesh_config(devices))
    fn = jax.jit(step_lib.make_gradient_fn(graphdef, table, settings, layout.mesh,
                                           rng_impl='rbg'))
    got, _ = fn(params, rest, sharding.global_batch(layout, _stack(subs, accum, devices)),
                rng, jnp.int32(2))
    err = _max_rel_err(jax.block_until_ready(got), want)
    assert err < 1e-5, f'{devices} devices x {accum}: relative error {err}'


def test_rng_impl_resolution():
  assert rng_lib.resolve('auto', 'cpu') == 'threefry'
  assert rng_lib.resolve('auto', 'tpu') == 'rbg' == rng_lib.resolve('auto', 'gpu')
  assert rng_lib.resolve('unsafe_rbg', 'cpu') == 'unsafe_rbg'
  with pytest.raises(ValueError, match='rng_impl'):
    rng_lib.resolve('philox', 'cpu')


def _mesh_config(devices):
  return ml_collections.ConfigDict({'data': devices, 'model': 1})


def test_collectives_do_not_depend_on_number_of_tasks(tmp_path_factory):
  """Compiled step for 2 vs 26 classification tasks: the same all-reduce count."""
  config, vocab, _, subs, _ = _setup(str(tmp_path_factory.mktemp('tok')))
  layout = sharding.make_mesh(_mesh_config(8))
  counts = {}
  for num_cls in (2, 26):
    names = [f'cls_{i}' for i in range(num_cls)] + ['mc', 'span']
    families = [Family.CLASSIFICATION] * num_cls + [Family.MULTIPLE_CHOICE, Family.SPAN]
    table = TaskTable.build(names, families, [2 + i % 3 for i in range(num_cls)] + [5, 0])
    hf_config = hf.config_from_shape(
        'roberta', hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
        max_position_embeddings=80, vocab_size=vocab.vocab_size, dropout=0.0,
        attention_dropout=0.0, pad_token_id=vocab.pad_id, bos_token_id=vocab.bos_id,
        eos_token_id=vocab.eos_id)
    rcfg = demo_config.get_config()
    model = muppet.build_model(rcfg, hf_config, table, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    settings = objective.ObjectiveSettings.from_config(rcfg, vocab.vocab_size)
    fn = jax.jit(step_lib.make_gradient_fn(graphdef, table, settings, layout.mesh))
    shape = BatchShape(rows=2, length=64, max_examples=12, max_choices=5, decoder_length=16)
    batch = sharding.global_batch(layout, shape.zeros((1, 8)))
    text = fn.lower(params, rest, batch, jax.random.key_data(jax.random.key(0)),
                    jnp.int32(0)).compile().as_text()
    counts[num_cls] = len(re.findall(r'\ball-reduce(?:-start)?\(', text))
  assert counts[2] == counts[26] > 0, counts
