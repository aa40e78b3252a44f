"""The host input pipeline: per-(task, slot) streams -> this host's stacked sub-batches per step.

Determinism does not depend on how slots are spread over devices, processes or workers: global
slot s (0..S-1) of step t trains on the task the sampler gives it (a pure function of seed, t
and s) and reads from its own stream of that task, shard s of S (`streams.train_stream`). A
stream is touched by no other slot, so the sub-batches of slot s depend only on s, and a host
(or a worker process) holding slots {0, 1} and another holding {2, 3} produce exactly what one
host holding {0, 1, 2, 3} produces.

State (for checkpoints) is the position of every (task, slot) stream after the last batch
handed out - each stream's grain iterator state, the position of its first example not yet
consumed (tokenized lookahead and batches prefetched ahead are not counted) - plus that step.
Restoring re-opens the streams at those positions in constant time, whatever the step.

Work can run in the calling thread, in one background thread (`prefetch`), or in worker
processes (`num_workers`, grain's multiprocessing prefetch): the local slots are split into
`num_workers` groups, each built step after step in its own process, so that tokenization and
packing for many accelerators are not bound by one Python thread. The output is the same
whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from muppet_jax.data.batching import ExampleStream, SubBatchBuilder
from muppet_jax.data.features import TaskTable
from muppet_jax.data.sampler import TaskSampler

# stream_factory(task_name, shard_index, num_shards) -> the shard's family examples, repeating
# forever in a deterministic order, as a checkpointable iterator (grain's `get_state()` /
# `set_state()`, e.g. `streams.FamilyStream`). Must be picklable for worker processes
# (`streams.TrainStreamFactory` is).
StreamFactory = Callable[[str, int, int], Iterator[dict]]

STATE_VERSION = 2

# (task index, global slot) -> the stream's iterator state.
Positions = dict[tuple[int, int], Any]


class InputStateError(ValueError):
  """A saved input position that this pipeline cannot continue exactly."""


@dataclasses.dataclass
class GroupBatch:
  """One step's sub-batches of a group of slots, and where the group's streams stand after it.

  Attributes:
    step: the update.
    arrays: every field stacked `[len(slots), ...]`, in the group's slot order.
    positions: the state of every stream this group touched in this step, after it.
  """

  step: int
  arrays: dict[str, np.ndarray]
  positions: Positions


class SlotGroup:
  """Builds the sub-batches of a fixed set of global slots, step after step (single-threaded)."""

  def __init__(self, task_names: Sequence[str], builder: SubBatchBuilder, sampler: TaskSampler,
               stream_factory: StreamFactory, slots: Sequence[int], num_slots: int,
               positions: Positions | None = None):
    """Args:
      task_names: the sampler's tasks (index i is task i).
      builder: the sub-batch builder.
      sampler: the task sampler.
      stream_factory: see `StreamFactory`.
      slots: this group's global slot indices, in output order.
      num_slots: S, the global number of slots per update.
      positions: where streams start (restored state); others start at the beginning.
    """
    self.task_names = tuple(task_names)
    self.builder = builder
    self.sampler = sampler
    self.slots = tuple(int(s) for s in slots)
    self.num_slots = int(num_slots)
    self._factory = stream_factory
    self._start = dict(positions or {})
    self._streams: dict[tuple[int, int], ExampleStream] = {}

  def _stream(self, task: int, slot: int) -> ExampleStream:
    key = (task, slot)
    if key not in self._streams:
      examples = self._factory(self.task_names[task], slot, self.num_slots)
      if key in self._start:
        examples.set_state(self._start.pop(key))
      self._streams[key] = self.builder.stream(self.task_names[task], examples)
    return self._streams[key]

  def produce(self, step: int) -> GroupBatch:
    """Builds step `step` of this group's slots (steps must come in order)."""
    tasks = self.sampler.tasks(step, self.slots)
    sub_batches, positions = [], {}
    for slot, task in zip(self.slots, tasks):
      task = int(task)
      stream = self._stream(task, slot)
      sub = self.builder.build(stream)
      if not sub.num_examples:
        raise RuntimeError(
            f'the stream of task {self.task_names[task]!r}, shard {slot}/{self.num_slots} '
            'ended: training streams must repeat.')
      sub_batches.append(sub.arrays)
      positions[(task, slot)] = stream.position()
    arrays = {k: np.stack([s[k] for s in sub_batches]) for k in sub_batches[0]}
    return GroupBatch(step=int(step), arrays=arrays, positions=positions)


