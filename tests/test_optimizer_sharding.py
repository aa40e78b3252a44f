"""ZeRO-1 (`optim.shard_moments`): Adam's moments split over the mesh's data axis, on 8 fake CPU
devices. The update must be the same as with replicated moments; each device holds 1/D of
every moment that D divides. `optim.shard_params`: the weights split the same way, gathered
once per update (matmul kernels in the matmul dtype) and the gradients reduce-scattered."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from muppet_jax import objective
from muppet_jax import optim
from muppet_jax import sharding
from muppet_jax import step as step_lib
from muppet_jax import train
from muppet_jax.models import hf
from muppet_jax.models import muppet
from test_step import _setup, _stack  # pylint: disable=wrong-import-order


def _mesh(data, model):
  config = type('MeshConfig', (), {'data': data, 'model': model})
  return sharding.make_mesh(config).mesh


@pytest.mark.parametrize('data,model,spec,shape,want', [
    (4, 2, P(), (50, 8), P(None, 'data')),  # 50 is not divisible by 4: the other dimension.
    (4, 2, P(), (64, 32), P('data', None)),  # The larger dimension.
    (4, 2, P(None, 'model'), (16, 64), P('data', 'model')),  # Keeps the model split.
    (4, 2, P(), (2,), P()),  # A 2-class bias: nothing to split.
    (4, 2, P(), (), P()),  # Scalars stay replicated.
    (8, 1, P(), (768, 3072), P(None, 'data')),
    (1, 8, P(), (768, 3072), P()),  # No data parallelism: nothing to do.
])
def test_shard_over_data_picks_the_largest_free_divisible_dimension(data, model, spec, shape,
                                                                    want):
  mesh = _mesh(data, model)
  got = sharding.shard_over_data(NamedSharding(mesh, spec), shape)
  assert tuple(got.spec) + (None,) * (len(shape) - len(got.spec)) == \
      tuple(want) + (None,) * (len(shape) - len(want))


def test_sharded_moments_give_the_same_update_with_1_over_d_of_the_memory(tmp_path_factory):
  config, vocab, table, subs, model = _setup(str(tmp_path_factory.mktemp('tok')))
  layout = sharding.make_mesh(type('MeshConfig', (), {'data': 8, 'model': 1}))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  config = config.copy_and_resolve_references()
  config.optim.clip_norm = 1.0  # The clipping state (global norm) must work on split moments.
  tx = optim.build(config.optim, 10)
  schedule = optim.learning_rate_schedule(config.optim, 10)
  settings = objective.ObjectiveSettings.from_config(config, vocab.vocab_size)
  batch = _stack(subs, 1, 8)
  step_fn = step_lib.make_train_step(graphdef, tx, schedule, table, settings, layout.mesh)

  results = {}
  for shard_moments in (False, True):
    state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                                opt_state=tx.init(params),
                                rng=jax.random.key_data(jax.random.key(3)))
    shardings = train._state_sharding(layout, state, tx, shard_moments)  # pylint: disable=protected-access
    state = sharding.put_global(state, shardings)
    jitted = jax.jit(step_fn, in_shardings=(shardings, layout.batch_sharding),
                     out_shardings=(shardings, layout.replicated), donate_argnums=0)
    global_batch = sharding.global_batch(layout, batch)
    for _ in range(3):
      state, _ = jitted(state, global_batch)
    results[shard_moments] = state

  # Same parameters after 3 updates: only where Adam's elementwise update runs has changed.
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(results[False].params)[0],
                          jax.tree.leaves(results[True].params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-7,
                               err_msg=jax.tree_util.keystr(path))

  # Memory: every moment leaf with a dimension that 8 divides is split 8 ways.
  moments = [x for x in jax.tree.leaves(results[True].opt_state) if x.ndim > 0]
  assert moments
  full = per_device = 0
  for x in moments:
    shard = x.addressable_shards[0].data.shape
    if any(n % 8 == 0 for n in x.shape):
      assert np.prod(shard) * 8 == np.prod(x.shape), (x.shape, shard)
    full += x.nbytes
    per_device += np.prod(shard) * x.dtype.itemsize
  assert per_device < full / 6, (per_device, full)  # ~1/8, minus the few indivisible leaves.
  # Replicated moments: every device holds all of them.
  replicated = [x for x in jax.tree.leaves(results[False].opt_state) if x.ndim > 0]
  assert all(x.addressable_shards[0].data.shape == x.shape for x in replicated)


def _compiled_collectives(compiled) -> dict[str, set[str]]:
  """{opcode: dtypes of its results} of the all-gathers, all-reduces and reduce-scatters."""
  found: dict[str, set[str]] = {}
  for dtype, op in re.findall(r'= \(?(\w+)\[[^\n]*? (all-gather|all-reduce|reduce-scatter)\(',
                              compiled.as_text()):
    found.setdefault(op, set()).add(dtype)
  return found


def _gradient_input_dtypes(step_fn, state, batch) -> set[str]:
  """The dtypes of the weights that enter the step's shard_map (its first argument)."""
  jaxpr = jax.make_jaxpr(step_fn)(state, batch)
  (eqn,) = [e for e in jaxpr.eqns if e.primitive.name == 'shard_map']
  # Its operands end with (params, rest, batch, rng, step), flattened (constants come first).
  args = (state.params, state.rest, batch, state.rng, state.step)
  operands = eqn.invars[len(eqn.invars) - len(jax.tree.leaves(args)):]
  return {str(v.aval.dtype) for v in operands[:len(jax.tree.leaves(state.params))]}


