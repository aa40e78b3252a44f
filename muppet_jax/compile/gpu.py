"""NVIDIA GPU nodes as compile targets: XLA's device descriptions and the documented figures.

`compile.topology` names GPU nodes as `<gpu>x<N>` (one node of N GPUs: `h100x8`, `h200x8`,
`a100-80gbx8`) or `<nodes>x<N>x<gpu>` (several: `2x8xh100`, `8x8xa100-80gb`). The CUDA PJRT
plugin (`pip install "jax[cuda12]==<jax version>"`) compiles for such a node on a machine
without a GPU or a driver, given XLA's description of the device (a `GpuTargetConfigProto`:
SM count, shared memory, clocks, memory size; the files in gpu_specs/, copied from XLA) and the
topology string `partitions x hosts x devices-per-host`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re

import jax
import ml_collections

from muppet_jax.compile import targets

_SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gpu_specs')
# JAX's default share of a GPU's memory for its allocator (below).
DEFAULT_MEMORY_FRACTION = 0.75
# HGX / DGX nodes carry 8 GPUs; more than that is several nodes (`2x8xh100`).
MAX_GPUS_PER_NODE = 8


@dataclasses.dataclass(frozen=True)
class Gpu:
  """One NVIDIA data-center GPU (one JAX device) and its documented figures."""

  name: str  # As `compile.topology` names it: 'h100', 'h200', 'a100-80gb'.
  spec_file: str  # XLA's GpuTargetConfigProto for it, in gpu_specs/.
  peak_flops: float  # Peak dense bf16 tensor-core FLOP/s.
  peak_flops_tf32: float  # Peak dense TF32 tensor-core FLOP/s (float32 matmuls, below).
  hbm_bandwidth: float  # HBM bytes/s.
  source: str  # The datasheet the three figures come from.

  def spec(self) -> str:
    """The GpuTargetConfigProto text (protobuf text format; '#' lines are comments)."""
    with open(os.path.join(_SPECS, self.spec_file)) as f:
      return f.read()

  def device_memory_bytes(self) -> int:
    """The device's memory as the CUDA driver reports it (`device_memory_size` of the spec):
    what the allocator's fraction applies to. A little under the datasheet's '80 GB'."""
    return int(_spec_field(self.spec(), 'device_memory_size'))

  def device_name(self) -> str:
    """The device name of the spec (JAX's `device_kind`), e.g. 'NVIDIA H100 80GB HBM3'."""
    return _spec_field(self.spec(), 'device_description_str').strip('"')


# NVIDIA's datasheets (the SXM parts of HGX / DGX nodes). They quote the tensor-core peaks of
# H100 / H200 "with sparsity" (footnote: half that without): 1,979 bf16 and 989 TF32 TFLOP/s,
# halved here; the A100's table gives the dense figures, 312 and 156 TFLOP/s, sparse in brackets.
GPUS: dict[str, Gpu] = {
    'h100': Gpu('h100', 'h100_sxm.txtpb', 1979e12 / 2, 989e12 / 2, 3.35e12,
                'NVIDIA H100 datasheet, H100 SXM (https://www.nvidia.com/en-us/data-center/h100/)'),
    'h200': Gpu('h200', 'h200.txtpb', 1979e12 / 2, 989e12 / 2, 4.8e12,
                'NVIDIA H200 datasheet, H200 SXM (https://www.nvidia.com/en-us/data-center/h200/)'),
    'a100-80gb': Gpu('a100-80gb', 'a100_sxm_80.txtpb', 312e12, 156e12, 2.039e12,
                     'NVIDIA A100 datasheet, A100 80GB SXM '
                     '(https://www.nvidia.com/en-us/data-center/a100/)'),
}
_ALIASES = {'h100-sxm': 'h100', 'h100-80gb': 'h100', 'h200-sxm': 'h200', 'h200-141gb': 'h200',
            'a100-sxm-80gb': 'a100-80gb', 'a100-80gb-sxm': 'a100-80gb'}
_ONE_NODE = re.compile(r'^(?P<gpu>[a-z][a-z0-9\-]*?)x(?P<per_node>\d+)$')
_NODES = re.compile(r'^(?P<nodes>\d+)x(?P<per_node>\d+)x(?P<gpu>[a-z][a-z0-9\-]*)$')


def _spec_field(spec: str, field: str) -> str:
  match = re.search(rf'^\s*{field}:\s*(.+?)\s*$', spec, re.MULTILINE)
  if match is None:
    raise ValueError(f'GPU spec has no {field}')
  return match.group(1)


@dataclasses.dataclass(frozen=True)
class GpuTopology:
  """Nodes of one GPU type, as the CUDA plugin's topology description wants them."""

  gpu: Gpu
  nodes: int
  gpus_per_node: int

  @property
  def num_devices(self) -> int:
    return self.nodes * self.gpus_per_node

  @property
  def name(self) -> str:
    """Canonical `compile.topology` spelling: 'h100x8' (one node), '2x8xh100'."""
    if self.nodes == 1:
      return f'{self.gpu.name}x{self.gpus_per_node}'
    return f'{self.nodes}x{self.gpus_per_node}x{self.gpu.name}'

  @property
  def xla_topology(self) -> str:
    """The plugin's topology string: partitions x hosts x devices per host (one process per
    node here; launch/slurm_gpu.sbatch runs one per GPU, which compiles to the same program)."""
    return f'1x{self.nodes}x{self.gpus_per_node}'


def is_gpu_topology(name: str) -> bool:
  """True when `compile.topology` has the shape of a GPU node name (`h100x8`, `2x8xh100`),
  known GPU or not; TPU names never do (`v5e-64`, `v5e:8x8`)."""
  name = name.strip().lower()
  return ':' not in name and bool(_ONE_NODE.match(name) or _NODES.match(name))


def parse_gpu_topology(name: str) -> GpuTopology:
  """'h100x8', 'a100-80gbx8', '2x8xh100' -> `GpuTopology`.

  Raises:
    CompileTargetError: an unknown GPU, or GPU counts that are no node (the message lists the
      valid names).
  """
  text = name.strip().lower()
  match = _NODES.match(text) or _ONE_NODE.match(text)
  if match is None:
    raise targets.CompileTargetError(
        f'compile.topology={name!r}: expected GPU nodes as <gpu>x<GPUs> (one node, e.g. '
        f'h100x8) or <nodes>x<GPUs per node>x<gpu> (e.g. 2x8xh100); GPUs: {_known()}')
  key = _ALIASES.get(match['gpu'], match['gpu'])
  if key not in GPUS:
    raise targets.CompileTargetError(
        f'compile.topology={name!r}: unknown GPU {match["gpu"]!r}; known: {_known()} (e.g. '
        'h100x8, h200x8, a100-80gbx8, 2x8xh100)')
  nodes = int(match.groupdict().get('nodes') or 1)
  per_node = int(match['per_node'])
  if nodes < 1 or not 1 <= per_node <= MAX_GPUS_PER_NODE:
    fix = f'<nodes>x<GPUs per node>x<gpu>, e.g. 2x8x{key}'
    if per_node > MAX_GPUS_PER_NODE and per_node % MAX_GPUS_PER_NODE == 0 and nodes == 1:
      fix = f'for {per_node} GPUs use {per_node // MAX_GPUS_PER_NODE}x8x{key}'
    raise targets.CompileTargetError(
        f'compile.topology={name!r}: a node has 1 to {MAX_GPUS_PER_NODE} GPUs and there is at '
        f'least one node ({fix})')
  return GpuTopology(gpu=GPUS[key], nodes=nodes, gpus_per_node=per_node)


def _known() -> str:
  return ', '.join(GPUS)


def cuda_plugin_available() -> bool:
  """True when JAX's CUDA PJRT plugin (the GPU compiler) is installed: `jax[cuda12]` or
  `jax[cuda13]`. No GPU or driver is needed to compile for a described GPU."""
  for module in ('jax_plugins.xla_cuda12', 'jax_plugins.xla_cuda13'):
    try:
      if importlib.util.find_spec(module) is not None:
        return True
    except ImportError:  # No jax_plugins package at all.
      return False
  return False


def memory_fraction() -> tuple[float, str]:
  """The share of a GPU's memory JAX's allocator takes, and why.

  JAX hands every buffer of a step (arguments, outputs, temporaries) to XLA's BFC allocator,
  whose pool is XLA_CLIENT_MEM_FRACTION (XLA_PYTHON_CLIENT_MEM_FRACTION, its deprecated name)
  of the device's total memory, 0.75 when neither is set, preallocated or not
  (https://docs.jax.dev/en/latest/gpu_memory_allocation.html). The rest is left to the CUDA
  context, cuBLAS / cuDNN handles and NCCL's communication buffers, which XLA does not count.
  Read from this process's environment: set the value the cluster job will run with.

  Raises:
    CompileTargetError: a value that is not a fraction.
  """
  for variable in ('XLA_CLIENT_MEM_FRACTION', 'XLA_PYTHON_CLIENT_MEM_FRACTION'):
    value = os.environ.get(variable, '')
    if value:
      try:
        fraction = float(value)
      except ValueError:
        fraction = 0.0
      if not 0 < fraction <= 1:
        raise targets.CompileTargetError(
            f'{variable}={value!r}: expected a fraction of the GPU memory in (0, 1], e.g. .9')
      return fraction, f'{variable}={value}'
  return DEFAULT_MEMORY_FRACTION, 'XLA_CLIENT_MEM_FRACTION unset: JAX\'s default'


def resolve(topology: str, compile_config: ml_collections.ConfigDict) -> targets.Target:
  """The described devices of GPU nodes `topology`, with their memory and peak figures.

  Raises:
    CudaPluginMissingError: the CUDA plugin is not installed (the message says how to get it).
    CompileTargetError: an unknown GPU, node shape, or `compile.num_slices` > 1.
  """
  gpus = parse_gpu_topology(topology)
  if int(compile_config.num_slices) != 1:
    raise targets.CompileTargetError(
        'compile.num_slices is for TPU multislice; give GPU nodes in compile.topology, e.g. '
        f'{max(2, int(compile_config.num_slices))}x{gpus.gpus_per_node}x{gpus.gpu.name}')
  if not cuda_plugin_available():
    raise targets.CudaPluginMissingError(
        f'compile.topology={topology!r} needs the CUDA plugin (the GPU compiler; no GPU '
        f'needed): pip install "jax[cuda12]=={jax.__version__}" in a separate virtual '
        'environment (with it installed every JAX program first probes for a GPU), and run '
        'it there with JAX_PLATFORMS=cpu.')
  _use_cpu_locally()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    description = topologies.get_topology_desc(platform='cuda', target_config=gpus.gpu.spec(),
                                               topology=gpus.xla_topology)
  except Exception as e:  # pylint: disable=broad-except
    hint = ''
    if 'not implemented' in str(e):  # JAX dropped the plugin when CUDA failed to start here.
      hint = (' JAX tried to start CUDA on this machine before the compile (no GPU): run with '
              'JAX_PLATFORMS=cpu.')
    raise targets.CompileTargetError(
        f'the CUDA plugin could not describe {gpus.name} ({gpus.xla_topology} with '
        f'gpu_specs/{gpus.gpu.spec_file}): {e}.{hint}') from e
  devices = list(description.devices)
  gpu = gpus.gpu
  gib = float(compile_config.device_memory_gib)
  if gib:
    memory, memory_source = int(gib * targets.GIB), 'compile.device_memory_gib'
  else:
    fraction, why = memory_fraction()
    total = gpu.device_memory_bytes()
    memory = int(fraction * total)
    memory_source = (f"JAX's allocator: {fraction:g} ({why}) of the {total / targets.GIB:.2f} "
                     f'GiB the driver reports for an {gpu.name} (gpu_specs/{gpu.spec_file}); '
                     'the rest is left to the CUDA context, cuBLAS/cuDNN and NCCL')
  peak = float(compile_config.peak_tflops) * 1e12 or None
  bandwidth = float(compile_config.memory_bandwidth_gbps) * 1e9 or None
  nodes = f'{gpus.nodes} node{"s" if gpus.nodes > 1 else ""} x {gpus.gpus_per_node}'
  return targets.Target(
      description=f'GPU {gpus.name} ({nodes} {devices[0].device_kind}, {len(devices)} devices)',
      platform='gpu', device_kind=devices[0].device_kind, devices=devices, num_slices=1,
      device_memory_bytes=memory, memory_source=memory_source,
      peak_flops=peak or gpu.peak_flops, memory_bandwidth=bandwidth or gpu.hbm_bandwidth,
      figures_source=('compile.peak_tflops / compile.memory_bandwidth_gbps' if peak or bandwidth
                      else gpu.source),
      peak_flops_float32=None if peak else gpu.peak_flops_tf32)


def _use_cpu_locally() -> None:
  """Keeps JAX's own backend on the CPU when nothing chose one yet: with the CUDA plugin
  installed JAX would otherwise try to start CUDA here (and, without a driver, print a
  traceback before falling back). Compiling for described GPUs needs no local GPU."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if not jax.config.jax_platforms and not xla_bridge.backends_are_initialized():
    jax.config.update('jax_platforms', 'cpu')


def for_device_kind(device_kind: str) -> Gpu | None:
  """The GPU of the table whose spec names this JAX `device_kind` (a local GPU), or None."""
  return next((g for g in GPUS.values() if g.device_name() == device_kind), None)
