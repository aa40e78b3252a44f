"""One row per planned run, read from its workdir: axes, best and final dev scores, steps,
wall time, state (ROOT/results.csv).

The scores come from the run's own metrics.jsonl: `best_score` is the highest headline score
over its evaluations (`finetune.headline`: the task's primary metric, or the mean of the
tasks' primary metrics for a pre-finetuning run), `final_score` the last evaluation's.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any

from muppet_jax.experiments import plan as plan_lib
from muppet_jax.experiments import spec
from muppet_jax.experiments import store

# results.csv's columns, in order.
COLUMNS = ('id', 'stage', 'kind', 'state', 'task', 'start', 'pre_finetuned', 'num_tasks',
           'batching', 'train_fraction', 'learning_rate', 'adam_eps', 'dropout', 'seed',
           'metric', 'best_score', 'best_step', 'final_score', 'final_step', 'train_steps',
           'wall_time_s', 'attempts', 'error', 'workdir')


@dataclasses.dataclass
class Row:
  """One run's line of results.csv."""

  run: plan_lib.PlannedRun
  state: str
  metric: str = ''  # What the scores are ('muppet_rte accuracy').
  best_score: float | None = None
  best_step: int | None = None
  final_score: float | None = None
  final_step: int | None = None
  train_steps: int | None = None  # config.json's train.steps (epochs resolved).
  wall_time_s: float | None = None
  attempts: int = 0
  error: str = ''

  @property
  def axes(self) -> dict[str, Any]:
    return self.run.axes

  def as_dict(self, root: str) -> dict[str, Any]:
    values = {'id': self.run.id, 'stage': self.run.stage, 'kind': self.run.kind,
              'state': self.state, 'pre_finetuned': self.run.pre_finetuned,
              'metric': self.metric, 'best_score': self.best_score,
              'best_step': self.best_step, 'final_score': self.final_score,
              'final_step': self.final_step, 'train_steps': self.train_steps,
              'wall_time_s': None if self.wall_time_s is None else round(self.wall_time_s, 1),
              'attempts': self.attempts, 'error': self.error,
              'workdir': os.path.relpath(self.run.workdir(root), root)}
    for name in spec.AXES:
      values[name] = self.axes.get(name)
    return {k: ('' if values[k] is None else values[k]) for k in COLUMNS}


def collect(plan: plan_lib.Plan, root: str) -> list[Row]:
  """Every planned run's row, in plan order."""
  from muppet_jax import finetune  # pylint: disable=g-import-not-at-top  (JAX, TF)

  rows = []
  for run in plan.runs:
    workdir = run.workdir(root)
    row = Row(run=run, state=store.state(workdir), train_steps=store.final_step(workdir))
    record = store.read_record(workdir)
    if record is not None:
      row.wall_time_s, row.attempts = record.wall_time_s, record.attempts
      if row.state == store.FAILED:
        row.error = record.error
    best = finetune.best_eval(workdir)
    if best is not None:
      row.metric, row.best_score, row.best_step = best.metric, best.score, best.step
      row.final_step, row.final_score = best.evaluations[-1]
    rows.append(row)
  return rows


def write_csv(rows: list[Row], root: str, path: str) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
      writer.writerow(row.as_dict(root))
  os.replace(tmp, path)
