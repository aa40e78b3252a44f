"""Configs, optimizer, checkpoint compatibility and the trainer's failure messages."""

import glob
import importlib.util
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import conftest
from configs import demo as demo_config
from muppet_jax import checkpoint as checkpoint_lib
from muppet_jax import errors
from muppet_jax import optim
from muppet_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, 'configs', '*.py')))
ARGS = {'demo.py': [None, 'bart'], 'finetune.py': [None, 'rte', 'muppet_demo_topic']}
REQUIRED_KEYS = ('seed', 'train.steps', 'train.grad_accum', 'mesh.data', 'model.init_from',
                 'train.r3f.enabled', 'train.r3f.lambda_', 'train.r3f.eps', 'train.r3f.noise')


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_every_config_loads_locked_with_the_contract_keys(path):
  module = _load(path)
  assert module.__doc__ and 'python -m muppet_jax.main' in module.__doc__
  for arg in ARGS.get(os.path.basename(path), [None]):
    config = module.get_config() if arg is None else module.get_config(arg)
    assert isinstance(config, ml_collections.ConfigDict) and config.is_locked
    for key in REQUIRED_KEYS:
      node = config
      for part in key.split('.'):
        node = node[part]
    assert config.train.r3f.noise in ('uniform', 'normal')
    with pytest.raises(AttributeError):
      config.train.stepz = 1  # Locked: a typo cannot add a key.


def test_paper_hyperparameters():
  large, bart = _load(os.path.join(REPO, 'configs/large.py')).get_config(), _load(
      os.path.join(REPO, 'configs/bart_large.py')).get_config()
  for c in (large, bart):  # Tables 7-8.
    assert (c.optim.b1, c.optim.b2, c.optim.eps) == (0.9, 0.999, 1e-8)
    assert (c.optim.weight_decay, c.model.dropout) == (0.01, 0.1)
    assert (c.optim.warmup_steps, c.train.steps) == (5000, 200_000)
  assert large.optim.learning_rate == 3e-5 and bart.optim.learning_rate == 6e-5
  assert large.data.rows * large.data.length <= 4400
  assert bart.data.rows * bart.data.length == 1024


def test_schedule_warmup_then_polynomial_decay():
  cfg = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=10,
                                       end_learning_rate=1e-4, decay_power=2.0))
  schedule = optim.learning_rate_schedule(cfg, total_steps=110)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(5)), 5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-6)
  # Polynomial decay: end + (peak - end) * (1 - t / T)^power, t counted from the warmup's end.
  np.testing.assert_allclose(float(schedule(60)), 1e-4 + 9e-4 * 0.5 ** 2, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(110)), 1e-4, rtol=1e-6)


def test_weight_decay_skips_biases_and_norm_scales():
  params = {'dense': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)},
            'LayerNorm': {'scale': jnp.ones(2), 'bias': jnp.ones(2)},
            'embed': {'embedding': jnp.ones((3, 2))}, 'final_logits_bias': jnp.ones(3)}
  mask = optim.weight_decay_mask(params, decay_norms_and_biases=False)
  assert mask['dense']['kernel'] and mask['embed']['embedding']
  assert not mask['dense']['bias'] and not mask['LayerNorm']['scale']
  assert not mask['LayerNorm']['bias'] and not mask['final_logits_bias']
  # One AdamW step with zero gradients: only decayed leaves move, by lr * wd * value.
  cfg = ml_collections.ConfigDict(dict(
      learning_rate=0.1, warmup_steps=0, end_learning_rate=0.1, decay_power=1.0, b1=0.9,
      b2=0.999, eps=1e-8, weight_decay=0.5, clip_norm=0.0, decay_norms_and_biases=False))
  tx = optim.build(cfg, total_steps=10)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates['dense']['kernel'], -0.05 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_allclose(updates['dense']['bias'], np.zeros(2))


def _tiny(**overrides):
  config = demo_config.get_config()
  config.train.steps = 2
  config.train.log_every = 1
  config.train.eval_every = 0
  config.train.checkpoint_every = 2
  config.data.eval_examples = 4
  config.mesh.data = 1
  config.model.hidden_size = 32
  config.model.num_layers = 1
  config.model.num_heads = 2
  config.model.intermediate_size = 64
  for key, value in overrides.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def test_checkpoint_from_another_model_fails_clearly(trained_demo_workdir, tmp_path):
  """Resuming with another model shape names the field; the checkpoints are not taken for
  damaged ones (nothing is moved aside)."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained_demo_workdir, workdir)
  config = conftest.trained_demo_config()
  config.model.hidden_size = 64
  config.train.steps = conftest.TRAINED_DEMO_STEPS + 2
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError,
                     match=r'model\.hidden_size 32 in the workdir, 64 in this command'):
    train.run(config, workdir)
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))) == list(
      conftest.TRAINED_DEMO_CHECKPOINTS)
  assert not os.path.exists(os.path.join(workdir, checkpoint_lib.DAMAGED_DIRNAME))


def test_non_finite_loss_stops_naming_the_tasks(tmp_path):
  with pytest.raises(FloatingPointError, match='muppet_demo_'):
    train.run(_tiny(**{'optim.learning_rate': 1e30, 'optim.warmup_steps': 0,
                       'train.steps': 4}), str(tmp_path))


def test_sequence_too_long_for_the_model_fails_clearly(tmp_path):
  with pytest.raises(errors.ConfigError, match=r'data\.length=256 is too long for the model: '
                     r'max_position_embeddings=130 allows 128 tokens'):
    train.run(_tiny(**{'data.length': 256}), str(tmp_path))
