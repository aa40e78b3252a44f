"""Runs a plan's runs one after another in this process, on the local devices.

Each run is `muppet_jax.train.run(config, ROOT/runs/<id>)` with the config its plan entry
describes, so a run is exactly what `python -m muppet_jax.main --config FILE
--config.x=y ...` would do, and resumes the same way: a run that was interrupted continues from
its newest checkpoint, a finished one is skipped. A run that fails (bad input, a crash) is
recorded with its error line (ROOT/runs/<id>/experiment_run.json, the traceback in its log
file) and the experiment goes on; runs that start from it are skipped. A SIGTERM stops the
experiment after the current run saved its checkpoint.

The console gets one line when a run starts and one when it ends, with its headline metric and
the experiment's progress (runs done / total, ETA from the runs timed so far); each run's own
progress lines go to ROOT/runs/<id>/logs/train.log.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import time
from collections.abc import Sequence

from absl import logging as absl_logging

from muppet_jax import cli
from muppet_jax import metrics_log
from muppet_jax.experiments import plan as plan_lib
from muppet_jax.experiments import store

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def is_experiment_record(record: logging.LogRecord) -> bool:
  """A log record of this package (the experiment's own lines, not a run's)."""
  return record.pathname.startswith(_PACKAGE_DIR)


class OnlyExperimentLines(logging.Filter):
  """Lets through this package's lines and warnings / errors (the runs' INFO lines go to their
  own log files)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or is_experiment_record(record)


@dataclasses.dataclass
class Outcome:
  """What one `run` did."""

  completed: list[str] = dataclasses.field(default_factory=list)  # Trained to the end now.
  failed: dict[str, str] = dataclasses.field(default_factory=dict)  # id -> error line.
  blocked: dict[str, str] = dataclasses.field(default_factory=dict)  # id -> why not started.
  already_done: list[str] = dataclasses.field(default_factory=list)
  preempted: bool = False  # Stopped by SIGTERM (the current run saved a checkpoint).


class _Clock:
  """The experiment's ETA: the mean time of the runs of each kind timed in this `run`."""

  def __init__(self):
    self._times: dict[str, list[float]] = {}

  def add(self, kind: str, seconds: float) -> None:
    self._times.setdefault(kind, []).append(seconds)

  def eta(self, remaining: Sequence[plan_lib.PlannedRun]) -> str:
    every = [t for times in self._times.values() for t in times]
    if not every:
      return 'n/a'
    overall = sum(every) / len(every)
    total = sum(sum(self._times[r.kind]) / len(self._times[r.kind])
                if r.kind in self._times else overall for r in remaining)
    return metrics_log.format_duration(total)


def _headline(workdir: str) -> str:
  from muppet_jax import finetune  # pylint: disable=g-import-not-at-top  (JAX, TF)

  best = finetune.best_eval(workdir)
  if best is None:
    return 'no evaluation'
  return f'best {best.metric} {best.score:.4f} at step {best.step}'


class _RunLog:
  """Every log record of one run (all libraries, INFO and up) into its logs/train.log."""

  def __init__(self, workdir: str, process: int):
    self.path = cli.log_path(workdir, 'train', process)

  def __enter__(self):
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self._handler = logging.FileHandler(self.path, mode='a', encoding='utf-8')
    self._handler.setLevel(logging.INFO)
    self._handler.setFormatter(absl_logging.PythonFormatter())
    logging.getLogger().addHandler(self._handler)
    return self

  def __exit__(self, *exc):
    logging.getLogger().removeHandler(self._handler)
    self._handler.close()


def _error_line(error: BaseException) -> str:
  from muppet_jax import errors  # pylint: disable=g-import-not-at-top

  if isinstance(error, errors.UserError):
    return cli.one_line(error)
  return f'{type(error).__name__}: {cli.one_line(error)}'


