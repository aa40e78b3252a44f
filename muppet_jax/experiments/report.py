"""`report ROOT`: results.csv, the Markdown tables and the figures of an experiment's root.

Reads only the root: the plan in ROOT/experiment.json and each run's workdir (so it works
while an experiment is still running, and on runs a cluster ran). Writes

  ROOT/results.csv     one row per planned run (`results.COLUMNS`)
  ROOT/results.md      the paper-shaped table, the per-task table with the chosen
                       hyperparameters, the pre-finetuning runs, failures, the figures
  ROOT/results.json    the selected results with exact values
  ROOT/figures/*.png   `figures.draw_all`
"""

from __future__ import annotations

import dataclasses
import os

from muppet_jax.experiments import figures
from muppet_jax.experiments import plan as plan_lib
from muppet_jax.experiments import results as results_lib
from muppet_jax.experiments import spec
from muppet_jax.experiments import store
from muppet_jax.experiments import tables


@dataclasses.dataclass
class Report:
  """What `write` produced."""

  csv: str
  markdown: str
  json: str
  figures: list[str]
  rows: list[results_lib.Row]
  selected: list[tables.Selected]


def markdown(plan: plan_lib.Plan, rows, selected, figure_paths, root: str) -> str:
  """results.md's text."""
  counts = {}
  for row in rows:
    counts[row.state] = counts.get(row.state, 0) + 1
  parts = [f'# {plan.experiment}\n',
           (plan.description + '\n') if plan.description else '',
           f'Plan: {plan.file}, {len(rows)} runs ('
           + ', '.join(f'{n} {state}' for state, n in sorted(counts.items())) + ').\n',
           '## Fine-tuning: best dev score x 100, mean ± sd over seeds\n',
           'Hyperparameters chosen per task and start on the mean dev score over seeds; '
           'Δ = pre-finetuned minus without pre-finetuning.\n',
           tables.paper_table(selected)]
  detail = tables.detail_table(selected)
  if detail:
    parts += ['\n## Chosen hyperparameters per task and start\n', detail]
  pre = tables.prefinetuning_table(rows)
  if pre:
    parts += ['\n## Pre-finetuning runs\n', pre]
  issues = tables.problems(rows)
  if issues:
    parts += ['\n## Failed and unfinished runs\n', issues]
  if figure_paths:
    parts.append('\n## Figures\n')
    parts += [f'![{os.path.basename(p)}]({os.path.relpath(p, root)})\n' for p in figure_paths]
  return '\n'.join(p for p in parts if p)


def write(root: str) -> Report:
  """Writes the report of the experiment in `root`.

  Raises:
    spec.ExperimentError: `root` holds no experiment.
  """
  plan = plan_lib.read_recorded(root)
  if plan is None:
    raise spec.ExperimentError(f'{root} holds no {plan_lib.EXPERIMENT_FILE}: pass the --root '
                               'of `python -m muppet_jax.experiments run`')
  rows = results_lib.collect(plan, root)
  selected = tables.select(rows)
  csv_path = os.path.join(root, 'results.csv')
  results_lib.write_csv(rows, root, csv_path)
  figure_paths = figures.draw_all(selected, os.path.join(root, 'figures'))
  md_path = os.path.join(root, 'results.md')
  with open(md_path + '.tmp', 'w') as f:
    f.write(markdown(plan, rows, selected, figure_paths, root))
  os.replace(md_path + '.tmp', md_path)
  json_path = os.path.join(root, 'results.json')
  store.write_json(json_path, {'experiment': plan.experiment,
                               'selected': tables.as_json(selected)})
  return Report(csv=csv_path, markdown=md_path, json=json_path, figures=figure_paths,
                rows=rows, selected=selected)
