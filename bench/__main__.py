"""Train-step throughput, MFU, R3F cost, the HF PyTorch baseline and the input pipeline.

  python -m bench [--shapes roberta-base,roberta-large,bart-base,bart-large] [--steps N]
                  [--rows R --length L --layers N | --tiny] [--no-torch] [--no-r3f]
                  [--dtype float32|bfloat16] [--attention auto|xla|pallas|cudnn] [--json OUT]
  python -m bench --resume [--json OUT]    (input pipeline only: resume, streams, workers)

For each shape: one classification slot per step (a synthetic, fixed-shape batch with every
token real), the step built by `muppet_jax.step.make_train_step` on one device, jitted with a
donated state as in `train.py`. Compile time is measured apart from the step time: the fastest
of `--steps` timed steps after one warm-up step (`step_s`; shared machines make the slower ones
noise; the median and every time are in the JSON), the same rule for the PyTorch baseline. See bench/README.md for the FLOP formula.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from configs import demo as demo_config  # noqa: E402
from muppet_jax import compile as compile_lib  # noqa: E402
from muppet_jax import objective  # noqa: E402
from muppet_jax import optim  # noqa: E402
from muppet_jax import sharding  # noqa: E402
from muppet_jax import step as step_lib  # noqa: E402
from muppet_jax.data.features import BatchShape, Family, TaskTable  # noqa: E402
from muppet_jax.models import hf  # noqa: E402
from muppet_jax.models import muppet  # noqa: E402

# name -> model type, hidden, layers (per stack for BART), heads, FFN, rows, length per slot.
# Token budgets as in configs/: RoBERTa 8 x 512 per device, BART one 1,024-token row.
SHAPES = {
    'roberta-base': ('roberta', 768, 12, 12, 3072, 8, 512),
    'roberta-large': ('roberta', 1024, 24, 16, 4096, 8, 512),
    'bart-base': ('bart', 768, 6, 12, 3072, 1, 1024),
    'bart-large': ('bart', 1024, 12, 16, 4096, 1, 1024),
}
VOCAB = 50265  # RoBERTa/BART BPE.
TINY = dict(hidden=64, layers=2, heads=2, ffn=256, rows=2, length=32, vocab=1000)
TASK = 'muppet_demo_sentiment'  # Any 2-class task name (the table needs only names/classes).


def _sync(x):
  return jax.block_until_ready(x)


def measure_peak(dtype: str, n: int, repeats: int = 20) -> dict:
  """FLOP/s of an n x n x n matmul on the default device (best of `repeats`)."""
  dt = jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32
  a = jax.random.normal(jax.random.key(0), (n, n), dt)
  b = jax.random.normal(jax.random.key(1), (n, n), dt)
  f = jax.jit(lambda x, y: x @ y)
  _sync(f(a, b))
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    _sync(f(a, b))
    best = min(best, time.perf_counter() - t)
  return {'dtype': dtype, 'n': n, 'seconds': best, 'flops_per_s': 2 * n ** 3 / best}


def _shape(name: str, args) -> dict:
  model_type, hidden, layers, heads, ffn, rows, length = SHAPES[name]
  vocab = VOCAB
  if args.tiny:
    hidden, layers, heads, ffn, rows, length, vocab = (TINY[k] for k in (
        'hidden', 'layers', 'heads', 'ffn', 'rows', 'length', 'vocab'))
  layers = args.layers or layers
  rows = args.rows or rows
  length = args.length or length
  return dict(name=name, model_type=model_type, hidden=hidden, layers=layers, heads=heads,
              ffn=ffn, rows=rows, length=length, vocab=vocab)


def _hf_config(s: dict, dropout: float = 0.1):
  max_pos = s['length'] + 2 if s['model_type'] == 'roberta' else s['length']
  cfg = hf.config_from_shape(
      s['model_type'], hidden_size=s['hidden'], num_layers=s['layers'], num_heads=s['heads'],
      intermediate_size=s['ffn'], max_position_embeddings=max_pos, vocab_size=s['vocab'],
      dropout=dropout, attention_dropout=dropout)
  cfg.num_labels = 2
  return cfg


def _batch(s: dict, shape: BatchShape, seed: int = 0) -> dict:
  """One classification slot, [A=1, D=1, ...]: one example per row, every token real."""
  rng = np.random.default_rng(seed)
  r, l = s['rows'], s['length']
  b = shape.zeros()
  b['task_id'][...] = 0
  b['family_id'][...] = int(Family.CLASSIFICATION)
  b['input_ids'][:] = rng.integers(4, s['vocab'], (r, l))
  b['input_ids'][:, 0] = 0  # <s>
  b['input_ids'][:, -1] = 2  # </s>
  b['segment_ids'][:] = 1
  b['positions'][:] = np.arange(l)
  last = l - 1 if s['model_type'] == 'bart' else 0
  b['example_index'][:r, 0] = np.arange(r) * l + last
  b['choice_mask'][:r, 0] = True
  b['labels'][:r] = rng.integers(0, 2, r)
  b['example_mask'][:r] = True
  b['loss_n'][:r] = 2.0
  return {k: v[None, None] for k, v in b.items()}


def flops_per_token(s: dict, non_embedding_params: int) -> float:
  """Training FLOPs per token: 6 N + 12 x A x d x T (see README); the same formula as the
  `--mode compile` report's model FLOPs."""
  return compile_lib.model_flops_per_token(s['model_type'], s['hidden'], s['layers'],
                                           s['length'], non_embedding_params)


