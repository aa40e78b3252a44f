"""End to end: a miniature experiment with pre-finetuning and fine-tuning runs, through the
command line, from a clean root.

One test walks the contract in order: `--index` runs exactly one run (and refuses one whose
starting run has not finished); the whole plan is started and killed in the middle of a run;
the next `run` finishes it with every result present once; the report's numbers equal the
runs' own metrics files; the figures are valid PNGs; running again trains nothing.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tinier model than the demo's (the shared trained run's size): each run takes seconds.
_EXPERIMENT = '''
from muppet_jax.experiments import spec

TINY = {'model.hidden_size': 32, 'model.num_layers': 1, 'model.num_heads': 2,
        'model.intermediate_size': 64, 'data.eval_examples': 40}


def get_experiment():
  return spec.Experiment(name='tiny_e2e', stages=[
      spec.prefinetune('pft', 'configs/demo.py', axes={'seed': [0]}, overrides={
          **TINY, 'train.steps': 6, 'train.grad_accum': 2, 'train.checkpoint_every': 3,
          'train.eval_every': 0, 'train.log_every': 3, 'optim.warmup_steps': 1}),
      spec.finetune('ft', 'configs/finetune.py:{task}', axes={
          'task': ['demo_topic'],
          'start': [spec.pretrained('scratch'), spec.from_stage('pft', reuse_head=True)],
          'learning_rate': [3e-3],
          'seed': [0, 1],
      }, overrides={**TINY, 'finetune.epochs': 2.0, 'finetune.train_fraction': 0.5,
                    'train.checkpoint_every': 8, 'train.log_every': 8}),
  ])
'''
IDS = ['pft-s0', 'ft-demo_topic-scratch-lr0.003-s0', 'ft-demo_topic-scratch-lr0.003-s1',
       'ft-demo_topic-pft-s0-lr0.003-s0', 'ft-demo_topic-pft-s0-lr0.003-s1']


def _env():
  return dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
              PYTHONPATH=REPO)


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'muppet_jax.experiments', *args], cwd=REPO,
                        env=_env(), capture_output=True, text=True, timeout=1200)


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _checkpoints(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  return sorted(int(s) for s in os.listdir(directory) if s.isdigit()) if os.path.isdir(
      directory) else []


def _snapshot(root):
  """Every file of every run (path -> size, mtime): what a run that trains would change."""
  files = {}
  for base, _, names in os.walk(os.path.join(root, 'runs')):
    for name in names:
      path = os.path.join(base, name)
      stat = os.stat(path)
      files[path] = (stat.st_size, stat.st_mtime_ns)
  return files


def _kill_mid_run(experiment, root):
  """Starts the whole plan and SIGKILLs it once a fine-tuning run has a checkpoint but has not
  finished; returns that run's id."""
  proc = subprocess.Popen(
      [sys.executable, '-m', 'muppet_jax.experiments', 'run', experiment, '--root', root],
      cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
      start_new_session=True)
  try:
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
      for run_id in IDS[1:]:
        workdir = os.path.join(root, 'runs', run_id)
        if _checkpoints(workdir) and not os.path.exists(os.path.join(workdir,
                                                                     'best_eval.json')):
          os.killpg(proc.pid, signal.SIGKILL)
          proc.wait()
          return run_id
      time.sleep(0.05)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  pytest.fail('the experiment ended before a fine-tuning run could be killed in the middle')


