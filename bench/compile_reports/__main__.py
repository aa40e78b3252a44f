r"""Compiles the paper configs for TPU slices or GPU nodes and tabulates the reports
(docs/COMPILE.md).

  python -m bench.compile_reports [--configs base,large,bart_base,bart_large]
      [--topologies v4-64,v5e-64,v5p-64] [--r3f off,on] [--depths 2,4]
      [--slots 64] [--no-costs] [--set model.remat=full --set data.rows=4 ...]
      [--max-memory-gib 20] [--force] [--table-only]
  python -m bench.compile_reports --topologies h100x8,h200x8,8x8xa100-80gb ...

Run it with an interpreter whose environment has libtpu (`pip install "jax[tpu]==<jax>"`) for
TPU slices, or the CUDA plugin (`pip install "jax[cuda12]==<jax>"`) for GPU nodes; the compiles
run with JAX_PLATFORMS=cpu. Each compile is one `python -m muppet_jax.main --mode compile` run in
its own process, one at a time; its report is kept as
bench/compile_reports/<config>_r3f-<off|on>_<topology>[_L<layers>][_<overrides>].json (existing
ones are kept unless --force, or unless they lack the FLOPs this sweep computes, so an
interrupted sweep resumes and a `--no-costs` sweep can be completed later).
`--slots 64` (the default) sets `train.grad_accum` to 64 / devices, so that every target runs
the paper's 64 task sub-batches per update (v4-64 and v5p-64 are 32 devices: A = 2; one node of
8 GPUs: A = 8); 0 keeps the config's grad_accum. `--no-costs` skips XLA's FLOPs
(`compile.costs=False`: memory, fits and collectives only; the FLOPs' extra compiles are most
of the time).
`--set KEY=VALUE` adds `--config.KEY=VALUE` to every run (e.g. what a report's `advice` says).
`--max-memory-gib` caps each compile's address space, so that a compile too big for a shared
machine fails alone instead of waking the kernel's out-of-memory killer.

`--depths 2,4` compiles each config at 2 and 4 layers (`model.num_layers`, per stack for BART;
everything else as in the config) and extrapolates linearly to the config's depth: every
per-device quantity (state, activations, FLOPs, bytes accessed, collective bytes) is linear in
the number of layers, and the paper configs' full-depth programs need more host memory to
compile than a small machine has (docs/COMPILE.md). Without --depths the full config is
compiled. The table marks which rows are compiled and which are extrapolated.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONFIGS = ('base', 'large', 'bart_base', 'bart_large')
GIB = 1024 ** 3


def report_path(config: str, r3f: str, topology: str, layers: int | None,
                overrides: list[str]) -> str:
  depth = f'_L{layers}' if layers else ''
  suffix = ''.join('_' + o.replace('=', '-') for o in overrides)
  return os.path.join(HERE, f'{config}_r3f-{r3f}_{topology}{depth}{suffix}.json')


def config_layers(config: str) -> int:
  """`model.num_layers` of configs/<config>.py (per stack for BART)."""
  spec = importlib.util.spec_from_file_location(config, os.path.join(REPO, 'configs',
                                                                     f'{config}.py'))
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, REPO)
  spec.loader.exec_module(module)
  return int(module.get_config().model.num_layers)


def is_gpu(topology: str) -> bool:
  """GPU nodes ('h100x8', '8x8xa100-80gb'), not a TPU slice."""
  from muppet_jax.compile import gpu  # pylint: disable=import-outside-toplevel
  return gpu.is_gpu_topology(topology)


def num_devices(topology: str) -> int:
  """JAX devices of an accelerator type (v4-N / v5p-N count TensorCores, 2 per device) or of
  GPU nodes."""
  if is_gpu(topology):
    from muppet_jax.compile import gpu  # pylint: disable=import-outside-toplevel
    return gpu.parse_gpu_topology(topology).num_devices
  generation, _, count = topology.rpartition('-')
  return int(count) // 2 if generation in ('v4', 'v5p') else int(count)


def compile_one(config: str, r3f: str, topology: str, layers: int | None,
                overrides: list[str], max_memory_gib: float = 0, slots: int = 0,
                costs: bool = True) -> dict:
  """One `--mode compile` run in a fresh process; its report with the command added."""
  depth = [f'--config.model.num_layers={layers}', "--config.model.init_from=''"] if layers else []
  if slots:
    devices = num_devices(topology)
    if slots % devices:
      raise RuntimeError(f'--slots {slots} is not a multiple of {topology}\'s {devices} devices')
    depth.append(f'--config.train.grad_accum={slots // devices}')
  if not costs:
    depth.append('--config.compile.costs=False')
  with tempfile.TemporaryDirectory() as workdir:
    cmd = [sys.executable, '-m', 'muppet_jax.main', '--config', f'configs/{config}.py',
           '--workdir', workdir, '--mode', 'compile', f'--config.compile.topology={topology}',
           f'--config.train.r3f.enabled={r3f == "on"}', *depth,
           *(f'--config.{o}' for o in overrides)]
    start = time.time()
    def limit_memory():
      if max_memory_gib:
        size = int(max_memory_gib * GIB)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    # JAX_PLATFORMS=cpu: a described target needs no local accelerator (with the CUDA plugin
    # installed JAX would otherwise try to start CUDA).
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, 'HF_HUB_OFFLINE': '1', 'JAX_PLATFORMS': 'cpu'},
                          preexec_fn=limit_memory)
    if proc.returncode:
      raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-3000:]}')
    with open(os.path.join(workdir, 'compile_report.json')) as f:
      report = json.load(f)
  report['command'] = 'python -m muppet_jax.main ' + ' '.join(cmd[3:]).replace(workdir, 'W')
  report['overrides'] = overrides
  report['wall_seconds'] = time.time() - start
  return report


def extrapolate(shallow: dict, deep: dict, layers: int) -> dict:
  """The full-depth figures, linear in the number of layers through two compiled depths."""
  l1, l2 = shallow['model']['layers'], deep['model']['layers']

  def line(get):
    a, b = get(shallow), get(deep)
    if a is None or b is None:
      return None
    return b + (b - a) / (l2 - l1) * (layers - l2)

  memory = line(lambda r: r['per_device_bytes'])
  capacity = deep['device_memory_bytes']
  flops, moved = line(lambda r: r['flops_per_step']), line(lambda r: r['bytes_accessed_per_step'])
  model_flops = line(lambda r: r['model_flops_per_step'])
  estimate = {'layers': layers, 'from_layers': [l1, l2], 'per_device_bytes': memory,
              'device_memory_bytes': capacity, 'fits': memory <= capacity,
              'memory_fraction': memory / capacity, 'flops_per_step': flops,
              'bytes_accessed_per_step': moved, 'model_flops_per_step': model_flops,
              # XLA:TPU splits a combined all-reduce into size-capped chunks: the count is
              # not linear in depth, so only the bytes are extrapolated.
              'collectives': [{'kind': c['kind'], 'count': None,
                               'bytes': line(lambda r, k=c['kind']: next(
                                   (x['bytes'] for x in r['collectives'] if x['kind'] == k), 0))}
                              for c in deep['collectives']]}
  hbm = line(lambda r: r.get('hbm_bytes_per_step'))
  run_flops = line(lambda r: (r.get('executable') or {}).get('flops'))
  run_bytes = line(lambda r: (r.get('executable') or {}).get('bytes'))
  estimate['hbm_bytes_per_step'] = hbm
  estimate['roofline'] = estimate['roofline_executable'] = estimate['roofline_xla'] = None
  roof = deep.get('roofline') or deep.get('roofline_xla')
  if roof:
    peak, bandwidth = roof['peak_flops'], roof['memory_bandwidth']
    if hbm is not None and (run_flops or flops) is not None:
      estimate['roofline'] = _roofline(run_flops or flops, hbm, model_flops, peak, bandwidth)
    if run_flops is not None and run_bytes is not None:
      estimate['roofline_executable'] = _roofline(run_flops, run_bytes, model_flops, peak,
                                                  bandwidth)
    if flops is not None:
      estimate['roofline_xla'] = _roofline(flops, moved, model_flops, peak, bandwidth)
  return estimate


def _roofline(flops: float, moved: float, model_flops: float, peak: float,
              bandwidth: float) -> dict:
  """max(FLOPs / peak, bytes / bandwidth), which of the two bounds it, and the MFU bound."""
  compute, memory = flops / peak, moved / bandwidth
  step = max(compute, memory)
  return {'step_seconds': step, 'bound': 'compute' if compute >= memory else 'memory',
          'mfu_bound': model_flops / (step * peak)}


def peak_figures(topology: str, dtype: str) -> tuple[float, float]:
  """(peak FLOP/s, memory bytes/s) of one device of `topology` for a model in `dtype`: the chip
  table (TPU), the datasheet's bf16 or, for float32, TF32 peak (GPU)."""
  from muppet_jax import compile as compile_lib  # pylint: disable=import-outside-toplevel
  if is_gpu(topology):
    from muppet_jax.compile import gpu  # pylint: disable=import-outside-toplevel
    device = gpu.parse_gpu_topology(topology).gpu
    return (device.peak_flops_tf32 if dtype == 'float32' else device.peak_flops,
            device.hbm_bandwidth)
  chip = compile_lib.parse_topology(topology).chip
  return chip.peak_flops, chip.hbm_bandwidth