def bench_jax(s: dict, args, r3f: bool) -> dict:
  config = demo_config.get_config(s['model_type'])
  config.unlock()
  config.model.dtype = args.dtype
  config.model.attention = args.attention
  config.model.dropout = config.model.attention_dropout = 0.1
  if args.attention == 'cudnn':
    # JAX's cuDNN attention takes its dropout seed as a compile-time constant (one mask for
    # every step), so model.attention='cudnn' refuses attention dropout.
    config.model.attention_dropout = 0.0
  config.train.r3f.enabled = r3f
  config.mesh.data = config.mesh.model = 1
  hf_config = _hf_config(s)
  table = TaskTable.build([TASK], [int(Family.CLASSIFICATION)], [2])
  model = muppet.build_model(config, hf_config, table, rngs=nnx.Rngs(params=0, dropout=1))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  # Token and position embeddings are lookups (no matmul FLOPs for classification).
  max_pos = hf_config.max_position_embeddings + (2 if s['model_type'] == 'bart' else 0)
  embedding = s['vocab'] * s['hidden'] + max_pos * s['hidden'] * (
      2 if s['model_type'] == 'bart' else 1)
  layout = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  tx = optim.build(config.optim, 1000)
  schedule = optim.learning_rate_schedule(config.optim, 1000)
  settings = objective.ObjectiveSettings.from_config(config, s['vocab'])
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                              opt_state=tx.init(params),
                              rng=jax.random.key_data(jax.random.key(2)))
  rep = layout.replicated
  state_sharding = jax.tree.map(lambda _: rep, state)
  state = jax.device_put(state, state_sharding)
  shape = BatchShape(rows=s['rows'], length=s['length'], max_examples=s['rows'],
                     max_choices=config.data.max_choices, decoder_length=1)
  batch = jax.device_put(_batch(s, shape), layout.batch_sharding)
  step = jax.jit(step_lib.make_train_step(graphdef, tx, schedule, table, settings, layout.mesh),
                 in_shardings=(state_sharding, layout.batch_sharding),
                 out_shardings=(state_sharding, rep), donate_argnums=0)
  t = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  state, m = compiled(state, batch)  # Warm-up.
  _sync(m.loss)
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    state, m = compiled(state, batch)
    _sync(m.loss)
    times.append(time.perf_counter() - t)
  if not np.isfinite(float(m.loss)):
    raise FloatingPointError(f'{s["name"]}: non-finite loss')
  return {'compile_s': compile_s, 'step_s': min(times),
          'step_median_s': statistics.median(times), 'step_times': times,
          'params': total, 'non_embedding_params': total - embedding,
          'tokens_per_step': s['rows'] * s['length'], 'loss': float(m.loss)}


