"""`python -m bench` end to end with a tiny shape and 2 steps (one process, one CPU device)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_tiny_writes_table_and_json(tmp_path):
  out = tmp_path / 'bench.json'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.run(
      [sys.executable, '-m', 'bench', '--tiny', '--shapes', 'roberta-base', '--steps', '2',
       '--pipeline-seconds', '0.5', '--json', str(out)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'roberta-base' in proc.stdout and 'MFU' in proc.stdout and 'ours/HF' in proc.stdout
  assert 'input pipeline' in proc.stdout

  results = json.loads(out.read_text())
  assert results['device']['platform'] == 'cpu'
  assert results['peak']['flops_per_s'] > 0
  (row,) = results['shapes']
  assert row['name'] == 'roberta-base' and row['model_type'] == 'roberta'
  assert row['tokens_per_step'] == row['rows'] * row['length']
  assert len(row['step_times']) == 2
  for key in ('compile_s', 'step_s', 'tokens_per_s', 'flops_per_token', 'flops_per_s', 'mfu',
              'r3f_step_s', 'r3f_ratio', 'torch_step_s', 'torch_tokens_per_s',
              'speedup_vs_torch'):
    assert isinstance(row[key], float) and row[key] > 0, (key, row[key])
  assert 0 < row['non_embedding_params'] < row['params']
  assert row['flops_per_token'] >= 6 * row['non_embedding_params']
  assert abs(row['flops_per_s'] - row['flops_per_token'] * row['tokens_per_s']) < 1e-6 * (
      row['flops_per_s'])
  pipeline = results['pipeline']
  assert pipeline['examples_per_s'] > 0 and pipeline['tokens_per_s'] > 0
  assert 0 < pipeline['fill'] <= 1