def roofline_from(report: dict, donor: dict, topology: str) -> dict:
  """The estimate from XLA's cost analysis (`roofline_xla`) of `report` (compiled with
  compile.costs=False for `topology`) from the XLA FLOPs and bytes accessed of `donor`, the same
  config compiled with costs for another target of the same platform.

  With data parallelism (mesh.model = 1) a device runs A slots per update whatever the slice,
  so the donor's figures are scaled by A / A_donor; what differs besides is the ZeRO-1
  optimizer's share (elementwise over N / D parameters, well under 1% of the FLOPs) and the
  fusion choices of the other generation's compiler (bytes accessed).
  """
  return _roofline_from_bytes(report, donor, topology, donor['bytes_accessed_per_step'])


def roofline_hbm_from(report: dict, donor: dict, topology: str) -> dict | None:
  """Like `roofline_from`, from the donor's bytes in HBM only (`hbm_bytes_per_step`): for
  reports old enough to have no executable count of their own."""
  if not donor.get('hbm_bytes_per_step'):
    return None
  return _roofline_from_bytes(report, donor, topology, donor['hbm_bytes_per_step'])


def _roofline_from_bytes(report: dict, donor: dict, topology: str, moved: float) -> dict:
  if report['mesh'].get('model', 1) != 1 or donor['mesh'].get('model', 1) != 1:
    raise ValueError('per-slot costs carry over between data-parallel meshes only')
  peak, bandwidth = peak_figures(topology, report.get('model', {}).get('dtype', 'bfloat16'))
  scale = report['grad_accum'] / donor['grad_accum']
  return _roofline(donor['flops_per_step'] * scale, moved * scale,
                   report['model_flops_per_step'], peak, bandwidth)