class InputPipeline:
  """Produces this host's slots of each update as one dict of `[num_local_slots, ...]` arrays."""

  def __init__(self, task_names: Sequence[str], task_table: TaskTable, builder: SubBatchBuilder,
               sampler: TaskSampler, *, stream_factory: StreamFactory, slots: Sequence[int],
               num_slots: int, prefetch: int = 2, num_workers: int = 0):
    """Args:
      task_names: the sampler's tasks (index i <-> the sampler's task i); each must be in
        `task_table`.
      task_table: the run's task table (task ids of the sub-batches).
      builder: the sub-batch builder.
      sampler: the task sampler.
      stream_factory: see `StreamFactory`.
      slots: this host's global slot indices, in the order the batch stacks them (the trainer
        reshapes `[num_local_slots]` to `[A, D_local]`).
      num_slots: S, the global number of slots per update (devices x accumulation).
      prefetch: batches built ahead (by the background thread, or per worker process);
        0 = build in `next_batch` (num_workers = 0 only).
      num_workers: worker processes (0 = this process). At most one per local slot.
    """
    slots = [int(s) for s in slots]
    if not slots or len(set(slots)) != len(slots) or not all(0 <= s < num_slots for s in slots):
      raise ValueError(f'slots must be distinct indices in [0, {num_slots}), got {slots}')
    self.task_names = tuple(task_names)
    for name in self.task_names:
      task_table.task_id(name)  # Raises for a task the table does not know.
    if sampler.num_tasks != len(self.task_names):
      raise ValueError(f'the sampler has {sampler.num_tasks} tasks, task_names '
                       f'{len(self.task_names)}')
    if num_workers < 0:
      raise ValueError(f'data.num_workers must be >= 0, got {num_workers}')
    self.sampler = sampler
    self.task_table = task_table
    self.builder = builder
    self.slots = slots
    self.num_slots = int(num_slots)
    self.prefetch = max(0, int(prefetch))
    self.num_workers = min(int(num_workers), len(slots))
    self._factory = stream_factory
    self._positions: Positions = {}  # After the last batch handed out.
    self._step: int | None = None  # Last step handed out.
    self._producer: _Producer | None = None

  # --- Producing -------------------------------------------------------------------------------

  def _start(self, step: int) -> '_Producer':
    groups = max(1, self.num_workers)
    group_slots = [self.slots[g::groups] for g in range(groups)]
    make = lambda slots: SlotGroup(  # pylint: disable=g-long-lambda
        self.task_names, self.builder, self.sampler, self._factory, slots, self.num_slots,
        {k: v for k, v in self._positions.items() if k[1] in slots})
    if self.num_workers:
      return _ProcessProducer([make(s) for s in group_slots], step, max(1, self.prefetch),
                              self.slots)
    if self.prefetch:
      return _ThreadProducer(make(self.slots), step, self.prefetch)
    return _InlineProducer(make(self.slots), step)

  def next_batch(self, step: int) -> dict[str, np.ndarray]:
    """This host's sub-batches of update `step`, stacked `[num_local_slots, ...]`.

    Steps are normally consecutive; asking for any other step is allowed (the streams are
    then re-opened at the state of the last batch handed out).
    """
    step = int(step)
    if self._producer is not None and self._producer.next_step != step:
      self._stop()
    if self._producer is None:
      self._producer = self._start(step)
    try:
      arrays, positions = self._producer.get()
    except BaseException:
      # The producer may have moved past the last batch handed out: drop it, so that a caller
      # that handles the error (or checkpoints) still sees an exact state.
      self._stop()
      raise
    self._positions.update(positions)
    self._step = step
    return arrays

  # --- State -----------------------------------------------------------------------------------

  def state(self) -> dict[str, Any]:
    """JSON-serialisable position after the last batch handed out (this host's slots)."""
    streams: dict[str, dict[str, Any]] = {}
    for (task, slot), position in sorted(self._positions.items()):
      streams.setdefault(self.task_names[task], {})[str(slot)] = _plain(position)
    return {'version': STATE_VERSION, 'step': self._step, 'num_slots': self.num_slots,
            'streams': streams}

  def restore(self, state: dict[str, Any]) -> None:
    """Continues from `state` (of this pipeline, or merged from all hosts by `merge_states`).

    Entries for slots this host does not hold are ignored, so a merged state restores any
    spread of the same S slots over hosts and workers.

    Raises:
      InputStateError: the state is of another format, slot count or task list.
    """
    if state.get('version') != STATE_VERSION:
      raise InputStateError(
          f'the checkpoint\'s input position has format version {state.get("version")!r}, this '
          f'muppet_jax reads version {STATE_VERSION} (per-stream grain states); it was written '
          'by an older version whose example order differs: resume with that version, or start '
          'a new run from this checkpoint\'s parameters (e.g. fine-tuning from the workdir).')
    if int(state['num_slots']) != self.num_slots:
      raise InputStateError(
          f'the checkpoint has {state["num_slots"]} slots per update, this run {self.num_slots} '
          '(devices x train.grad_accum): the shards would differ, so it cannot resume exactly. '
          'Keep mesh.data x train.grad_accum as it was.')
    index = {name: i for i, name in enumerate(self.task_names)}
    unknown = sorted(set(state['streams']) - set(index))
    if unknown:
      raise InputStateError(f'the checkpoint has input streams of tasks this run does not '
                            f'have: {unknown}')
    positions = {}
    for name, per_slot in state['streams'].items():
      for slot, position in per_slot.items():
        if int(slot) in self.slots:
          positions[(index[name], int(slot))] = position
    self._stop()
    self._positions = positions
    self._step = state['step']

  def _stop(self) -> None:
    if self._producer is not None:
      self._producer.close()
      self._producer = None

  def close(self) -> None:
    """Stops the prefetch thread or worker processes (the pipeline can still be used; work
    restarts on demand from the last batch handed out)."""
    self._stop()

  def __enter__(self) -> 'InputPipeline':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """One state from the states of all hosts (their slots are disjoint)."""
  if not states:
    raise ValueError('no states to merge')
  merged = {'version': STATE_VERSION, 'step': states[0]['step'],
            'num_slots': states[0]['num_slots'], 'streams': {}}
  for s in states:
    if s['step'] != merged['step'] or s['num_slots'] != merged['num_slots']:
      raise ValueError('states from different steps or slot counts cannot be merged')
    for name, per_slot in s['streams'].items():
      merged['streams'].setdefault(name, {}).update(per_slot)
  return merged


