"""The paper's figures from the selected results (`tables.select`), as PNG files (matplotlib,
headless Agg backend: no display needed).

- `starts.png` (paper Tables 3-4 as bars): per task, one bar per starting point (without
  pre-finetuning first), mean ± sd over seeds, at the largest training fraction. Always drawn.
- `scale.png` (paper Figure 1): per task, the dev score against the number of pre-finetuning
  tasks of the start (0 = without pre-finetuning, drawn as a dashed line), mean ± sd over seeds,
  at the largest training fraction. Drawn when the starts have two or more task counts.
- `low_resource.png` (paper Figure 3): per task, a heatmap of the dev score over the training
  fraction (columns) and the number of pre-finetuning tasks (rows, 0 = without). Drawn when
  there are two or more fractions and two or more task counts.
- `batching.png` (paper Figure 2): per task, one bar per batching strategy of the
  pre-finetuning run (and one without pre-finetuning), mean ± sd. Drawn when the starts used
  two or more strategies.

A point that several starts share (e.g. pre-finetuning seeds) is their mean.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use('Agg')  # Before pyplot: no display on servers and in tests.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from muppet_jax.experiments import tables  # pylint: disable=g-import-not-at-top

_BATCHING_LABELS = {'dataset_homogeneous': 'dataset homogeneous',
                    'batch_homogeneous': 'batch homogeneous',
                    'heterogeneous': 'batch heterogeneous'}


def _tasks(selected: Sequence[tables.Selected]) -> list[str]:
  return list(dict.fromkeys(r.task for r in selected))


def _mean(results: Sequence[tables.Selected]) -> tuple[float, float]:
  """Mean and mean sd x 100 of the results at one point."""
  return (100 * float(np.mean([r.mean for r in results])),
          100 * float(np.mean([r.std for r in results])))


def _grid(n: int) -> tuple[plt.Figure, list[plt.Axes]]:
  cols = min(n, 3)
  rows = -(-n // cols)
  # At least 6.5 inches wide: room for the figure's title above a single panel.
  fig, axes = plt.subplots(rows, cols, figsize=(max(6.5, 4.2 * cols), 3.3 * rows),
                           squeeze=False)
  flat = list(axes.flat)
  for ax in flat[n:]:
    ax.axis('off')
  return fig, flat[:n]


def _save(fig: plt.Figure, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def starts_figure(selected: Sequence[tables.Selected], path: str) -> str | None:
  """Every start side by side per task; None without results."""
  if not selected:
    return None
  fraction = max(r.train_fraction for r in selected)
  chosen = [r for r in selected if r.train_fraction == fraction]
  tasks = _tasks(chosen)
  starts = list(dict.fromkeys(r.start for r in sorted(chosen, key=lambda r: r.pre_finetuned)))
  width = 0.8 / len(starts)
  fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(tasks) * max(2, len(starts)) / 2), 3.6))
  for b, start in enumerate(starts):
    points = []
    for task in tasks:
      at = [r for r in chosen if r.task == task and r.start == start]
      points.append(_mean(at) if at else (np.nan, 0.0))
    x = np.arange(len(tasks)) + (b - (len(starts) - 1) / 2) * width
    ax.bar(x, [p[0] for p in points], width, yerr=[p[1] for p in points], capsize=3,
           label=start)
  ax.set_xticks(range(len(tasks)), [t.removeprefix('muppet_') for t in tasks])
  ax.set_ylabel('best dev score x 100')
  ax.set_title('Fine-tuning with and without pre-finetuning')
  ax.legend(fontsize=7)
  return _save(fig, path)


def scale_figure(selected: Sequence[tables.Selected], path: str) -> str | None:
  """Figure 1; None when there are fewer than two task counts."""
  known = [r for r in selected if r.num_tasks is not None]
  if len({r.num_tasks for r in known if r.num_tasks > 0}) < 2:
    return None
  fraction = max(r.train_fraction for r in known)
  known = [r for r in known if r.train_fraction == fraction]
  tasks = _tasks(known)
  fig, axes = _grid(len(tasks))
  for ax, task in zip(axes, tasks):
    mine = [r for r in known if r.task == task]
    counts = sorted({r.num_tasks for r in mine if r.num_tasks > 0})
    points = [_mean([r for r in mine if r.num_tasks == n]) for n in counts]
    ax.errorbar(counts, [p[0] for p in points], yerr=[p[1] for p in points], marker='o',
                capsize=3, label='pre-finetuned')
    base = [r for r in mine if r.num_tasks == 0]
    if base:
      ax.axhline(_mean(base)[0], linestyle='--', color='gray', label='without')
    ax.set_title(task.removeprefix('muppet_'))
    ax.set_xlabel('pre-finetuning tasks')
    ax.set_ylabel(f'dev {mine[0].metric.split(" ")[-1]} x 100')
    ax.set_xticks(counts)
    ax.legend(fontsize=7)
  fig.suptitle('Dev score against the number of pre-finetuning tasks')
  return _save(fig, path)


def low_resource_figure(selected: Sequence[tables.Selected], path: str) -> str | None:
  """Figure 3; None without two fractions and two task counts."""
  known = [r for r in selected if r.num_tasks is not None]
  if (len({r.train_fraction for r in known}) < 2 or
      len({r.num_tasks for r in known}) < 2):
    return None
  tasks = _tasks(known)
  fig, axes = _grid(len(tasks))
  for ax, task in zip(axes, tasks):
    mine = [r for r in known if r.task == task]
    fractions = sorted({r.train_fraction for r in mine})
    counts = sorted({r.num_tasks for r in mine})
    grid = np.full((len(counts), len(fractions)), np.nan)
    for i, n in enumerate(counts):
      for j, f in enumerate(fractions):
        at = [r for r in mine if r.num_tasks == n and r.train_fraction == f]
        if at:
          grid[i, j] = _mean(at)[0]
    image = ax.imshow(grid, origin='lower', aspect='auto', cmap='viridis')
    for i in range(len(counts)):
      for j in range(len(fractions)):
        if not np.isnan(grid[i, j]):
          ax.text(j, i, f'{grid[i, j]:.1f}', ha='center', va='center', fontsize=7,
                  color='white')
    ax.set_xticks(range(len(fractions)), [f'{f:g}' for f in fractions])
    ax.set_yticks(range(len(counts)), [str(n) for n in counts])
    ax.set_xlabel('training fraction')
    ax.set_ylabel('pre-finetuning tasks (0 = without)')
    ax.set_title(task.removeprefix('muppet_'))
    fig.colorbar(image, ax=ax, label='dev score x 100')
  fig.suptitle('Low-resource fine-tuning: training fraction x pre-finetuning scale')
  return _save(fig, path)


def batching_figure(selected: Sequence[tables.Selected], path: str) -> str | None:
  """Figure 2; None with fewer than two batching strategies."""
  strategies = list(dict.fromkeys(r.batching for r in selected if r.batching))
  if len(strategies) < 2:
    return None
  fraction = max(r.train_fraction for r in selected)
  chosen = [r for r in selected if r.train_fraction == fraction]
  tasks = _tasks(chosen)
  bars = ([None] if any(not r.pre_finetuned for r in chosen) else []) + strategies
  width = 0.8 / len(bars)
  fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(tasks) * len(bars) / 2), 3.6))
  for b, strategy in enumerate(bars):
    heights, errors = [], []
    for task in tasks:
      at = [r for r in chosen if r.task == task and
            (r.batching == strategy if strategy else not r.pre_finetuned)]
      mean, sd = _mean(at) if at else (np.nan, 0.0)
      heights.append(mean)
      errors.append(sd)
    x = np.arange(len(tasks)) + (b - (len(bars) - 1) / 2) * width
    ax.bar(x, heights, width, yerr=errors, capsize=3,
           label=_BATCHING_LABELS.get(strategy, strategy) if strategy else 'without')
  ax.set_xticks(range(len(tasks)), [t.removeprefix('muppet_') for t in tasks])
  ax.set_ylabel('dev score x 100')
  ax.set_title('Batching strategy of pre-finetuning')
  ax.legend(fontsize=7)
  return _save(fig, path)


def draw_all(selected: Sequence[tables.Selected], directory: str) -> list[str]:
  """Every figure the results support, written under `directory`; their paths."""
  os.makedirs(directory, exist_ok=True)
  drawn = [starts_figure(selected, os.path.join(directory, 'starts.png')),
           scale_figure(selected, os.path.join(directory, 'scale.png')),
           low_resource_figure(selected, os.path.join(directory, 'low_resource.png')),
           batching_figure(selected, os.path.join(directory, 'batching.png'))]
  return [p for p in drawn if p]
