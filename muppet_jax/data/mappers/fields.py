"""Raw records and their fields: what every mapper reads, and how it rejects a record.

A raw record reaches a mapper converted to plain Python by `to_python`: bytes decoded to `str`,
numpy arrays turned into lists, nested feature dicts kept as dicts, and `Sequence`-of-dict
features given as a dict of lists (e.g. SQuAD `answers == {'text': [...], 'answer_start':
[...]}`). The helpers below read and validate its fields; a record that cannot be mapped
faithfully (missing field, unlabelled or out-of-range label, empty text ...) raises `BadRecord`
with a short, record-independent reason, which `drops.DropCounter` counts.

The helpers keep their leading underscore: the family modules of this package share them, but
they are not part of its API.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

Example = dict[str, Any]
Mapper = Callable[[dict], list[Example]]

_LETTERS = 'ABCDE'


class BadRecord(ValueError):
  """A raw record that cannot be mapped; `reason` is a short, record-independent label."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


# ---------------------------------------------------------------------------------------------
# Field access and validation helpers.
# ---------------------------------------------------------------------------------------------


def _field(raw: Mapping[str, Any], key: str) -> Any:
  """Returns raw[key]; a missing or None field is a bad record, not a crash."""
  try:
    value = raw[key]
  except (KeyError, TypeError, IndexError):
    raise BadRecord(f'missing field {key}') from None
  if value is None:
    raise BadRecord(f'missing field {key}')
  return value


def _str(value: Any, key: str) -> str:
  """Coerces a text feature to str (bytes decoded defensively) or raises BadRecord."""
  if isinstance(value, bytes):
    value = value.decode('utf-8', errors='replace')
  if not isinstance(value, str):
    raise BadRecord(f'non-text field {key}')
  return value


def _text(raw: Mapping[str, Any], key: str, allow_empty: bool = False) -> str:
  """The stripped text of raw[key]; empty text is a bad record unless `allow_empty`."""
  value = _str(_field(raw, key), key).strip()
  if not value and not allow_empty:
    raise BadRecord('empty text')
  return value


def _nonempty(value: str) -> str:
  """Strips `value` and rejects it if nothing is left."""
  value = value.strip()
  if not value:
    raise BadRecord('empty text')
  return value


def _int(value: Any) -> int:
  """An integer label from int / numpy int / digit string, else BadRecord.

  `operator.index` accepts Python and numpy integers but not floats, so a float label (a
  sign of a wrong field) is rejected rather than truncated. Digit strings cover the HF
  datasets that store labels as text (HF HellaSwag: '0'..'3', '' on test).
  """
  if isinstance(value, bytes):
    value = value.decode('utf-8', errors='replace')
  if isinstance(value, str):
    value = value.strip()
    if not value:
      raise BadRecord('missing label')
    try:
      return int(value)
    except ValueError:
      raise BadRecord('bad label') from None
  try:
    return operator.index(value)
  except TypeError:
    raise BadRecord('bad label') from None


def _label(value: Any, num_classes: int) -> int:
  """A label in [0, num_classes); -1 (unlabelled test splits, SNLI '-') is reported apart."""
  label = _int(value)
  if label == -1:
    raise BadRecord('label -1 (unlabelled)')
  if not 0 <= label < num_classes:
    raise BadRecord('label out of range')
  return label


def _letter(value: Any) -> str:
  """Normalises an answer key to 'A'..'E': accepts 'A'-'E', 'a'-'e', '1'-'5' or an index."""
  if isinstance(value, bytes):
    value = value.decode('utf-8', errors='replace')
  if isinstance(value, str):
    key = value.strip().upper()
    if len(key) == 1 and key in _LETTERS:
      return key
    if len(key) == 1 and key in '12345':
      # ARC (HF) uses '1'..'5' for some questions; they mean A..E.
      return _LETTERS[int(key) - 1]
    raise BadRecord('bad answer key')
  index = _int(value)  # TFDS ClassLabel index into ['A', ..., 'E'].
  if index == -1:
    raise BadRecord('label -1 (unlabelled)')
  if not 0 <= index < len(_LETTERS):
    raise BadRecord('bad answer key')
  return _LETTERS[index]


def _texts(values: Any, key: str) -> list[str]:
  """A list of texts from a Sequence(Text) feature."""
  if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
    raise BadRecord(f'non-list field {key}')
  return [_str(v, key) for v in values]


def _dedup(texts: Iterable[str]) -> list[str]:
  """Stripped, non-empty texts in first-seen order without duplicates."""
  seen = []
  for t in texts:
    t = t.strip()
    if t and t not in seen:
      seen.append(t)
  return seen


# ---------------------------------------------------------------------------------------------
# Raw records -> plain python.
# ---------------------------------------------------------------------------------------------


def to_python(value: Any) -> Any:
  """A raw record as TFDS yields it (numpy, bytes) -> plain python, recursively.

  bytes -> str, arrays -> lists, numpy scalars -> python scalars, dicts stay dicts (a TFDS
  Sequence of dicts stays a dict of lists).
  """
  if isinstance(value, bytes):  # Also np.bytes_.
    # 'replace' rather than failing a whole stream on one badly encoded record.
    return value.decode('utf-8', errors='replace')
  if isinstance(value, dict):
    return {k: to_python(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):  # tfds.data_source's Sequence-of-dict features.
    return [to_python(v) for v in value]
  if isinstance(value, np.ndarray):
    if value.ndim == 0:
      return to_python(value.item())
    return [to_python(v) for v in value]
  if isinstance(value, np.generic):
    return to_python(value.item())
  return value
