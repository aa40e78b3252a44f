"""Multi-process runs: joining one (`jax.distributed`), and stopping them all when one is lost.

A pod-scale run is one process per host (TPU VM worker) or per GPU, all running the same
program in lockstep: every train step is a collective. When one process dies (out of memory,
a hardware fault, a maintenance event) or freezes, the others wait in their next collective:
on TPU and GPU until JAX's coordination service declares the process dead (its heartbeat
timeout) and ends them with a fatal error and a stack trace that name a task but not the step;
on CPU gloo fails the collective at once, with a connection error that names no process.

`initialize(settings)` joins the run (from the MUPPET_* variables the launch/ scripts set, or by
JAX's auto-detection on TPU pods) with the coordination service's timeouts taken from
`config.distributed`: for its heartbeats a deadline that cannot fire before this module's verdict
has ended every process (`service_heartbeat_timeout_s`, the backstop), `barrier_timeout_s` for
joining and for shutdown.

`watch_peers(settings)` (the trainer runs inside it) starts a heartbeat of this process's own:
a background thread writes a counter and the current step (`set_step`) to the coordination
service's key-value store every few seconds and reads every other process's. A process whose
counter has not moved for `distributed.heartbeat_timeout_s` is lost: this process logs and
prints one line,

  error: process 1 of 4 was lost at step 57: no heartbeat for 60 s (...); ...

and exits at once with status `LOST_PROCESS_EXIT_CODE` (75, EX_TEMPFAIL: try again), wherever
its main thread is waiting. Every other process does the same within a few seconds; process 0,
which hosts the coordination service, goes last, once the others have said they are leaving
(its end would abort them before they can print the line). When a
collective fails first (gloo), the trainer's exception waits for that verdict (at most the
heartbeat timeout) instead of being reported as what it seems to be. A process that ends
normally (finished, or stopped at a preemption sync point) marks its heartbeat done, so that
the others do not take it for lost while they finish.

Why a heartbeat of our own: jaxlib 0.10.2 hands the coordination service's verdict only to a
C++ callback (`missed_heartbeat_callback`; its Python binding cannot convert the status it
passes), whose default ends the process with a fatal log. Ours comes first and says which
process, at which step, and what to do.

Limit: process 0 hosts the coordination service. When it is lost, JAX ends every other process
at once (a fatal error whose message says the leader task died or is unreachable), before this
watch can speak: the exit is still immediate and non-zero, and re-launching resumes as usual.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from absl import logging

# Exit status of a process that stopped because another one was lost (sysexits' EX_TEMPFAIL:
# nothing is wrong with the input; re-running the same command resumes the run).
LOST_PROCESS_EXIT_CODE = 75
_KEY_PREFIX = 'muppet/heartbeat'
_DONE = 'done'
_LEAVING = 'leaving'  # Written by a process that read the verdict, just before it exits.
_VERDICT = 'lost'  # The key under which the first process to find one lost says so.
# Messages of failed collectives and coordination-service calls: a process may have been lost.
_PEER_FAILURE = re.compile(r'gloo|nccl|connection reset|socket closed|not connected|broken pipe|'
                           r'unavailable|deadline.?exceeded|barrier', re.IGNORECASE)


def beat_interval_s(timeout_s: float) -> float:
  """Seconds between two heartbeats of the watch: several per timeout, so that a late beat is
  never mistaken for a lost process."""
  return min(5.0, max(0.5, timeout_s / 8))


def _leave_timeout_s(timeout_s: float, interval_s: float) -> float:
  """How long process 0 waits, after a verdict, for the others to say they are leaving (a
  frozen process never does)."""
  return max(2 * interval_s, min(timeout_s, 30.0))


def last_exit_s(timeout_s: float) -> float:
  """The latest a survivor exits after a process dies, by the watch's own rules: the dead
  process's last beat up to one interval before its death, the silence judged at the next beat
  after `timeout_s` (one more interval), then process 0's wait for the others to leave."""
  interval = beat_interval_s(timeout_s)
  return timeout_s + 2 * interval + _leave_timeout_s(timeout_s, interval)


def service_heartbeat_timeout_s(timeout_s: float) -> int:
  """The heartbeat deadline given to JAX's coordination service (the backstop).

  Its agents beat every half deadline, so the service may find a dead process stale as early
  as half its deadline after the death, and then aborts every process still connected
  (SIGABRT, "the JAX distributed service detected fatal errors"), process 0 included, before
  they can print their line. With twice `heartbeat_timeout_s` that earliest moment fell inside
  the watch's own verdict window; this deadline puts it 30 s after the watch's latest exit.
  """
  return int(2 * (last_exit_s(timeout_s) + 30))


