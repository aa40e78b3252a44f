"""Compile targets: TPU chips and slices, GPU nodes, and the local devices, with their figures.

`resolve_target(config.compile)` turns `compile.topology` ('' = this machine, 'v5e-64', 'v5e:8x8',
'h100x8', '2x8xh100', ...) into the devices a step is compiled for (libtpu describes a TPU slice,
the CUDA plugin GPU nodes, on any machine), the memory one device may use, and the peak figures
the roofline reads. The GPU side is `gpu.py`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os

import jax
import ml_collections

from muppet_jax import errors

GIB = 1024 ** 3


class CompileTargetError(errors.UserError):
  """`compile.topology` / `compile.num_slices` name no target this machine can compile for."""


class LibtpuMissingError(CompileTargetError):
  """A TPU topology was asked for but libtpu (the TPU compiler) is not installed."""


class CudaPluginMissingError(CompileTargetError):
  """GPU nodes were asked for but JAX's CUDA plugin (the GPU compiler) is not installed."""


# ---------------------------------------------------------------------------------------------
# Chips and topologies
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Chip:
  """Documented figures of one TPU chip (one JAX device: v4 and v5p chips run as one megacore)."""

  name: str  # GCP accelerator-type prefix: 'v4', 'v5e', 'v5p', 'v6e'.
  jax_prefix: str  # Prefix of JAX / libtpu topology strings ('v5e:8x8', 'v5p:2x4x4').
  counts_cores: bool  # The N of `name-N` counts TensorCores (2 per chip), not chips.
  peak_flops: float  # Peak dense bf16 FLOP/s per chip.
  hbm_bytes: int  # HBM per chip.
  hbm_bandwidth: float  # HBM bytes/s per chip.
  source: str  # Where the three figures come from.


# Cloud TPU documentation, "system architecture" table of each generation's page (the HBM
# capacities, given there as GB or GiB, are read as GiB).
CHIPS: dict[str, Chip] = {
    'v4': Chip('v4', 'v4', True, 275e12, 32 * GIB, 1200e9,
               'https://cloud.google.com/tpu/docs/v4'),
    'v5e': Chip('v5e', 'v5e', False, 197e12, 16 * GIB, 819e9,
                'https://cloud.google.com/tpu/docs/v5e'),
    'v5p': Chip('v5p', 'v5p', True, 459e12, 95 * GIB, 2765e9,
                'https://cloud.google.com/tpu/docs/v5p'),
    'v6e': Chip('v6e', 'v6e', False, 918e12, 32 * GIB, 1638e9,
                'https://cloud.google.com/tpu/docs/v6e'),
}
_JAX_PREFIXES = {'v4': 'v4', 'v5e': 'v5e', 'v5litepod': 'v5e', 'v5p': 'v5p', 'v5': 'v5p',
                 'v6e': 'v6e'}

# Slice shapes (chips per dimension) of the standard accelerator types, by chip count, from
# the Cloud TPU pages' topology tables: v5e/v6e are 2D, v4/v5p 3D.
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
              128: (8, 16), 256: (16, 16)}
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
              128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
              2048: (8, 16, 16), 4096: (16, 16, 16)}


@dataclasses.dataclass(frozen=True)
class TpuTopology:
  """A TPU slice as libtpu's topology description wants it."""

  chip: Chip
  name: str  # JAX topology string, e.g. 'v5e:8x8'.
  shape: tuple[int, ...]  # Chips per dimension.
  wrap: tuple[bool, bool, bool]  # Torus wrap-around links per dimension.

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)


