"""The compile report: what `--mode compile` writes (compile_report.json) and prints."""

from __future__ import annotations

import dataclasses

from muppet_jax.compile.hlo import Collective

REPORT_NAME = 'compile_report.json'
GIB = 1024 ** 3


@dataclasses.dataclass
class MemoryBreakdown:
  """Bytes on one device. `arguments` .. `generated_code` are XLA's `memory_analysis()` (None
  when the TPU compiler ran out of memory); the state parts are computed from the state's
  shapes and shardings."""

  arguments: int | None  # State + batch the step reads.
  outputs: int | None  # New state + metrics.
  aliases: int | None  # Outputs written into donated arguments (counted once).
  temps: int | None  # Activations, gradients and every other temporary of the step.
  generated_code: int | None  # The executable's code (not in per_device_bytes).
  parameters: int  # The model parameters (sharded over `model` if mesh.model > 1).
  optimizer_state: int  # Adam's moments and counters (1/D each with optim.shard_moments).
  other_state: int  # Step, RNG, non-trainable model state (e.g. BART's final_logits_bias).
  batch: int  # One update's batch on this device: A slots.


@dataclasses.dataclass
class Roofline:
  """max(compute time, memory time) of one update on one device: an ESTIMATE, not a
  measurement. It ignores collectives' time and assumes peak throughput."""

  step_seconds: float  # The estimate: max(compute_seconds, memory_seconds).
  compute_seconds: float  # flops_per_step / peak_flops.
  memory_seconds: float  # bytes_accessed_per_step / memory_bandwidth.
  bound: str  # 'compute' or 'memory'.
  mfu_bound: float  # model_flops_per_step / (step_seconds x peak_flops): MFU at best.
  peak_flops: float  # Peak bf16 FLOP/s of one device.
  memory_bandwidth: float  # Memory bytes/s of one device.
  source: str  # Where the chip figures come from.
  note: str = 'estimate from documented peak figures, not a measurement'


@dataclasses.dataclass
class CompileReport:
  """What `--mode compile` prints and writes to WORKDIR/compile_report.json."""

  target: str  # Human-readable target, e.g. 'TPU v5e-64 (v5e:8x8, 64 devices, 1 slice)'.
  platform: str  # 'tpu', 'cpu' or 'gpu'.
  device_kind: str
  num_devices: int
  mesh: dict[str, int]  # {'data': D, 'model': M}.
  grad_accum: int  # A.
  slots_per_update: int  # A x D.
  model: dict  # Type, shape source, vocabulary, parameter counts, dtype, remat.
  options: dict  # R3F, ZeRO-1, rows x length, number of tasks: what the step was built with.
  per_device_bytes: int  # arguments + outputs + temps - aliases (XLA's memory_analysis).
  device_memory_bytes: int | None  # Memory of one device (the chip's HBM on TPU).
  device_memory_source: str
  fits: bool | None  # per_device_bytes <= device_memory_bytes (None: memory unknown).
  memory_fraction: float | None  # per_device_bytes / device_memory_bytes.
  memory: MemoryBreakdown
  flops_per_step: float | None  # XLA cost analysis, one device, one update (see `flops_note`).
  bytes_accessed_per_step: float | None  # XLA cost analysis, one device, one update.
  model_flops_per_step: float  # The bench/ formula, one device, one update (A slots).
  flops_note: str
  collectives: list[Collective]
  compile_seconds: float  # jit(...).lower(...).compile() wall time on this machine.
  cost_seconds: float  # Wall time of the extra compiles the FLOPs need (0: none needed).
  # The headline estimate: the executable's FLOPs (loops times their trip counts) over the
  # peak, against its bytes that reach device memory (HBM) over the memory bandwidth (see
  # `executable` and `hbm_bytes_per_step`). None when the device's peak figures are unknown.
  roofline: Roofline | None
  advice: list[str]  # What to change when the step does not fit.
  notes: list[str]  # Assumptions made (shape source, vocabulary).
  # The TPU compiler's out-of-memory message when the step does not fit (then only the memory
  # fields are known: a TPU program that does not fit does not compile).
  error: str | None = None
  # Every FLOP and byte of `flops_per_step` / `bytes_accessed_per_step` by model part
  # (attribution.py): `groups` [{name, flops, bytes, hbm_bytes}], `top` (the heaviest
  # instructions with their JAX source), `coverage` (the groups' sums over XLA's totals).
  attribution: dict | None = None
  # The compiled step itself (the program that runs, layers scanned, slots accumulated in a
  # loop), counted instruction by instruction with XLA's rules and every loop body times its
  # trip count (XLA's cost analysis counts a body once, hence the unrolled programs behind
  # `flops_per_step`): {flops, bytes, hbm_bytes, groups, note, coverage (the body-once count
  # over XLA's cost analysis of the same executable)}. `roofline_executable` is the roofline
  # from its bytes.
  executable: dict | None = None
  roofline_executable: Roofline | None = None
  # The part of the executable's bytes in device memory (HBM): XLA's bytes accessed also charge
  # traffic through on-chip memory (TPU memory space S(1)), so bytes / HBM bandwidth overstates
  # the memory time. `roofline` is the estimate from these bytes (on GPU and CPU, which have no
  # such memory spaces in their layouts, all of the executable's bytes).
  hbm_bytes_per_step: float | None = None
  # The estimate from XLA's own cost analysis, `flops_per_step` and `bytes_accessed_per_step`
  # (programs unrolled where the step loops; every memory space): what reports before this
  # release called `roofline`. None with compile.costs=False.
  roofline_xla: Roofline | None = None

  def to_json(self) -> dict:
    return dataclasses.asdict(self)



