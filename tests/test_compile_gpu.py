"""`--mode compile` for NVIDIA GPU nodes (`compile.topology=h100x8`, `2x8xh100`, ...).

The default suite checks the names, the device facts shipped in muppet_jax/compile/gpu_specs/
against NVIDIA's datasheets (two independent sources), the allocator's memory fraction, and the
one-line error without the CUDA plugin. The slow tests compile a tiny train step for described
GPUs; they need the plugin (`pip install "jax[cuda12]==<jax version>"`, in its own environment,
run with JAX_PLATFORMS=cpu: .ci/run's cuda phase) and skip without it. Their numbers are checked
against values computed apart from the GPU path: the parameter bytes of a concretely built
model, XLA:CPU's cost analysis of the same step, and the datasheet figures by hand.
"""

import functools
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from configs import demo as demo_config
from muppet_jax import build
from muppet_jax import errors
from muppet_jax.compile import aot
from muppet_jax.compile import gpu
from muppet_jax.compile import report as report_lib
from muppet_jax.compile import targets
from muppet_jax.models import muppet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN, LAYERS, VOCAB, ROWS, LENGTH = 32, 1, 200, 2, 16
needs_plugin = pytest.mark.skipif(
    not gpu.cuda_plugin_available(),
    reason='needs the CUDA plugin: pip install "jax[cuda12]" (see docs/COMPILE.md)')


def _config(topology='h100x8', dtype='float32'):
  """A tiny RoBERTa on two classification demo tasks, data-parallel over every device."""
  c = demo_config.get_config('roberta')
  c.unlock()
  c.model.hidden_size, c.model.num_layers, c.model.num_heads = HIDDEN, LAYERS, 2
  c.model.intermediate_size, c.model.vocab_size, c.model.dtype = 64, VOCAB, dtype
  c.data.tokenizer = ''  # No tokenizer: the vocabulary is model.vocab_size.
  c.data.rows, c.data.length, c.data.max_examples, c.data.max_choices = ROWS, LENGTH, 4, 2
  c.data.num_tasks = 2
  c.data.subset_seed = -1  # The mixture's first tasks, not a random subset.
  c.mesh.data = -1
  c.compile.topology = topology
  return c


# --- Names, device facts, memory fraction (no plugin needed) ---------------------------------


@pytest.mark.parametrize('name,gpu_name,nodes,per_node,xla_topology,canonical', [
    ('h100x8', 'h100', 1, 8, '1x1x8', 'h100x8'),
    ('H200x8', 'h200', 1, 8, '1x1x8', 'h200x8'),
    ('a100-80gbx8', 'a100-80gb', 1, 8, '1x1x8', 'a100-80gbx8'),
    ('h100x4', 'h100', 1, 4, '1x1x4', 'h100x4'),
    ('2x8xh100', 'h100', 2, 8, '1x2x8', '2x8xh100'),
    ('8x8xa100-80gb', 'a100-80gb', 8, 8, '1x8x8', '8x8xa100-80gb'),
    ('1x8xh200', 'h200', 1, 8, '1x1x8', 'h200x8'),
    ('h100-sxmx8', 'h100', 1, 8, '1x1x8', 'h100x8'),  # An alias.
])
def test_gpu_node_names(name, gpu_name, nodes, per_node, xla_topology, canonical):
  assert gpu.is_gpu_topology(name)
  t = gpu.parse_gpu_topology(name)
  assert (t.gpu.name, t.nodes, t.gpus_per_node) == (gpu_name, nodes, per_node)
  assert (t.xla_topology, t.name, t.num_devices) == (xla_topology, canonical, nodes * per_node)


@pytest.mark.parametrize('name', ['', 'v5e-64', 'v5e:8x8', 'v4-8', 'v5p:2x4x4', 'V6E-256'])
def test_tpu_names_are_not_gpu_names(name):
  assert not gpu.is_gpu_topology(name)


@pytest.mark.parametrize('name,hint', [
    ('a100x8', "unknown GPU 'a100'; known: h100, h200, a100-80gb"),  # 40 or 80 GB: say which.
    ('b300x8', "unknown GPU 'b300'"),
    ('h100x16', 'use 2x8xh100'),
    ('h100x0', 'a node has 1 to 8 GPUs'),
    ('0x8xh100', 'at least one node'),
    ('2x9xh200', 'a node has 1 to 8 GPUs'),
])
def test_bad_gpu_names_fail_with_the_valid_ones(name, hint):
  with pytest.raises(targets.CompileTargetError, match=hint.replace('(', r'\(')) as e:
    gpu.parse_gpu_topology(name)
  assert isinstance(e.value, errors.UserError) and '\n' not in str(e.value)