def _timeouts(settings: Any | None) -> dict[str, int]:
  """`jax.distributed.initialize` timeouts from `config.distributed` (None: JAX's defaults)."""
  if settings is None:
    return {}
  return {'initialization_timeout': int(settings.barrier_timeout_s),
          'heartbeat_timeout_seconds': service_heartbeat_timeout_s(settings.heartbeat_timeout_s),
          'shutdown_timeout_seconds': int(settings.barrier_timeout_s)}


def initialize(settings: Any | None = None) -> None:
  """Joins a multi-process run when launched as one (call before touching devices).

  Explicit settings come from the environment variables the launch/ scripts set:
  MUPPET_COORDINATOR_ADDRESS (host:port of process 0), MUPPET_NUM_PROCESSES,
  MUPPET_PROCESS_ID and optionally MUPPET_LOCAL_DEVICE_IDS (comma-separated). Without them,
  Cloud TPU pods are detected by JAX itself (MUPPET_AUTO_DISTRIBUTED=1 forces
  `jax.distributed.initialize()` with auto-detection, e.g. under SLURM); a plain
  single-process run does nothing.

  Args:
    settings: `config.distributed` (heartbeat and barrier timeouts); None keeps JAX's.
  """
  import jax  # pylint: disable=g-import-not-at-top  (main.py imports this before JAX)
  timeouts = _timeouts(settings)
  address = os.environ.get('MUPPET_COORDINATOR_ADDRESS')
  if address:
    # CPU devices of different processes exchange collectives through gloo (tests, laptops);
    # the setting does not touch GPU/TPU backends. Nothing may query devices before this.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    local_ids = os.environ.get('MUPPET_LOCAL_DEVICE_IDS')  # e.g. SLURM_LOCALID: one GPU each.
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=int(os.environ['MUPPET_NUM_PROCESSES']),
        process_id=int(os.environ['MUPPET_PROCESS_ID']),
        local_device_ids=[int(i) for i in local_ids.split(',')] if local_ids else None,
        **timeouts)
  elif os.environ.get('MUPPET_AUTO_DISTRIBUTED') == '1' or os.environ.get('TPU_WORKER_HOSTNAMES'):
    jax.distributed.initialize(**timeouts)


class KeyValueStore(Protocol):
  """The part of JAX's coordination-service client the watch uses."""

  def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
    ...

  def key_value_dir_get(self, key: str) -> list[tuple[str, str]]:
    ...


def log_name(process: int, mode: str = 'train') -> str:
  """The log file of `process` under WORKDIR/logs (as `cli.log_path` names it)."""
  return f'{mode}.log' if process == 0 else f'{mode}.process{process}.log'


def lost_message(process: int, count: int, step: int, silent_s: float) -> str:
  """The one line every surviving process prints when `process` is lost."""
  when = f'at step {step}' if step >= 0 else 'before the first step'
  return (f'process {process} of {count} was lost {when}: no heartbeat for {silent_s:.0f} s '
          '(killed, crashed, out of memory, frozen, or its host is gone; its own log is '
          f'WORKDIR/logs/{log_name(process)}); every process stops instead of waiting in the '
          'next collective: re-launch the same command on every process to resume from the '
          'newest complete checkpoint')


def coordinator_lost_message(step: int, silent_s: float, cause: str) -> str:
  when = f'at step {step}' if step >= 0 else 'before the first step'
  return (f'lost contact with the coordination service (process 0) {when} for '
          f'{silent_s:.0f} s ({cause}): process 0 was lost or the network failed; re-launch '
          'the same command on every process to resume from the newest complete checkpoint')


def exit_lost(message: str) -> None:
  """Ends this process: the line in the log file and as the last line on stderr."""
  from muppet_jax import cli  # pylint: disable=g-import-not-at-top  (no import cycle)
  cli.exit_with_error(message, LOST_PROCESS_EXIT_CODE)


@dataclasses.dataclass
class _Peer:
  value: str | None = None  # The last heartbeat read ('<counter> <step>' or 'done').
  changed: float = 0.0  # When it last changed (this process's clock).


