"""One task's examples, tokenized ahead in chunks, with the position of what is consumed."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable

from muppet_jax.data.batching.examples import Prepared
from muppet_jax.data.features import Family


class ExampleStream:
  """One task's family examples, tokenized ahead in chunks, with the position of what is consumed.

  The builder takes examples off the front only when they go into a sub-batch (`pop`);
  examples tokenized ahead are lookahead, not consumed. `consumed` counts the examples that
  went into sub-batches, and, when the underlying iterator is checkpointable (grain's
  `get_state()` / `set_state()`, e.g. `streams.FamilyStream`), `position()` is the iterator
  state of the first example not consumed yet: restoring a fresh iterator to it continues the
  stream identically, whatever was tokenized ahead.

  Create streams with `SubBatchBuilder.stream`.
  """

  def __init__(self, task_name: str, task_id: int, family: Family, examples: Iterable[dict],
               prepare: Callable[[list[dict]], list[Prepared]], chunk_size: int):
    self.task_name = task_name
    self.task_id = task_id
    self.family = family
    self._examples = iter(examples)
    self._prepare = prepare
    self._chunk_size = chunk_size
    self._buffer: collections.deque[Prepared] = collections.deque()
    # The iterator state before each buffered example (checkpointable iterators only).
    self._tracks_position = hasattr(self._examples, 'get_state')
    self._positions: collections.deque = collections.deque()
    self._exhausted = False
    self.consumed = 0
    # Evaluation builders: windows of the front span example already placed in earlier
    # sub-batches (a question with more windows than rows spans several sub-batches).
    self.windows_placed = 0

  def peek(self) -> Prepared | None:
    """The next example (tokenized), or None at the end of the iterator."""
    if not self._buffer and not self._exhausted:
      # Tokenizing a chunk at once goes through the Rust tokenizer's batch path.
      if self._tracks_position:
        raw = []
        for _ in range(self._chunk_size):
          position = self._examples.get_state()
          try:
            raw.append(next(self._examples))
          except StopIteration:
            break
          self._positions.append(position)
      else:
        raw = list(itertools.islice(self._examples, self._chunk_size))
      self._exhausted = len(raw) < self._chunk_size
      self._buffer.extend(self._prepare(raw))
    return self._buffer[0] if self._buffer else None

  def pop(self) -> Prepared:
    """Consumes the example `peek` returned."""
    self.consumed += 1
    if self._tracks_position:
      self._positions.popleft()
    return self._buffer.popleft()

  def position(self):
    """The underlying iterator's state at the first example not consumed (checkpointable
    iterators only)."""
    if not self._tracks_position:
      raise TypeError(f'the examples of {self.task_name} come from an iterator without '
                      'get_state(); its position cannot be saved')
    return self._positions[0] if self._positions else self._examples.get_state()