def test_unknown_tpu_generation_mentions_gpu_nodes():
  with pytest.raises(targets.CompileTargetError, match='h100x8'):
    targets.parse_topology('v7-8')


@pytest.mark.parametrize('key,memory,bandwidth,device_name', [
    # NVIDIA's datasheets: 80 GB / 141 GB / 80 GB, 3.35 / 4.8 / 2.039 TB/s. XLA's specs give the
    # memory as the driver reports it (a little under the marketing GB) and their own bandwidth.
    ('h100', 80e9, 3.35e12, 'NVIDIA H100 80GB HBM3'),
    ('h200', 141e9, 4.8e12, 'NVIDIA H200 141GB HBM3e'),
    ('a100-80gb', 80e9, 2.039e12, 'NVIDIA A100-SXM4-80GB'),
])
def test_shipped_gpu_specs_agree_with_the_datasheets(key, memory, bandwidth, device_name):
  g = gpu.GPUS[key]
  spec = g.spec()
  assert g.device_name() == device_name
  assert 0.97 * memory <= g.device_memory_bytes() <= 1.1 * memory
  # Within the spec: the model string repeats the memory size.
  assert f'with {g.device_memory_bytes()}B RAM' in spec or 'model_str' not in spec
  spec_bandwidth = float(gpu._spec_field(spec, 'memory_bandwidth'))  # pylint: disable=protected-access
  assert spec_bandwidth == pytest.approx(bandwidth, rel=0.01)
  assert g.hbm_bandwidth == pytest.approx(bandwidth, rel=1e-9)
  # jaxlib 0.10.2 rejects the field (named, removed, in the header).
  assert not re.search(r'^\s*collective_memory_granularity:', spec, re.MULTILINE)
  assert 'openxla/xla' in spec and 'Apache License' in spec  # Source and licence cited.
  # Dense tensor-core peaks: TF32 is half of bf16 on these parts (datasheets).
  assert g.peak_flops == pytest.approx(2 * g.peak_flops_tf32, rel=0.01)


def test_gpu_peaks_are_the_datasheets_dense_figures():
  # H100 / H200 SXM: "BF16 Tensor Core 1,979 TFLOPS*", "* With sparsity" (dense = half).
  assert gpu.GPUS['h100'].peak_flops == gpu.GPUS['h200'].peak_flops == 989.5e12
  assert gpu.GPUS['a100-80gb'].peak_flops == 312e12  # A100: 312 dense (624 sparse).


def test_allocator_memory_fraction_from_the_environment(monkeypatch):
  monkeypatch.delenv('XLA_CLIENT_MEM_FRACTION', raising=False)
  monkeypatch.delenv('XLA_PYTHON_CLIENT_MEM_FRACTION', raising=False)
  fraction, why = gpu.memory_fraction()
  assert fraction == 0.75 and 'default' in why
  monkeypatch.setenv('XLA_PYTHON_CLIENT_MEM_FRACTION', '.9')  # The deprecated name.
  assert gpu.memory_fraction()[0] == 0.9
  monkeypatch.setenv('XLA_CLIENT_MEM_FRACTION', '0.5')  # The new name wins, as in jaxlib.
  assert gpu.memory_fraction() == (0.5, 'XLA_CLIENT_MEM_FRACTION=0.5')
  for bad in ('abc', '1.5', '0'):
    monkeypatch.setenv('XLA_CLIENT_MEM_FRACTION', bad)
    with pytest.raises(targets.CompileTargetError, match='XLA_CLIENT_MEM_FRACTION'):
      gpu.memory_fraction()


def test_float32_models_use_the_tf32_peak():
  target = targets.Target(
      description='x', platform='gpu', device_kind='x', devices=[], num_slices=1,
      device_memory_bytes=1, memory_source='x', peak_flops=989.5e12, memory_bandwidth=1.0,
      figures_source='x', peak_flops_float32=494.5e12)
  assert target.peak_flops_for('float32') == 494.5e12
  assert target.peak_flops_for('bfloat16') == 989.5e12
  target.peak_flops_float32 = None  # TPU: float32 matmuls are one bf16 pass.
  assert target.peak_flops_for('float32') == 989.5e12


