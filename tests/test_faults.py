"""Faults at pod scale, the fast checks: the peers' heartbeat verdict, a run in another run's
workdir, a workdir whose records contradict its checkpoint, damaged and half-prepared data.

The multi-process runs themselves (a process SIGKILLed, frozen, killed during a save, a
preemption notice) are in tests/test_faults_multihost.py (slow).
"""

import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys

import pytest
import transformers

import conftest
from configs import demo as demo_config
from muppet_jax import checkpoint as checkpoint_lib
from muppet_jax import errors
from muppet_jax import export
from muppet_jax import finetune
from muppet_jax import multihost
from muppet_jax import run_record
from muppet_jax import train
from muppet_jax import workdir as workdir_lib
from muppet_jax.eval import run as eval_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# A lost process: the heartbeat verdict (threads and the coordination service stood in for by a
# shared dict and a hand-moved clock; the real runs are in test_faults_multihost.py).
# ---------------------------------------------------------------------------------------------


class _Store:
  """The coordination service's key-value store, shared by the watches of all 'processes'."""

  def __init__(self):
    self.values = {}
    self.down = False

  def key_value_set(self, key, value, allow_overwrite=False):
    if self.down:
      raise RuntimeError('UNAVAILABLE: Failed to send RPC to coordination service')
    assert allow_overwrite or key not in self.values
    self.values[key] = value

  def key_value_dir_get(self, prefix):
    if self.down:
      raise RuntimeError('UNAVAILABLE: Failed to send RPC to coordination service')
    return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


class _Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def _watches(count, timeout_s=10.0):
  store, clock, reports = _Store(), _Clock(), {}
  watches = [multihost.PeerWatch(store, p, count, timeout_s=timeout_s, interval_s=1.0,
                                 clock=clock, namespace='test',
                                 on_lost=lambda m, p=p: reports.setdefault(p, m))
             for p in range(count)]
  return store, clock, watches, reports


def test_a_process_whose_heartbeat_stops_is_named_with_the_step():
  store, clock, watches, reports = _watches(4, timeout_s=10.0)
  for second in range(30):  # 30 s of beats, one a second; process 2 stops at second 5.
    for watch in watches:
      watch.step = second
      if watch.process != 2 or second < 5:
        watch.beat()
    clock.now += 1.0
  # Process 2's last beat was at second 4: silent > 10 s from second 15 on, when the others
  # were at step 15.
  assert sorted(reports) == [0, 1, 3]
  for message in reports.values():
    assert message.startswith('process 2 of 4 was lost at step 15: no heartbeat for 11 s')
    assert 'WORKDIR/logs/train.process2.log' in message and 're-launch the same command' in message
    assert '\n' not in message


def test_process_0_leaves_only_after_the_others_or_its_timeout():
  """Process 0 hosts the coordination service, whose end aborts every process still connected:
  with a verdict it waits until each live process has said it is leaving, or until
  leave_timeout_s when one never does (frozen)."""
  for frozen in (False, True):
    store, clock, watches, reports = _watches(4, timeout_s=10.0)
    for _ in range(2):  # Process 2's last beat comes first: all see it at the same time.
      for p in (2, 0, 1, 3):
        watches[p].beat()
      clock.now += 1.0
    while not any(key.endswith('/lost') for key in store.values):  # Process 2 falls silent.
      clock.now += 1.0
      for p in (0, 1, 3):
        watches[p].beat()
        if p == 0 and any(key.endswith('/lost') for key in store.values):
          break  # Process 0 found it first; the others have not read the verdict yet.
    assert not reports  # Process 0 holds its verdict.
    if not frozen:
      watches[1].beat()  # Reads the verdict, says it leaves, goes.
      assert 0 not in reports and 1 in reports
      watches[0].beat()
      assert 0 not in reports  # Process 3 is still connected.
      watches[3].beat()
      assert watches[0].beat() == reports[0] == reports[1] == reports[3]
    else:  # Process 3 frozen as well: process 0 goes after leave_timeout_s.
      watches[1].beat()
      clock.now += watches[0].leave_timeout_s - 1.0
      assert watches[0].beat() is None and 0 not in reports
      clock.now += 1.5
      assert watches[0].beat() == reports[0]
    assert reports[0].startswith('process 2 of 4 was lost')


def test_a_slow_peer_is_not_lost_and_a_finished_one_is_never_waited_for():
  store, clock, watches, reports = _watches(2, timeout_s=10.0)
  for second in range(60):
    watches[0].beat()
    if second % 9 == 0:  # Late, but within the timeout.
      watches[1].beat()
    clock.now += 1.0
  assert not reports
  watches[1].stop(done=True)  # Finished: the other one writes its last files for a while.
  for _ in range(60):
    watches[0].beat()
    clock.now += 1.0
  assert not reports