def _collectives(collectives: list[dict]) -> str:
  parts = []
  for c in collectives:
    count = f' x{c["count"]}' if c['count'] else ''
    parts.append(f'{c["kind"]}{count} ({c["bytes"] / 2 ** 20:.0f} MiB)')
  return ', '.join(parts) or 'none'


def normalise(report: dict) -> dict:
  """`report` with this release's estimates: reports written before it called XLA's
  cost-analysis estimate `roofline` (now `roofline_xla`) and the executable's HBM-bytes
  estimate `roofline_hbm` (now the headline `roofline`)."""
  if 'roofline_xla' in report:
    return report
  return {**report, 'roofline_xla': report.get('roofline'),
          'roofline': report.get('roofline_hbm')}


def _row(name: str, r3f: bool, r: dict, how: str) -> str:
  topology = r['target'].split()[1]
  memory = (f'{r["per_device_bytes"] / GIB:.1f} / {r["device_memory_bytes"] / GIB:.1f} GiB '
            f'({r["memory_fraction"]:.0%})')
  fits = 'yes' if r['fits'] else 'no'
  if not r['fits'] and r.get('advice'):
    fits += ' (try: ' + '; '.join(a.split(' (')[0] for a in r['advice']) + ')'
  roof, run, xla = r.get('roofline'), r.get('roofline_executable'), r.get('roofline_xla')
  step = f'{roof["step_seconds"] * 1e3:.0f} ms ({roof["bound"]})' if roof else '-'
  mfu = f'{roof["mfu_bound"]:.0%}' if roof else '-'

  def cell(estimate):
    return (f'{estimate["step_seconds"] * 1e3:.0f} ms ({estimate["bound"]}), '
            f'{estimate["mfu_bound"]:.0%}' if estimate else '-')
  accum = f', A={r["grad_accum"]}' if r.get('grad_accum', 1) > 1 else ''
  # A step that does not fit does not compile: XLA's verdict only, no program to read.
  collectives = '- (not compiled)' if r.get('error') else _collectives(r['collectives'])
  return (f'| {name} | {"on" if r3f else "off"} | {topology} ({r["num_devices"]} dev.{accum}) | '
          f'{memory} | {fits} | {collectives} | {step} | {mfu} | {cell(run)} | {cell(xla)} | '
          f'{how} |')