class PeerWatch:
  """Heartbeats of this process, and the verdict on the others' (see the module docstring).

  `beat()` is one round (write ours, read theirs, judge); `start()` runs rounds every
  `interval_s` in a daemon thread until `stop()`. A lost process is reported once through
  `on_lost(message)` (default: `exit_lost`, which ends the process).
  """

  _generations = itertools.count()  # One key space per watch; every process makes the same.

  def __init__(self, store: KeyValueStore, process: int, count: int, *, timeout_s: float,
               interval_s: float | None = None,
               on_lost: Callable[[str], None] | None = None,
               clock: Callable[[], float] = time.monotonic, namespace: str | None = None):
    self.store = store
    self.process = int(process)
    self.count = int(count)
    self.timeout_s = float(timeout_s)
    self.interval_s = float(interval_s if interval_s is not None else
                            beat_interval_s(self.timeout_s))
    self.step = -1  # The last step this process finished (`set_step`); -1: none yet.
    self._on_lost = on_lost or exit_lost
    self._clock = clock
    # The processes' watches of one run share a key space: the n-th watch of every process.
    namespace = namespace if namespace is not None else str(next(PeerWatch._generations))
    self._prefix = f'{_KEY_PREFIX}/{namespace}/'
    self._counter = 0
    now = clock()
    self._peers = {p: _Peer(changed=now) for p in range(self.count) if p != self.process}
    self._store_ok = now  # Last time the key-value store answered.
    self._store_error = ''
    # Process 0 holds its verdict here until the others have left (`_report`).
    self._pending: str | None = None
    self._leave_by = 0.0
    self._verdict = threading.Event()  # Set when a process was found lost.
    self._reported = threading.Event()  # Set once `on_lost` has been called.
    self._stopped = threading.Event()
    self._thread: threading.Thread | None = None

  def beat(self) -> str | None:
    """One round: writes this process's heartbeat, reads the others'; returns the message
    about a lost process (also passed to `on_lost`), or None."""
    now = self._clock()
    self._counter += 1
    try:
      self.store.key_value_set(f'{self._prefix}{self.process}', f'{self._counter} {self.step}',
                               allow_overwrite=True)
      entries = self.store.key_value_dir_get(self._prefix)
    except Exception as e:  # pylint: disable=broad-except  (judged below, by how long it lasts)
      if self._pending is not None:  # The others cannot be waited for: go now.
        return self._leave()
      self._store_error = ' '.join(str(e).split())[:200] or type(e).__name__
      if now - self._store_ok > self.timeout_s:
        return self._report(coordinator_lost_message(self.step, now - self._store_ok,
                                                     self._store_error))
      return None
    self._store_ok = now
    for key, value in entries:
      name = key.rstrip('/').rsplit('/', 1)[-1]
      if name == _VERDICT and self._pending is None:  # Another process found one lost.
        return self._report(value)
      peer = self._peers.get(int(name)) if name.isdigit() else None
      if peer is not None and value != peer.value:
        peer.value, peer.changed = value, now
    if self._pending is not None:
      return self._leave_if_alone(now)
    for process, peer in sorted(self._peers.items()):
      if peer.value != _DONE and now - peer.changed > self.timeout_s:
        return self._report(lost_message(process, self.count, self.step, now - peer.changed))
    return None

  def _report(self, message: str) -> str | None:
    """Publishes the verdict (so that every process stops with the same line, within a beat)
    and hands it to `on_lost`.

    Process 0 hosts the coordination service: when it exits, JAX ends every process still
    connected (SIGABRT) before that process can print its line. So process 0 keeps its verdict
    until every other live process has said it is leaving (a fixed grace period is too short
    on a loaded host), at most `leave_timeout_s`; its later beats decide (`_leave_if_alone`).
    The others write that they are leaving, then go.
    """
    if self._verdict.is_set():
      return message
    self._verdict.set()
    try:
      self.store.key_value_set(f'{self._prefix}{_VERDICT}', message, allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except  (each process still judges by itself)
      pass
    if self.process == 0:
      self._pending, self._leave_by = message, self._clock() + self.leave_timeout_s
      return self._leave_if_alone(self._clock())
    try:
      self.store.key_value_set(f'{self._prefix}{self.process}', _LEAVING, allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except  (process 0 then waits out its timeout)
      pass
    self._pending = message
    return self._leave()

  @property
  def leave_timeout_s(self) -> float:
    """How long process 0 waits for the others to leave after a verdict (a frozen process
    never does)."""
    return _leave_timeout_s(self.timeout_s, self.interval_s)

  def _leave_if_alone(self, now: float) -> str | None:
    """Process 0 with a verdict: leaves once no live process is still connected."""
    waiting = [p for p, peer in self._peers.items()
               if peer.value not in (_LEAVING, _DONE) and now - peer.changed <= self.timeout_s]
    if waiting and now < self._leave_by:
      return None
    return self._leave()

  def _leave(self) -> str:
    message, self._pending = self._pending, None
    self._on_lost(message)
    self._reported.set()
    return message

  def start(self) -> 'PeerWatch':
    self._thread = threading.Thread(target=self._run, daemon=True, name='muppet-peer-watch')
    self._thread.start()
    return self

  def next_beat_in_s(self) -> float:
    """Seconds until the next round: none before the first, a quarter second while process 0
    holds a verdict (it leaves as soon as the others have), otherwise one interval."""
    if not self._counter:
      return 0.0
    return 0.25 if self._pending is not None else self.interval_s

  def _run(self) -> None:
    while not self._stopped.wait(self.next_beat_in_s()):
      try:
        self.beat()
      except Exception:  # pylint: disable=broad-except  (the watch must never kill the run)
        logging.exception('peer watch: a heartbeat round failed')

  def wait_for_verdict(self, seconds: float) -> bool:
    """Blocks until a process is found lost and reported (True; by default this process has
    then exited) or `seconds` passed without a verdict (False)."""
    if not self._verdict.wait(seconds):
      return False
    self._reported.wait(self.leave_timeout_s + 2 * self.interval_s)
    return True

  def stop(self, *, done: bool) -> None:
    """Stops the heartbeat; `done`: this process ended normally (others will not wait for it)."""
    self._stopped.set()
    if self._thread is not None and self._thread is not threading.current_thread():
      self._thread.join()
    if done:
      try:
        self.store.key_value_set(f'{self._prefix}{self.process}', _DONE, allow_overwrite=True)
      except Exception:  # pylint: disable=broad-except  (the others' verdict can do without)
        logging.warning('peer watch: could not mark process %d done', self.process)


_current: PeerWatch | None = None


def set_step(step: int) -> None:
  """Records the step this process just finished (what a lost-process line names)."""
  if _current is not None:
    _current.step = int(step)


def looks_like_lost_peer(error: BaseException) -> bool:
  """Whether `error` (or a cause of it) is what a collective or a barrier raises when another
  process is gone: a JAX runtime error, or a message about gloo, NCCL, a closed connection, an
  unavailable service or a barrier that timed out."""
  import jax  # pylint: disable=g-import-not-at-top
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, jax.errors.JaxRuntimeError) or _PEER_FAILURE.search(str(error)):
      return True
    error = error.__cause__ or error.__context__
  return False


@contextlib.contextmanager
def watch_peers(settings: Any) -> Iterator[PeerWatch | None]:
  """Runs the block with this process's heartbeat (nothing in a single-process run).

  An exception that looks like a failed collective (`looks_like_lost_peer`) first waits for
  the heartbeats' verdict, at most `settings.heartbeat_timeout_s` and a few beats: if a process
  was lost, this process ends there with the one line; otherwise the exception goes on.

  Args:
    settings: `config.distributed` (None: a 60 s heartbeat timeout).
  """
  global _current
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  client = distributed.global_state.client  # The coordination service's key-value store.
  if jax.process_count() == 1 or client is None:
    yield None
    return
  timeout_s = settings.heartbeat_timeout_s if settings is not None else 60
  watch = PeerWatch(client, jax.process_index(), jax.process_count(),
                    timeout_s=timeout_s).start()
  _current = watch
  try:
    yield watch
  except Exception as e:
    if looks_like_lost_peer(e):
      logging.warning('a collective or barrier failed (%s); waiting up to %d s for the '
                      "processes' heartbeats to tell whether one was lost",
                      ' '.join(str(e).split())[:300], watch.timeout_s + 3 * watch.interval_s)
      watch.wait_for_verdict(watch.timeout_s + 3 * watch.interval_s)
    watch.stop(done=False)
    raise
  except BaseException:
    watch.stop(done=False)
    raise
  else:
    watch.stop(done=True)
  finally:
    _current = None


def current_watch() -> PeerWatch | None:
  """The watch of the run in progress in this process, if any."""
  return _current