@pytest.mark.slow
def test_miniature_experiment_end_to_end(tmp_path):
  experiment = str(tmp_path / 'tiny_e2e.py')
  with open(experiment, 'w') as f:
    f.write(_EXPERIMENT)
  root = str(tmp_path / 'root')

  # --index of a run whose starting run has not finished: refused, nothing trained.
  proc = _cli('run', experiment, '--root', root, '--index', '3')
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'pft-s0 (index 0), which has not finished' in proc.stderr.strip().splitlines()[-1]
  assert not os.path.exists(os.path.join(root, 'runs', IDS[3]))

  # --index runs exactly that run.
  proc = _cli('run', experiment, '--root', root, '--index', '1')
  assert proc.returncode == 0, proc.stderr[-3000:]
  trained = [i for i in IDS if _checkpoints(os.path.join(root, 'runs', i))]
  assert trained == [IDS[1]]
  assert os.path.exists(os.path.join(root, 'runs', IDS[1], 'best_eval.json'))
  assert f'[2/5] done {IDS[1]}' in proc.stderr

  # The whole plan, killed in the middle of a fine-tuning run, then finished by the next run.
  killed = _kill_mid_run(experiment, root)
  killed_dir = os.path.join(root, 'runs', killed)
  stopped_at = _checkpoints(killed_dir)[-1]
  proc = _cli('run', experiment, '--root', root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'start {killed} (resuming from its newest checkpoint)' in proc.stderr
  assert f'start {IDS[1]}' not in proc.stderr  # Finished before: skipped.
  with open(os.path.join(killed_dir, 'logs', 'train.log')) as f:
    assert f'at step {stopped_at}' in f.read()  # Resumed from the checkpoint, not restarted.

  # Every result present once.
  with open(os.path.join(root, 'results.csv')) as f:
    rows = {row['id']: row for row in csv.DictReader(f)}
  assert sorted(rows) == sorted(IDS) and {r['state'] for r in rows.values()} == {'done'}
  for run_id in IDS:
    lines = _lines(os.path.join(root, 'runs', run_id, 'metrics.jsonl'))
    train_steps = [l['step'] for l in lines if 'loss' in l]
    eval_steps = [l['step'] for l in lines if 'eval' in l]
    assert train_steps == sorted(set(train_steps))
    assert eval_steps == sorted(set(eval_steps))
    final = json.load(open(os.path.join(root, 'runs', run_id, 'config.json')))['train']['steps']
    assert eval_steps[-1] == final and int(rows[run_id]['train_steps']) == final
  # Two epochs: a dev evaluation after each (the killed run's too, once each).
  ft_steps = json.load(open(os.path.join(killed_dir, 'config.json')))['train']['steps']
  killed_evals = [l['step'] for l in _lines(os.path.join(killed_dir, 'metrics.jsonl'))
                  if 'eval' in l]
  assert killed_evals == [ft_steps // 2, ft_steps]

  # The report's numbers are the runs' own: the best dev accuracy of each run, averaged.
  best = {}
  for run_id in IDS[1:]:
    evals = [l['eval']['muppet_demo_topic']['accuracy']
             for l in _lines(os.path.join(root, 'runs', run_id, 'metrics.jsonl')) if 'eval' in l]
    best[run_id] = max(evals)
    assert float(rows[run_id]['best_score']) == best[run_id]
  with open(os.path.join(root, 'results.json')) as f:
    selected = {s['start']: s for s in json.load(f)['selected']}
  scratch = (best[IDS[1]] + best[IDS[2]]) / 2
  muppet = (best[IDS[3]] + best[IDS[4]]) / 2
  assert selected['scratch']['mean'] == pytest.approx(scratch, abs=1e-12)
  assert selected['pft-s0']['mean'] == pytest.approx(muppet, abs=1e-12)
  assert selected['pft-s0']['difference'] == pytest.approx(muppet - scratch, abs=1e-12)
  markdown = open(os.path.join(root, 'results.md')).read()
  assert f'| Δ pft-s0 | {100 * (muppet - scratch):+.1f} |' in markdown
  assert f'| scratch | {100 * scratch:.1f} ± ' in markdown

  # The figures are valid PNGs.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  figure = os.path.join(root, 'figures', 'starts.png')
  with open(figure, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with Image.open(figure) as image:
    image.verify()

  # Running again trains nothing and changes no run's files.
  before = _snapshot(root)
  proc = _cli('run', experiment, '--root', root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ' start ' not in proc.stderr
  assert _snapshot(root) == before
  proc = _cli('run', experiment, '--root', root, '--list')
  assert proc.returncode == 0 and '5 runs (5 done)' in proc.stdout
