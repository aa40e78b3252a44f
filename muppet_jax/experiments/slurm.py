"""`--emit-slurm`: the plan as SLURM job arrays over launch/slurm_gpu.sbatch, and a TPU pod script.

Writes ROOT/launch/:

  stage<k>_<name>.tsv    one line per run of the stage: index, id, config, workdir and the
                         `--config.x=y` overrides (shell-quoted), in plan order
  run_array.sbatch       one array task = one run: reads its line of the table given as
                         argument, skips a finished run, runs `launch/slurm_gpu.sbatch` (one
                         process per GPU of the task's allocation, jax.distributed from
                         SLURM's variables, SIGTERM -> checkpoint and requeue) with the run's
                         config and overrides, and records a failure in the run's
                         experiment_run.json
  submit.sh              submits one array per stage, each after the previous one
                         (`--dependency=afterany`: a failed run does not cancel the rest; the
                         runs that start from it fail at once, naming it), with per-kind
                         resources from the environment
  tpu_pod.sh             every unfinished run in plan order through launch/tpu_pod.sh (one
                         run at a time on the whole pod slice)

Every run is a plain `python -m muppet_jax.main` run in ROOT/runs/<id>, so `report ROOT` reads
them as it reads the runs of `run`.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

from muppet_jax.experiments import plan as plan_lib
from muppet_jax.experiments import spec

LAUNCH_DIR = 'launch'


def _flag(key: str, value: Any) -> str:
  """One `--config.key=value` as ml_collections' config flags parse it."""
  if isinstance(value, bool):
    text = 'True' if value else 'False'
  elif isinstance(value, float):
    text = repr(value)
  else:
    text = str(value)
  return f'--config.{key}={text}'


def command_args(run: plan_lib.PlannedRun, root: str) -> list[str]:
  """The run's overrides as `muppet_jax.main` flags, `{root}` filled in."""
  root = os.path.abspath(root)
  return [_flag(k, v.replace(plan_lib.ROOT_PLACEHOLDER, root) if isinstance(v, str) else v)
          for k, v in run.overrides.items()]


_ARRAY_SCRIPT = r'''#!/usr/bin/env bash
# One run of an experiment plan per array task (written by python -m muppet_jax.experiments
# run ... --emit-slurm). Usage: sbatch --array=0-N run_array.sbatch STAGE_TABLE.tsv
# Resources (nodes, GPUs) come from sbatch's command line (submit.sh); the job is requeueable
# and gets SIGTERM 120 s before its time limit, which launch/slurm_gpu.sbatch turns into a
# checkpoint and a requeue.
#SBATCH --job-name=muppet-exp
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --open-mode=append
#SBATCH --output=__LAUNCH__/logs/%x-%A_%a.out
set -euo pipefail
REPO_DIR="${REPO_DIR:-__REPO__}"
table="$1"
line="$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$table")"
[[ -n "$line" ]] || { echo "no run for array index $SLURM_ARRAY_TASK_ID in $table" >&2; exit 2; }
IFS=$'\t' read -r index run_id config workdir args <<<"$line"
if [[ -f "$workdir/best_eval.json" ]]; then
  echo "run $run_id (plan index $index) is done: nothing to do"
  exit 0
fi
eval "overrides=($args)"
echo "run $run_id (plan index $index): $config in $workdir"
# In the background, so that the early-warning SIGTERM that SLURM sends this batch shell can
# be passed on to slurm_gpu.sbatch, which checkpoints and requeues.
bash "$REPO_DIR/launch/slurm_gpu.sbatch" --config "$config" --workdir "$workdir" \
  "${overrides[@]}" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' TERM
rc=0
wait "$child" || rc=$?
while kill -0 "$child" 2>/dev/null; do  # `wait` returns early when a trapped signal arrives.
  rc=0
  wait "$child" || rc=$?
done
if [[ "$rc" != 0 && ! -f "$workdir/best_eval.json" ]]; then
  mkdir -p "$workdir"
  out="__LAUNCH__/logs/muppet-exp-${SLURM_ARRAY_JOB_ID:-?}_${SLURM_ARRAY_TASK_ID}.out"
  printf '{"id": "%s", "state": "failed", "error": "exit status %s in SLURM job %s; see %s"}\n' \
    "$run_id" "$rc" "${SLURM_JOB_ID:-?}" "$out" > "$workdir/experiment_run.json"
fi
exit "$rc"
'''

