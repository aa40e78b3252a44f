"""The host input pipeline: per-slot task streams -> this host's stacked sub-batches per step.

Determinism does not depend on how slots are spread over devices and processes: global slot s
(0..S-1) of every step trains on the task the sampler gives it, and reads from shard s (of S)
of that task's stream, through its own lookahead. So a host holding slots {0, 1} and another
holding {2, 3} produce exactly the sub-batches that one host holding {0, 1, 2, 3} produces.

State (for checkpoints) is the number of examples consumed from each (task, slot) stream plus
the last step handed out; restoring re-creates the streams and skips that many examples, so a
resumed run continues the identical stream. Examples tokenized ahead (lookahead) and batches
prefetched by the background thread are not counted: the state is always the position right
after the last batch returned by `next_batch`.
"""

from __future__ import annotations

import inspect
import itertools
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from muppet_jax.data.batching import ExampleStream, SubBatchBuilder
from muppet_jax.data.features import TaskTable
from muppet_jax.data.sampler import TaskSampler

# stream_factory(task_name, shard_index, num_shards) -> the shard's family examples, repeating
# forever in a deterministic order. It may also accept `skip=n` (start after n examples) to make
# restoring faster than reading and discarding n examples.
StreamFactory = Callable[..., Iterator[dict]]

STATE_VERSION = 1


