"""Checkpoints: a damaged newest checkpoint is skipped (and kept), a failed save stops the run at
once with one message, and the earlier checkpoints stay usable.

Unit tests use a tiny pytree; the end-to-end tests resume a copy of the shared trained demo run
(`trained_demo_workdir`, tests/conftest.py).
"""

import errno
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.path import atomicity

import conftest
from muppet_jax import checkpoint as checkpoint_lib
from muppet_jax import errors
from muppet_jax import train

CONFIG = {'model': {'type': 'roberta', 'hidden_size': 4}, 'tasks': ['a', 'b']}


def _state(value: float) -> dict:
  return {'w': jnp.full((16, 8), value, jnp.float32), 'step': jnp.int32(value)}


def _abstract() -> dict:
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                      _state(0.0))


def _write(workdir, steps, keep=5) -> None:
  checkpointer = checkpoint_lib.Checkpointer(str(workdir), keep=keep, save_every=1)
  for step in steps:
    checkpointer.save(step, _state(float(step)), {'position': step}, json.dumps(CONFIG),
                      force=True)
  checkpointer.close()


def _largest_file(directory) -> str:
  files = [os.path.join(d, f) for d, _, names in os.walk(directory) for f in names]
  return max(files, key=os.path.getsize)


def _truncate(path: str) -> None:
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _damage(step_dir: str, how: str) -> None:
  if how == 'truncated_array_file':
    _truncate(_largest_file(os.path.join(step_dir, 'state')))
  elif how == 'garbage_config':
    with open(os.path.join(step_dir, 'config', 'metadata'), 'w') as f:
      f.write('{"mod')
  elif how == 'emptied':
    shutil.rmtree(step_dir)
    os.makedirs(step_dir)
  else:
    raise ValueError(how)


@pytest.mark.parametrize('how', ['truncated_array_file', 'garbage_config', 'emptied'])
def test_restore_skips_a_damaged_newest_checkpoint_and_keeps_it(tmp_path, how, caplog):
  _write(tmp_path, [1, 2, 3])
  _damage(str(tmp_path / 'checkpoints' / '3'), how)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=2, save_every=1)
  with caplog.at_level(logging.WARNING):
    restored = checkpointer.restore(_abstract(), CONFIG)
  assert restored.step == 2 and restored.data_state == {'position': 2}
  np.testing.assert_array_equal(restored.state['w'], np.full((16, 8), 2.0))
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any('checkpoints/3 cannot be read' in w for w in warnings), warnings
  assert any('instead of the newer unreadable 3' in w for w in warnings), warnings
  # Kept, out of orbax's way: a new save of step 3 and max_to_keep=2 cannot touch it.
  damaged = tmp_path / checkpoint_lib.DAMAGED_DIRNAME / '3'
  assert damaged.is_dir() and not (tmp_path / 'checkpoints' / '3').exists()
  for step in (3, 4):
    checkpointer.save(step, _state(float(step)), {'position': step}, json.dumps(CONFIG),
                      force=True)
  checkpointer.close()
  assert damaged.is_dir()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '4']
  assert checkpoint_lib.read_checkpoint(str(tmp_path)).step == 4


def test_every_checkpoint_damaged_is_one_error_and_nothing_moves(tmp_path):
  _write(tmp_path, [1, 2])
  for step in ('1', '2'):
    _damage(str(tmp_path / 'checkpoints' / step), 'truncated_array_file')
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=2, save_every=1)
  with pytest.raises(checkpoint_lib.CheckpointError, match=r'none of the checkpoints \[1, 2\]'):
    checkpointer.restore(_abstract(), CONFIG)
  checkpointer.close()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2']
  assert not (tmp_path / checkpoint_lib.DAMAGED_DIRNAME).exists()


def test_read_checkpoint_falls_back_without_moving_anything(tmp_path):
  """Export and fine-tuning read the newest readable checkpoint and change nothing."""
  _write(tmp_path, [1, 2])
  _damage(str(tmp_path / 'checkpoints' / '2'), 'truncated_array_file')
  assert checkpoint_lib.read_checkpoint(str(tmp_path)).step == 1
  assert (tmp_path / 'checkpoints' / '2').is_dir()
  with pytest.raises(checkpoint_lib.CheckpointError, match=r'checkpoints/2 cannot be read'):
    checkpoint_lib.read_checkpoint(str(tmp_path), step=2)
  with pytest.raises(checkpoint_lib.NoCheckpointError, match=r'no checkpoint 7 .*\[1, 2\]'):
    checkpoint_lib.read_checkpoint(str(tmp_path), step=7)
  with pytest.raises(checkpoint_lib.NoCheckpointError, match='train first'):
    checkpoint_lib.read_checkpoint(str(tmp_path / 'elsewhere'))
  assert not (tmp_path / 'elsewhere').exists()