def advice(config, report_fits: bool | None, memory: MemoryBreakdown) -> list[str]:
  """What would shrink the step's memory, largest lever first."""
  if report_fits is not False:
    return []
  advice = []
  if not config.optim.shard_moments and config.mesh.data != 1:
    advice.append(f'--config.optim.shard_moments=True (ZeRO-1: Adam moments '
                  f'{format_bytes(memory.optimizer_state)} -> 1/D of it per device)')
  if config.model.remat != 'full':
    temps = '' if memory.temps is None else f': activations/temps are {format_bytes(memory.temps)}'
    advice.append("--config.model.remat=full (keep only each layer's input; recompute the "
                  f'rest{temps})')
  advice.append(f'fewer rows per slot (--config.data.rows={max(1, config.data.rows // 2)}) and '
                f'--config.train.grad_accum={2 * config.train.grad_accum} to keep the tokens per '
                'update')
  if config.model.dtype != 'bfloat16':
    advice.append("--config.model.dtype=bfloat16 (bf16 activations, fp32 master weights)")
  return advice



def format_bytes(n: float) -> str:
  """1536 -> '1.50 KiB' (binary units: GiB as the chips' HBM is quoted)."""
  for unit, size in (('GiB', GIB), ('MiB', 2 ** 20), ('KiB', 2 ** 10)):
    if abs(n) >= size:
      return f'{n / size:.2f} {unit}'
  return f'{int(n)} B'


def format_report(report: CompileReport) -> str:
  """The report as the few lines `--mode compile` prints."""
  m = report.memory
  gib = format_bytes
  if report.device_memory_bytes is None:
    verdict = 'device memory unknown'
  else:
    verdict = (f'of {gib(report.device_memory_bytes)} ({report.memory_fraction:.0%}): '
               f'{"fits" if report.fits else "DOES NOT FIT"}')
  lines = [
      f'target: {report.target}; mesh {report.mesh}, {report.slots_per_update} slots per update '
      f'({report.grad_accum} accumulation step(s)); {report.model["type"]} '
      f'{report.model["params"] / 1e6:.1f}M params from {report.model["source"]}; '
      f'R3F {"on" if report.options["r3f"] else "off"}, shard_moments '
      f'{"on" if report.options["shard_moments"] else "off"}, remat {report.model["remat"]}'
      f'{", layers scanned" if report.model.get("scan_layers") else ""}',
      f'memory per device: {gib(report.per_device_bytes)} {verdict}',
      *([f'  device memory: {report.device_memory_source}'] if report.platform == 'gpu' else []),
      f'  parameters {gib(m.parameters)}, optimizer state {gib(m.optimizer_state)}, other state '
      f'{gib(m.other_state)}, batch {gib(m.batch)}',
  ]
  if report.error is not None:
    lines += [f'  the TPU compiler: {report.error}',
              f'compile time (until the out-of-memory error): {report.compile_seconds:.1f} s']
  else:
    lines += [
        f'  activations/temps {gib(m.temps)}; arguments {gib(m.arguments)} + outputs '
        f'{gib(m.outputs)} - aliased {gib(m.aliases)}',
        (f'FLOPs per update per device: {report.flops_per_step:.3e} '
         f'({"HLO count" if report.platform == "gpu" else "XLA"}), '
         f'{report.model_flops_per_step:.3e} (model formula); bytes accessed '
         f'{report.bytes_accessed_per_step:.3e}' if report.flops_per_step is not None else
         f'FLOPs per update per device: {report.model_flops_per_step:.3e} (model formula); '
         'XLA\'s not computed (compile.costs=False)'),
        'collectives: ' + (', '.join(f'{c.kind} x{c.count} ({gib(c.bytes)})'
                                     for c in report.collectives) or 'none'),
        f'compile time: {report.compile_seconds:.1f} s'
        + (f' (+ {report.cost_seconds:.1f} s for the FLOPs)' if report.cost_seconds >= 0.05
           else '')]
  lines += attribution_lines(report.attribution)
  if report.error is None:
    lines += roofline_lines(report)
  lines += [f'to fit: {a}' for a in report.advice]
  lines += [f'note: {n}' for n in report.notes]
  return '\n'.join(lines)



