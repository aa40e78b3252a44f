r"""Ahead-of-time compilation of the train step for a target topology: memory, FLOPs, collectives.

  python -m muppet_jax.main --config configs/large.py --workdir /tmp/aot --mode compile \
      --config.compile.topology=v5e-64 [--config.train.r3f.enabled=True ...]

builds the exact train step that `train.run` would run for the config (the same functions:
`train.step_program`, `train.initial_state`, `train.state_shardings`, `train.jit_train_step`;
the real mesh over the target's devices, ZeRO-1 `optim.shard_moments`, R3F, gradient
accumulation, the mixture's task table) from abstract shapes only, compiles it, and writes
`WORKDIR/compile_report.json` (`CompileReport`). No weights, no data, no tokenizer download and
no network are needed:

- Model shape: `model.init_from`'s config.json when it is a local directory (or a hub id already
  in the local Hugging Face cache), else the config's shape fields (`model.hidden_size`, ...).
  The vocabulary is `model.vocab_size`, else the tokenizer's size when the tokenizer is local
  (`data.tokenizer='demo'` or a directory), else 50,265, the size of the RoBERTa/BART BPE that
  every paper config uses (printed as a note).
- Tasks: `build.run_tasks(config)` (the catalogue; no data).
- Batch: `BatchShape.from_config(config.data)`, `[A, D, ...]` with A = `train.grad_accum`.

Targets (`compile.topology`):
- '' (default): this machine's devices (CPU, or the GPUs when present), as training would use.
- A Cloud TPU accelerator type, `v4-N`, `v5e-N`, `v5p-N` or `v6e-N` (N as in
  `gcloud ... --accelerator-type`: TensorCores for v4/v5p, chips for v5e/v6e), or a JAX topology
  string such as `v5e:8x8`; `compile.num_slices` > 1 joins several such slices (multislice).
  Needs `libtpu` (`pip install "jax[tpu]==<your jax version>"`), not a TPU: libtpu compiles for
  a described topology on any machine. libtpu warns that it cannot determine
  TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES on a machine without a TPU; that is harmless here.
  Install it in its own virtual environment: with libtpu present every JAX program first probes
  for a TPU.

The report's numbers are XLA's, for one device's program: `memory_analysis()` (arguments,
outputs, temporaries, aliases), `cost_analysis()` (FLOPs, bytes accessed; of unrolled programs
where the step loops, since XLA counts a loop body once), and the collectives of the optimized
HLO; `executable` counts the compiled step itself with XLA's rules, its loops times their trip
counts. The roofline step times are estimates from the chip's documented peak figures
(`CHIPS`), not measurements. docs/COMPILE.md explains every field.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
from absl import logging

from muppet_jax import build
from muppet_jax.compile import backbone as backbone_lib
from muppet_jax.compile import flops as flops_lib
from muppet_jax.compile import hlo
from muppet_jax.compile import memory as memory_lib
from muppet_jax.compile import program
from muppet_jax.compile import report as report_lib
from muppet_jax.compile import targets
from muppet_jax.compile.report import CompileReport, MemoryBreakdown, Roofline

def compile_step(config: ml_collections.ConfigDict, workdir: str,
                 target: targets.Target | None = None) -> CompileReport:
  """Builds the config's train step from abstract shapes, compiles it for `target` (default:
  `resolve_target(config.compile)`) and analyses the executable. Writes nothing."""
  target = target or targets.resolve_target(config.compile)
  accum = int(config.train.grad_accum)
  if accum < 1:
    raise ValueError(f'train.grad_accum must be >= 1, got {accum}')
  backbone = backbone_lib.backbone_config(config, workdir)
  if backbone.hf_config.model_type != config.model.type:  # finetune.from_workdir's model type.
    config = config.copy_and_resolve_references()
    config.model.type = backbone.hf_config.model_type
  run_tasks = build.run_tasks(config)
  build.check_sizes(config, backbone.tokenizer_size, backbone.hf_config)
  step = program.abstract_step(config, backbone, run_tasks.table, target.devices, accum)
  state, batch, layout = step.state, step.batch, step.layout
  state_memory = dict(parameters=memory_lib.per_device_bytes(state.params),
                      optimizer_state=memory_lib.per_device_bytes(state.opt_state),
                      other_state=memory_lib.per_device_bytes((state.step, state.rest, state.rng)),
                      batch=memory_lib.per_device_bytes(batch))
  start = time.perf_counter()
  try:
    compiled = step.compile()
  except jax.errors.JaxRuntimeError as e:  # The TPU compiler refuses programs that do not fit.
    oom = memory_lib.parse_out_of_memory(str(e))
    if oom is None:
      raise
    compiled = None
  compile_seconds = time.perf_counter() - start
  counts = flops_lib.count_params(state.params)
  hf_config = backbone.hf_config
  layers = getattr(hf_config, 'num_hidden_layers', None) or hf_config.encoder_layers
  model_flops = flops_lib.model_flops_per_token(
      config.model.type, hf_config.hidden_size, layers, config.data.length,
      counts.slot_matmul) * config.data.rows * config.data.length * accum
  common = dict(
      target=target.description, platform=target.platform, device_kind=target.device_kind,
      num_devices=len(target.devices), mesh={k: int(v) for k, v in layout.mesh.shape.items()},
      grad_accum=accum, slots_per_update=accum * layout.data_size,
      model={'type': config.model.type, 'source': backbone.source,
             'hidden_size': int(hf_config.hidden_size), 'layers': int(layers),
             'vocab_size': int(hf_config.vocab_size), 'params': counts.total,
             'slot_matmul_params': counts.slot_matmul, 'dtype': config.model.dtype,
             'param_dtype': config.model.param_dtype, 'remat': config.model.remat,
             'scan_layers': bool(config.model.get('scan_layers', False))},
      options={'r3f': bool(config.train.r3f.enabled),
               'shard_moments': bool(config.optim.shard_moments),
               'rows': int(config.data.rows), 'length': int(config.data.length),
               'decoder_length': int(config.data.decoder_length),
               'tokens_per_slot': int(config.data.rows * config.data.length),
               'num_tasks': len(run_tasks.names), 'mixture': config.data.mixture},
      model_flops_per_step=model_flops, compile_seconds=compile_seconds,
      notes=backbone.notes)

  if compiled is None:  # Out of memory: XLA's own figures, no executable to analyse.
    memory = MemoryBreakdown(arguments=None, outputs=None, aliases=None,
                             temps=oom.temps_bytes, generated_code=None, **state_memory)
    # When XLA names only the temporaries: plus the state and batch (the new state aliases it).
    used = oom.used_bytes or oom.temps_bytes + sum(state_memory.values())
    return CompileReport(
        **common, per_device_bytes=used, device_memory_bytes=oom.capacity_bytes,
        device_memory_source='the TPU compiler (the HBM it may use)', fits=False,
        memory_fraction=used / oom.capacity_bytes, memory=memory, cost_seconds=0.0,
        flops_per_step=None, bytes_accessed_per_step=None,
        flops_note='not compiled: the step does not fit the device', collectives=[],
        roofline=None, advice=report_lib.advice(config, False, memory), error=oom.message)

  stats = compiled.memory_analysis()
  memory = MemoryBreakdown(
      arguments=int(stats.argument_size_in_bytes), outputs=int(stats.output_size_in_bytes),
      aliases=int(stats.alias_size_in_bytes), temps=int(stats.temp_size_in_bytes),
      generated_code=int(stats.generated_code_size_in_bytes), **state_memory)
  per_device = memory.arguments + memory.outputs + memory.temps - memory.aliases
  device_memory = target.device_memory_bytes
  fits = None if device_memory is None else per_device <= device_memory

  start = time.perf_counter()
  cost = None
  if config.compile.get('costs', True):
    cost = program.step_cost(config, backbone, run_tasks.table, target.devices, accum, layers,
                             compiled)
  cost_seconds = time.perf_counter() - start

  peak = target.peak_flops_for(config.model.dtype)  # float32 matmuls run as TF32 on GPU.

  def roofline_of(flops: float, nbytes: float, note: str | None = None) -> Roofline | None:
    if not (peak and target.memory_bandwidth and flops):
      return None
    compute_s, memory_s = flops / peak, nbytes / target.memory_bandwidth
    step_s = max(compute_s, memory_s)
    return Roofline(
        step_seconds=step_s, compute_seconds=compute_s, memory_seconds=memory_s,
        bound='compute' if compute_s >= memory_s else 'memory',
        mfu_bound=model_flops / (step_s * peak), peak_flops=peak,
        memory_bandwidth=target.memory_bandwidth, source=target.figures_source,
        **({'note': note} if note else {}))

  counted = cost.attribution if cost is not None else None
  # The executable itself, counted with XLA's rules and its loops run their trip counts (the
  # figures of XLA's cost analysis come from the same step unrolled where the step loops,
  # because it counts a loop body once; the unrolled programs' memory-space assignment
  # differs). Cheap (no further compile): also with compile.costs=False.
  executable = program.executable_cost(compiled)
  # The headline: the executable's bytes that reach HBM. XLA's bytes accessed also charge
  # operands in on-chip memory (TPU memory space 1) and an asynchronous copy four times, at the
  # HBM bandwidth; those are the other two estimates.
  roofline = roofline_of(
      executable.flops, executable.hbm_bytes,
      "estimate from the compiled step's FLOPs and its bytes in HBM (memory space 0 of the "
      'layouts), loops times their trip counts; not a measurement')
  roofline_executable = roofline_of(
      executable.flops, executable.bytes,
      "estimate from the compiled step's bytes by XLA's rules, every memory space, loops times "
      'their trip counts; not a measurement')
  roofline_xla = None if cost is None else roofline_of(
      cost.flops, cost.bytes_accessed,
      "estimate from XLA's cost analysis (programs unrolled where the step loops); not a "
      'measurement')
  model_note = ('model_flops_per_step: 6 N + 12 x layers x d x T per token of a '
                'classification slot (the bench/ formula), no R3F, no remat.')
  if cost is None:
    flops_note = ('flops_per_step: not computed (compile.costs=False). ' + model_note)
  else:
    counter = ('XLA cost analysis' if target.platform != 'gpu' else 'the optimized HLO '
               "counted instruction by instruction with XLA's cost rules (attribution.py; "
               'XLA:GPU has no cost analysis)')
    flops_note = (f'flops_per_step: {counter} {cost.source}; of the family branches '
                  '(lax.switch) the costliest counts; R3F and rematerialisation included. '
                  + model_note)
  return CompileReport(
      **common, per_device_bytes=per_device, device_memory_bytes=device_memory,
      device_memory_source=target.memory_source, fits=fits,
      memory_fraction=None if device_memory is None else per_device / device_memory,
      memory=memory, flops_per_step=None if cost is None else cost.flops,
      bytes_accessed_per_step=None if cost is None else cost.bytes_accessed,
      flops_note=flops_note,
      cost_seconds=cost_seconds,
      collectives=hlo.hlo_collectives(compiled.as_text()), roofline=roofline,
      advice=report_lib.advice(config, fits, memory),
      attribution=None if counted is None else counted.to_json(),
      executable=executable.to_json(),
      roofline_executable=roofline_executable,
      hbm_bytes_per_step=executable.hbm_bytes,
      roofline_xla=roofline_xla)



def run(config: ml_collections.ConfigDict, workdir: str) -> CompileReport:
  """`--mode compile`: compiles the config's train step, prints and writes the report."""
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  report = compile_step(config, workdir)
  path = os.path.join(workdir, report_lib.REPORT_NAME)
  with open(path, 'w') as f:
    json.dump(report.to_json(), f, indent=1)
  for line in report_lib.format_report(report).splitlines():
    logging.info('%s', line)
  logging.info('wrote %s', path)
  return report