def test_config_record_is_read_without_restoring_and_falls_back(tmp_path):
  """What the resume check reads before a command may touch a workdir."""
  assert checkpoint_lib.read_config_record(str(tmp_path)) is None
  _write(tmp_path, [1, 2])
  before = sorted(os.listdir(tmp_path / 'checkpoints'))
  assert checkpoint_lib.read_config_record(str(tmp_path)) == checkpoint_lib.SavedRecord(2, CONFIG)
  _damage(str(tmp_path / 'checkpoints' / '2'), 'garbage_config')
  assert checkpoint_lib.read_config_record(str(tmp_path)).step == 1
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == before  # Nothing moved or written.


def _fail_writes(monkeypatch, error: OSError, from_step: int) -> None:
  """Every checkpoint of step >= `from_step` fails in orbax's background thread, when its
  temporary directory is renamed into place (as a full disk or a read-only directory would)."""
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def failing(self, *args, **kwargs):
    name = os.path.basename(str(self.get_final()))
    if name.isdigit() and int(name) >= from_step:
      raise error
    return await finalize(self, *args, **kwargs)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', failing)


@pytest.mark.parametrize('error', [
    OSError(errno.ENOSPC, 'No space left on device'),
    PermissionError(errno.EACCES, 'Permission denied'),
], ids=['full_disk', 'permission_denied'])
def test_failed_save_is_reported_once_naming_checkpoint_and_cause(tmp_path, monkeypatch, error):
  _fail_writes(monkeypatch, error, from_step=2)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=5, save_every=1)
  checkpointer.save(1, _state(1.0), {}, json.dumps(CONFIG), force=True)
  checkpointer.wait()
  checkpointer.save(2, _state(2.0), {}, json.dumps(CONFIG), force=True)
  with pytest.raises(checkpoint_lib.CheckpointSaveError) as raised:
    checkpointer.wait()  # What the trainer's per-step poll() does once the save is over.
  message = str(raised.value)
  assert isinstance(raised.value, errors.UserError) and '\n' not in message
  assert f'could not save checkpoint {tmp_path}/checkpoints/2' in message
  assert error.strerror in message and 'checkpoint 1 and earlier are intact' in message
  checkpointer.close()  # Nothing left to raise.
  assert checkpoint_lib.read_checkpoint(str(tmp_path)).step == 1


def _resume_config(**overrides):
  config = conftest.trained_demo_config()
  config.data.eval_examples = 4
  for key, value in overrides.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def test_resume_after_damage_uses_the_previous_checkpoint(trained_demo_workdir, tmp_path,
                                                          caplog):
  """The held-out check: damage the newest checkpoint of a finished run, run it again."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained_demo_workdir, workdir)
  last, previous = conftest.TRAINED_DEMO_CHECKPOINTS[-1], conftest.TRAINED_DEMO_CHECKPOINTS[-2]
  _truncate(_largest_file(os.path.join(workdir, 'checkpoints', str(last), 'state')))
  with caplog.at_level(logging.INFO):
    result = train.run(_resume_config(), workdir)
  assert result.step == conftest.TRAINED_DEMO_STEPS
  messages = [r.getMessage() for r in caplog.records]
  assert any(f'checkpoints/{last} cannot be read' in m for m in messages)
  assert any(f'resumed from {workdir}/checkpoints at step {previous}' in m for m in messages)
  assert os.path.isdir(os.path.join(workdir, checkpoint_lib.DAMAGED_DIRNAME, str(last)))
  assert checkpoint_lib.read_checkpoint(workdir).step == last  # Written again, readable.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    steps = [json.loads(line)['step'] for line in f if 'loss' in json.loads(line)]
  assert steps == list(range(conftest.TRAINED_DEMO_LOG_EVERY, last + 1,
                             conftest.TRAINED_DEMO_LOG_EVERY))  # No step logged twice.


def test_failed_save_stops_training_at_once(trained_demo_workdir, tmp_path, monkeypatch):
  """Today's failure mode was to train on to the next save and die there; now the step after
  the failed save raises, and the checkpoint before it is intact."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained_demo_workdir, workdir)
  first = conftest.TRAINED_DEMO_CHECKPOINTS[0]
  for step in conftest.TRAINED_DEMO_CHECKPOINTS[1:]:  # Resume from the first checkpoint.
    shutil.rmtree(os.path.join(workdir, 'checkpoints', str(step)))
  _fail_writes(monkeypatch, OSError(errno.ENOSPC, 'No space left on device'), first + 1)
  config = _resume_config(**{'train.checkpoint_every': 1, 'train.log_every': 1})
  with pytest.raises(checkpoint_lib.CheckpointSaveError,
                     match=rf'checkpoints/{first + 1}: \[Errno 28\] No space left on device'):
    train.run(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    logged = [json.loads(line)['step'] for line in f]
  assert max(logged) <= first + 2, logged  # Stopped within a step of the failed save.
  assert checkpoint_lib.read_checkpoint(workdir).step == first
