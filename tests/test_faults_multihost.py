"""Faults of multi-process runs (slow): `jax.distributed` on localhost stands in for a pod.

One chain of faults in one workdir, each followed by a re-launch of the same command on every
process, must end bit-identical (parameters and every logged loss) to an uninterrupted run:

  1. a preemption notice (SIGTERM) to process 1 only: both processes save at the same step and
     exit 0;
  2. process 1 SIGKILLed mid-run: process 0 exits within the bound, non-zero, with one line
     naming process 1 and the step (on CPU gloo fails the collective at once; the line comes
     from the heartbeats);
  3. process 1 frozen (SIGSTOP): gloo sees nothing, process 0 waits in the collective until the
     heartbeat timeout names process 1 - the path TPU and GPU collectives take;
  4. process 1 killed while its part of an asynchronous checkpoint is being written: that
     checkpoint is never completed, the re-launch resumes from the one before;
  5. process 0, which hosts JAX's coordination service, SIGKILLed: process 1 is ended at once
     by JAX itself (non-zero, no hang; JAX's own message);
  6. the last re-launch finishes the run.

A four-process run with one process SIGKILLed: the other three stop, each naming it.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from muppet_jax import checkpoint as checkpoint_lib
from muppet_jax import multihost

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60
HEARTBEAT_S = 20  # distributed.heartbeat_timeout_s of these runs.
BOUND_S = 120  # The bound on how long the other processes may take to stop.
OVERRIDES = (f'--config.train.steps={STEPS}', '--config.train.log_every=1',
             '--config.train.eval_every=0', '--config.train.checkpoint_every=2',
             '--config.train.keep_checkpoints=2', '--config.data.eval_examples=4',
             '--config.mesh.data=4', '--config.model.hidden_size=32',
             '--config.model.num_layers=1', '--config.model.num_heads=2',
             '--config.model.intermediate_size=64',
             f'--config.distributed.heartbeat_timeout_s={HEARTBEAT_S}')

# Loaded into process 1 of fault 4 only (through PYTHONPATH): its part of checkpoint
# MUPPET_TEST_HANG_SAVE_STEP blocks in orbax's background commit thread, before the barrier
# that lets process 0 complete the checkpoint, so that the kill lands inside the save.
_HANG_SAVE = '''
import os
if os.environ.get('MUPPET_TEST_HANG_SAVE_STEP'):
  import time
  from orbax.checkpoint._src.checkpointers import async_checkpointer as _async

  _original = _async._background_wait_for_commit_futures

  def _hang(directory, *args, **kwargs):
    if directory.name.split('.')[0] == os.environ['MUPPET_TEST_HANG_SAVE_STEP']:
      open(os.environ['MUPPET_TEST_HANG_MARKER'], 'w').close()
      time.sleep(3600)
    return _original(directory, *args, **kwargs)

  _async._background_wait_for_commit_futures = _hang
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


class Run:
  """The processes of one launch of the same command (stderr of each in a file)."""

  def __init__(self, workdir, count: int, name: str, extra_env=None):
    self.workdir = str(workdir)
    address = f'localhost:{_free_port()}'
    self.errs = [f'{self.workdir}.{name}.p{i}.err' for i in range(count)]
    self.procs = []
    for i in range(count):
      env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={4 // count}',
                 PYTHONPATH=REPO, MUPPET_COORDINATOR_ADDRESS=address,
                 MUPPET_NUM_PROCESSES=str(count), MUPPET_PROCESS_ID=str(i))
      env.update((extra_env or {}).get(i, {}))
      with open(self.errs[i], 'w') as err:
        self.procs.append(subprocess.Popen(
            [sys.executable, '-m', 'muppet_jax.main', '--config', 'configs/demo.py',
             '--workdir', self.workdir, *OVERRIDES], cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=err))
    _STARTED.append(self)

  def stderr(self, i: int) -> str:
    with open(self.errs[i]) as f:
      return f.read()

  def explain(self, i: int) -> str:
    """What a failed assertion shows of process i: its stderr without the list of extension
    modules that Python appends to a fatal error (it would push the error itself out of view),
    then the tail of its library log (what it was doing)."""
    err = '\n'.join(l for l in self.stderr(i).splitlines()
                    if not l.startswith('Extension modules:'))
    log = os.path.join(self.workdir, 'logs', multihost.log_name(i))
    tail = []
    if os.path.exists(log):
      with open(log) as f:
        tail = f.read().splitlines()[-15:]
    return '\n'.join([err[-3000:], f'--- {log} (tail)', *tail])

  def last_line(self, i: int) -> str:
    return self.stderr(i).strip().splitlines()[-1]

  def wait(self, i: int, timeout: float) -> int:
    return self.procs[i].wait(timeout=timeout)

  def wait_all(self, timeout: float = 900) -> list[int]:
    return [p.wait(timeout=timeout) for p in self.procs]

  def logged_step(self) -> int:
    """The newest step in metrics.jsonl (process 0 writes it), 0 if none."""
    path = os.path.join(self.workdir, 'metrics.jsonl')
    if not os.path.exists(path):
      return 0
    with open(path) as f:
      steps = [json.loads(l)['step'] for l in f if l.strip().endswith('}')]
    return max(steps, default=0)

  def wait_until(self, reached, what: str, hang_guard: float = 900) -> None:
    """Polls `reached()` until it is true, every process alive meanwhile. `hang_guard`
    seconds only keep a run that hangs from blocking the suite."""
    give_up = time.time() + hang_guard
    while time.time() < give_up:
      if reached():
        return
      assert all(p.poll() is None for p in self.procs), [self.explain(i) for i in
                                                         range(len(self.procs))]
      time.sleep(0.1)
    raise AssertionError(f'{what} not reached (hung?)')

  def wait_for_step(self, step: int) -> int:
    self.wait_until(lambda: self.logged_step() >= step, f'step {step}')
    return self.logged_step()

  def kill(self, i: int, sig=signal.SIGKILL) -> float:
    self.procs[i].send_signal(sig)
    return time.time()

  def end(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.send_signal(signal.SIGCONT)
        p.kill()
        p.wait()


# Every run a test starts, so that a failing assertion cannot leave one behind (a frozen
# process, SIGSTOPped by stage 3, would outlive the test run).
_STARTED: list[Run] = []


@pytest.fixture(autouse=True)
def _end_every_run():
  yield
  while _STARTED:
    _STARTED.pop().end()


def _params(workdir):
  return checkpoint_lib.read_checkpoint(str(workdir), STEPS).state['params']


def _losses(workdir) -> dict[int, float]:
  with open(os.path.join(str(workdir), 'metrics.jsonl')) as f:
    lines = [json.loads(l) for l in f]
  return {l['step']: l['loss'] for l in lines if 'loss' in l}


def _assert_lost(run: Run, survivor: int, lost: int, count: int, killed_at: float) -> int:
  """The survivor stopped within the bound, with status 75 and one line naming `lost`;
  returns the step it names."""
  code = run.wait(survivor, BOUND_S + 60)
  took = time.time() - killed_at
  print(f'process {survivor} stopped {took:.1f} s after process {lost} was lost')
  assert code == multihost.LOST_PROCESS_EXIT_CODE, run.explain(survivor)
  assert took < BOUND_S
  line = run.last_line(survivor)
  prefix = f'error: process {lost} of {count} was lost at step '
  assert line.startswith(prefix), run.explain(survivor)
  silent = int(line.split('no heartbeat for ')[1].split(' s')[0])
  assert HEARTBEAT_S <= silent <= HEARTBEAT_S + 5, line
  assert run.stderr(survivor).count(prefix) == 1 and 'Traceback' not in run.stderr(survivor)
  return int(line[len(prefix):].split(':')[0])


def _resumed_from(run: Run) -> int:
  marker = 'resumed from '
  (line,) = [l for l in run.stderr(0).splitlines() if marker in l]
  return int(line.rsplit(' ', 1)[-1])


def test_faults_of_a_two_process_run_end_bit_identical(tmp_path):
  reference = Run(tmp_path / 'reference', 2, 'run')
  assert reference.wait_all() == [0, 0], reference.explain(0)

  workdir = tmp_path / 'faults'
  # 1. A preemption notice to one process: every process saves at the same step, exits 0.
  run = Run(workdir, 2, 'sigterm')
  run.wait_for_step(4)
  run.kill(1, signal.SIGTERM)
  assert run.wait_all(BOUND_S) == [0, 0], [run.explain(i) for i in range(2)]
  stops = [[l for l in run.stderr(i).splitlines() if 'stopped by a preemption notice' in l]
           for i in range(2)]
  assert all(len(s) == 1 for s in stops), stops
  saved = int(stops[0][0].split(' at step ')[1].split()[0])
  assert f'at step {saved} ' in stops[1][0] and saved < STEPS
  assert checkpoint_lib.read_checkpoint(str(workdir)).step == saved

  # 2. Process 1 SIGKILLed mid-run.
  run = Run(workdir, 2, 'sigkill')
  assert run.wait_for_step(saved + 3) < STEPS
  lost_step = _assert_lost(run, 0, 1, 2, run.kill(1))
  assert _resumed_from(run) == saved and lost_step > saved
  run.end()

  # 3. Process 1 frozen: no collective fails, only its silence tells.
  run = Run(workdir, 2, 'sigstop')
  assert run.wait_for_step(run.logged_step() + 3) < STEPS
  _assert_lost(run, 0, 1, 2, run.kill(1, signal.SIGSTOP))
  run.end()

  # 4. Process 1 killed while its part of checkpoint `hang` is being written.
  start = checkpoint_lib.read_checkpoint(str(workdir)).step
  hang = start + 2
  marker = tmp_path / 'hanging'
  hook = tmp_path / 'hook'
  hook.mkdir()
  (hook / 'sitecustomize.py').write_text(_HANG_SAVE)
  run = Run(workdir, 2, 'save', extra_env={1: {
      'PYTHONPATH': f'{hook}{os.pathsep}{REPO}', 'MUPPET_TEST_HANG_SAVE_STEP': str(hang),
      'MUPPET_TEST_HANG_MARKER': str(marker)}})
  run.wait_until(marker.exists, 'the hanging save')
  _assert_lost(run, 0, 1, 2, run.kill(1))
  run.end()
  steps = checkpoint_lib.Checkpointer(str(workdir), keep=10, save_every=1,
                                      read_only=True).all_steps()
  assert hang not in steps and max(steps) == start, steps  # Never completed: not used.

  # 5. Process 0 (the coordination service) SIGKILLed: JAX ends process 1 at once.
  run = Run(workdir, 2, 'coordinator')
  assert run.wait_for_step(start + 3) < STEPS and _resumed_from(run) == start
  killed_at = run.kill(0)
  code = run.wait(1, BOUND_S)
  print(f'process 1 stopped {time.time() - killed_at:.1f} s after process 0 was lost')
  assert code != 0
  run.end()

  # 6. The last re-launch finishes; every fault above cost nothing.
  run = Run(workdir, 2, 'final')
  assert run.wait_all() == [0, 0], run.explain(0)
  for a, b in zip(jax.tree.leaves(_params(workdir)), jax.tree.leaves(_params(reference.workdir))):
    np.testing.assert_array_equal(a, b)
  assert _losses(workdir) == _losses(reference.workdir)
  assert sorted(_losses(workdir)) == list(range(1, STEPS + 1))


def test_four_processes_stop_naming_the_one_lost(tmp_path):
  run = Run(tmp_path / 'four', 4, 'sigkill')
  try:
    run.wait_for_step(3)
    killed_at = run.kill(2)
    steps = [_assert_lost(run, i, 2, 4, killed_at) for i in (0, 1, 3)]
    assert len(set(steps)) <= 2  # Lockstep: the survivors were at most a step apart.
  finally:
    run.end()