def table(directory: str = HERE, platform: str = 'tpu') -> str:
  """The markdown table of the reports in `directory` for `platform` ('tpu': slices, 'gpu':
  nodes): full-depth compiles as they are, else the extrapolation from the two depths
  compiled."""
  target = 'GPUs' if platform == 'gpu' else 'slice'
  rows = [f'| config | R3F | {target} | per-device memory | fits | collectives (per update) | '
          'est. step (roofline: the executable, its HBM bytes) | MFU bound | same, on all its '
          "bytes (XLA's rules) | XLA's cost analysis (unrolled programs) | how |",
          '|---|---|---|---|---|---|---|---|---|---|---|']
  groups: dict[tuple, dict] = {}
  for path in glob.glob(os.path.join(directory, '*_r3f-*.json')):
    m = re.match(r'(.+)_r3f-(on|off)_([^_]+)(?:_L(\d+))?(.*)\.json$', os.path.basename(path))
    if not m:
      continue
    config, r3f, topology, layers, suffix = m.groups()
    if is_gpu(topology) != (platform == 'gpu'):
      continue
    with open(path) as f:
      groups.setdefault((config, r3f, topology, suffix), {})[int(layers or 0)] = normalise(
          json.load(f))
  order = {c: i for i, c in enumerate(CONFIGS)}
  for (config, r3f, topology, suffix), by_depth in sorted(
      groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1], kv[0][2], kv[0][3])):
    any_report = next(iter(by_depth.values()))
    name = ' '.join([config, *any_report.get('overrides', [])])  # As given to --set.
    if 0 in by_depth:
      r = by_depth[0]
      how = ('out of memory: the TPU compiler\'s figure' if r.get('error') else
             f'compiled ({r.get("wall_seconds", r["compile_seconds"]) / 60:.0f} min)')
      donors = [(t, g[0]) for (c, f, t, x), g in sorted(groups.items())
                if (c, f, x) == (config, r3f, suffix) and 0 in g
                and g[0]['flops_per_step'] is not None]
      if r['flops_per_step'] is None and not r.get('error') and donors:
        donor_topology, donor = donors[0]
        r = {**r, 'roofline_xla': roofline_from(r, donor, topology),
             'roofline': r.get('roofline') or roofline_hbm_from(r, donor, topology)}
        how += f"; XLA's cost analysis per slot from {donor_topology}"
      rows.append(_row(name, r['options']['r3f'], r, how))
    elif len(by_depth) >= 2:
      (l1, shallow), (l2, deep) = sorted(by_depth.items())[:2]
      estimate = {**deep, **extrapolate(shallow, deep, config_layers(config)), 'advice': []}
      rows.append(_row(name, deep['options']['r3f'], estimate,
                       f'est. from {l1} and {l2} layers'))
  return '\n'.join(rows)


