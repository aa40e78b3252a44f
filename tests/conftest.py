"""Test-session setup: 8 fake CPU devices, set before JAX is imported anywhere, and the shared
trained tiny demo run.

Sharding tests use the 8 devices; single-device tests build their mesh from one of them.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow (TFDS, seqio) start-up noise.
os.environ.setdefault('HF_HUB_OFFLINE', '1')  # Tests use only what they create.
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# The shared run's schedule: what tests that read its workdir may rely on.
TRAINED_DEMO_STEPS = 6  # Updates trained.
TRAINED_DEMO_CHECKPOINTS = (2, 4, 6)  # Checkpoint steps kept in WORKDIR/checkpoints.
TRAINED_DEMO_LOG_EVERY = 2  # Steps between metrics.jsonl lines.


def trained_demo_config():
  """The config of `trained_demo_workdir`: the RoBERTa demo mixture (5 tasks: classification,
  multiple choice, span) on a tiny model, 2 slots per update on one device."""
  from configs import demo as demo_config  # pylint: disable=g-import-not-at-top

  config = demo_config.get_config()
  config.train.steps = TRAINED_DEMO_STEPS
  config.train.checkpoint_every = 2
  config.train.keep_checkpoints = len(TRAINED_DEMO_CHECKPOINTS)
  config.train.eval_every = 0  # One evaluation, at the end (step 6).
  config.train.log_every = TRAINED_DEMO_LOG_EVERY
  config.train.grad_accum = 2
  config.data.eval_examples = 8
  config.model.hidden_size = 32
  config.model.num_layers = 1
  config.model.num_heads = 2
  config.model.intermediate_size = 64
  # Neither fairseq's 0.0 nor HF's 0.1: the export tests check the exported heads carry it.
  config.model.head_dropout = 0.25
  # Large steps (Adam moves every parameter by ~lr per update), so that after a few updates the
  # heads are far from their tiny init and logits differ well beyond comparison tolerances.
  config.optim.learning_rate = 3e-2
  config.optim.warmup_steps = 1
  config.mesh.data = 1
  return config


@pytest.fixture(scope='session')
def trained_demo_workdir(tmp_path_factory) -> str:
  """The workdir of a finished tiny demo run, trained once per test session (in-process).

  Holds checkpoints `TRAINED_DEMO_CHECKPOINTS`, metrics.jsonl (a line every
  `TRAINED_DEMO_LOG_EVERY` steps and the final evaluation at step `TRAINED_DEMO_STEPS`),
  backbone_config.json and the demo tokenizer. Shared by every test that needs a finished run:
  treat it as read-only; copy it (`shutil.copytree`) before changing anything in it.
  """
  from muppet_jax import train  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path_factory.mktemp('trained_demo') / 'run')
  result = train.run(trained_demo_config(), workdir)
  assert result.step == TRAINED_DEMO_STEPS and not result.preempted
  return workdir
