"""One record per pre-finetuning dataset: source, family, classes, splits, sizes.

(The 47 records of the paper's appendix A.1 are added below `DatasetRecord`.)
"""

from __future__ import annotations

import dataclasses

from muppet_jax.data.features import Family


@dataclasses.dataclass(frozen=True)
class DatasetRecord:
  """Static description of one dataset.

  Attributes:
    slug: short name; the seqio task is `muppet_<slug>`.
    name: human-readable name as in the paper.
    family: the task family (decides head and loss).
    source: 'tfds:<name>/<config>[:<version>]', 'hf:<dataset id>[/<config>]' or 'demo:<name>'.
    num_classes: classes (classification) or most choices (multiple choice); 0 otherwise.
    label_names: class names in label order (classification), for `id2label` on export.
    train_split: split used for training ('' = none; evaluation-only).
    eval_split: split used for evaluation ('' = none).
    train_size: training examples (the natural mixing rate).
    eval_size: evaluation examples.
    metric: the standard metric name (see muppet_jax/evaluate.py).
    notes: decisions taken for this dataset (duplicates, label fixes, offsets ...).
  """

  slug: str
  name: str
  family: Family
  source: str
  num_classes: int = 0
  label_names: tuple[str, ...] = ()
  train_split: str = 'train'
  eval_split: str = 'validation'
  train_size: int = 0
  eval_size: int = 0
  metric: str = 'accuracy'
  notes: str = ''

  @property
  def task_name(self) -> str:
    return f'muppet_{self.slug}'
