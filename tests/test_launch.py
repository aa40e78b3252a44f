"""The launchers in launch/: syntax, shellcheck, dry-run output and, with fake gcloud/srun, the
commands they really run (argument quoting, per-process variables, SIGTERM -> requeue)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / 'launch' / 'tpu_pod.sh'
SLURM = ROOT / 'launch' / 'slurm_gpu.sbatch'
SCRIPTS = [TPU, SLURM]
MAIN = re.compile(r'python3? -m muppet_jax\.main')


def _run(script: pathlib.Path, *args: str, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
  full_env = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'TPU_'))}
  full_env.pop('ZONE', None)
  full_env.update(env or {})
  result = subprocess.run(['bash', str(script), *args], env=full_env, capture_output=True,
                          text=True, timeout=30, check=False, cwd=ROOT)
  if check and result.returncode != 0:
    raise AssertionError(f'{script.name} failed ({result.returncode}):\n{result.stderr}')
  return result


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
  path.write_text(text)
  path.chmod(0o755)
  return path


# --- Static checks ---------------------------------------------------------------------------


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  subprocess.run(['bash', '-n', str(script)], check=True, timeout=30)


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
  if shutil.which('shellcheck') is None:
    pytest.skip('shellcheck is not installed (apt-get install shellcheck)')
  result = subprocess.run(['shellcheck', '--shell=bash', str(script)], capture_output=True,
                          text=True, timeout=60, check=False)
  assert result.returncode == 0, result.stdout


# --- TPU pod launcher ------------------------------------------------------------------------


def test_tpu_dry_run_prints_one_command_for_all_workers():
  result = _run(TPU, '--dry-run', '--config', 'configs/large.py', '--workdir', 'gs://b/run',
                '--config.train.steps=1000', '--config.data.tfds_data_dir=gs://b/tfds',
                env={'TPU_NAME': 'my-pod', 'ZONE': 'us-central2-b'})
  lines = result.stdout.splitlines()
  assert len(lines) == 1, result.stdout
  command = lines[0]
  assert command.startswith('gcloud compute tpus tpu-vm ssh my-pod ')
  assert '--worker=all' in command and '--zone=us-central2-b' in command
  assert MAIN.search(command)
  for flag in ('--config configs/large.py', '--workdir gs://b/run', '--config.train.steps=1000',
               '--config.data.tfds_data_dir=gs://b/tfds'):
    assert flag in command
  # DRY_RUN=1 is the same switch.
  again = _run(TPU, '--config', 'configs/large.py', '--workdir', 'gs://b/run',
               '--config.train.steps=1000', '--config.data.tfds_data_dir=gs://b/tfds',
               env={'TPU_NAME': 'my-pod', 'ZONE': 'us-central2-b', 'DRY_RUN': '1'})
  assert again.stdout == result.stdout


def test_tpu_dry_run_with_sync_and_install():
  result = _run(TPU, '--dry-run', '--sync', '--install', '--background', '--config', 'c.py',
                '--workdir', 'gs://b/run', env={'TPU_NAME': 't', 'ZONE': 'z'})
  lines = result.stdout.splitlines()
  remote = [line for line in lines if line.startswith('gcloud ')]
  assert len(remote) == 4  # scp, unpack, pip install, run
  assert all('--worker=all' in line for line in remote)
  assert 'pip install -r requirements.txt' in remote[2]
  assert MAIN.search(remote[3]) and 'nohup' in remote[3]


def test_tpu_rejects_local_workdir_and_missing_flags():
  env = {'TPU_NAME': 't', 'ZONE': 'z'}
  result = _run(TPU, '--dry-run', '--config', 'c.py', '--workdir', '/tmp/run', env=env,
                check=False)
  assert result.returncode != 0 and 'gs://' in result.stderr
  result = _run(TPU, '--dry-run', '--workdir', 'gs://b/run', env=env, check=False)
  assert result.returncode != 0 and '--config' in result.stderr
  result = _run(TPU, '--config', 'c.py', '--workdir', 'gs://b/run', env={'ZONE': 'z'},
                check=False)
  assert result.returncode != 0 and 'TPU_NAME' in result.stderr


def test_tpu_remote_command_round_trip(tmp_path):
  """A fake gcloud runs --command in a shell; the fake python sees the exact arguments."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  home = tmp_path / 'home'
  (home / 'muppet_jax').mkdir(parents=True)
  _write(bin_dir / 'gcloud', f"""#!/usr/bin/env bash
echo "$*" >> {tmp_path}/gcloud_calls
while (($#)); do [[ "$1" == --command ]] && cmd="$2"; shift; done
cd {home} && bash -c "$cmd"
""")
  _write(bin_dir / 'python3', f"""#!{sys.executable}
import json, os, sys
with open({str(tmp_path / 'argv.json')!r}, 'w') as f:
  json.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd(),
             'unbuffered': os.environ.get('PYTHONUNBUFFERED'),
             'auto': os.environ.get('MUPPET_AUTO_DISTRIBUTED'),
             'extra': os.environ.get('MY_VAR')}}, f)
""")
  tricky = "--config.data.tfds_data_dir=gs://b/it's a dir"
  _run(TPU, '--config', 'configs/large.py', '--workdir', 'gs://b/run', '--env', 'MY_VAR=x y',
       tricky, '--config.x=$HOME',
       env={'TPU_NAME': 't', 'ZONE': 'z', 'PATH': f'{bin_dir}:{os.environ["PATH"]}'})
  seen = json.loads((tmp_path / 'argv.json').read_text())
  assert seen['argv'] == ['-m', 'muppet_jax.main', '--config', 'configs/large.py',
                          '--workdir', 'gs://b/run', tricky, '--config.x=$HOME']
  assert seen['cwd'] == str(home / 'muppet_jax')
  assert seen['unbuffered'] == '1' and seen['extra'] == 'x y'
  assert seen['auto'] == '1'  # jax.distributed.initialize() auto-detects the TPU pod.
  assert '--worker=all' in (tmp_path / 'gcloud_calls').read_text()