_SUBMIT_HEAD = r'''#!/usr/bin/env bash
# Submits the experiment's plan as SLURM job arrays, one per stage, each after the previous
# (written by python -m muppet_jax.experiments run ... --emit-slurm). Resources per array task
# (one run): pre-finetuning PFT_NODES x GPUS_PER_NODE GPUs (default 8 x 8 = 64, the paper's),
# fine-tuning FT_NODES x FT_GPUS (default 1 x 1); extra sbatch options in SBATCH_ARGS (e.g.
# "--partition=gpu --time=24:00:00"). DRY_RUN=1 prints the sbatch commands.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$here/logs"
read -r -a extra <<<"${SBATCH_ARGS:-}"
gpus="${GPUS_PER_NODE:-8}"
pft=(--nodes="${PFT_NODES:-8}" --ntasks-per-node="$gpus" --gpus-per-node="$gpus")
ft=(--nodes="${FT_NODES:-1}" --ntasks-per-node="${FT_GPUS:-1}" --gpus-per-node="${FT_GPUS:-1}")
submit() {  # submit DEPENDENCY TABLE COUNT RESOURCES... -> prints the job id
  local dependency="$1" table="$2" count="$3"
  shift 3
  local cmd=(sbatch --parsable --array="0-$((count - 1))" "$@" "${extra[@]}")
  [[ -n "$dependency" ]] && cmd+=(--dependency="afterany:$dependency")
  cmd+=("$here/run_array.sbatch" "$table")
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "${cmd[*]}" >&2
    echo "JOB_$(basename "$table" .tsv)"
  else
    "${cmd[@]}"
  fi
}
job=""
'''

_POD_HEAD = r'''#!/usr/bin/env bash
# Runs the experiment's plan on a Cloud TPU pod slice, one run at a time on every worker,
# through launch/tpu_pod.sh (written by python -m muppet_jax.experiments run ... --emit-slurm).
# Needs TPU_NAME and ZONE (see launch/tpu_pod.sh); the root must be a directory every worker
# sees at the same path (ALLOW_LOCAL_WORKDIR=1 is set for it). Finished runs are skipped, so
# running it again continues the experiment. DRY_RUN=1 prints the commands.
set -euo pipefail
REPO_DIR="${REPO_DIR:-__REPO__}"
export ALLOW_LOCAL_WORKDIR=1
run() {  # run ID WORKDIR CONFIG OVERRIDES...
  local run_id="$1" workdir="$2"
  shift 2
  if [[ -f "$workdir/best_eval.json" ]]; then
    echo "run $run_id is done: skipped"
    return
  fi
  echo "run $run_id"
  "$REPO_DIR/launch/tpu_pod.sh" --config "$1" --workdir "$workdir" "${@:2}" \
    || echo "run $run_id failed (exit status $?); continuing" >&2
}
'''


def emit(plan: plan_lib.Plan, root: str, repo: str) -> list[str]:
  """Writes ROOT/launch/ (module docstring); returns the files written."""
  root = os.path.abspath(root)
  directory = os.path.join(root, LAUNCH_DIR)
  os.makedirs(os.path.join(directory, 'logs'), exist_ok=True)
  written = []

  def write(name: str, text: str, executable: bool = False) -> None:
    path = os.path.join(directory, name)
    with open(path, 'w') as f:
      f.write(text)
    if executable:
      os.chmod(path, 0o755)
    written.append(path)

  write('run_array.sbatch', _ARRAY_SCRIPT.replace('__LAUNCH__', directory)
        .replace('__REPO__', repo), executable=True)
  submit = [_SUBMIT_HEAD]
  pod = [_POD_HEAD.replace('__REPO__', repo)]
  stages = list(dict.fromkeys(run.stage for run in plan.runs))
  for k, stage in enumerate(stages, 1):
    runs = [run for run in plan.runs if run.stage == stage]
    lines = []
    for run in runs:
      args = command_args(run, root)
      lines.append('\t'.join([str(run.index), run.id, run.config, run.workdir(root),
                              shlex.join(args)]))
      pod.append('run ' + shlex.join([run.id, run.workdir(root), run.config, *args]))
    table = f'stage{k}_{stage}.tsv'
    write(table, '\n'.join(lines) + '\n')
    resources = 'pft' if runs[0].kind == spec.PREFINETUNE else 'ft'
    submit.append(f'job="$(submit "$job" "$here/{table}" {len(runs)} "${{{resources}[@]}}")"\n'
                  f'echo "stage {stage}: {len(runs)} runs, job $job"\n')
  write('submit.sh', ''.join(submit), executable=True)
  write('tpu_pod.sh', '\n'.join(pod) + '\n', executable=True)
  return written