def _plain(value: Any) -> Any:
  """A stream state with numpy scalars turned into python ones (JSON)."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, np.generic):
    return value.item()
  return value


# --- Producers: who builds the batches ---------------------------------------------------------


class _Producer:
  """Hands out consecutive steps' (local arrays, stream positions), starting at `next_step`."""

  next_step: int

  def get(self) -> tuple[dict[str, np.ndarray], Positions]:
    raise NotImplementedError

  def close(self) -> None:
    pass


class _InlineProducer(_Producer):
  """Builds each batch when asked, in the calling thread."""

  def __init__(self, group: SlotGroup, first_step: int):
    self._group = group
    self.next_step = first_step

  def get(self):
    batch = self._group.produce(self.next_step)
    self.next_step += 1
    return batch.arrays, batch.positions


class _ThreadProducer(_Producer):
  """Builds batches for consecutive steps in a background thread into a bounded queue."""

  def __init__(self, group: SlotGroup, first_step: int, depth: int):
    self.next_step = first_step  # The step the next `get` returns.
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(group, first_step), daemon=True,
                                    name='muppet-input-pipeline')
    self._thread.start()

  def _run(self, group: SlotGroup, step: int) -> None:
    while not self._stop.is_set():
      try:
        item = (group.produce(step), None)
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
        batch, error = self._queue.get(timeout=1.0)
        break
      except queue.Empty:
        if not self._thread.is_alive():
          raise RuntimeError('the input pipeline thread died') from None
    if error is not None:
      raise error
    self.next_step += 1
    return batch.arrays, batch.positions

  def close(self) -> None:
    self._stop.set()
    self._thread.join()


class _SlotGroupDataset(grain.IterDataset):
  """A slot group's steps as a grain dataset (what a worker process runs)."""

  def __init__(self, group: SlotGroup, first_step: int):
    super().__init__()
    self._group = group
    self._first_step = first_step

  def __iter__(self) -> '_SlotGroupIterator':
    return _SlotGroupIterator(self._group, self._first_step)

  def __str__(self) -> str:
    return f'SlotGroupDataset(slots={self._group.slots})'


class _SlotGroupIterator(grain.DatasetIterator):
  """Yields `GroupBatch`es of consecutive steps; its state is the next step (the batches carry
  their streams' positions, which is what the pipeline checkpoints)."""

  def __init__(self, group: SlotGroup, first_step: int):
    super().__init__()
    self._group = group
    self._step = first_step

  def __next__(self) -> GroupBatch:
    batch = self._group.produce(self._step)
    self._step += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return {'next_step': self._step}

  def set_state(self, state: dict[str, int]) -> None:
    if int(state['next_step']) != self._step:
      raise ValueError('a slot group only continues from where it is; re-create it to move')


class _ProcessProducer(_Producer):
  """One grain worker process per slot group (`IterDataset.mp_prefetch`), read in lockstep."""

  def __init__(self, groups: Sequence[SlotGroup], first_step: int, depth: int,
               local_slots: Sequence[int]):
    self.next_step = first_step
    if not flags.FLAGS.is_parsed():  # Grain reads its absl flags (defaults outside main.py).
      flags.FLAGS.mark_as_parsed()
    options = grain.MultiprocessingOptions(num_workers=1, per_worker_buffer_size=depth)
    self._iterators = [iter(_SlotGroupDataset(g, first_step).mp_prefetch(options))
                       for g in groups]
    order = {slot: i for i, slot in enumerate(local_slots)}
    self._rows = [np.array([order[s] for s in g.slots]) for g in groups]
    self._num_local = len(local_slots)

  def get(self):
    parts = [next(it) for it in self._iterators]
    if any(p.step != self.next_step for p in parts):
      raise RuntimeError(f'worker processes returned steps {[p.step for p in parts]}, '
                         f'expected {self.next_step}')
    arrays = {}
    for name, first in parts[0].arrays.items():
      out = np.empty((self._num_local,) + first.shape[1:], first.dtype)
      for rows, part in zip(self._rows, parts):
        out[rows] = part.arrays[name]
      arrays[name] = out
    positions = {}
    for part in parts:
      positions.update(part.positions)
    self.next_step += 1
    return arrays, positions

  def close(self) -> None:
    for it in self._iterators:
      close = getattr(it, 'close', None)
      if close is not None:
        close()
    self._iterators = []