def run_plan(plan: plan_lib.Plan, root: str, *, only: int | None = None,
             is_chief: bool = True) -> Outcome:
  """Runs every run of `plan` that is not done (or only the run at index `only`).

  Args:
    plan: the plan (its root already checked and recorded by the caller).
    root: the experiment's root.
    only: run just this plan index (`--index`); its starting runs must be done.
    is_chief: this process writes the run records (process 0 of a multi-process run; every
      process runs the same runs in the same order).

  Returns:
    What was done; runs that failed are recorded and do not stop the others.
  """
  from muppet_jax import run_record  # pylint: disable=g-import-not-at-top
  from muppet_jax import train  # pylint: disable=g-import-not-at-top  (JAX, TF)
  import jax  # pylint: disable=g-import-not-at-top

  outcome = Outcome()
  # Decided once, from the disk as it is now, so that every process takes the same path.
  initial = store.states(plan, root)
  done = {run_id for run_id, s in initial.items() if s == store.DONE}
  todo = [run for run in plan.runs
          if (only is None or run.index == only) and run.id not in done]
  outcome.already_done = [run.id for run in plan.runs
                          if run.id in done and (only is None or run.index == only)]
  total, clock = len(plan.runs), _Clock()
  for position, run in enumerate(todo):
    label = f'[{run.index + 1}/{total}]'
    missing = [d for d in run.after if d not in done]
    if missing:
      why = f'starts from {", ".join(missing)}, which did not finish'
      outcome.blocked[run.id] = why
      absl_logging.warning('%s skip %s: %s', label, run.id, why)
      continue
    workdir = run.workdir(root)
    record = store.read_record(workdir) or store.RunRecord(id=run.id, state='running')
    resumed = initial[run.id] == store.INTERRUPTED
    absl_logging.info('%s start %s%s', label, run.id,
                      ' (resuming from its newest checkpoint)' if resumed else '')
    record.attempts += 1
    record.state, record.error, record.started = 'running', '', time.time()
    if is_chief:
      store.write_record(workdir, record)
    start = time.time()
    result, error = None, None
    with _RunLog(workdir, jax.process_index()):
      try:
        config = plan_lib.run_config(run, root)
        run_record.check_resume(config, workdir)  # As main.py: never resume another run.
        result = train.run(config, workdir)
      except Exception as e:  # pylint: disable=broad-except  (recorded; the experiment goes on)
        error = e
        absl_logging.error('run %s failed: %s', run.id, _error_line(e), exc_info=e,
                           extra={cli.FILE_ONLY: True})
    elapsed = time.time() - start
    clock.add(run.kind, elapsed)
    record.wall_time_s += elapsed
    if result is not None:
      record.step = result.step
    if error is None and result is not None and result.preempted:
      if is_chief:
        store.write_record(workdir, record)
      outcome.preempted = True
      absl_logging.warning('%s %s stopped by SIGTERM at step %d after saving a checkpoint; run '
                           'the same command again to continue the experiment', label, run.id,
                           result.step)
      break
    if error is None:
      record.state = store.DONE
      done.add(run.id)
      outcome.completed.append(run.id)
      what = f'done {run.id}: {_headline(workdir)}'
    else:
      record.state, record.error = store.FAILED, _error_line(error)
      outcome.failed[run.id] = record.error
      what = f'FAILED {run.id}: {record.error} (traceback in {cli.log_path(workdir, "train")})'
    if is_chief:
      store.write_record(workdir, record)
    remaining = [r for r in todo[position + 1:]
                 if not any(d in outcome.failed or d in outcome.blocked for d in r.after)]
    failed = f', {len(outcome.failed)} failed' if outcome.failed else ''
    log = absl_logging.info if error is None else absl_logging.error
    log('%s %s in %s; experiment %d/%d runs done%s, ETA %s', label, what,
        metrics_log.format_duration(elapsed), len(done), total, failed, clock.eta(remaining))
    # Each run compiles its own programs: free the previous run's before the next one.
    del result
    gc.collect()
    jax.clear_caches()
  return outcome
