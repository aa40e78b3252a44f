"""`--mode eval` (muppet_jax/eval/run.py) on the shared finished tiny demo run
(`trained_demo_workdir`, tests/conftest.py): the run's own final evaluation reproduced, nothing
in the workdir changed, predictions written on request, one-line errors for bad input; and
re-running the finished training run does not evaluate (and log) again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

import conftest
from muppet_jax import train
from muppet_jax import workdir as workdir_lib
from muppet_jax.eval import run as eval_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINAL = conftest.TRAINED_DEMO_STEPS


def _env() -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  return env


def _main(workdir: str, *overrides: str) -> subprocess.CompletedProcess:
  """`python -m muppet_jax.main --mode eval` with the evaluation settings of the shared run."""
  cmd = [sys.executable, '-m', 'muppet_jax.main', '--config', 'configs/demo.py',
         '--workdir', workdir, '--mode', 'eval',
         f'--config.data.eval_examples={conftest.trained_demo_config().data.eval_examples}',
         *overrides]
  return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)


def _fingerprint(workdir: str) -> dict[str, str]:
  """sha256 of every checkpoint file and of metrics.jsonl."""
  paths = [os.path.join(workdir, 'metrics.jsonl')]
  for root, _, files in os.walk(os.path.join(workdir, 'checkpoints')):
    paths += [os.path.join(root, f) for f in files]
  out = {}
  for path in sorted(paths):
    with open(path, 'rb') as f:
      out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _assert_same_metrics(ours: dict, expected: dict) -> None:
  assert set(ours) == set(expected)
  for task, metrics in expected.items():
    assert ours[task] == pytest.approx(metrics, abs=1e-6), task


@pytest.fixture
def workdir(trained_demo_workdir, tmp_path) -> str:
  path = str(tmp_path / 'run')
  shutil.copytree(trained_demo_workdir, path)
  return path


def test_eval_mode_reproduces_the_final_evaluation_and_changes_nothing(workdir):
  before = _fingerprint(workdir)
  final = workdir_lib.read_eval_metrics(workdir)
  assert final.step == FINAL and len(final.metrics) == 5
  proc = _main(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _fingerprint(workdir) == before  # Checkpoints byte for byte, no metrics.jsonl line.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == sorted(
      str(s) for s in conftest.TRAINED_DEMO_CHECKPOINTS)
  with open(os.path.join(workdir, f'eval_{FINAL}.json')) as f:
    report = json.load(f)
  assert report['step'] == FINAL
  _assert_same_metrics(report['metrics'], final.metrics)  # The run's own numbers.
  for task in final.metrics:  # The per-task table.
    assert task in proc.stderr
  events = os.listdir(os.path.join(workdir, 'tensorboard', 'eval'))
  assert any(name.startswith('events.out.tfevents') for name in events)


def test_eval_mode_older_step_with_predictions(workdir):
  config = conftest.trained_demo_config()
  config.eval.step = conftest.TRAINED_DEMO_CHECKPOINTS[0]
  config.eval.write_predictions = True
  before = _fingerprint(workdir)
  report = eval_run.run(config, workdir)
  assert report.step == config.eval.step
  assert _fingerprint(workdir) == before
  with open(report.path) as f:
    _assert_same_metrics(json.load(f)['metrics'], report.metrics)
  for task, metrics in report.metrics.items():
    with open(os.path.join(report.predictions_dir, f'{task}.jsonl')) as f:
      lines = [json.loads(line) for line in f]
    assert len(lines) == metrics['examples'] == config.data.eval_examples
    assert [line['id'] for line in lines] == list(range(len(lines)))
    assert all(set(line) >= {'id', 'prediction', 'gold'} for line in lines)
    if 'accuracy' in metrics:  # Classification / choice: the lines give the accuracy back.
      right = sum(line['prediction'] == line['gold'] for line in lines)
      assert right / len(lines) == pytest.approx(metrics['accuracy'])


def test_eval_mode_bad_step_and_empty_workdir_name_the_steps(workdir, tmp_path):
  config = conftest.trained_demo_config()
  config.eval.step = 7
  with pytest.raises(workdir_lib.WorkdirError, match=r'step 7 .*available steps: \[2, 4, 6\]'):
    eval_run.run(config, workdir)
  empty = tmp_path / 'empty'
  empty.mkdir()
  config.eval.step = -1
  with pytest.raises(workdir_lib.WorkdirError, match='no checkpoints'):
    eval_run.run(config, str(empty))
  assert os.listdir(empty) == []
  # From the command line: one line, exit status 2 (bad input), no traceback.
  proc = _main(workdir, '--config.eval.step=7')
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: no checkpoint for step 7') and '[2, 4, 6]' in last, last
  assert 'Traceback' not in proc.stderr


def test_rerunning_a_finished_run_does_not_evaluate_again(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    before = f.read()
  result = train.run(conftest.trained_demo_config(), workdir)
  assert result.step == FINAL and not result.preempted
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert f.read() == before  # No second evaluation line.
  assert result.eval_metrics == workdir_lib.read_eval_metrics(workdir).metrics


# --- The same reloading, as fine-tuning and export use it ---------------------------------------


def test_finetuning_and_export_reload_through_the_workdir_module(workdir):
  from muppet_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from muppet_jax import finetune  # pylint: disable=g-import-not-at-top

  pre = finetune.load(workdir)
  assert pre.step == FINAL
  assert pre.tasks == list(workdir_lib.restore(workdir).data.task_names)
  # The parameters are the checkpoint's, as orbax reads them back, name by name.
  raw = checkpoint_lib.read_checkpoint(workdir, FINAL).state['params']
  flat = {checkpoint_lib.path_name(p): v for p, v in
          jax.tree_util.tree_flatten_with_path(raw)[0]}
  assert set(pre.params) == set(flat)
  for name, value in flat.items():
    assert (pre.params[name] == value).all(), name
  embeddings = [v for k, v in pre.params.items() if 'word_embeddings' in k]
  assert embeddings and embeddings[0].shape[0] == pre.hf_config.vocab_size
  os.remove(os.path.join(workdir, workdir_lib.BACKBONE_CONFIG))
  with pytest.raises(workdir_lib.WorkdirError, match='backbone_config.json is missing'):
    finetune.load(workdir)
