"""The paper's tables from the runs' rows: hyperparameters chosen on the dev score, the mean and
spread over seeds, with and without pre-finetuning and the difference.

Protocol (paper section 4: "a fixed hyper-parameter search ... learning rate, Adam epsilon and
dropout"; the scores are dev scores, each run's best evaluation):

1. Fine-tuning runs that finished are grouped by everything but the hyperparameters and the
   seed: (task, start, training fraction). Within a group, each hyperparameter combination
   (learning rate, Adam epsilon, dropout) scores the mean over its seeds of the runs' best dev
   scores; the combination with the highest mean is chosen (the first in plan order on a tie).
2. A group's result is that combination's mean, sample standard deviation and number of seeds.
3. The difference: a pre-finetuned start's mean minus the mean of the start without
   pre-finetuning (the first such start of the plan) with the same task and fraction.

Scores are printed x 100 with one decimal, as the paper's tables; results.json keeps them
exact.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from muppet_jax.experiments import results as results_lib
from muppet_jax.experiments import spec
from muppet_jax.experiments import store


@dataclasses.dataclass(frozen=True)
class Selected:
  """One group's result with its chosen hyperparameters."""

  task: str
  start: str
  pre_finetuned: bool
  train_fraction: float
  num_tasks: int | None  # Pre-finetuning tasks of the start (0: none; None: unknown).
  batching: str | None  # The start's batching strategy (pre-finetuned runs of this plan).
  hparams: dict[str, float]  # The chosen combination.
  scores: tuple[float, ...]  # Its runs' best dev scores, one per seed.
  run_ids: tuple[str, ...]
  metric: str
  combinations: int  # Hyperparameter combinations compared.

  @property
  def mean(self) -> float:
    return sum(self.scores) / len(self.scores)

  @property
  def std(self) -> float:
    """Sample standard deviation over seeds (0 for one seed)."""
    n = len(self.scores)
    if n < 2:
      return 0.0
    return math.sqrt(sum((s - self.mean) ** 2 for s in self.scores) / (n - 1))


def _finished_finetuning(rows: Sequence[results_lib.Row]) -> list[results_lib.Row]:
  return [r for r in rows if r.run.kind == spec.FINETUNE and r.state == store.DONE
          and r.best_score is not None]


def select(rows: Sequence[results_lib.Row]) -> list[Selected]:
  """Each (task, start, fraction) group's result (module docstring), in plan order."""
  groups: dict[tuple, dict[tuple, list[results_lib.Row]]] = {}
  for row in _finished_finetuning(rows):
    axes = row.axes
    key = (axes['task'], axes['start'], axes['train_fraction'])
    combo = tuple(axes[name] for name in spec.HPARAM_AXES)
    groups.setdefault(key, {}).setdefault(combo, []).append(row)
  selected = []
  for (task, start, fraction), combos in groups.items():
    best_combo, best_rows, best_mean = None, None, -math.inf
    for combo, members in combos.items():
      mean = sum(r.best_score for r in members) / len(members)
      if mean > best_mean:
        best_combo, best_rows, best_mean = combo, members, mean
    first = best_rows[0]
    selected.append(Selected(
        task=task, start=start, pre_finetuned=bool(first.run.pre_finetuned),
        train_fraction=fraction, num_tasks=first.axes.get('num_tasks'),
        batching=first.axes.get('batching'),
        hparams=dict(zip(spec.HPARAM_AXES, best_combo)),
        scores=tuple(r.best_score for r in best_rows),
        run_ids=tuple(r.run.id for r in best_rows), metric=first.metric,
        combinations=len(combos)))
  return selected


def baseline_of(result: Selected, selected: Sequence[Selected]) -> Selected | None:
  """The result without pre-finetuning that `result` is compared with (same task, fraction)."""
  for other in selected:
    if (not other.pre_finetuned and other.task == result.task and
        other.train_fraction == result.train_fraction):
      return other
  return None


def _score(value: float | None) -> str:
  return '' if value is None else f'{100 * value:.1f}'


def _cell(result: Selected | None) -> str:
  if result is None:
    return '–'
  spread = f' ± {_score(result.std)}' if len(result.scores) > 1 else ''
  return f'{_score(result.mean)}{spread}'


def _slug(task: str) -> str:
  return task.removeprefix('muppet_')


def _row_label(result: Selected, fractions: bool) -> str:
  label = result.start
  if fractions:
    label += f' (fraction {result.train_fraction:g})'
  return label


