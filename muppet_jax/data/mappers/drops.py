"""Drop accounting: bad records are dropped and counted by reason, never trained on."""

from __future__ import annotations

import collections
import threading
from typing import Any

from absl import logging

from muppet_jax.data.mappers.fields import BadRecord, Example, Mapper
from muppet_jax.data.mappers.registry import mapper_for


class DropCounter:
  """Applies mappers, dropping bad records and counting them per dataset and reason.

  A bad record never crashes a run and is never trained on: it is dropped, counted under its
  reason, and the first record of each (dataset, reason) is logged so that a systematic
  problem (e.g. a renamed field) is visible at once, not only in the end-of-run summary.
  Thread-safe, since input pipelines may call it from several threads.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._kept: collections.Counter[str] = collections.Counter()
    self._emitted: collections.Counter[str] = collections.Counter()
    self._dropped: dict[str, collections.Counter[str]] = collections.defaultdict(
        collections.Counter)

  def apply(self, slug: str, raw: dict, mapper: Mapper | None = None) -> list[Example]:
    """Maps one raw record of dataset `slug` (with `mapper`, default its training mapper);
    returns [] (and counts why) if it is bad."""
    mapper = mapper or mapper_for(slug)
    try:
      examples = mapper(raw)
    except BadRecord as e:
      self._drop(slug, e.reason, raw)
      return []
    except KeyError as e:
      self._drop(slug, f'missing field {e.args[0] if e.args else "?"}', raw)
      return []
    except (TypeError, IndexError, AttributeError) as e:
      # Mapper code indexing a field of an unexpected shape (None, a scalar for a list ...).
      self._drop(slug, f'malformed field ({type(e).__name__})', raw, str(e))
      return []
    with self._lock:
      if examples:
        self._kept[slug] += 1
        self._emitted[slug] += len(examples)
      else:
        self._dropped[slug]['no examples'] += 1
    return examples

  def _drop(self, slug: str, reason: str, raw: Any, detail: str = '') -> None:
    with self._lock:
      first = self._dropped[slug][reason] == 0
      self._dropped[slug][reason] += 1
    if first:
      logging.warning('Dropping bad %s record (%s%s); further ones are only counted: %.300r',
                      slug, reason, f': {detail}' if detail else '', raw)

  @property
  def counts(self) -> dict[str, dict[str, Any]]:
    """{slug: {'kept': records kept, 'examples': examples emitted, 'dropped': {reason: n}}}."""
    with self._lock:
      slugs = sorted(set(self._kept) | set(self._dropped))
      return {s: {'kept': self._kept[s], 'examples': self._emitted[s],
                  'dropped': dict(sorted(self._dropped[s].items()))} for s in slugs}

  def summary(self) -> str:
    """One line per dataset: kept, examples, dropped in total and per reason."""
    lines = []
    for slug, c in self.counts.items():
      dropped = sum(c['dropped'].values())
      line = f'{slug}: kept {c["kept"]} records ({c["examples"]} examples), dropped {dropped}'
      if dropped:
        line += ' (' + ', '.join(f'{r}: {n}' for r, n in c['dropped'].items()) + ')'
      lines.append(line)
    return '\n'.join(lines) if lines else 'no records seen'

  def log_summary(self) -> None:
    """Logs `summary()` at INFO level, one line per dataset."""
    for line in self.summary().splitlines():
      logging.info('Preprocessing: %s', line)


# Process-wide drop accounting of every task's mapper (thread-safe; `counts`, `summary`).
DROP_COUNTER = DropCounter()
