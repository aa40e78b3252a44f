"""Which task each slot of each update trains on: stateless, deterministic from (seed, step, slot).

An update has S = devices x accumulation slots (global indices 0..S-1, the same numbering on
every host). The task of slot s at step t depends only on (seed, t, s), so

- resuming needs only the step (no sampler state in checkpoints), and
- each host computes the tasks of its own slots without talking to the others, and the
  result does not depend on how slots are spread over devices, processes or accumulation.

Strategies (paper section 5.2):
- 'heterogeneous' (default): every slot draws its own task at the mixture rates, so one update
  mixes up to S tasks.
- 'batch_homogeneous': one draw per step; all slots of the update share that task.
- 'dataset_homogeneous': tasks one after another, in the order of `rates`, task i for
  round(rates[i] * total_steps) consecutive steps (largest-remainder rounding, so the steps add
  up to total_steps exactly; with natural rates this is proportional to the dataset's size;
  a task with a tiny rate may get 0 steps). After total_steps the schedule repeats.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STRATEGIES = ('heterogeneous', 'batch_homogeneous', 'dataset_homogeneous')
# Mixed into every seed so that these draws are independent of other users of config.seed
# (parameter init, dropout, shuffling) that might also seed with (seed, step).
_DOMAIN = 0x5A3713


class TaskSampler:
  """Task index (into `rates`) for slot s of step t."""

  def __init__(self, rates: Sequence[float], seed: int, strategy: str = 'heterogeneous', *,
               total_steps: int | None = None):
    """Args:
      rates: mixing rate of each task (any non-negative scale; normalised here).
      seed: the run's seed (config.seed).
      strategy: one of STRATEGIES.
      total_steps: the run's updates (config.train.steps); required by 'dataset_homogeneous'.
    """
    rates = np.asarray(rates, np.float64)
    if rates.ndim != 1 or not rates.size or np.any(rates < 0) or not np.isfinite(rates).all():
      raise ValueError(f'rates must be a non-empty list of non-negative numbers, got {rates}')
    if rates.sum() <= 0:
      raise ValueError('at least one rate must be positive')
    if strategy not in STRATEGIES:
      raise ValueError(f'strategy must be one of {STRATEGIES}, got {strategy!r}')
    self.rates = rates / rates.sum()
    self.seed = int(seed) % 2**63  # SeedSequence wants non-negative entropy.
    self.strategy = strategy
    self._cdf = np.cumsum(self.rates)
    self._cdf[-1] = 1.0  # No float residue past the last task.
    self._boundaries = None
    if strategy == 'dataset_homogeneous':
      if not total_steps or total_steps < 1:
        raise ValueError("'dataset_homogeneous' needs total_steps (config.train.steps)")
      self.total_steps = int(total_steps)
      self._boundaries = np.cumsum(_largest_remainder(self.rates, self.total_steps))

  @property
  def num_tasks(self) -> int:
    return len(self.rates)

  def _draw(self, *key: int) -> int:
    u = np.random.default_rng([self.seed, _DOMAIN, *key]).random()
    # side='right': a zero-rate task (empty cdf interval) is never drawn.
    return int(min(np.searchsorted(self._cdf, u, side='right'), self.num_tasks - 1))

  def task(self, step: int, slot: int) -> int:
    """The task index of global slot `slot` at update `step` (both >= 0)."""
    if step < 0 or slot < 0:
      raise ValueError(f'step and slot must be >= 0, got step={step}, slot={slot}')
    if self.strategy == 'heterogeneous':
      return self._draw(int(step), int(slot))
    if self.strategy == 'batch_homogeneous':
      return self._draw(int(step))
    return int(np.searchsorted(self._boundaries, step % self.total_steps, side='right'))

  def tasks(self, step: int, slots: Sequence[int]) -> np.ndarray:
    """Task indices of several global slots of one step, [len(slots)] int32."""
    return np.array([self.task(step, s) for s in slots], np.int32)

  def steps_per_task(self) -> np.ndarray | None:
    """'dataset_homogeneous': consecutive steps of each task, [T] (None otherwise)."""
    if self._boundaries is None:
      return None
    return np.diff(self._boundaries, prepend=0)


def _largest_remainder(rates: np.ndarray, total: int) -> np.ndarray:
  """Integer shares of `total` proportional to `rates` that add up to `total` exactly."""
  exact = rates * total
  shares = np.floor(exact).astype(np.int64)
  # Ties go to the earlier task (stable sort), so the schedule is platform-independent.
  order = np.argsort(-(exact - shares), kind='stable')
  shares[order[:total - shares.sum()]] += 1
  return shares
