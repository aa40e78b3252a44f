"""Raw dataset example -> unified family format, one small mapper per dataset.

Every mapper takes one raw example as TFDS (or, for the Hugging Face-only datasets, the HF
card) yields it, converted to plain Python (`to_python`), and returns a list of examples in its
family's format (formats.py: classification, multiple choice, span, summarization). Evaluation
splits use `EVAL_MAPPERS` where the official scoring needs records that training drops
(`mapper_for(slug, evaluation=True)`, evaluation.py).

A record that cannot be mapped faithfully (missing field, unlabelled or out-of-range label,
empty text, answer absent from the context, wrong number of choices ...) raises `BadRecord`.
`DropCounter` wraps the mappers so that such records are dropped and counted by reason instead
of either crashing a run or being trained on.

The parts, one file each:

- `fields`: `BadRecord`, `to_python`, and the helpers that read and validate a raw record's
  fields.
- `formats`: the family formats (`FAMILY_FIELDS`, the optional `group` / `answer_spans`
  fields), the constructors every mapper builds its examples with, and
  `check_family_example`.
- `classification`, `multiple_choice`, `span`, `summarization`: the mappers of each family's
  datasets (`span` also locates answers in the context).
- `evaluation`: the extractive-QA evaluation-split mappers.
- `registry`: `MAPPERS`, `EVAL_MAPPERS`, `mapper_for`.
- `drops`: `DropCounter` and the process-wide `DROP_COUNTER`.
"""

from muppet_jax.data.mappers.drops import DROP_COUNTER, DropCounter
from muppet_jax.data.mappers.fields import BadRecord, Example, Mapper, to_python
from muppet_jax.data.mappers.formats import (ANSWER_SPANS_FIELD, FAMILY_FIELDS, GROUP_FIELD,
                                             GROUPED, STRUCTURED_ANSWERS,
                                             check_family_example, example_fields)
from muppet_jax.data.mappers.registry import EVAL_MAPPERS, MAPPERS, mapper_for