# --- SLURM launcher --------------------------------------------------------------------------

_DRY_LINE = re.compile(
    r'^\[(?P<host>[^\]]+)\] MUPPET_COORDINATOR_ADDRESS=(?P<coord>\S+) '
    r'MUPPET_NUM_PROCESSES=(?P<n>\d+) MUPPET_PROCESS_ID=(?P<pid>\d+) '
    r'MUPPET_LOCAL_DEVICE_IDS=(?P<local>\d+) (?P<cmd>.*)$')


def _parse_dry_run(stdout: str) -> list[dict[str, str]]:
  rows = []
  for line in stdout.splitlines():
    match = _DRY_LINE.match(line)
    assert match, f'unexpected dry-run line: {line!r}'
    rows.append(match.groupdict())
  return rows


def test_slurm_dry_run_defaults_two_nodes_of_eight():
  result = _run(SLURM, '--dry-run', '--config', 'configs/large.py', '--workdir', '/shared/run',
                '--config.train.steps=1000')
  rows = _parse_dry_run(result.stdout)
  assert len(rows) == 16
  assert sorted(int(r['pid']) for r in rows) == list(range(16))
  assert {r['coord'] for r in rows} == {rows[0]['coord']}
  assert rows[0]['coord'].startswith(rows[0]['host'] + ':')
  assert {r['n'] for r in rows} == {'16'}
  assert [int(r['local']) for r in rows] == list(range(8)) * 2
  assert len({r['host'] for r in rows}) == 2
  for r in rows:
    assert MAIN.search(r['cmd'])
    assert r['cmd'].endswith(
        '--config configs/large.py --workdir /shared/run --config.train.steps=1000')


def test_slurm_dry_run_from_slurm_variables():
  result = _run(SLURM, '--config=c.py', '--workdir=/w', env={
      'DRY_RUN': '1', 'SLURM_JOB_NODELIST': 'node[07-09],gpu-a10', 'GPUS_PER_NODE': '4',
      'SLURM_JOB_ID': '4097'})
  rows = _parse_dry_run(result.stdout)
  assert len(rows) == 16
  assert [int(r['pid']) for r in rows] == list(range(16))
  assert {r['coord'] for r in rows} == {'node07:61441'}  # 61440 + 4097 % 4096
  assert [r['host'] for r in rows[::4]] == ['node07', 'node08', 'node09', 'gpu-a10']