def groups_table(directory: str = HERE, of: str = 'attribution') -> str:
  """Where each config's bytes go: the groups of every report that has them, one row per
  report, each cell 'GB per update (share of the bytes)'. `of='attribution'`: the figures of
  `bytes_accessed_per_step` (TPU reports with costs), against XLA's total; `of='executable'`:
  the executable as it runs (loops times their trip counts), its coverage the body-once count
  against XLA's cost analysis of that executable."""
  from muppet_jax.compile.attribution import GROUPS  # pylint: disable=import-outside-toplevel
  short = [g.replace('embeddings and output heads', 'embeddings').replace(
      'norms and dropout', 'norms, dropout') for g in GROUPS]
  total_name = 'total (XLA)' if of == 'attribution' else 'total'
  rows = ['| config | R3F | target | ' + ' | '.join(short) + f' | {total_name} | coverage |',
          '|---|---|---|' + '---|' * len(GROUPS) + '---|---|']
  order = {c: i for i, c in enumerate(CONFIGS)}
  found = []
  for path in glob.glob(os.path.join(directory, '*_r3f-*.json')):
    m = re.match(r'(.+)_r3f-(on|off)_([^_]+)(.*)\.json$', os.path.basename(path))
    if not m:
      continue
    with open(path) as f:
      report = json.load(f)
    if report.get(of) and (of == 'executable' or report['platform'] != 'gpu'):
      found.append((order.get(m.group(1), 9), m.groups(), report))
  for _, (config, r3f, topology, suffix), report in sorted(found, key=lambda x: (x[0], x[1])):
    a = report[of]
    by_name = {g['name']: g for g in a['groups']}
    cells = [f'{by_name[g]["bytes"] / 1e9:.1f} ({by_name[g]["bytes"] / a["bytes"]:.0%})'
             if g in by_name else '-' for g in GROUPS]
    name = ' '.join([config, *report.get('overrides', [])])
    xla = a.get('xla_bytes_accessed') if of == 'attribution' else a['bytes']
    coverage = (a.get('coverage') or {}).get('bytes')
    total = f'{xla / 1e9:.1f} GB' if xla else '-'
    rows.append(f'| {name} | {r3f} | {topology} | ' + ' | '.join(cells) +
                f' | {total} | {f"{coverage:.1%}" if coverage else "-"} |')
  return '\n'.join(rows) if found else ''


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog='python -m bench.compile_reports',
                              description=__doc__.split('\n')[0])
  p.add_argument('--configs', default=','.join(CONFIGS))
  p.add_argument('--topologies', default='v4-64,v5e-64,v5p-64')
  p.add_argument('--r3f', default='off,on', help='off, on or off,on')
  p.add_argument('--depths', default='',
                 help='e.g. 2,4: compile at these depths and extrapolate (default: full depth)')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='config override for every run, e.g. model.remat=full')
  p.add_argument('--max-memory-gib', type=float, default=0,
                 help='address-space cap of each compile (0 = none)')
  p.add_argument('--slots', type=int, default=64,
                 help='task sub-batches per update: grad_accum = slots / devices (0: config)')
  p.add_argument('--no-costs', dest='costs', action='store_false',
                 help='skip XLA FLOPs and the roofline (compile.costs=False): much faster')
  p.add_argument('--force', action='store_true', help='recompile existing reports')
  p.add_argument('--table-only', action='store_true', help='only print the table')
  args = p.parse_args(argv)
  depths = [int(d) for d in args.depths.split(',') if d] or [None]
  if not args.table_only:
    for config in args.configs.split(','):
      for r3f in args.r3f.split(','):
        for topology in args.topologies.split(','):
          for layers in depths:
            path = report_path(config, r3f, topology, layers, args.set)
            if os.path.exists(path) and not args.force:
              with open(path) as f:
                existing = json.load(f)
              # A step that does not fit has no FLOPs to add.
              if not args.costs or existing['flops_per_step'] is not None or existing['error']:
                continue
            print(f'compiling {config} R3F {r3f} for {topology}'
                  f'{f" at {layers} layers" if layers else ""} ...', flush=True)
            try:
              report = compile_one(config, r3f, topology, layers, args.set,
                                   args.max_memory_gib, args.slots, args.costs)
            except RuntimeError as e:
              print(f'  failed: {str(e)[-600:]}', flush=True)
              continue
            with open(path + '.tmp', 'w') as f:
              json.dump(report, f, indent=1)
            shutil.move(path + '.tmp', path)
            print(f'  {report["per_device_bytes"] / GIB:.2f} GiB per device, fits: '
                  f'{report["fits"]}, {report["wall_seconds"]:.0f} s', flush=True)
  print(table())
  groups = groups_table()
  if groups:
    print()
    print('Where the bytes of one update go (GB per device, attribution from the compiled HLO):')
    print(groups)
  groups = groups_table(of='executable')
  if groups:
    print()
    print('The same for the executable as it runs (loops times their trip counts):')
    print(groups)
  gpu_table = table(platform='gpu')
  if gpu_table.count('\n') > 1:  # Any GPU rows.
    print()
    print(gpu_table)


if __name__ == '__main__':
  main()