def bench_torch(s: dict, args) -> dict | None:
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  cfg = _hf_config(s)
  cls = (transformers.RobertaForSequenceClassification if s['model_type'] == 'roberta'
         else transformers.BartForSequenceClassification)
  model = cls(cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
  b = _batch(s, BatchShape(rows=s['rows'], length=s['length'], max_examples=s['rows'],
                           max_choices=1, decoder_length=1))
  ids = torch.from_numpy(b['input_ids'][0, 0].astype(np.int64))
  labels = torch.from_numpy(b['labels'][0, 0][:s['rows']].astype(np.int64))
  mask = torch.ones_like(ids)

  def one():
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    opt.step()
    return float(loss.detach())

  one()  # Warm-up (allocations, AdamW state).
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    one()
    times.append(time.perf_counter() - t)
  return {'step_s': min(times), 'step_median_s': statistics.median(times), 'step_times': times,
          'threads': torch.get_num_threads(), 'torch': torch.__version__}


def bench_pipeline(seconds: float, rows: int = 8, length: int = 128) -> dict:
  """SubBatchBuilder on the demo classification tasks: examples/s and real tokens/s."""
  from muppet_jax.data import batching  # pylint: disable=import-outside-toplevel
  from muppet_jax.data import demo  # pylint: disable=import-outside-toplevel
  from muppet_jax.data import vocab as vocab_lib  # pylint: disable=import-outside-toplevel
  tmp = tempfile.TemporaryDirectory()  # The tokenizer loads lazily: keep it until the end.
  vocab = vocab_lib.HFVocabulary(demo.build_tokenizer(tmp.name))
  records = [r for r in demo.RECORDS if r.family == Family.CLASSIFICATION]
  table = TaskTable.build([r.task_name for r in records], [int(r.family) for r in records],
                          [r.num_classes for r in records])
  shape = BatchShape(rows=rows, length=length, max_examples=80, max_choices=5,
                     decoder_length=1)
  builder = batching.SubBatchBuilder(shape, vocab, table, model_type='roberta')
  data = {r.task_name: demo.examples(r.task_name.removeprefix('muppet_'), 'train')
          for r in records}
  examples = tokens = batches = 0
  start = time.perf_counter()
  while time.perf_counter() - start < seconds:
    for name, exs in data.items():
      stream = builder.stream(name, iter(exs))
      while True:
        sub = builder.build(stream)
        if not sub.num_examples:
          break
        examples += sub.num_examples
        tokens += sub.num_tokens
        batches += 1
  elapsed = time.perf_counter() - start
  tmp.cleanup()
  return {'examples_per_s': examples / elapsed, 'tokens_per_s': tokens / elapsed,
          'sub_batches': batches, 'fill': tokens / (batches * rows * length),
          'rows': rows, 'length': length}


def _fmt(x, spec):
  return '-' if x is None else format(x, spec)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(prog='python -m bench', description=__doc__.split('\n')[0])
  p.add_argument('--shapes', default=','.join(SHAPES))
  p.add_argument('--steps', type=int, default=3, help='timed steps (after one warm-up)')
  p.add_argument('--tiny', action='store_true', help='tiny model and batch (smoke test)')
  p.add_argument('--rows', type=int, default=0, help='override rows per slot')
  p.add_argument('--length', type=int, default=0, help='override tokens per row')
  p.add_argument('--layers', type=int, default=0, help='override layers (per stack for BART)')
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--attention', default='auto', choices=('auto', 'xla', 'pallas', 'cudnn'),
                 help="model.attention: on a GPU, compare 'xla' with 'cudnn'")
  p.add_argument('--matmul', type=int, default=0, help='peak matmul size (default by device)')
  p.add_argument('--no-torch', action='store_true')
  p.add_argument('--no-r3f', action='store_true')
  p.add_argument('--pipeline-seconds', type=float, default=3.0)
  p.add_argument('--json', default='', help='write the results here')
  p.add_argument('--resume', action='store_true',
                 help='only the input-pipeline benchmarks (bench/input_pipeline.py): resume '
                      'cost at 10^7 examples per stream, stream-open time, throughput with '
                      '0/1/2 worker processes, memory of 45 tasks x 8 slots; JSON default '
                      'bench_resume.json')
  args = p.parse_args(argv)
  if args.resume:
    from bench import input_pipeline  # pylint: disable=import-outside-toplevel
    results = input_pipeline.run(args.pipeline_seconds)
    input_pipeline.print_table(results)
    path = args.json or 'bench_resume.json'
    with open(path, 'w') as f:
      json.dump(results, f, indent=1)
    print(f'wrote {path}')
    return results
  names = [n.strip() for n in args.shapes.split(',') if n.strip()]
  unknown = [n for n in names if n not in SHAPES]
  if unknown:
    p.error(f'unknown shapes {unknown}; known: {list(SHAPES)}')

  device = jax.devices()[0]
  n = args.matmul or (512 if args.tiny else 2048 if device.platform == 'cpu' else 8192)
  peak = measure_peak(args.dtype, n)
  results = {'device': {'platform': device.platform, 'kind': device.device_kind,
                        'cpu_count': os.cpu_count(), 'machine': platform.machine(),
                        'jax': jax.__version__},
             'dtype': args.dtype, 'attention': args.attention, 'peak': peak, 'shapes': []}
  for name in names:
    s = _shape(name, args)
    plain = bench_jax(s, args, r3f=False)
    r3f = None if args.no_r3f else bench_jax(s, args, r3f=True)
    torch_r = None if args.no_torch else bench_torch(s, args)
    fpt = flops_per_token(s, plain['non_embedding_params'])
    tps = plain['tokens_per_step'] / plain['step_s']
    row = {**s, **plain, 'tokens_per_s': tps, 'flops_per_token': fpt,
           'flops_per_s': fpt * tps, 'mfu': fpt * tps / peak['flops_per_s'],
           'r3f_step_s': r3f and r3f['step_s'], 'r3f_compile_s': r3f and r3f['compile_s'],
           'r3f_ratio': r3f and r3f['step_s'] / plain['step_s'],
           'torch_step_s': torch_r and torch_r['step_s'],
           'torch_tokens_per_s': torch_r and plain['tokens_per_step'] / torch_r['step_s'],
           'speedup_vs_torch': torch_r and torch_r['step_s'] / plain['step_s'],
           'torch_threads': torch_r and torch_r['threads']}
    results['shapes'].append(row)
  # A matmul timed once can land on a busy moment of a shared machine: time it again after the
  # steps and keep the faster, so that MFU is never inflated by an underestimated peak.
  again = measure_peak(args.dtype, n)
  if again['flops_per_s'] > peak['flops_per_s']:
    peak = results['peak'] = again
    for row in results['shapes']:
      row['mfu'] = row['flops_per_s'] / peak['flops_per_s']
  results['pipeline'] = bench_pipeline(args.pipeline_seconds)

  d = results['device']
  print(f"device: {d['platform']} ({d['kind']}), {d['cpu_count']} CPUs; dtype {args.dtype}; "
        f"attention {args.attention}; peak {n}^3 matmul: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s")
  header = (f"{'shape':14s} {'L':>3s} {'tokens':>7s} {'compile s':>9s} {'step ms':>8s} "
            f"{'tok/s':>8s} {'GFLOP/tok':>9s} {'GFLOP/s':>8s} {'MFU':>6s} {'R3F x':>6s} "
            f"{'HF ms':>8s} {'HF tok/s':>8s} {'ours/HF':>7s}")
  print(header)
  print('-' * len(header))
  for r in results['shapes']:
    print(f"{r['name']:14s} {r['layers']:3d} {r['tokens_per_step']:7d} {r['compile_s']:9.1f} "
          f"{r['step_s'] * 1e3:8.1f} {r['tokens_per_s']:8.0f} {r['flops_per_token'] / 1e9:9.3f} "
          f"{r['flops_per_s'] / 1e9:8.1f} {r['mfu'] * 100:5.1f}% {_fmt(r['r3f_ratio'], '6.2f')} "
          f"{_fmt(r['torch_step_s'] and r['torch_step_s'] * 1e3, '8.1f')} "
          f"{_fmt(r['torch_tokens_per_s'], '8.0f')} {_fmt(r['speedup_vs_torch'], '7.2f')}")
  pl = results['pipeline']
  print(f"input pipeline (SubBatchBuilder, demo classification, {pl['rows']} x {pl['length']}): "
        f"{pl['examples_per_s']:.0f} examples/s, {pl['tokens_per_s']:.0f} tokens/s, "
        f"fill {pl['fill'] * 100:.1f}%")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=1)
  return results


if __name__ == '__main__':
  main()