def test_losing_the_coordination_service_is_reported_after_the_timeout():
  store, clock, watches, reports = _watches(2, timeout_s=10.0)
  watches[1].step = 7
  watches[1].beat()
  store.down = True  # Process 0, which hosts the service, is gone.
  for _ in range(10):
    clock.now += 1.0
    assert watches[1].beat() is None
  clock.now += 1.5
  message = watches[1].beat()
  assert message == reports[1]
  assert message.startswith('lost contact with the coordination service (process 0) at step 7')


def test_errors_of_a_lost_peer_are_told_from_other_errors():
  gloo = ValueError('UNKNOWN: Gloo AllGather failed: [pair.cc:538] Read error: Connection reset '
                    'by peer')
  assert multihost.looks_like_lost_peer(gloo)
  try:
    try:
      raise gloo
    except ValueError as e:
      raise checkpoint_lib.CheckpointSaveError('could not save checkpoint 60') from e
  except checkpoint_lib.CheckpointSaveError as wrapped:
    assert multihost.looks_like_lost_peer(wrapped)
  assert not multihost.looks_like_lost_peer(FloatingPointError('non-finite loss at step 3'))
  assert not multihost.looks_like_lost_peer(errors.ConfigError('train.steps=0 is not valid'))


def test_timeouts_reach_jax_distributed():
  settings = conftest.trained_demo_config().distributed
  assert settings.heartbeat_timeout_s == 60
  # By hand: beats every 5 s, process 0 waits up to 30 s for the others to leave; the latest
  # exit is 60 + 2 * 5 + 30 = 100 s after a death, and JAX's deadline 2 * (100 + 30) s.
  assert multihost._timeouts(settings) == {  # pylint: disable=protected-access
      'initialization_timeout': settings.barrier_timeout_s,
      'heartbeat_timeout_seconds': 260,
      'shutdown_timeout_seconds': settings.barrier_timeout_s}
  assert multihost._timeouts(None) == {}  # pylint: disable=protected-access
  # The multi-process tests' 20 s: beats every 2.5 s, 20 s of leave wait: 2 * (45 + 30).
  assert multihost.service_heartbeat_timeout_s(20) == 150


@pytest.mark.parametrize('timeout_s', [2, 20, 60, 600])
def test_jax_backstop_cannot_fire_before_every_process_has_left(timeout_s):
  """JAX's coordination service beats every half deadline and aborts every process still
  connected once a dead one is stale, as early as half its deadline after the death. Simulated
  watches (their own beat loop, random phases, the dead process's last beat just before it
  died, process 1 frozen the moment the verdict appears, so that process 0 waits its longest):
  process 0 always leaves before that moment."""
  rng = random.Random(timeout_s)
  deadline_s = multihost.service_heartbeat_timeout_s(timeout_s)
  latest = 0.0
  for _ in range(20):
    store, clock, reports = _Store(), _Clock(), {}
    watches = [multihost.PeerWatch(store, p, 3, timeout_s=timeout_s, clock=clock,
                                   namespace='t', on_lost=lambda m, p=p: reports.setdefault(p, m))
               for p in range(3)]
    interval = watches[0].interval_s
    next_beat = [clock.now + rng.uniform(0, interval) for _ in range(3)]
    death = clock.now + 3 * interval + rng.uniform(0, interval)
    died_at = None
    while 0 not in reports:
      clock.now += 0.05
      verdict = any(k.endswith('/lost') for k in store.values)
      for p, watch in enumerate(watches):
        if clock.now < next_beat[p] or (p == 2 and died_at) or (p == 1 and verdict):
          continue
        watch.beat()
        if p == 2 and clock.now >= death:
          died_at = clock.now  # Right after its last beat: the latest verdict.
        next_beat[p] = clock.now + watch.next_beat_in_s()
      assert clock.now - 1000 < 10 * deadline_s  # The simulation ends.
    latest = max(latest, clock.now - died_at)
  assert timeout_s < latest <= multihost.last_exit_s(timeout_s) + 0.3
  assert latest < deadline_s / 2 - 25


# ---------------------------------------------------------------------------------------------
# The wrong workdir.
# ---------------------------------------------------------------------------------------------


def _hashes(root) -> dict[str, str]:
  """Every file under `root` -> the md5 of its bytes."""
  out = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = hashlib.md5(f.read()).hexdigest()
  return out


@pytest.fixture
def run_copy(trained_demo_workdir, tmp_path) -> str:
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained_demo_workdir, workdir)
  return workdir


