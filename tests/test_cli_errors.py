"""The command line: bad input fails early with one line naming the problem and the fix, and a
run's console shows the header, progress, checkpoints and results, not library chatter.

The subprocess checks are the contract users see (`python -m muppet_jax.main ...`): exit status
2 and `error: ...` as the only and last line. The rest checks the same code in-process.
"""

import json
import logging
import os
import re
import subprocess
import sys

import jax
import pytest
from flax import nnx

from configs import demo as demo_config
from configs import finetune as finetune_config
from muppet_jax import cli
from muppet_jax import config_lib
from muppet_jax import errors
from muppet_jax import sharding
from muppet_jax.models import hf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(workdir, *args, timeout=300) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # As a user's shell: the program must quiet TF itself.
  return subprocess.run([sys.executable, '-m', 'muppet_jax.main', '--workdir', str(workdir),
                         *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
  output = (proc.stdout + proc.stderr).strip().splitlines()
  assert proc.returncode == 2, (proc.returncode, output[-20:])
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  last = output[-1]
  assert last.startswith('error: '), output[-20:]
  for word in words:
    assert word in last, (word, last)
  return last


@pytest.mark.parametrize('args, words', [
    (['--config', 'configs/demo.py', '--config.train.steps=-5'],
     ['train.steps=-5', 'must be >= 1', '--config.train.steps']),
    (['--config', 'configs/demo.py', '--config.train.stepz=1'],
     ["Could not override config key 'train.stepz'", 'did you mean train.steps?']),
    (['--config', 'configs/finetune.py:rtee'],
     ["unknown task 'muppet_rtee'", 'did you mean muppet_rte?']),
], ids=['steps_not_positive', 'key_typo', 'finetune_task_typo'])
def test_config_errors_are_one_line_before_any_work(tmp_path, args, words):
  proc = _main(tmp_path / 'run', *args)
  _assert_one_line_error(proc, *words)
  assert len((proc.stdout + proc.stderr).strip().splitlines()) == 1
  assert not (tmp_path / 'run').exists()  # Nothing created.


def test_missing_init_from_is_one_line_and_the_traceback_is_in_the_log(tmp_path):
  missing = tmp_path / 'no_such_checkpoint'
  proc = _main(tmp_path / 'run', '--config', 'configs/demo.py',
               f'--config.model.init_from={missing}')
  _assert_one_line_error(proc, f"model.init_from='{missing}' does not exist")
  with open(tmp_path / 'run' / 'logs' / 'train.log') as f:
    log = f.read()
  assert 'Traceback' in log and 'SourceNotFoundError' in log
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_console_shows_header_progress_checkpoints_and_results_only(tmp_path):
  """A short tiny run: every console line is ours (no orbax/seqio/absl/TensorFlow lines)."""
  workdir = tmp_path / 'run'
  proc = _main(workdir, '--config', 'configs/demo.py', '--config.train.steps=4',
               '--config.train.checkpoint_every=2', '--config.train.log_every=2',
               '--config.train.eval_every=0', '--config.data.eval_examples=4',
               '--config.model.hidden_size=32', '--config.model.num_layers=1',
               '--config.model.num_heads=2', '--config.model.intermediate_size=64',
               '--config.train.grad_accum=2', timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = (proc.stdout + proc.stderr).strip().splitlines()
  progress = [l for l in lines if re.search(r'step \d+/4 .* ETA ', l)]
  assert len(progress) == 2
  assert 'ETA n/a' not in progress[-1]  # Steady-state ETA once a step after the first ran.
  assert [l.split('] ')[-1].split(' saved:')[0][9:] for l in lines
          if ' saved: ' in l] == ['checkpoint 2', 'checkpoint 4']
  assert any('held-out evaluation at step 4' in l for l in lines)
  assert any('overrides: train.steps=4' in l for l in lines)
  noise = [l for l in lines if re.search(r'orbax|absl|seqio|tensorflow|I0000|W0000|oneDNN|cuda',
                                         l, re.IGNORECASE)]
  assert not noise, noise
  assert len(lines) <= 25, lines
  with open(workdir / 'logs' / 'train.log') as f:
    log = f.read()
  assert 'checkpoint_manager.py' in log  # Library INFO is kept, in the log file.
  with open(workdir / 'config.json') as f:
    assert json.load(f)['train']['steps'] == 4


# --- The same checks in-process ------------------------------------------------------------------


@pytest.mark.parametrize('key, value, words', [
    ('train.steps', 0, 'train.steps=0'),
    ('train.grad_accum', -2, 'train.grad_accum=-2'),
    ('train.checkpoint_every', 0, 'train.checkpoint_every=0'),
    ('data.batching', 'hetero', "data.batching='hetero'"),
    ('train.r3f.noise', 'gauss', "train.r3f.noise='gauss'"),
    ('optim.learning_rate', -1e-3, 'optim.learning_rate=-0.001'),
    ('finetune.train_fraction', 1.5, 'finetune.train_fraction=1.5'),
    ('mesh.model', 0, 'mesh.model=0'),
    ('model.num_heads', 3, 'model.hidden_size=128 is not divisible by model.num_heads=3'),
])
def test_validate_names_the_field_and_the_override(key, value, words):
  config = demo_config.get_config()
  section, *rest = key.split('.')
  node = config[section]
  for part in rest[:-1]:
    node = node[part]
  node[rest[-1]] = value
  with pytest.raises(errors.ConfigError) as raised:
    config_lib.validate(config)
  assert words in str(raised.value) and isinstance(raised.value, ValueError)


def test_every_shipped_config_validates():
  configs = [demo_config.get_config(), demo_config.get_config('bart'),
             finetune_config.get_config(), finetune_config.get_config('rte')]
  for name in ('base', 'large', 'bart_base', 'bart_large'):
    module = __import__(f'configs.{name}', fromlist=['get_config'])
    configs.append(module.get_config())
  for config in configs:
    config_lib.validate(config)


@pytest.mark.parametrize('key, suggestion', [
    ('train.stepz', 'did you mean train.steps?'),
    ('trian.steps', 'did you mean train.steps?'),
    ('model.hiden_size', 'did you mean model.hidden_size?'),
    ('train.r3f.lamda', 'did you mean train.r3f.lambda_?'),
    ('nothing_like_it', 'the top-level fields are '),
])
def test_unknown_key_message_suggests_near_misses(key, suggestion):
  message = config_lib.unknown_key_message(demo_config.get_config(), key)
  assert message.startswith(f"Could not override config key '{key}'") and suggestion in message
  assert config_lib.unknown_key_message(demo_config.get_config(), 'train.steps') is None


def test_finetune_task_names_come_from_the_catalogue():
  assert finetune_config.get_config('rte').data.mixture == 'muppet_rte'
  with pytest.raises(errors.UserError, match=r"did you mean muppet_boolq\?"):
    finetune_config.get_config('boolqq')


def _tiny_backbone():
  config = hf.config_from_shape('roberta', hidden_size=32, num_layers=1, num_heads=2,
                                intermediate_size=64, max_position_embeddings=20,
                                vocab_size=100, dropout=0.0, attention_dropout=0.0)
  return hf.build(config, rngs=nnx.Rngs(0))


def test_mesh_that_does_not_divide_the_model_names_the_dimension():
  """mesh.model=3 on a model whose vocabulary (100) and feed-forward width (64) 3 does not
  divide: one error naming mesh.model and those dimensions, before any array is placed."""
  layout = sharding.make_mesh(_mesh(data=1, model=3))  # 3 of the 8 test devices.
  state = nnx.state(_tiny_backbone(), nnx.Param)
  with pytest.raises(errors.ConfigError) as raised:
    sharding.state_shardings(layout.mesh, state)
  message = str(raised.value)
  assert message.startswith('mesh.model=3 does not divide the model')
  assert 'vocab dimension 100' in message and 'mlp dimension 64' in message
  with pytest.raises(errors.ConfigError, match=r'mesh\.model=3 must divide the number of '
                     rf'devices \({len(jax.devices())}\)'):
    sharding.make_mesh(_mesh(data=-1, model=3))
  with pytest.raises(errors.ConfigError, match=r'mesh\.data=16 x mesh\.model=1 needs 16'):
    sharding.make_mesh(_mesh(data=16, model=1))
  sharding.state_shardings(sharding.make_mesh(_mesh(data=1, model=2)).mesh, state)  # Divides.


def _mesh(data: int, model: int):
  config = config_lib.default().mesh
  config.data, config.model = data, model
  return config


def test_one_line_joins_a_multi_line_message():
  error = errors.UserError('checkpoint x does not fit:\n  a: 1 vs 2\n  b: 3 vs 4')
  assert cli.one_line(error) == 'checkpoint x does not fit: a: 1 vs 2; b: 3 vs 4'


def _record(path: str, level: int, name: str = 'x') -> logging.LogRecord:
  return logging.LogRecord(name, level, path, 1, 'message', None, None)


def test_console_filter_by_verbosity():
  ours = os.path.join(REPO, 'muppet_jax', 'train.py')
  library = '/site-packages/orbax/checkpoint/checkpoint_manager.py'
  cases = {  # verbosity: (our INFO, library INFO, library WARNING, library ERROR)
      1: (True, True, True, True),
      0: (True, False, True, True),
      -1: (False, False, True, True),
      -2: (False, False, False, True),
  }
  for verbosity, expected in cases.items():
    console = cli.ConsoleFilter(verbosity)
    got = (console.filter(_record(ours, logging.INFO, 'absl')),
           console.filter(_record(library, logging.INFO, 'absl')),
           console.filter(_record(library, logging.WARNING, 'absl')),
           console.filter(_record(library, logging.ERROR, 'absl')))
    assert got == expected, (verbosity, got)
  assert not cli.ConsoleFilter(0, is_chief=False).filter(_record(ours, logging.INFO))
  logged_exception = _record(library, logging.ERROR)  # e.g. orbax on a failed save, which
  logged_exception.exc_info = (OSError, OSError(28, 'No space'), None)  # it then raises.
  assert not cli.ConsoleFilter(0).filter(logged_exception)
  assert cli.ConsoleFilter(1).filter(logged_exception)
  file_only = _record(ours, logging.ERROR)
  setattr(file_only, cli.FILE_ONLY, True)
  assert not cli.ConsoleFilter(1).filter(file_only)