class InputPipeline:
  """Produces this host's slots of each update as one dict of `[num_local_slots, ...]` arrays."""

  def __init__(self, task_names: Sequence[str], rates: Sequence[float], task_table: TaskTable,
               builder: SubBatchBuilder, sampler: TaskSampler | None = None, *,
               stream_factory: StreamFactory, slots: Sequence[int], num_slots: int,
               seed: int = 0, prefetch: int = 2):
    """Args:
      task_names: the sampler's tasks (index i <-> rates[i]); each must be in `task_table`.
      rates: mixing rates (used only when `sampler` is None).
      task_table: the run's task table (task ids of the sub-batches).
      builder: the sub-batch builder.
      sampler: the task sampler; None builds a heterogeneous one from `rates` and `seed`.
      stream_factory: see `StreamFactory`.
      slots: this host's global slot indices, in the order the batch stacks them (the trainer
        reshapes `[num_local_slots]` to `[A, D_local]`).
      num_slots: S, the global number of slots per update (devices x accumulation).
      seed: seed of the default sampler.
      prefetch: batches built ahead in a background thread (0 = build in `next_batch`).
    """
    slots = [int(s) for s in slots]
    if not slots or len(set(slots)) != len(slots) or not all(0 <= s < num_slots for s in slots):
      raise ValueError(f'slots must be distinct indices in [0, {num_slots}), got {slots}')
    self.task_names = tuple(task_names)
    for name in self.task_names:
      task_table.task_id(name)  # Raises for a task the table does not know.
    self.sampler = sampler if sampler is not None else TaskSampler(rates, seed)
    if self.sampler.num_tasks != len(self.task_names):
      raise ValueError(f'the sampler has {self.sampler.num_tasks} tasks, task_names '
                       f'{len(self.task_names)}')
    self.task_table = task_table
    self.builder = builder
    self.slots = slots
    self.num_slots = int(num_slots)
    self.prefetch = int(prefetch)
    self._factory = stream_factory
    self._factory_skips = _accepts_skip(stream_factory)
    # Examples consumed per (task index, slot) up to the last batch handed out.
    self._counts: dict[tuple[int, int], int] = {}
    self._step: int | None = None  # Last step handed out.
    # Streams and the counts they have reached (ahead of `_counts` while prefetching).
    self._streams: dict[tuple[int, int], ExampleStream] = {}
    self._work_counts: dict[tuple[int, int], int] = {}
    self._worker: _Worker | None = None

  # --- Producing -------------------------------------------------------------------------------

  def _stream(self, task: int, slot: int) -> ExampleStream:
    key = (task, slot)
    if key not in self._streams:
      name = self.task_names[task]
      skip = self._work_counts.get(key, 0)
      if self._factory_skips:
        examples = self._factory(name, slot, self.num_slots, skip=skip)
      else:
        examples = iter(self._factory(name, slot, self.num_slots))
        # Read and discard what earlier runs consumed (lookahead was never counted).
        next(itertools.islice(examples, skip, skip), None)
      self._streams[key] = self.builder.stream(name, examples)
    return self._streams[key]

  def _produce(self, step: int) -> tuple[dict[str, np.ndarray], dict[tuple[int, int], int]]:
    """Builds step `step`'s local slots; returns the batch and the counts after it."""
    tasks = self.sampler.tasks(step, self.slots)
    sub_batches = []
    for slot, task in zip(self.slots, tasks):
      task = int(task)
      sub = self.builder.build(self._stream(task, slot))
      if not sub.num_examples:
        raise RuntimeError(
            f'the stream of task {self.task_names[task]!r}, shard {slot}/{self.num_slots} '
            'ended: training streams must repeat.')
      self._work_counts[(task, slot)] = self._work_counts.get((task, slot), 0) + sub.num_examples
      sub_batches.append(sub.arrays)
    batch = {k: np.stack([s[k] for s in sub_batches]) for k in sub_batches[0]}
    return batch, dict(self._work_counts)

  def next_batch(self, step: int) -> dict[str, np.ndarray]:
    """This host's sub-batches of update `step`, stacked `[num_local_slots, ...]`.

    Steps are normally consecutive; asking for any other step is allowed (the streams are
    then rewound to the state of the last batch handed out, which costs a re-skip).
    """
    step = int(step)
    try:
      if self.prefetch <= 0:
        batch, counts = self._produce(step)
      else:
        if self._worker is None or self._worker.next_step != step:
          self._stop_worker(rewind=True)
          self._worker = _Worker(self._produce, step, self.prefetch)
        batch, counts = self._worker.get()
    except BaseException:
      # Streams may have moved past the last batch handed out: rewind them, so that a caller
      # that handles the error (or checkpoints) still sees an exact state.
      self._stop_worker(rewind=False)
      self._rewind()
      raise
    self._counts = counts
    self._step = step
    return batch

  # --- State -----------------------------------------------------------------------------------

  def state(self) -> dict[str, Any]:
    """JSON-serialisable position after the last batch handed out (this host's slots)."""
    consumed: dict[str, dict[str, int]] = {}
    for (task, slot), count in sorted(self._counts.items()):
      if count:
        consumed.setdefault(self.task_names[task], {})[str(slot)] = int(count)
    return {'version': STATE_VERSION, 'step': self._step, 'num_slots': self.num_slots,
            'consumed': consumed}

  def restore(self, state: dict[str, Any]) -> None:
    """Continues from `state` (of this pipeline, or merged from all hosts by `merge_states`).

    Entries for slots this host does not hold are ignored, so a merged state restores any
    spread of the same S slots over hosts.
    """
    if state.get('version') != STATE_VERSION:
      raise ValueError(f'unknown input-pipeline state version {state.get("version")!r}')
    if int(state['num_slots']) != self.num_slots:
      raise ValueError(f'the state has {state["num_slots"]} slots per update, this run '
                       f'{self.num_slots}: shards would differ, so it cannot resume exactly')
    index = {name: i for i, name in enumerate(self.task_names)}
    unknown = sorted(set(state['consumed']) - set(index))
    if unknown:
      raise ValueError(f'the state has tasks this run does not: {unknown}')
    counts = {}
    for name, per_slot in state['consumed'].items():
      for slot, count in per_slot.items():
        if int(slot) in self.slots:
          counts[(index[name], int(slot))] = int(count)
    self._stop_worker(rewind=False)
    self._counts = counts
    self._step = state['step']
    self._rewind()

  def _rewind(self) -> None:
    """Drops the streams; they are re-created (skipping `_counts`) when next used."""
    self._streams = {}
    self._work_counts = dict(self._counts)

  def _stop_worker(self, rewind: bool) -> None:
    if self._worker is not None:
      self._worker.stop()
      self._worker = None
      if rewind:  # The worker ran ahead of what was handed out.
        self._rewind()

  def close(self) -> None:
    """Stops the prefetch thread (the pipeline can still be used; it restarts on demand)."""
    self._stop_worker(rewind=True)

  def __enter__(self) -> 'InputPipeline':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """One state from the states of all hosts (their slots are disjoint)."""
  if not states:
    raise ValueError('no states to merge')
  merged = {'version': STATE_VERSION, 'step': states[0]['step'],
            'num_slots': states[0]['num_slots'], 'consumed': {}}
  for s in states:
    if s['step'] != merged['step'] or s['num_slots'] != merged['num_slots']:
      raise ValueError('states from different steps or slot counts cannot be merged')
    for name, per_slot in s['consumed'].items():
      merged['consumed'].setdefault(name, {}).update(per_slot)
  return merged


class _Worker:
  """Builds batches for consecutive steps in a background thread into a bounded queue."""

  def __init__(self, produce: Callable[[int], Any], first_step: int, depth: int):
    self.next_step = first_step  # The step the next `get` returns.
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(produce, first_step), daemon=True,
                                    name='muppet-input-pipeline')
    self._thread.start()

  def _run(self, produce, step: int) -> None:
    while not self._stop.is_set():
      try:
        item = (produce(step), None)
      except Exception as e:  # pylint: disable=broad-except  (re-raised in the main thread)
        item = (None, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.05)
          break
        except queue.Full:
          continue
      if item[1] is not None:
        return
      step += 1

  def get(self):
    while True:
      try:
        result, error = self._queue.get(timeout=1.0)
        break
      except queue.Empty:
        if not self._thread.is_alive():
          raise RuntimeError('the input pipeline thread died') from None
    if error is not None:
      raise error
    self.next_step += 1
    return result

  def stop(self) -> None:
    self._stop.set()
    self._thread.join()


def _accepts_skip(fn: Callable) -> bool:
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False
  # Only an explicit `skip` parameter: a **kwargs wrapper may not forward it to a source that
  # knows it.
  return 'skip' in params