def parse_topology(name: str) -> TpuTopology:
  """'v5e-64' (GCP accelerator type) or 'v5e:8x8' (JAX topology string) -> `TpuTopology`.

  Raises:
    CompileTargetError: an unknown generation or slice size (the message lists the valid ones).
  """
  name = name.strip()
  if ':' in name:  # A JAX topology string: generation, then the chips per dimension.
    prefix, dims = name.split(':', 1)
    chip = _chip(prefix, name)
    try:
      shape = tuple(int(d) for d in dims.lower().split('x'))
    except ValueError:
      raise CompileTargetError(f'compile.topology={name!r}: expected e.g. "v5e:8x8"') from None
  else:
    prefix, _, count = name.rpartition('-')
    chip = _chip(prefix, name)
    if not count.isdigit():
      raise CompileTargetError(f'compile.topology={name!r}: expected an accelerator type such '
                               'as v5e-64, v4-64, v5p-64 or v6e-64')
    n = int(count)
    chips = n // 2 if chip.counts_cores else n
    shapes = _SHAPES_3D if chip.counts_cores else _SHAPES_2D
    if (chip.counts_cores and n % 2) or chips not in shapes:
      valid = [f'{chip.name}-{c * 2 if chip.counts_cores else c}' for c in shapes]
      example = 'x'.join(map(str, shapes[64]))
      raise CompileTargetError(f'compile.topology={name!r} is not a standard {chip.name} slice; '
                               f'use one of {", ".join(valid)} or a JAX topology string such '
                               f'as "{chip.jax_prefix}:{example}"')
    shape = shapes[chips]
  if len(shape) == 2:  # 2D torus (v5e, v6e): a full 16-chip dimension wraps around.
    wrap = (shape[0] == 16, shape[1] == 16, False)
  else:  # 3D (v4, v5p): slices made of whole 4x4x4 cubes are tori.
    wrap = (all(d % 4 == 0 for d in shape),) * 3
  return TpuTopology(chip=chip, name=f'{chip.jax_prefix}:{"x".join(map(str, shape))}',
                     shape=shape, wrap=wrap)


def _chip(prefix: str, name: str) -> Chip:
  key = _JAX_PREFIXES.get(prefix.lower())
  if key is None:
    raise CompileTargetError(
        f'compile.topology={name!r}: unknown TPU generation {prefix!r}; known: '
        f'{", ".join(sorted(CHIPS))} (e.g. v5e-64, v4-64, v5p-64, v6e-64 or "v5e:8x8"), or GPU '
        'nodes such as h100x8, h200x8, a100-80gbx8, 2x8xh100')
  return CHIPS[key]


@dataclasses.dataclass
class Target:
  """The devices the step is compiled for and their documented figures."""

  description: str  # Human-readable, e.g. 'TPU v5e-64 (v5e:8x8, 64 devices, 1 slice)'.
  platform: str  # 'tpu', 'cpu', 'gpu'.
  device_kind: str  # As JAX reports it, e.g. 'TPU v5 lite'.
  devices: list  # The devices the mesh is built over.
  num_slices: int
  device_memory_bytes: int | None  # Memory of one device (None: unknown).
  memory_source: str  # Where device_memory_bytes comes from.
  peak_flops: float | None  # Peak bf16 FLOP/s of one device (None: unknown, no roofline).
  memory_bandwidth: float | None  # Memory bytes/s of one device.
  figures_source: str  # Where peak_flops and memory_bandwidth come from.
  # Peak FLOP/s of float32 matmuls when they are slower than bf16 ones (NVIDIA GPUs: TF32, the
  # default precision of a float32 dot in JAX); None: peak_flops (TPU: one bf16 pass).
  peak_flops_float32: float | None = None

  def peak_flops_for(self, dtype: str) -> float | None:
    """Peak FLOP/s of the matmuls of a model computing in `dtype` ('bfloat16', 'float32')."""
    if dtype == 'float32' and self.peak_flops_float32:
      return self.peak_flops_float32
    return self.peak_flops


def libtpu_available() -> bool:
  """True when the TPU compiler can be loaded (the `libtpu` package is installed)."""
  return importlib.util.find_spec('libtpu') is not None