def test_slurm_outside_allocation_fails_clearly():
  result = _run(SLURM, '--config', 'c.py', '--workdir', '/w', check=False)
  assert result.returncode != 0 and 'sbatch' in result.stderr


_FAKE_SRUN = """#!/usr/bin/env bash
# Fake srun: nodes x ntasks-per-node local tasks with SLURM's per-task variables; forwards TERM.
nodes=1; per=1
while [[ "$1" == --* ]]; do
  case "$1" in --nodes=*) nodes="${1#*=}";; --ntasks-per-node=*) per="${1#*=}";; esac
  shift
done
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
for ((p = 0; p < nodes * per; p++)); do
  SLURM_NTASKS=$((nodes * per)) SLURM_PROCID=$p SLURM_LOCALID=$((p % per)) "$@" &
  pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do
  while :; do wait "$pid"; r=$?; kill -0 "$pid" 2>/dev/null || break; done
  ((r)) && rc=$r
done
exit $rc
"""

_FAKE_SCONTROL = """#!/usr/bin/env bash
if [[ "$1" == show ]]; then printf 'n1\\nn2\\n'; else echo "scontrol $*" >> "$FAKE_LOG"; fi
"""

_FAKE_MAIN = """#!/usr/bin/env bash
echo "task $MUPPET_PROCESS_ID/$MUPPET_NUM_PROCESSES local=$MUPPET_LOCAL_DEVICE_IDS \
coord=$MUPPET_COORDINATOR_ADDRESS args=$*" >> "$FAKE_LOG"
if [[ -n "${FAKE_SLEEP:-}" ]]; then
  sleep 20 > /dev/null 2>&1 &
  sleep_pid=$!
  trap 'echo "checkpoint $MUPPET_PROCESS_ID" >> "$FAKE_LOG"; kill $sleep_pid; exit 0' TERM
  touch "$FAKE_LOG.started.$MUPPET_PROCESS_ID"
  wait
fi
"""


def _slurm_env(tmp_path: pathlib.Path) -> dict[str, str]:
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _write(bin_dir / 'srun', _FAKE_SRUN)
  _write(bin_dir / 'scontrol', _FAKE_SCONTROL)
  _write(bin_dir / 'fakepython', _FAKE_MAIN)
  return {
      'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'FAKE_LOG': str(tmp_path / 'log'),
      'PYTHON': 'fakepython', 'GPUS_PER_NODE': '2', 'SLURM_JOB_ID': '77',
      'SLURM_JOB_NODELIST': 'n[1-2]', 'SLURM_SUBMIT_DIR': str(ROOT),
  }


def test_slurm_runs_one_process_per_gpu_with_muppet_variables(tmp_path):
  env = _slurm_env(tmp_path)
  _run(SLURM, '--config', 'c.py', '--workdir', '/w', '--config.x=1', env=env)
  lines = sorted((tmp_path / 'log').read_text().splitlines())
  assert lines == [
      f'task {p}/4 local={p % 2} coord=n1:61517 args=-m muppet_jax.main --config c.py '
      '--workdir /w --config.x=1' for p in range(4)]  # 61440 + 77


def test_slurm_sigterm_checkpoints_and_requeues(tmp_path):
  env = _slurm_env(tmp_path)
  env['FAKE_SLEEP'] = '1'
  full_env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
  full_env.update(env)
  proc = subprocess.Popen(['bash', str(SLURM), '--config', 'c.py', '--workdir', '/w'],
                          env=full_env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 15
    while len(list(tmp_path.glob('log.started.*'))) < 4:
      assert time.monotonic() < deadline, 'fake processes did not start'
      assert proc.poll() is None, proc.communicate()
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # What --signal=B:TERM@120 does.
    _, stderr = proc.communicate(timeout=15)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, stderr
  log = (tmp_path / 'log').read_text().splitlines()
  assert sorted(line for line in log if line.startswith('checkpoint')) == [
      f'checkpoint {p}' for p in range(4)]
  assert log[-1] == 'scontrol requeue 77'  # only after every process has checkpointed