def test_gpu_nodes_are_not_slices():
  config = _config('h100x8')
  config.compile.num_slices = 2
  with pytest.raises(targets.CompileTargetError, match='2x8xh100'):
    targets.resolve_target(config.compile)


@pytest.mark.skipif(gpu.cuda_plugin_available(), reason='the CUDA plugin is installed here')
def test_gpu_topology_without_the_plugin_says_how_to_install_it():
  with pytest.raises(targets.CudaPluginMissingError,
                     match=r'pip install "jax\[cuda12\]==' + jax.__version__) as e:
    targets.resolve_target(_config('h100x8').compile)
  assert isinstance(e.value, errors.UserError) and '\n' not in str(e.value)
  assert 'separate virtual environment' in str(e.value)


def test_sweep_counts_gpu_devices_and_slots():
  from bench.compile_reports.__main__ import num_devices  # pylint: disable=import-outside-toplevel
  assert [num_devices(t) for t in ('h100x8', 'h200x8', '8x8xa100-80gb', 'v4-64', 'v5e-64')] == [
      8, 8, 64, 32, 64]


# --- Compiled for described GPUs (the CUDA plugin) -------------------------------------------


@functools.lru_cache(maxsize=None)
def _report(topology='h100x8', dtype='float32'):
  return aot.compile_step(_config(topology, dtype), '/nonexistent-workdir')


def _params():
  """The parameters of the model `train.run` would build (concretely, on the host)."""
  config = _config()
  hf_config = build.shape_hf_config(config, VOCAB, pad_id=1, bos_id=0, eos_id=2)
  model = muppet.build_model(config, hf_config, build.run_tasks(config).table,
                             rngs=nnx.Rngs(params=0, dropout=1))
  return nnx.split(model, nnx.Param, ...)[1]


@pytest.mark.slow
@needs_plugin
def test_h100_node_compiles_and_reports_the_device(monkeypatch):
  monkeypatch.delenv('XLA_CLIENT_MEM_FRACTION', raising=False)
  monkeypatch.delenv('XLA_PYTHON_CLIENT_MEM_FRACTION', raising=False)
  report = _report()
  assert report.platform == 'gpu' and report.device_kind == 'NVIDIA H100 80GB HBM3'
  assert report.num_devices == 8 and report.mesh == {'data': 8, 'model': 1}
  assert report.target.startswith('GPU h100x8 ')
  # JAX's allocator takes 0.75 of the 84,942,979,072 bytes the driver reports.
  assert report.device_memory_bytes == int(0.75 * 84_942_979_072)
  assert 'XLA_CLIENT_MEM_FRACTION' in report.device_memory_source
  assert report.fits is True and report.error is None
  m = report.memory
  params = _params()
  assert m.parameters == sum(np.asarray(x).nbytes for x in jax.tree.leaves(params))
  assert report.per_device_bytes == m.arguments + m.outputs + m.temps - m.aliases
  assert m.aliases >= m.parameters + m.optimizer_state  # The donated state, in place.
  # One gradient all-reduce per update (the same rule as on CPU and TPU: tests/test_compile.py):
  # at most every float32 parameter plus the metrics (loss, tokens, six [T] per-task arrays).
  collectives = {c.kind: c for c in report.collectives}
  assert set(collectives) == {'all-reduce'} and collectives['all-reduce'].count == 1
  assert collectives['all-reduce'].bytes <= m.parameters + 4 * (2 + 6 * 2)
  assert collectives['all-reduce'].bytes >= m.parameters // 2