def test_differences_name_every_incompatible_field():
  saved = json.loads(conftest.trained_demo_config().to_json_best_effort())
  saved['tasks'] = ['muppet_demo_sentiment', 'muppet_demo_topic']
  other = conftest.trained_demo_config()
  other.model.type = 'bart'
  other.data.length = 64
  other.train.steps = 400  # Bookkeeping: not a difference.
  other.optim.learning_rate = 1e-4  # Changes the training, not what a checkpoint holds.
  current = json.loads(other.to_json_best_effort())
  diffs = run_record.incompatible_differences(saved, current,
                                              ['muppet_demo_sentiment', 'muppet_demo_choice'])
  assert diffs == ["model.type 'roberta' in the workdir, 'bart' in this command",
                   'data.length 128 in the workdir, 64 in this command',
                   'tasks: 2 in the workdir, 2 in this command, new: muppet_demo_choice, gone: '
                   'muppet_demo_topic']
  # A fine-tuning run's model is its finetune.from_workdir run's: the command's model fields
  # (replaced by `finetune.adopt`) do not count, the source does.
  saved['finetune']['from_workdir'] = current['finetune']['from_workdir'] = '/runs/pre'
  current['data']['length'] = 128
  assert run_record.incompatible_differences(saved, current) == []
  current['finetune']['from_workdir'] = '/runs/other'
  assert run_record.incompatible_differences(saved, current) == [
      "finetune.from_workdir '/runs/pre' in the workdir, '/runs/other' in this command"]


def test_another_model_in_the_workdir_is_refused_by_the_command_line_writing_nothing(run_copy):
  """The issue's own check: the finished demo workdir re-run with the BART demo config."""
  before = _hashes(run_copy)
  proc = subprocess.run(
      [sys.executable, '-m', 'muppet_jax.main', '--config', 'configs/demo.py:bart',
       '--workdir', run_copy], cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1'))
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: {run_copy} holds another run '
                                                 f'(checkpoint {conftest.TRAINED_DEMO_STEPS})')
  for words in ("model.type 'roberta' in the workdir, 'bart' in this command",
                "data.mixture 'muppet_demo_encoder' in the workdir, 'muppet_demo' in this command",
                'Nothing in the workdir was changed'):
    assert words in lines[0]
  assert _hashes(run_copy) == before  # config.json, backbone_config.json, logs/: untouched.


def test_another_mixture_is_refused_by_train_run_writing_nothing(run_copy):
  before = _hashes(run_copy)
  config = conftest.trained_demo_config()
  config.data.mixture = 'muppet_demo_sentiment'
  with pytest.raises(run_record.IncompatibleRunError) as raised:
    train.run(config, run_copy)
  assert "data.mixture 'muppet_demo_encoder' in the workdir" in str(raised.value)
  assert 'tasks: 5 in the workdir, 1 in this command' in str(raised.value)
  assert _hashes(run_copy) == before


def test_safe_changes_resume_and_are_recorded_in_the_history(run_copy, caplog):
  config = conftest.trained_demo_config()
  config.train.log_every = 3  # Bookkeeping.
  config.optim.learning_rate = 1e-3  # Allowed, with a warning: it changes the training.
  with caplog.at_level(logging.INFO):
    result = train.run(config, run_copy)  # Finished already: restores, trains nothing.
  assert result.step == conftest.TRAINED_DEMO_STEPS
  with open(os.path.join(run_copy, 'config.json')) as f:
    record = json.load(f)
  assert record['train']['log_every'] == 3 and record['optim']['learning_rate'] == 1e-3
  (entry,) = record['history']
  assert entry['step'] == conftest.TRAINED_DEMO_STEPS
  assert entry['changed'] == {'optim.learning_rate': [3e-2, 1e-3],
                              'train.log_every': [conftest.TRAINED_DEMO_LOG_EVERY, 3]}
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any('optim.learning_rate changes the training from here on' in w for w in warnings)
  # The record still reads as the run's config (export, eval, fine-tuning).
  assert workdir_lib.config_from_record(record).config.train.log_every == 3


def _overwrite_backbone_config(workdir: str) -> None:
  """What a refused command of the previous version left: the BART demo's backbone config."""
  bart = transformers.BartConfig(vocab_size=1312, d_model=32, encoder_layers=1,
                                 decoder_layers=1, encoder_attention_heads=2,
                                 decoder_attention_heads=2, encoder_ffn_dim=64,
                                 decoder_ffn_dim=64, max_position_embeddings=128)
  bart.to_json_file(os.path.join(workdir, workdir_lib.BACKBONE_CONFIG))


def test_records_that_contradict_the_checkpoint_are_one_line_everywhere(run_copy, tmp_path):
  _overwrite_backbone_config(run_copy)
  expected = (f'{run_copy}/backbone_config.json does not describe the model of checkpoint '
              f'{run_copy}/checkpoints/{conftest.TRAINED_DEMO_STEPS} (model type \'bart\' vs '
              "'roberta'")
  with pytest.raises(SystemExit) as raised:  # python -m muppet_jax.export
    export.cli(run_copy, str(tmp_path / 'hf'))
  assert str(raised.value).startswith(f'error: {expected}') and '\n' not in str(raised.value)
  assert not (tmp_path / 'hf').exists()
  config = demo_config.get_config()
  for load in (lambda: eval_run.run(config, run_copy),  # --mode eval
               lambda: finetune.load(run_copy)):  # finetune.from_workdir
    with pytest.raises(workdir_lib.WorkdirError) as raised:
      load()
    assert isinstance(raised.value, errors.UserError)
    assert str(raised.value).startswith(expected)