@pytest.mark.parametrize('matmul_dtype', ['', 'bfloat16'])
def test_sharded_params_give_the_same_update_gathered_once_and_reduce_scattered(
    tmp_path_factory, matmul_dtype):
  config, vocab, table, subs, model = _setup(str(tmp_path_factory.mktemp('tok')))
  layout = sharding.make_mesh(type('MeshConfig', (), {'data': 8, 'model': 1}))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optim.build(config.optim, 10)
  schedule = optim.learning_rate_schedule(config.optim, 10)
  settings = dataclasses.replace(
      objective.ObjectiveSettings.from_config(config, vocab.vocab_size),
      matmul_dtype=matmul_dtype)
  global_batch = sharding.global_batch(layout, _stack(subs, 1, 8))

  results, collectives, gathered = {}, {}, {}
  for shard_params in (False, True):
    state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                                opt_state=tx.init(params),
                                rng=jax.random.key_data(jax.random.key(3)))
    shardings = train.state_shardings(layout, state, tx, shard_moments=True,
                                      shard_params=shard_params)
    step_fn = step_lib.make_train_step(
        graphdef, tx, schedule, table, settings, layout.mesh,
        grad_specs=jax.tree.map(lambda s: s.spec, shardings.params) if shard_params else None)
    state = sharding.put_global(state, shardings)
    jitted = jax.jit(step_fn, in_shardings=(shardings, layout.batch_sharding),
                     out_shardings=(shardings, layout.replicated), donate_argnums=0)
    collectives[shard_params] = _compiled_collectives(
        jitted.lower(state, global_batch).compile())
    gathered[shard_params] = _gradient_input_dtypes(step_fn, state, global_batch)
    metrics = []
    for _ in range(3):
      state, m = jitted(state, global_batch)
      metrics.append((float(m.loss), float(m.grad_norm)))
    results[shard_params] = (state, metrics)

  (plain, plain_metrics), (split, split_metrics) = results[False], results[True]
  # The same update: the gradient of the same weights, summed in another order at most.
  np.testing.assert_allclose(split_metrics, plain_metrics, rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(plain.params)[0],
                          jax.tree.leaves(split.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
  # Every weight with a dimension 8 divides is split 8 ways (the replicated run: whole).
  for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(split.params)):
    assert a.addressable_shards[0].data.shape == a.shape
    if any(n % 8 == 0 for n in b.shape):
      assert np.prod(b.addressable_shards[0].data.shape) * 8 == np.prod(b.shape), b.shape
  # Gradients: all-reduced (replicated weights) or reduce-scattered (split weights; only the
  # few indivisible leaves and the metrics are still all-reduced).
  assert 'reduce-scatter' not in collectives[False]
  assert 'f32' in collectives[False]['all-reduce']
  assert 'f32' in collectives[True]['reduce-scatter']
  # ZeRO-1 too gathers (the updated weights, at the end of the update).
  assert collectives[False]['all-gather'] == {'f32'}
  # What the per-device gradient program receives (gathered at its entry): the weights in
  # float32, and with split weights and a bfloat16 matmul dtype the matmul kernels cast
  # before the gather (XLA:CPU then gathers bfloat16 as float32; XLA:TPU gathers bfloat16).
  assert gathered[False] == {'float32'}
  assert gathered[True] == ({'float32', 'bfloat16'} if matmul_dtype else {'float32'})


def test_padded_vocabulary_trains_like_the_real_one_with_its_rows_split(tmp_path_factory):
  """`model.vocab_multiple`: the same updates as the unpadded table (summarization slots, whose
  LM head reads the table, included); the extra rows stay zero; the rows split over `data`."""
  config, vocab, table, subs, model = _setup(str(tmp_path_factory.mktemp('tok')))
  real = vocab.vocab_size
  multiple = 64 if real % 64 else 128  # Rows that 8 divides, and more of them than now.
  padded_rows = -(-real // multiple) * multiple
  config = config.copy_and_resolve_references()
  config.model.vocab_multiple = multiple
  hf_config = hf.config_from_shape(  # As `_setup` builds the real model.
      'bart', hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
      max_position_embeddings=80, vocab_size=real, dropout=0.1, attention_dropout=0.1,
      pad_token_id=vocab.pad_id, bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id)
  padded = muppet.build_model(config, hf_config, table, rngs=nnx.Rngs(params=0, dropout=1))
  # The same weights: the real model's table, zero rows below it.
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  padded_graphdef, padded_init, _ = nnx.split(padded, nnx.Param, ...)

  def pad(value):  # Only the token table has `real` rows (BART's logits bias is not a Param).
    if value.ndim == 2 and value.shape[0] == real:
      return jnp.pad(value, ((0, padded_rows - real), (0, 0)))
    return value

  padded_params = jax.tree.map(pad, params)
  assert jax.tree.map(jnp.shape, padded_params) == jax.tree.map(jnp.shape, padded_init)
  layout = sharding.make_mesh(type('MeshConfig', (), {'data': 8, 'model': 1}))
  tx = optim.build(config.optim, 10)
  schedule = optim.learning_rate_schedule(config.optim, 10)
  settings = objective.ObjectiveSettings.from_config(config, real)
  global_batch = sharding.global_batch(layout, _stack(subs, 1, 8))

  results = {}
  for name, (gd, ps) in {'real': (graphdef, params),
                         'padded': (padded_graphdef, padded_params)}.items():
    state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=ps, rest=rest,
                                opt_state=tx.init(ps), rng=jax.random.key_data(jax.random.key(3)))
    shardings = train.state_shardings(layout, state, tx, shard_moments=True, shard_params=True)
    step_fn = step_lib.make_train_step(gd, tx, schedule, table, settings, layout.mesh,
                                       grad_specs=jax.tree.map(lambda s: s.spec, shardings.params))
    state = sharding.put_global(state, shardings)
    jitted = jax.jit(step_fn, in_shardings=(shardings, layout.batch_sharding),
                     out_shardings=(shardings, layout.replicated), donate_argnums=0)
    metrics = []
    for _ in range(3):
      state, m = jitted(state, global_batch)
      metrics.append((float(m.loss), float(m.grad_norm)))
    results[name] = (state, metrics, shardings)

  (plain, plain_metrics, _), (split, split_metrics, split_shardings) = (results['real'],
                                                                       results['padded'])
  np.testing.assert_allclose(split_metrics, plain_metrics, rtol=1e-5)
  tables = 0
  for (path, a), b, spec in zip(jax.tree_util.tree_flatten_with_path(plain.params)[0],
                                jax.tree.leaves(split.params),
                                jax.tree.leaves(jax.tree.map(lambda s: s.spec,
                                                             split_shardings.params))):
    a, b = np.asarray(a), np.asarray(b)
    if b.shape != a.shape:  # The token table: real rows trained alike, the padding untouched.
      tables += 1
      assert b.shape == (padded_rows,) + a.shape[1:] and spec[0] == sharding.DATA, spec
      np.testing.assert_array_equal(b[real:], 0)
      b = b[:real]
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  assert tables == 1
