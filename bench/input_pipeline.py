"""Input-pipeline benchmarks: resume cost, stream-open time, throughput per worker count, memory.

  python -m bench --resume [--json OUT]         (what `python -m bench --resume` runs)
  python -m bench.input_pipeline --memory       (one process: peak RSS of 45 tasks x 8 slots)

Everything runs on the embedded demo's tasks (in memory, no download), through the real
`InputPipeline` and `streams.train_stream`, with the demo's byte-level BPE, at the demo's
8 x 128-token sub-batches.

- resume: 8 slots x the 5 demo encoder tasks = 40 streams. Time to the first batch of a fresh
  pipeline, and of one restored at `consumed` examples per stream (a state whose every stream
  stands at record 10^7 of its shuffled, repeated order: one example per demo record, so that
  is 10^7 examples consumed per stream); also the time until every one of the 40 streams has
  been opened and has produced a sub-batch, fresh and restored.
- throughput: examples/s and real tokens/s of `InputPipeline.next_batch` over `seconds`, for
  0 (a background thread), 1 and 2 worker processes.
- memory: peak resident memory of a process holding 45 tasks x 8 slots = 360 open streams, each
  with its tokenized lookahead (45 registered copies of the demo tasks).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import numpy as np  # noqa: E402

from muppet_jax.data import batching  # noqa: E402
from muppet_jax.data import demo  # noqa: E402
from muppet_jax.data import streams  # noqa: E402
from muppet_jax.data import tasks  # noqa: E402
from muppet_jax.data.catalogue import DatasetRecord  # noqa: E402
from muppet_jax.data.features import BatchShape, Family, TaskTable  # noqa: E402
from muppet_jax.data.pipeline import InputPipeline, SlotGroup  # noqa: E402
from muppet_jax.data.sampler import TaskSampler  # noqa: E402
from muppet_jax.data.vocab import HFVocabulary  # noqa: E402

SHAPE = BatchShape(rows=8, length=128, max_examples=80, max_choices=5, decoder_length=1)
SLOTS = 8
ENCODER_RECORDS = tuple(r for r in demo.RECORDS if r.family != Family.SUMMARIZATION)


def _table(records) -> TaskTable:
  return TaskTable.build([r.task_name for r in records], [int(r.family) for r in records],
                         [r.num_classes for r in records])


def _builder(vocab: HFVocabulary, records) -> batching.SubBatchBuilder:
  return batching.SubBatchBuilder(SHAPE, vocab, _table(records), model_type='roberta',
                                  span_stride=32)


def _pipeline(vocab, records, num_workers: int = 0, prefetch: int = 2) -> InputPipeline:
  table = _table(records)
  return InputPipeline(table.names, table, _builder(vocab, records),
                       TaskSampler([r.train_size for r in records], seed=0),
                       stream_factory=streams.TrainStreamFactory(table.names, seed=0),
                       slots=list(range(SLOTS)), num_slots=SLOTS, prefetch=prefetch,
                       num_workers=num_workers)


def _open_every_stream(pipe: InputPipeline, start_step: int) -> tuple[float, float, int]:
  """Steps from `start_step` until every (task, slot) stream has produced a sub-batch.

  Returns (seconds to the first batch, seconds until all streams were used, steps).
  """
  wanted = {(t, s) for t in range(len(pipe.task_names)) for s in pipe.slots}
  seen = set()
  start = time.perf_counter()
  first = None
  step = start_step
  while seen != wanted:
    batch = pipe.next_batch(step)
    if first is None:
      first = time.perf_counter() - start
    seen.update((int(t), s) for t, s in zip(batch['task_id'], pipe.slots))
    step += 1
  return first, time.perf_counter() - start, step - start_step


def bench_resume(vocab: HFVocabulary, consumed: int = 10**7) -> dict:
  """Time to the first batch, fresh vs restored at `consumed` examples per stream."""
  names = [r.task_name for r in ENCODER_RECORDS]
  # Demo records map to one example each: record index = examples consumed.
  position = {'next_index': consumed, 'offset': 0}
  restored_state = {'version': 2, 'step': 0, 'num_slots': SLOTS,
                    'streams': {n: {str(s): position for s in range(SLOTS)} for n in names}}
  with _pipeline(vocab, ENCODER_RECORDS, prefetch=0) as fresh:
    fresh_first, fresh_all, fresh_steps = _open_every_stream(fresh, 0)
  with _pipeline(vocab, ENCODER_RECORDS, prefetch=0) as restored:
    restored.restore(restored_state)
    restored_first, restored_all, restored_steps = _open_every_stream(restored, 1)
    state = restored.state()
  # Every stream continued from 10^7, none was replayed from 0.
  assert all(p['next_index'] >= consumed for per in state['streams'].values()
             for p in per.values())
  return {'streams': len(names) * SLOTS, 'consumed_per_stream': consumed,
          'first_batch_s_fresh': fresh_first, 'first_batch_s_restored': restored_first,
          'all_streams_s_fresh': fresh_all, 'all_streams_s_restored': restored_all,
          'steps_to_open_all_fresh': fresh_steps, 'steps_to_open_all_restored': restored_steps,
          'restored_over_fresh': restored_first / fresh_first}


def bench_stream_open(vocab: HFVocabulary, repeats: int = 3) -> dict:
  """Seconds to open one stream and build its first sub-batch (mean over the 40 streams)."""
  builder = _builder(vocab, ENCODER_RECORDS)
  times = []
  for _ in range(repeats):
    for record in ENCODER_RECORDS:
      for slot in range(SLOTS):
        start = time.perf_counter()
        stream = streams.train_stream(record, slot, SLOTS, seed=1)
        builder.build(builder.stream(record.task_name, stream))
        times.append(time.perf_counter() - start)
  return {'stream_open_s_mean': float(np.mean(times)),
          'stream_open_s_max': float(np.max(times)), 'streams_opened': len(times)}


def bench_throughput(vocab: HFVocabulary, workers: int, seconds: float) -> dict:
  """examples/s and real tokens/s of next_batch with `workers` worker processes (0 = thread)."""
  with _pipeline(vocab, ENCODER_RECORDS, num_workers=workers) as pipe:
    start = time.perf_counter()
    pipe.next_batch(0)  # Start-up (worker processes, first streams) is timed apart.
    startup = time.perf_counter() - start
    examples = tokens = steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
      batch = pipe.next_batch(steps + 1)
      examples += int(batch['example_mask'].sum())
      tokens += int((batch['segment_ids'] > 0).sum())
      steps += 1
    elapsed = time.perf_counter() - start
  return {'workers': workers, 'startup_s': startup, 'steps': steps,
          'examples_per_s': examples / elapsed, 'tokens_per_s': tokens / elapsed,
          'sub_batches_per_s': steps * SLOTS / elapsed}


def _bench_records(num_tasks: int) -> list[DatasetRecord]:
  """`num_tasks` registered copies of the demo encoder tasks (their data, new names)."""
  out = []
  for i in range(num_tasks):
    base = ENCODER_RECORDS[i % len(ENCODER_RECORDS)]
    record = DatasetRecord(
        slug=f'bench_{i:02d}_{base.slug}', name=f'{base.name} (copy {i})', family=base.family,
        source=base.source, num_classes=base.num_classes, label_names=base.label_names,
        train_size=base.train_size, eval_size=base.eval_size, metric=base.metric)
    tasks.register_dataset(record)
    out.append(record)
  return out


def memory(num_tasks: int = 45, slots: int = SLOTS) -> dict:
  """Peak RSS of this process with num_tasks x slots open streams (run in a fresh process)."""
  tmp = tempfile.TemporaryDirectory()
  vocab = HFVocabulary(demo.build_tokenizer(tmp.name))
  records = _bench_records(num_tasks)
  for r in ENCODER_RECORDS:  # Demo data generated before the baseline is taken.
    demo.examples(r.slug, 'train')
  vocab.encode_batch(['warm up the tokenizer'])
  baseline = _current_rss()
  table = _table(records)
  group = SlotGroup(table.names, _builder(vocab, records), TaskSampler(
      [r.train_size for r in records], seed=0), streams.TrainStreamFactory(table.names, seed=0),
      list(range(slots)), slots)
  start = time.perf_counter()
  for task in range(num_tasks):
    for slot in range(slots):
      stream = group._stream(task, slot)  # pylint: disable=protected-access
      group.builder.build(stream)
  elapsed = time.perf_counter() - start
  after = _current_rss()
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  tmp.cleanup()
  return {'tasks': num_tasks, 'slots': slots, 'streams': num_tasks * slots,
          'peak_rss_bytes': peak, 'rss_before_bytes': baseline, 'rss_after_bytes': after,
          'streams_rss_bytes': after - baseline, 'open_all_s': elapsed}


def _current_rss() -> int:
  """This process's resident memory now (Linux /proc), in bytes."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(seconds: float = 5.0, workers: tuple[int, ...] = (0, 1, 2)) -> dict:
  """All input-pipeline benchmarks; memory in a fresh process."""
  tmp = tempfile.TemporaryDirectory()
  vocab = HFVocabulary(demo.build_tokenizer(tmp.name))
  out = {'resume': bench_resume(vocab), 'stream_open': bench_stream_open(vocab),
         'throughput': [bench_throughput(vocab, w, seconds) for w in workers]}
  proc = subprocess.run([sys.executable, '-m', 'bench.input_pipeline', '--memory'],
                        capture_output=True, text=True, check=True,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  out['memory'] = json.loads(proc.stdout.strip().splitlines()[-1])
  tmp.cleanup()
  return out


def print_table(results: dict) -> None:
  r = results['resume']
  print(f"resume ({r['streams']} streams, {r['consumed_per_stream']:.0e} examples consumed per "
        f"stream): first batch fresh {r['first_batch_s_fresh']:.3f} s, restored "
        f"{r['first_batch_s_restored']:.3f} s (x{r['restored_over_fresh']:.2f}); all streams "
        f"open: fresh {r['all_streams_s_fresh']:.2f} s, restored "
        f"{r['all_streams_s_restored']:.2f} s")
  o = results['stream_open']
  print(f"stream open + first sub-batch: {o['stream_open_s_mean'] * 1e3:.1f} ms mean, "
        f"{o['stream_open_s_max'] * 1e3:.1f} ms max ({o['streams_opened']} opened)")
  for t in results['throughput']:
    who = 'thread' if t['workers'] == 0 else f"{t['workers']} worker process(es)"
    print(f"input pipeline, {who}: {t['examples_per_s']:.0f} examples/s, "
          f"{t['tokens_per_s']:.0f} tokens/s (start-up {t['startup_s']:.1f} s)")
  m = results['memory']
  print(f"memory, {m['tasks']} tasks x {m['slots']} slots = {m['streams']} open streams: peak "
        f"RSS {m['peak_rss_bytes'] / 2**20:.0f} MiB; the open streams add "
        f"{m['streams_rss_bytes'] / 2**20:.0f} MiB ({m['streams_rss_bytes'] / m['streams'] / 2**10:.0f}"
        f" KiB each; opened in {m['open_all_s']:.1f} s)")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog='python -m bench.input_pipeline')
  p.add_argument('--memory', action='store_true', help='print the memory benchmark as JSON')
  p.add_argument('--seconds', type=float, default=5.0)
  p.add_argument('--json', default='')
  args = p.parse_args(argv)
  if args.memory:
    print(json.dumps(memory()))
    return
  results = run(args.seconds)
  print_table(results)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  main()
