"""Families, the task table and the fixed-shape sub-batch layout shared by data and step.

See docs/ARCHITECTURE.md section 2 for the meaning of every field.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

import numpy as np


class Family(enum.IntEnum):
  """Task family; the value is the branch index of the per-device `lax.switch`."""

  CLASSIFICATION = 0
  MULTIPLE_CHOICE = 1
  SPAN = 2
  SUMMARIZATION = 3


@dataclasses.dataclass(frozen=True)
class BatchShape:
  """Per-slot sizes. One set of sizes for all tasks of a run, so one program serves them all."""

  rows: int  # R: rows per device sub-batch
  length: int  # L: tokens per encoder row
  max_examples: int  # E: examples per sub-batch (packed rows hold several)
  max_choices: int  # C: choices per multiple-choice example (padded and masked)
  decoder_length: int  # Ld: decoder tokens per row (summarization); 1 for encoder-only models

  def __post_init__(self):
    if self.max_examples < self.rows:
      raise ValueError(
          f'data.max_examples ({self.max_examples}) must be >= data.rows ({self.rows}): span and '
          'summarization sub-batches hold one example per row.')

  @classmethod
  def from_config(cls, data_config) -> 'BatchShape':
    return cls(rows=data_config.rows, length=data_config.length,
               max_examples=data_config.max_examples, max_choices=data_config.max_choices,
               decoder_length=data_config.decoder_length)

  def field_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every field of one sub-batch."""
    r, l, e, c, ld = self.rows, self.length, self.max_examples, self.max_choices, self.decoder_length
    i32, f32, b = np.dtype(np.int32), np.dtype(np.float32), np.dtype(bool)
    return {
        'task_id': ((), i32),
        'family_id': ((), i32),
        'input_ids': ((r, l), i32),
        'segment_ids': ((r, l), i32),
        'positions': ((r, l), i32),
        'example_index': ((e, c), i32),
        'choice_mask': ((e, c), b),
        'labels': ((e,), i32),
        'example_mask': ((e,), b),
        'loss_n': ((e,), f32),
        'span_start': ((e,), i32),
        'span_end': ((e,), i32),
        'span_mask': ((r, l), b),
        'decoder_input_ids': ((r, ld), i32),
        'decoder_target_ids': ((r, ld), i32),
        'decoder_mask': ((r, ld), b),
    }

  def zeros(self, leading: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """An all-zero sub-batch (or a stack of them with `leading` axes)."""
    return {name: np.zeros(leading + shape, dtype) for name, (shape, dtype)
            in self.field_specs().items()}


@dataclasses.dataclass(frozen=True)
class TaskTable:
  """Static facts about the run's tasks, indexed by task id (the order of `names`)."""

  names: tuple[str, ...]
  families: np.ndarray  # [T] int32, Family values
  num_classes: np.ndarray  # [T] int32, classes of classification tasks, 0 otherwise
  head_index: np.ndarray  # [T] int32, row in the stacked classification heads, -1 otherwise

  @classmethod
  def build(cls, names: Sequence[str], families: Sequence[int],
            num_classes: Sequence[int]) -> 'TaskTable':
    families = np.asarray(families, np.int32)
    num_classes = np.asarray(num_classes, np.int32)
    is_cls = families == Family.CLASSIFICATION
    if np.any(is_cls & (num_classes < 2)):
      bad = [n for n, c, k in zip(names, is_cls, num_classes) if c and k < 2]
      raise ValueError(f'classification tasks need >= 2 classes: {bad}')
    head_index = np.where(is_cls, np.cumsum(is_cls) - 1, -1).astype(np.int32)
    return cls(tuple(names), families, np.where(is_cls, num_classes, 0).astype(np.int32),
               head_index)

  def __len__(self) -> int:
    return len(self.names)

  @property
  def max_classes(self) -> int:
    return int(max(2, self.num_classes.max(initial=0)))

  @property
  def num_classification_heads(self) -> int:
    return int((self.families == Family.CLASSIFICATION).sum())

  def task_id(self, name: str) -> int:
    try:
      return self.names.index(name)
    except ValueError:
      raise KeyError(f'unknown task {name!r}; this run has {list(self.names)}') from None

  def has_family(self, family: Family) -> bool:
    return bool(np.any(self.families == family))
