"""An experiment's root on disk: whose runs it holds, and the state of each run.

  ROOT/experiment.json          the plan (`plan.Plan`), rewritten by every `run`
  ROOT/runs/<id>/               the run's workdir: what `muppet_jax.main` writes there
                                (checkpoints, metrics.jsonl, config.json, best_eval.json, logs/)
  ROOT/runs/<id>/experiment_run.json
                                the runner's record: state, error line, wall time, attempts
  ROOT/logs/experiment.log      every line of every `run` (the runs' own logs: runs/<id>/logs/)
  ROOT/results.csv, results.md, results.json, figures/*.png   the report
  ROOT/launch/                  `--emit-slurm`: SLURM job arrays and a TPU pod script

A run's state is read from its workdir, so that runs started by other means (a SLURM array
calling `muppet_jax.main`) count too:

  done         its final evaluation is in metrics.jsonl (the `eval` line at config.json's
               train.steps) — `muppet_jax.train` writes it last
  failed       the runner (or a launch script) recorded an error and the run did not finish
  interrupted  started (a checkpoint, a config.json or a 'running' record) but not done: the
               next `run` resumes it from its newest checkpoint
  pending      nothing yet
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

from muppet_jax.experiments import plan as plan_lib
from muppet_jax.experiments import spec

RUN_RECORD = 'experiment_run.json'
DONE, FAILED, INTERRUPTED, PENDING = 'done', 'failed', 'interrupted', 'pending'


@dataclasses.dataclass
class RunRecord:
  """The runner's record of one run (ROOT/runs/<id>/experiment_run.json)."""

  id: str
  state: str  # 'running', DONE or FAILED.
  error: str = ''  # The failure's one-line message.
  attempts: int = 0  # Times a `run` started it.
  started: float = 0.0  # Unix time the last attempt started.
  wall_time_s: float = 0.0  # Seconds spent training it, over all attempts.
  step: int = 0  # The step it stopped at.


def read_json(path: str) -> Any:
  """A JSON file's value, or None when it is missing or cut short (a killed writer)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_json(path: str, value: Any) -> None:
  """Writes through a temporary file, so that a reader never sees half a file (one per
  process: the tasks of a job array record the plan at the same time)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


def read_record(workdir: str) -> RunRecord | None:
  value = read_json(os.path.join(workdir, RUN_RECORD))
  if not isinstance(value, dict) or 'id' not in value:
    return None
  fields = {f.name for f in dataclasses.fields(RunRecord)}
  return RunRecord(**{k: v for k, v in value.items() if k in fields})


def write_record(workdir: str, record: RunRecord) -> None:
  write_json(os.path.join(workdir, RUN_RECORD), dataclasses.asdict(record))


def final_step(workdir: str) -> int | None:
  """The run's train.steps from the config.json it wrote, or None before it started."""
  value = read_json(os.path.join(workdir, 'config.json'))
  try:
    return int(value['train']['steps'])
  except (TypeError, KeyError, ValueError):
    return None


def finished(workdir: str) -> bool:
  """Whether the run's final evaluation (at its last step) is in its metrics.jsonl."""
  steps = final_step(workdir)
  path = os.path.join(workdir, 'metrics.jsonl')
  if steps is None or not os.path.exists(path):
    return False
  with open(path) as f:
    for line in f:
      try:
        entry = json.loads(line)
      except ValueError:
        continue
      if isinstance(entry, dict) and 'eval' in entry and entry.get('step') == steps:
        return True
  return False


def state(workdir: str) -> str:
  """DONE, FAILED, INTERRUPTED or PENDING (module docstring)."""
  if finished(workdir):
    return DONE
  record = read_record(workdir)
  if record is not None and record.state == FAILED:
    return FAILED
  started = (record is not None or os.path.isdir(os.path.join(workdir, 'checkpoints')) or
             os.path.exists(os.path.join(workdir, 'config.json')))
  return INTERRUPTED if started else PENDING


def states(plan: plan_lib.Plan, root: str) -> dict[str, str]:
  return {run.id: state(run.workdir(root)) for run in plan.runs}


def check_owner(root: str, experiment: str) -> plan_lib.Plan | None:
  """Whether `root` is new (missing or empty) or holds `experiment`; returns the plan recorded
  there (None for a new root). Reads only experiment.json: seconds before any plan is built.

  Raises:
    spec.ExperimentError: the root holds another experiment, or files that are not an
      experiment's.
  """
  if not os.path.exists(root):
    return None
  if not os.path.isdir(root):
    raise spec.ExperimentError(f'--root {root} is a file, not a directory')
  recorded = plan_lib.read_recorded(root)
  if recorded is None:
    if os.listdir(root):
      raise spec.ExperimentError(
          f'--root {root} is not empty and holds no {plan_lib.EXPERIMENT_FILE}: it is not an '
          'experiment root; choose a new or empty directory')
    return None
  if recorded.experiment != experiment:
    raise spec.ExperimentError(
        f'--root {root} holds the runs of experiment {recorded.experiment!r} (from '
        f'{recorded.file}), not {experiment!r}; choose another --root')
  return recorded


def check_root(root: str, plan: plan_lib.Plan) -> plan_lib.Plan | None:
  """Whether `plan` may use `root`; returns the plan recorded there (None for a new root).

  A root is new (missing or empty) or holds this experiment (`check_owner`), and every run
  that has started there was started with the settings the plan gives it now (config file and
  overrides).

  Raises:
    spec.ExperimentError: the root holds another experiment, files that are not an
      experiment's, or a started run whose settings changed (the differences named).
  """
  recorded = check_owner(root, plan.experiment)
  if recorded is None:
    return None
  before = recorded.by_id()
  for run in plan.runs:
    old = before.get(run.id)
    if old is None or old.settings() == run.settings():
      continue
    if state(run.workdir(root)) == PENDING:
      continue  # Never started: it simply runs with the new settings.
    diffs = _differences(old.settings(), run.settings())
    raise spec.ExperimentError(
        f'run {run.id} in {root} was started with other settings ({diffs}); use a new '
        f'--root, or remove {run.workdir(root)} to run it again')
  return recorded


def _differences(old: tuple[str, dict], new: tuple[str, dict]) -> str:
  diffs = []
  if old[0] != new[0]:
    diffs.append(f'config {old[0]} -> {new[0]}')
  for key in sorted(set(old[1]) | set(new[1])):
    if old[1].get(key) != new[1].get(key):
      diffs.append(f'{key}: {old[1].get(key, "unset")!r} -> {new[1].get(key, "unset")!r}')
  return '; '.join(diffs)


def record_plan(root: str, plan: plan_lib.Plan) -> None:
  """Writes ROOT/experiment.json (creating the root)."""
  os.makedirs(os.path.join(root, plan_lib.RUNS_DIR), exist_ok=True)
  value = plan.to_json()
  value['written'] = time.strftime('%Y-%m-%d %H:%M:%S')
  write_json(os.path.join(root, plan_lib.EXPERIMENT_FILE), value)
