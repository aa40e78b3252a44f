"""End-to-end: the demo trains and learns, records its metrics, resumes after SIGTERM, and is
invariant to how the slots of an update are spread over devices, accumulation steps and
processes.

Each check trains as little as it can: the metrics check reads the shared trained demo run
(`trained_demo_workdir`), the reference runs of the resume and invariance checks train
in-process (no second interpreter start), and what needs the README command, several
processes or hundreds of steps is marked slow.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import conftest
from configs import demo as demo_config
from muppet_jax import checkpoint as checkpoint_lib
from muppet_jax import train
from muppet_jax.data import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices: int | None = None, **extra) -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices or 1}'
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  env.update(extra)
  return env


def _main_cmd(workdir, *overrides):
  return [sys.executable, '-m', 'muppet_jax.main', '--config', 'configs/demo.py',
          '--workdir', str(workdir), *overrides]


def _final_params(workdir, step):
  return checkpoint_lib.read_checkpoint(str(workdir), step).state['params']


def _assert_trees_close(a, b, rtol):
  """max |a - b| over every parameter, relative to the largest parameter magnitude."""
  la = jax.tree_util.tree_flatten_with_path(a)[0]
  lb = jax.tree.leaves(b)
  assert len(la) == len(lb) and la
  scale = max(float(np.max(np.abs(y))) for y in lb)
  errors = {jax.tree_util.keystr(path): float(np.max(np.abs(x - y))) / scale
            for (path, x), y in zip(la, lb)}
  worst = max(errors, key=errors.get)
  assert errors[worst] < rtol, (worst, errors[worst])


# Runs that spread the same slots differently sum the same gradients in another order, so they
# differ by float32 rounding. Some gradients are zero in exact arithmetic (a softmax ignores a
# constant added to all its scores: attention key biases, the choice and span head biases) or
# nearly cancel at initialisation (the pooler bias); Adam divides by sqrt(v) + eps and would
# turn their rounding noise into learning-rate-sized steps. eps = 1e-3 keeps such noise
# negligible while real gradients (>= 1e-3) still take Adam-sized steps.
_NOISE_SAFE_EPS = '1e-3'


def _read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
  """The README's demo command, run once for the tests that need a pre-finetuned demo."""
  workdir = tmp_path_factory.mktemp('demo') / 'run'
  proc = subprocess.run(_main_cmd(workdir), cwd=REPO, env=_env(), capture_output=True,
                        text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc.stderr


@pytest.mark.slow
def test_demo_learns_and_reports(demo_run):
  """Loss falls by > 30% (first vs last fifth), held-out accuracy well above chance."""
  workdir, stderr = demo_run
  lines = _read_metrics(workdir)
  train_lines = [l for l in lines if 'loss' in l]
  assert [l['step'] for l in train_lines] == sorted({l['step'] for l in train_lines})
  for key in ('step', 'loss', 'learning_rate', 'tokens_per_s'):
    assert key in train_lines[0]
  assert 'muppet_demo_sentiment' in train_lines[0]
  assert {'loss', 'examples'} <= set(train_lines[0]['muppet_demo_sentiment'])
  losses = [l['loss'] for l in train_lines]
  fifth = max(1, len(losses) // 5)
  first, last = np.mean(losses[:fifth]), np.mean(losses[-fifth:])
  assert last < 0.7 * first, (first, last)
  final_eval = [l for l in lines if 'eval' in l][-1]['eval']
  chance = {'muppet_demo_sentiment': 0.5, 'muppet_demo_compare': 1 / 3,
            'muppet_demo_topic': 0.25}
  for task, p in chance.items():
    assert final_eval[task]['accuracy'] > p + 0.15, (task, final_eval[task])
  assert 'held-out evaluation' in stderr


def _finetune_accuracy(workdir, *overrides):
  cmd = [sys.executable, '-m', 'muppet_jax.main', '--config',
         'configs/finetune.py:muppet_demo_compare', '--workdir', str(workdir),
         '--config.finetune.train_fraction=0.1', *overrides]
  proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  final = [l for l in _read_metrics(workdir) if 'eval' in l][-1]['eval']
  return final['muppet_demo_compare']['accuracy']


@pytest.mark.slow
def test_finetuning_from_muppet_beats_random_init(demo_run, tmp_path):
  """Paper section 4 on the demo: the same fine-tuning budget (10% of the train split) from the
  pre-finetuned run with its head re-used vs from a random-init backbone."""
  pre_workdir, _ = demo_run
  reused = _finetune_accuracy(tmp_path / 'muppet', f'--config.finetune.from_workdir={pre_workdir}',
                              '--config.finetune.reuse_head=True')
  scratch = _finetune_accuracy(tmp_path / 'scratch')
  print(f'\nfine-tuning muppet_demo_compare on 10% of train, same steps: '
        f'from MUPPET + reused head {reused:.3f} | from random init {scratch:.3f}')
  assert reused >= scratch


def test_metrics_jsonl_records_the_run(trained_demo_workdir):
  """One line per logged step with values checked by hand: the learning rate of the step's
  update (warmup 1, peak 3e-2, linear decay to 0 at the last step), every slot of the window
  counted once under its task, finite losses; then the final evaluation."""
  lines = _read_metrics(trained_demo_workdir)
  train_lines = [l for l in lines if 'loss' in l]
  every, total = conftest.TRAINED_DEMO_LOG_EVERY, conftest.TRAINED_DEMO_STEPS
  assert [l['step'] for l in train_lines] == list(range(every, total + 1, every))
  config = conftest.trained_demo_config()
  peak, warmup = config.optim.learning_rate, config.optim.warmup_steps
  slots_per_update = config.train.grad_accum * config.mesh.data
  names = [name for name, _ in tasks.mixture_tasks(config.data.mixture)]
  for line in train_lines:
    t = line['step'] - 1  # The step's update is update number t (0-based).
    expected_lr = peak * t / warmup if t < warmup else peak * (1 - (t - warmup) / (
        total - warmup))
    np.testing.assert_allclose(line['learning_rate'], expected_lr, rtol=1e-5)
    per_task = {k: v for k, v in line.items() if isinstance(v, dict)}
    assert set(per_task) <= set(names)
    assert sum(v['slots'] for v in per_task.values()) == every * slots_per_update
    for entry in per_task.values():
      assert entry['examples'] >= entry['slots'] and np.isfinite(entry['loss'])
    assert np.isfinite(line['loss']) and line['tokens_per_s'] > 0 and line['grad_norm'] > 0
  evals = [l for l in lines if 'eval' in l]
  assert [l['step'] for l in evals] == [total]
  assert set(evals[0]['eval']) == set(names)


@pytest.mark.slow  # Two trainings in subprocesses; exact resume is in tests/test_prepare.py.
def test_sigterm_resume_matches_uninterrupted_run(tmp_path):
  """SIGTERM saves a checkpoint and exits 143; the same command resumes to the parameters of a
  run that was never stopped, logging every step once."""
  steps = 16
  overrides = [f'--config.train.steps={steps}', '--config.train.checkpoint_every=4',
               '--config.train.log_every=2', '--config.train.eval_every=0',
               '--config.data.eval_examples=8', '--config.model.dropout=0.1',
               '--config.mesh.data=1', f'--config.optim.eps={_NOISE_SAFE_EPS}']
  # In-process (8 fake devices, one used) while the resumed run is a 1-device process: the same
  # program up to float32 rounding, which the noise-safe Adam eps keeps from growing.
  straight = tmp_path / 'straight'
  config = demo_config.get_config()
  for override in overrides:  # '--config.section.name=value', typed like the field.
    key, value = override[len('--config.'):].split('=')
    section, name = key.split('.')
    config[section][name] = type(config[section][name])(value)
  assert train.run(config, str(straight)).step == steps

  resumed = tmp_path / 'resumed'
  proc = subprocess.Popen(_main_cmd(resumed, *overrides), cwd=REPO, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics = resumed / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline:  # Wait until it has trained a few steps, then preempt it.
    if metrics.exists() and any(json.loads(l)['step'] >= 6 for l in metrics.read_text().split(
        '\n') if l.strip()):
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 143, stderr[-3000:]
  stopped_at = max(int(d) for d in os.listdir(resumed / 'checkpoints') if d.isdigit())
  assert 6 <= stopped_at < steps, stopped_at

  proc = subprocess.run(_main_cmd(resumed, *overrides), cwd=REPO, env=_env(), timeout=600,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'resumed from {resumed}/checkpoints at step {stopped_at}' in proc.stderr
  _assert_trees_close(_final_params(resumed, steps), _final_params(straight, steps), 1e-6)
  logged = [l['step'] for l in _read_metrics(resumed) if 'loss' in l]
  assert logged == list(range(2, steps + 1, 2)), logged  # Nothing logged twice or lost.


def _small_demo_config(**overrides):
  config = demo_config.get_config()
  config.train.steps = 3
  config.train.log_every = 1
  config.train.eval_every = 0
  config.train.checkpoint_every = 3
  config.data.eval_examples = 4
  config.model.dropout = 0.1  # Dropout masks must also follow the slot, not the device.
  config.train.r3f.enabled = True
  config.optim.eps = float(_NOISE_SAFE_EPS)
  for key, value in overrides.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def test_devices_times_accumulation_invariance(tmp_path):
  """4 x 1 and 2 x 2 (devices x accumulation) train to the same parameters: the second mixes
  both ways of spreading slots (s = a * D + d with a, d > 0), so one pair covers both."""
  params = {}
  for devices, accum in ((4, 1), (2, 2)):
    workdir = tmp_path / f'd{devices}a{accum}'
    config = _small_demo_config(**{'mesh.data': devices, 'train.grad_accum': accum})
    result = train.run(config, str(workdir))
    assert result.step == 3
    params[(devices, accum)] = _final_params(workdir, 3)
  _assert_trees_close(params[(2, 2)], params[(4, 1)], 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('option', ['optim.shard_moments', 'optim.shard_params'])
def test_sharded_state_trains_and_resumes_either_way(tmp_path, option):
  """optim.shard_moments (ZeRO-1) and optim.shard_params (the weights split too, gathered per
  update, gradients reduce-scattered) train to the same parameters as a replicated state, and
  a checkpoint written with one setting resumes with the other (orbax reshards the arrays)."""
  replicated = tmp_path / 'replicated'
  train.run(_small_demo_config(**{'mesh.data': 4}), str(replicated))
  zero = tmp_path / 'zero'
  result = train.run(_small_demo_config(**{'mesh.data': 4, option: True,
                                           'train.checkpoint_every': 1}), str(zero))
  assert result.step == 3
  _assert_trees_close(_final_params(zero, 3), _final_params(replicated, 3), 1e-6)
  # "Kill" the sharded run after step 2 and resume it with replicated moments.
  shutil.rmtree(zero / 'checkpoints' / '3')
  result = train.run(_small_demo_config(**{'mesh.data': 4, 'train.checkpoint_every': 1}),
                     str(zero))
  assert result.step == 3
  _assert_trees_close(_final_params(zero, 3), _final_params(replicated, 3), 1e-6)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  """jax.distributed on localhost, 2 processes x 2 CPU devices == 1 process x 4 devices."""
  overrides = ['--config.train.steps=3', '--config.train.log_every=1',
               '--config.train.eval_every=0', '--config.train.checkpoint_every=3',
               '--config.data.eval_examples=4', '--config.mesh.data=4',
               f'--config.optim.eps={_NOISE_SAFE_EPS}']
  single = tmp_path / 'single'
  proc = subprocess.run(_main_cmd(single, *overrides), cwd=REPO, env=_env(4), timeout=600,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]

  multi = tmp_path / 'multi'
  address = f'localhost:{_free_port()}'
  procs = [subprocess.Popen(
      _main_cmd(multi, *overrides), cwd=REPO, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True,
      env=_env(2, MUPPET_COORDINATOR_ADDRESS=address, MUPPET_NUM_PROCESSES='2',
               MUPPET_PROCESS_ID=str(i))) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  _assert_trees_close(_final_params(multi, 3), _final_params(single, 3), 1e-5)
  single_losses = [l['loss'] for l in _read_metrics(single) if 'loss' in l]
  multi_losses = [l['loss'] for l in _read_metrics(multi) if 'loss' in l]
  assert len(single_losses) == 3
  np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)