def roofline_lines(report: CompileReport) -> list[str]:
  """The estimates: the headline (the executable's bytes in HBM), then the same executable on
  all of XLA's bytes, then XLA's cost analysis of the unrolled programs."""
  r = report.roofline
  if r is None:
    return ['roofline: no peak figures for this device (compile.peak_tflops, '
            'compile.memory_bandwidth_gbps)']
  lines = [f'roofline ESTIMATE (not a measurement) of the executable as it runs, its bytes in '
           f'HBM ({format_bytes(report.hbm_bytes_per_step)}): step >= '
           f'{r.step_seconds * 1e3:.1f} ms ({r.bound}-bound; compute '
           f'{r.compute_seconds * 1e3:.1f} ms at {r.peak_flops / 1e12:.0f} TFLOP/s, memory '
           f'{r.memory_seconds * 1e3:.1f} ms at {r.memory_bandwidth / 1e9:.0f} GB/s; '
           f'{r.source}); MFU <= {r.mfu_bound:.0%}']
  for label, nbytes, other in (
      ("all its bytes by XLA's rules, on-chip memory included", report.executable['bytes'],
       report.roofline_executable),
      ("XLA's cost analysis of the unrolled programs", report.bytes_accessed_per_step,
       report.roofline_xla)):
    if other is not None:
      lines.append(f'  on {label} ({format_bytes(nbytes)}): step >= '
                   f'{other.step_seconds * 1e3:.1f} ms ({other.bound}-bound; memory '
                   f'{other.memory_seconds * 1e3:.1f} ms); MFU <= {other.mfu_bound:.0%}')
  if report.roofline_xla is None and report.flops_per_step is None:
    lines.append("  XLA's cost analysis: not computed (compile.costs=False)")
  return lines


def attribution_lines(attribution: dict | None, top: int = 5) -> list[str]:
  """The attribution as a few lines: each group's share of the FLOPs and bytes, then the
  heaviest instructions."""
  if not attribution:
    return []
  flops = attribution['flops'] or 1.0
  nbytes = attribution['bytes'] or 1.0
  coverage = attribution.get('coverage') or {}
  cover = ', '.join(f'{k} {v:.1%}' for k, v in coverage.items() if v is not None)
  lines = [f'where the FLOPs and bytes go (of XLA\'s totals: {cover or "no XLA totals"}):']
  for g in attribution['groups']:
    if g['flops'] or g['bytes']:
      lines.append(f'  {g["name"]:<28} FLOPs {g["flops"]:9.3e} ({g["flops"] / flops:5.1%})  '
                   f'bytes {format_bytes(g["bytes"]):>11} ({g["bytes"] / nbytes:5.1%})')
  for op in attribution['top'][:top]:
    lines.append(f'  heaviest: {op["name"]} ({op["opcode"]}, {op["group"]}) '
                 f'{format_bytes(op["bytes"])}, {op["flops"]:.2e} FLOPs  {op["source"]}')
  return lines