@pytest.mark.slow
@needs_plugin
def test_gpu_flops_from_the_hlo_against_xla_cpu_cost_analysis():
  """XLA:GPU has no cost analysis; the report counts the GPU HLO with XLA's rules. References:
  the same step's XLA:CPU cost analysis (another compiler's program, XLA's own count) and the
  model formula. Both programs hold the same matmuls (1.845e6 FLOPs of dots per slot in each);
  their elementwise work differs with each backend's fusions (XLA:CPU duplicates more of it:
  725 multiply instructions to the GPU's 409), so the GPU count is at most XLA:CPU's and more
  than the formula's matmuls. The roofline then follows from the datasheet by hand (float32
  model: the TF32 peak)."""
  report = _report()
  local = _config('')
  local.mesh.data = 8  # The same 8-way data-parallel step on the 8 fake CPU devices.
  reference = aot.compile_step(local, '/nonexistent-workdir')
  assert report.model_flops_per_step == reference.model_flops_per_step
  assert report.model_flops_per_step < report.flops_per_step <= 1.01 * reference.flops_per_step
  assert report.flops_per_step >= 0.85 * reference.flops_per_step
  assert 0.5 * reference.bytes_accessed_per_step <= report.bytes_accessed_per_step
  assert report.bytes_accessed_per_step <= 1.1 * reference.bytes_accessed_per_step
  assert 'HLO counted' in report.flops_note
  x = report.roofline_xla  # From the counted HLO, as XLA's cost analysis would count it.
  assert x.peak_flops == 989e12 / 2 and x.memory_bandwidth == 3.35e12
  assert x.compute_seconds == pytest.approx(report.flops_per_step / (989e12 / 2))
  assert x.memory_seconds == pytest.approx(report.bytes_accessed_per_step / 3.35e12)
  assert x.step_seconds == max(x.compute_seconds, x.memory_seconds)
  assert 'nvidia.com' in x.source
  # The headline: the executable's count; a GPU's layouts name one memory space, so all of its
  # bytes are device-memory bytes.
  r = report.roofline
  assert report.hbm_bytes_per_step == pytest.approx(report.executable['bytes'])
  assert r.compute_seconds == pytest.approx(report.executable['flops'] / (989e12 / 2))
  assert r.memory_seconds == pytest.approx(report.hbm_bytes_per_step / 3.35e12)
  assert r.step_seconds == max(r.compute_seconds, r.memory_seconds)
  text = report_lib.format_report(report)
  assert 'NVIDIA H100 80GB HBM3' in text and ': fits' in text and 'HLO count' in text


@pytest.mark.slow
@needs_plugin
def test_two_nodes_and_other_gpus():
  two = _report('2x8xh100', 'bfloat16')
  assert two.num_devices == 16 and two.mesh == {'data': 16, 'model': 1}
  assert two.roofline.peak_flops == 989.5e12  # bf16 model: the bf16 peak.
  a100 = _report('a100-80gbx8')
  assert a100.device_kind == 'NVIDIA A100-SXM4-80GB' and a100.roofline.peak_flops == 156e12
  devices = targets.resolve_target(_config('2x8xh200').compile).devices
  assert [d.process_index for d in devices] == [0] * 8 + [1] * 8  # One host per node.
  assert devices[0].device_kind == 'NVIDIA H200 141GB HBM3e'


@pytest.mark.slow
@needs_plugin
def test_gpu_step_that_does_not_fit_gets_advice(monkeypatch):
  """XLA:GPU compiles a program whatever its size (it fails at run time); `fits` compares it
  with the allocator's share, here a tiny XLA_CLIENT_MEM_FRACTION."""
  monkeypatch.setenv('XLA_CLIENT_MEM_FRACTION', '0.000001')
  config = _config()
  config.compile.costs = False
  report = aot.compile_step(config, '/nonexistent-workdir')
  assert report.device_memory_bytes == int(0.000001 * 84_942_979_072)
  assert report.fits is False and report.error is None
  assert any('shard_moments' in a for a in report.advice)
  assert any('remat' in a for a in report.advice)
  assert 'DOES NOT FIT' in report_lib.format_report(report)


@pytest.mark.slow
@needs_plugin
def test_main_compile_mode_for_an_h100_node(tmp_path):
  overrides = [f'--config.model.{k}={v}' for k, v in (
      ('hidden_size', 32), ('num_layers', 1), ('num_heads', 2), ('intermediate_size', 64),
      ('vocab_size', 200))] + ["--config.data.tokenizer=''", '--config.data.rows=2',
                               '--config.data.length=16', '--config.data.max_examples=4',
                               '--config.compile.topology=h100x8', '--config.mesh.data=-1',
                               '--config.compile.costs=False']
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_PLATFORMS', 'XLA_FLAGS')}
  proc = subprocess.run(
      [sys.executable, '-m', 'muppet_jax.main', '--config', 'configs/demo.py', '--workdir',
       str(tmp_path), '--mode', 'compile', *overrides], cwd=REPO, capture_output=True,
      text=True, timeout=900, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / report_lib.REPORT_NAME) as f:
    report = json.load(f)
  assert report['platform'] == 'gpu' and report['num_devices'] == 8
  assert report['device_kind'] == 'NVIDIA H100 80GB HBM3' and report['fits'] is True
  assert 'NVIDIA H100 80GB HBM3' in proc.stderr and ': fits' in proc.stderr
  # Without JAX_PLATFORMS the compile keeps JAX's own backend on the CPU: no CUDA start-up.
  assert 'cuInit' not in proc.stderr