def paper_table(selected: Sequence[Selected]) -> str:
  """Paper Tables 3-4's shape: a row per start (and fraction), a column per task, mean ± sd
  over seeds of the dev score x 100, then one difference row per pre-finetuned start."""
  if not selected:
    return '_No finished fine-tuning runs yet._\n'
  tasks = list(dict.fromkeys(r.task for r in selected))
  fractions = len({r.train_fraction for r in selected}) > 1
  row_keys = list(dict.fromkeys((r.start, r.train_fraction) for r in selected))
  by_key = {(r.start, r.train_fraction, r.task): r for r in selected}
  lines = ['| | ' + ' | '.join(_slug(t) for t in tasks) + ' |',
           '|---|' + '---|' * len(tasks)]
  pre = {}
  for start, fraction in row_keys:
    results = [by_key.get((start, fraction, t)) for t in tasks]
    some = next(r for r in results if r is not None)
    pre[(start, fraction)] = some.pre_finetuned
    lines.append(f'| {_row_label(some, fractions)} | ' +
                 ' | '.join(_cell(r) for r in results) + ' |')
  for start, fraction in row_keys:
    if not pre[(start, fraction)]:
      continue
    cells, some = [], None
    for task in tasks:
      result = by_key.get((start, fraction, task))
      base = baseline_of(result, selected) if result else None
      some = some or result
      cells.append(f'{100 * (result.mean - base.mean):+.1f}' if result and base else '–')
    lines.append(f'| Δ {_row_label(some, fractions)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def detail_table(selected: Sequence[Selected]) -> str:
  """Per task and start: the chosen hyperparameters, the seeds' mean and spread, the
  difference with the start without pre-finetuning."""
  if not selected:
    return ''
  lines = ['| task | start | pre-finetuned | tasks | fraction | learning rate | Adam eps | '
           'dropout | seeds | mean | sd | Δ | metric | runs compared |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for result in selected:
    base = baseline_of(result, selected)
    delta = (f'{100 * (result.mean - base.mean):+.1f}'
             if base is not None and result.pre_finetuned else '')
    h = result.hparams
    lines.append(
        f'| {_slug(result.task)} | {result.start} | {"yes" if result.pre_finetuned else "no"} '
        f'| {"" if result.num_tasks is None else result.num_tasks} '
        f'| {result.train_fraction:g} | {h["learning_rate"]:g} | {h["adam_eps"]:g} '
        f'| {h["dropout"]:g} | {len(result.scores)} | {_score(result.mean)} '
        f'| {_score(result.std)} | {delta} | {result.metric.split(" ")[-1]} '
        f'| {result.combinations} |')
  return '\n'.join(lines) + '\n'


def prefinetuning_table(rows: Sequence[results_lib.Row]) -> str:
  """The pre-finetuning runs: tasks, batching, held-out mean primary metric, steps, time."""
  pre = [r for r in rows if r.run.kind == spec.PREFINETUNE]
  if not pre:
    return ''
  lines = ['| run | state | tasks | batching | held-out mean (final) | steps | wall time |',
           '|---|---|---|---|---|---|---|']
  for row in pre:
    wall = '' if row.wall_time_s is None else f'{row.wall_time_s:.0f} s'
    lines.append(f'| {row.run.id} | {row.state} | {row.axes.get("num_tasks")} | '
                 f'{row.axes.get("batching")} | {_score(row.final_score)} | '
                 f'{row.train_steps or ""} | {wall} |')
  return '\n'.join(lines) + '\n'


def problems(rows: Sequence[results_lib.Row]) -> str:
  """Failed runs with their error lines, and how many are not finished."""
  lines = []
  for row in rows:
    if row.state == store.FAILED:
      lines.append(f'- **{row.run.id}** failed: {row.error}')
  unfinished = [r.run.id for r in rows if r.state in (store.PENDING, store.INTERRUPTED)]
  if unfinished:
    lines.append(f'- {len(unfinished)} run(s) not finished: {", ".join(unfinished[:10])}'
                 f'{" ..." if len(unfinished) > 10 else ""}')
  return '\n'.join(lines) + ('\n' if lines else '')


def as_json(selected: Sequence[Selected]) -> list[dict[str, Any]]:
  """The selected results with exact values (ROOT/results.json)."""
  out = []
  for result in selected:
    base = baseline_of(result, selected)
    out.append({**dataclasses.asdict(result), 'mean': result.mean, 'std': result.std,
                'baseline_start': base.start if base is not None else None,
                'difference': (result.mean - base.mean) if base is not None else None})
  return out