def resolve_target(compile_config: ml_collections.ConfigDict) -> Target:
  """The devices of `compile.topology` ('' = this machine's), with memory and peak figures.

  Raises:
    LibtpuMissingError: a TPU topology without libtpu installed (the message says how to get it).
    CudaPluginMissingError: GPU nodes without the CUDA plugin (the message says how to get it).
    CompileTargetError: an unknown topology or a bad `compile.num_slices`.
  """
  topology = str(compile_config.topology).strip()
  # gpu.py builds on this module's Target and errors: imported here, not at the top.
  from muppet_jax.compile import gpu  # pylint: disable=g-import-not-at-top
  if gpu.is_gpu_topology(topology):
    return gpu.resolve(topology, compile_config)
  num_slices = int(compile_config.num_slices)
  if num_slices < 1:
    raise CompileTargetError(f'compile.num_slices must be >= 1, got {num_slices}')
  gib = float(compile_config.device_memory_gib)
  peak = float(compile_config.peak_tflops) * 1e12 or None
  bandwidth = float(compile_config.memory_bandwidth_gbps) * 1e9 or None
  override = 'compile.peak_tflops / compile.memory_bandwidth_gbps'
  if not topology:
    if num_slices != 1:
      raise CompileTargetError('compile.num_slices > 1 needs a TPU compile.topology (e.g. '
                               'v5e-64); the local devices are one slice')
    devices = jax.devices()
    device = devices[0]
    memory, memory_source = _local_device_memory(devices)
    if gib:
      memory, memory_source = int(gib * GIB), 'compile.device_memory_gib'
    known = gpu.for_device_kind(device.device_kind) if device.platform == 'gpu' else None
    if known is not None and not (peak or bandwidth):  # A GPU of the table: its datasheet.
      peak, bandwidth, figures = known.peak_flops, known.hbm_bandwidth, known.source
    else:
      figures = override if peak or bandwidth else ('unknown for local devices: set '
                                                    'compile.peak_tflops and '
                                                    'compile.memory_bandwidth_gbps for a roofline')
    return Target(
        description=f'local {device.platform.upper()} ({len(devices)} x {device.device_kind})',
        platform=device.platform, device_kind=device.device_kind, devices=devices,
        num_slices=1, device_memory_bytes=memory, memory_source=memory_source,
        peak_flops=peak, memory_bandwidth=bandwidth, figures_source=figures,
        peak_flops_float32=known.peak_flops_tf32 if known is not None and figures == known.source
        else None)
  tpu = parse_topology(topology)
  if not libtpu_available():
    raise LibtpuMissingError(
        f'compile.topology={topology!r} needs libtpu (the TPU compiler; no TPU needed): '
        f'pip install "jax[tpu]=={jax.__version__}" -- preferably in a separate virtual '
        'environment, since with libtpu installed every JAX program first probes for a TPU. '
        "Leave compile.topology='' to compile for this machine's devices.")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    description = topologies.get_topology_desc(
        topology_name=tpu.name, platform='tpu',
        chip_config_name='megacore' if tpu.chip.counts_cores else 'default',
        chips_per_host_bounds=(2, 2, 1) if tpu.num_chips >= 4 else (1, 1, 1),
        num_slices=num_slices, wrap=tpu.wrap)
  except Exception as e:  # pylint: disable=broad-except
    hint = ''
    if 'lockfile' in str(e):  # libtpu admits one process per machine unless told otherwise.
      hint = (' Another process holds libtpu (e.g. another --mode compile): wait for it, or set '
              'ALLOW_MULTIPLE_LIBTPU_LOAD=1 (compiling needs no TPU to itself).')
    raise CompileTargetError(f'libtpu could not describe topology {tpu.name!r} '
                             f'({num_slices} slice(s)): {e}.{hint}') from e
  devices = list(description.devices)
  chip = tpu.chip
  name = topology if ':' in topology else topology.lower()
  return Target(
      description=(f'TPU {name} ({tpu.name}, {len(devices)} devices, {num_slices} slice'
                   f'{"s" if num_slices > 1 else ""})'),
      platform='tpu', device_kind=devices[0].device_kind, devices=devices,
      num_slices=num_slices,
      device_memory_bytes=int(gib * GIB) if gib else chip.hbm_bytes,
      memory_source='compile.device_memory_gib' if gib else chip.source,
      peak_flops=peak or chip.peak_flops, memory_bandwidth=bandwidth or chip.hbm_bandwidth,
      figures_source=override if peak or bandwidth else chip.source)


def _local_device_memory(devices) -> tuple[int | None, str]:
  """Memory one local device may use: the allocator's limit (GPU), else (CPU) the host's RAM
  shared by the local devices."""
  stats = devices[0].memory_stats() if hasattr(devices[0], 'memory_stats') else None
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit']), 'the device allocator (memory_stats bytes_limit)'
  try:
    ram = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return None, 'unknown'
  local = [d for d in devices if d.process_index == jax.process_index()]
  return ram // max(1, len(local)), f'host RAM / {len(local)} local devices'

