"""Run metrics: TensorBoard event files, `WORKDIR/metrics.jsonl` and progress lines.

`metrics.jsonl` holds one JSON object per logged step, readable without TensorFlow:
  {"step": 20, "loss": 2.1, "learning_rate": 1e-3, "tokens_per_s": 5100.0, "grad_norm": 1.3,
   "<task name>": {"loss": 2.0, "examples": 96, "slots": 3, ...}, ...}
and, after each evaluation, {"step": 200, "eval": {"<task name>": {"accuracy": 0.9, ...}}}.

Progress lines (chief process, INFO) read
  step 200/20000  loss 2.1034  5100 tokens/s  ETA 1d 02:03:04
with the ETA extrapolated from the steady-state step time: the clock starts after the run's
first step (`start_clock`), so compilation does not inflate it.
"""

from __future__ import annotations

import json
import math
import os
import time

from absl import logging


def _jsonable(value):
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  value = float(value)
  return value if math.isfinite(value) else str(value)


class MetricsLogger:
  """Writes metrics and prints progress on the chief process; does nothing on the others."""

  def __init__(self, workdir: str, *, total_steps: int, is_chief: bool, resume_step: int = 0):
    self.total_steps = total_steps
    self.is_chief = is_chief
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    self._clock: tuple[float, int] | None = None  # (time, step) the steady-state clock started.
    if is_chief:
      os.makedirs(workdir, exist_ok=True)
      self._drop_lines_after(resume_step)
      from tensorboardX import SummaryWriter  # Pure-Python TensorBoard event writer.
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def _drop_lines_after(self, step: int) -> None:
    """A killed run may have logged past its last checkpoint; those steps will run again."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(lines)
    os.replace(tmp, self.path)

  def write(self, step: int, record: dict) -> None:
    """Appends one JSON line and the matching TensorBoard scalars (nested keys joined by /)."""
    if not self.is_chief:
      return
    record = {'step': int(step), **_jsonable(record)}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for name, value in _flatten(record).items():
      if name != 'step' and isinstance(value, float):
        self._tb.add_scalar(name, value, step)
    self._tb.flush()

  def start_clock(self, step: int) -> None:
    """Starts the ETA clock once `step` (the run's first, which compiles) has finished."""
    self._clock = (time.time(), step)

  def eta_seconds(self, step: int) -> float | None:
    """Seconds left at the steady-state pace since `start_clock`; None before two points."""
    if self._clock is None or step <= self._clock[1]:
      return None
    started, first = self._clock
    return (time.time() - started) / (step - first) * max(0, self.total_steps - step)

  def progress(self, step: int, loss: float, tokens_per_s: float) -> None:
    """Prints one progress line (chief process only)."""
    if not self.is_chief:
      return
    eta = self.eta_seconds(step)
    logging.info('step %d/%d  loss %.4f  %.0f tokens/s  ETA %s', step, self.total_steps, loss,
                 tokens_per_s, 'n/a' if eta is None else format_duration(eta))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def format_duration(seconds: float) -> str:
  """'HH:MM:SS', with a day count in front from 24 hours on ('2d 03:04:05')."""
  seconds = int(round(max(0.0, seconds)))
  days, rest = divmod(seconds, 86_400)
  hours, rest = divmod(rest, 3_600)
  text = f'{hours:02d}:{rest // 60:02d}:{rest % 60:02d}'
  return f'{days}d {text}' if days else text


def _flatten(record: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in record.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(_flatten(value, name + '/'))
    else:
      out[name] = value
  return out
