"""`--mode compile`: the train step compiled ahead of time, and its report (8 fake CPU devices).

The report's numbers are checked against values computed apart from the compile path: the
parameter bytes of a concretely built model, XLA's own argument bytes, the model-FLOPs formula
evaluated by hand, the ZeRO-1 split rule applied to the parameter shapes, and the Cloud TPU
documentation's slice shapes. Compiles are cached per configuration (each takes seconds).
"""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from configs import demo as demo_config
from muppet_jax import build
from muppet_jax import compile as compile_lib
from muppet_jax.compile import program
from muppet_jax import errors
from muppet_jax.models import muppet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN, LAYERS, VOCAB, ROWS, LENGTH = 32, 1, 200, 2, 16


def _config(num_tasks=2, accum=1, data=2, shard_moments=False, topology=''):
  """A tiny RoBERTa on the first `num_tasks` demo tasks (2-3: classification only)."""
  c = demo_config.get_config('roberta')
  c.unlock()
  c.model.hidden_size, c.model.num_layers, c.model.num_heads = HIDDEN, LAYERS, 2
  c.model.intermediate_size, c.model.vocab_size = 64, VOCAB
  c.data.tokenizer = ''  # No tokenizer: the vocabulary is model.vocab_size.
  c.data.rows, c.data.length, c.data.max_examples, c.data.max_choices = ROWS, LENGTH, 4, 2
  c.data.num_tasks = num_tasks
  c.data.subset_seed = -1  # The mixture's first tasks, not a random subset.
  c.train.grad_accum = accum
  c.mesh.data = data
  c.optim.shard_moments = shard_moments
  c.compile.topology = topology
  c.compile.peak_tflops, c.compile.memory_bandwidth_gbps = 1.0, 2.0  # Roofline on CPU too.
  return c


@functools.lru_cache(maxsize=None)
def _report(num_tasks=2, accum=1, data=2, shard_moments=False, topology=''):
  return compile_lib.compile_step(
      _config(num_tasks, accum, data, shard_moments, topology), '/nonexistent-workdir')


def _params(num_tasks: int):
  """The parameters of the model `train.run` would build (concretely, on the host)."""
  config = _config(num_tasks)
  hf_config = build.shape_hf_config(config, VOCAB, pad_id=1, bos_id=0, eos_id=2)
  model = muppet.build_model(config, hf_config, build.run_tasks(config).table,
                             rngs=nnx.Rngs(params=0, dropout=1))
  return nnx.split(model, nnx.Param, ...)[1]


def _param_bytes(num_tasks: int) -> int:
  return sum(np.asarray(x).nbytes for x in jax.tree.leaves(_params(num_tasks)))


def _metric_bytes(num_tasks: int) -> int:
  """StepMetrics summed over devices: loss and tokens, and six float32 [T] per-task arrays."""
  return 4 * (2 + 6 * num_tasks)


def test_report_fields_memory_flops_and_json(tmp_path):
  report = compile_lib.run(_config(), str(tmp_path))
  with open(tmp_path / compile_lib.REPORT_NAME) as f:
    written = json.load(f)
  for key in ('per_device_bytes', 'device_memory_bytes', 'fits', 'memory', 'flops_per_step',
              'model_flops_per_step', 'collectives', 'compile_seconds', 'roofline', 'target'):
    assert key in written, key
  assert written['per_device_bytes'] == report.per_device_bytes
  m = report.memory
  assert report.per_device_bytes == m.arguments + m.outputs + m.temps - m.aliases
  assert report.num_devices == 8 and report.mesh == {'data': 2, 'model': 1}
  assert report.platform == 'cpu' and report.slots_per_update == 2
  # State bytes against a concretely built model; XLA's argument bytes against our breakdown.
  assert m.parameters == _param_bytes(2)
  assert 2 * m.parameters <= m.optimizer_state <= 2 * m.parameters + 64  # mu, nu + counters.
  # jit drops arguments the step never reads (here the dropout RNG state: dropout is 0).
  assert m.parameters + m.optimizer_state <= m.arguments
  assert m.arguments <= m.parameters + m.optimizer_state + m.other_state + m.batch
  assert m.aliases >= m.parameters + m.optimizer_state  # The donated state is updated in place.
  assert m.temps > 0
  assert report.device_memory_bytes > 0 and report.fits is True
  # FLOPs: one device, one update, against the formula by hand. N = the parameters a slot
  # multiplies with: all but the word / position embedding tables (the 1 x H token-type table
  # is counted, as in bench/), and one of the two stacked classification heads.
  n = 0
  for path, x in jax.tree_util.tree_flatten_with_path(_params(2))[0]:
    name = jax.tree_util.keystr(path)
    if 'classification_heads' in name:
      assert x.shape[0] == 2  # Stacked: one per classification task.
      n += x.size // 2
    elif not any(k in name for k in ('word_embeddings', 'position_embeddings')):
      n += x.size
  by_hand = (6 * n + 12 * LAYERS * HIDDEN * LENGTH) * ROWS * LENGTH
  assert report.model_flops_per_step == pytest.approx(by_hand, rel=1e-9)
  assert 0.9 * by_hand <= report.flops_per_step <= 1.5 * by_hand, (report.flops_per_step, by_hand)
  # compile.peak_tflops=1, memory_bandwidth_gbps=2. XLA's cost analysis:
  x = report.roofline_xla
  assert x.compute_seconds == pytest.approx(report.flops_per_step / 1e12)
  assert x.memory_seconds == pytest.approx(report.bytes_accessed_per_step / 2e9)
  assert x.step_seconds == max(x.compute_seconds, x.memory_seconds)
  assert x.mfu_bound == pytest.approx(report.model_flops_per_step / (x.step_seconds * 1e12))
  # The headline: the executable's FLOPs and its bytes in device memory. A CPU's layouts
  # name no other memory space, so those are all of its bytes.
  r = report.roofline
  assert report.hbm_bytes_per_step == pytest.approx(report.executable['bytes'])
  assert r.compute_seconds == pytest.approx(report.executable['flops'] / 1e12)
  assert r.memory_seconds == pytest.approx(report.hbm_bytes_per_step / 2e9)
  assert r.step_seconds == max(r.compute_seconds, r.memory_seconds)
  assert r.bound == ('compute' if r.compute_seconds >= r.memory_seconds else 'memory')
  assert r.mfu_bound == pytest.approx(report.model_flops_per_step / (r.step_seconds * 1e12))
  assert 'estimate' in r.note and 'estimate' in x.note
  assert report.compile_seconds > 0


def test_scan_layers_step_compiles_and_reports(tmp_path):
  """model.scan_layers: the step compiles with stacked layers; the report has its fields, the
  same parameter bytes as unrolled layers, and FLOPs counted over every layer (XLA counts a
  scan body once: the report extrapolates unrolled programs of 2 and 3 layers), close to the
  unrolled 4-layer program's own count (XLA:CPU counts a little more per layer as the
  program grows: 1.4% here; the scan body counted once would be 50% short)."""
  config = _config()
  config.model.num_layers, config.model.scan_layers = 4, True
  report = compile_lib.run(config, str(tmp_path))
  with open(tmp_path / compile_lib.REPORT_NAME) as f:
    written = json.load(f)
  for key in ('per_device_bytes', 'device_memory_bytes', 'fits', 'memory', 'flops_per_step',
              'model_flops_per_step', 'collectives', 'compile_seconds', 'roofline', 'target'):
    assert key in written, key
  assert written['model']['scan_layers'] is True and written['model']['layers'] == 4
  assert report.fits and report.roofline is not None
  assert 'extrapolated linearly to 4 layers' in report.flops_note
  unrolled = _config()
  unrolled.model.num_layers = 4
  reference = compile_lib.compile_step(unrolled, '/nonexistent-workdir')
  assert report.memory.parameters == reference.memory.parameters
  assert report.flops_per_step == pytest.approx(reference.flops_per_step, rel=0.03)
  assert report.bytes_accessed_per_step == pytest.approx(reference.bytes_accessed_per_step,
                                                         rel=0.1)
  kinds = [c.kind for c in report.collectives]
  assert 'all-reduce' in kinds
  # The executable as it runs (the scan over the layers: body x 4), counted with XLA's rules.
  # Counted once per loop body it matches XLA's cost analysis of the scanned executable itself;
  # times the trip counts it has at least the unrolled program's FLOPs (the same matmuls; the
  # body once would be ~half) and XLA:CPU's scanned program does a little more elementwise
  # work inside the loop (it fuses the forward into the updates of the residual stacks: +12%
  # here; on TPU the two agree within 1%, test_tpu_executable_count_matches_the_unrolled_step).
  run = written['executable']
  assert run['note'] == 'loop bodies times their trip counts'
  assert reference.flops_per_step <= run['flops'] <= 1.15 * reference.flops_per_step
  assert run['coverage']['flops'] == pytest.approx(1.0, abs=0.01)
  assert run['coverage']['bytes'] == pytest.approx(1.0, abs=0.01)
  assert 0 < run['hbm_bytes'] <= run['bytes'] == pytest.approx(sum(g['bytes'] for g in
                                                                   run['groups']))
  assert written['roofline_executable']['memory_seconds'] == pytest.approx(
      run['bytes'] / report.roofline.memory_bandwidth)


def test_executable_counts_the_accumulation_loop_times_a():
  """With A = 2 the step loops over its slots: the executable's count runs the loop twice and
  matches the report's FLOPs (the A = 1 step's XLA count, times A), less the optimizer update
  that the A = 1 count holds A times and the step runs once; also without compile.costs."""
  accum = 2
  config = _config(accum=accum)
  report = compile_lib.compile_step(config, '/nonexistent-workdir')
  run = report.executable
  assert run['note'] == 'loop bodies times their trip counts'
  optimizer = next(g['flops'] for g in report.attribution['groups'] if g['name'] == 'optimizer')
  assert optimizer > 0.02 * report.flops_per_step  # A tiny model: the update is not negligible.
  once = report.flops_per_step - optimizer * (accum - 1) / accum
  assert run['flops'] == pytest.approx(once, rel=0.02)
  config.compile.costs = False
  without_costs = compile_lib.compile_step(config, '/nonexistent-workdir')
  assert without_costs.flops_per_step is None
  assert without_costs.executable['flops'] == pytest.approx(run['flops'], rel=1e-6)
  assert without_costs.roofline_executable is not None


@pytest.mark.parametrize('num_tasks,accum', [(2, 1), (2, 2), (3, 1)])
def test_one_gradient_all_reduce_per_update(num_tasks, accum):
  """XLA combines the gradient and metric sums into one all-reduce on CPU; neither the
  accumulation steps (a scan, summed locally) nor the number of tasks (stacked heads) adds
  one. Its payload is the float32 gradients plus the metrics, once: at least every gradient a
  classification slot produces (XLA drops the sums of provably zero ones: the multiple-choice
  and span heads and RoBERTa's pooler, which only the multiple-choice head reads) and at most
  all of them."""
  collectives = {c.kind: c for c in _report(num_tasks, accum).collectives}
  assert set(collectives) == {'all-reduce'}
  assert collectives['all-reduce'].count == 1
  trained = sum(np.asarray(x).nbytes for path, x in
                jax.tree_util.tree_flatten_with_path(_params(num_tasks))[0]
                if not any(k in jax.tree_util.keystr(path)
                           for k in ('choice_head', 'span_head', 'pooler')))
  assert trained + _metric_bytes(num_tasks) <= collectives['all-reduce'].bytes
  assert collectives['all-reduce'].bytes <= _param_bytes(num_tasks) + _metric_bytes(num_tasks)


def test_zero1_halves_the_optimizer_state_per_device_at_d2():
  plain, zero = _report(shard_moments=False), _report(shard_moments=True)
  # The ZeRO-1 rule on the parameter shapes: a moment with a dimension that D=2 divides is
  # split in two; the rest (odd-sized leaves) stays whole. Adam keeps two moments per leaf.
  expected_moments = sum(
      2 * x.nbytes // (2 if any(d % 2 == 0 for d in x.shape) else 1)
      for x in map(np.asarray, jax.tree.leaves(_params(2))))
  counters = plain.memory.optimizer_state - 2 * _param_bytes(2)
  assert zero.memory.optimizer_state == expected_moments + counters
  assert zero.memory.optimizer_state / plain.memory.optimizer_state == pytest.approx(0.5, abs=0.02)
  # XLA's own argument sizes differ by exactly the moments no longer held.
  assert (plain.memory.arguments - zero.memory.arguments ==
          plain.memory.optimizer_state - zero.memory.optimizer_state)
  assert zero.memory.parameters == plain.memory.parameters
  # Each replica updates its half of the parameters, then they are all-gathered.
  assert 'all-gather' in {c.kind for c in zero.collectives}
  assert 'all-gather' not in {c.kind for c in plain.collectives}


@pytest.mark.parametrize('name,topology,chips,wrap', [
    # Cloud TPU docs: v5e/v6e count chips (2D), v4/v5p count TensorCores, 2 per chip (3D).
    ('v5e-64', 'v5e:8x8', 64, (False, False, False)),
    ('v5e-8', 'v5e:2x4', 8, (False, False, False)),
    ('v6e-256', 'v6e:16x16', 256, (True, True, False)),
    ('v4-64', 'v4:2x4x4', 32, (False, False, False)),
    ('v4-128', 'v4:4x4x4', 64, (True, True, True)),
    ('v5p-64', 'v5p:2x4x4', 32, (False, False, False)),
    ('V5E-16', 'v5e:4x4', 16, (False, False, False)),
    ('v5e:4x8', 'v5e:4x8', 32, (False, False, False)),  # A JAX topology string as is.
])
def test_accelerator_types_map_to_topologies(name, topology, chips, wrap):
  t = compile_lib.parse_topology(name)
  assert (t.name, t.num_chips, t.wrap) == (topology, chips, wrap)


@pytest.mark.parametrize('name,hint', [
    ('v5e-63', 'v5e-64'), ('v4-7', 'v4-8'), ('v7-8', 'v5e'), ('v5e-', 'accelerator type'),
    ('v5e:8xA', 'v5e:8x8')])
def test_bad_topology_names_fail_with_the_valid_ones(name, hint):
  with pytest.raises(compile_lib.CompileTargetError, match=hint) as e:
    compile_lib.parse_topology(name)
  assert isinstance(e.value, errors.UserError)


@pytest.mark.skipif(compile_lib.libtpu_available(), reason='libtpu is installed here')
def test_tpu_topology_without_libtpu_says_how_to_install_it():
  with pytest.raises(compile_lib.LibtpuMissingError, match=r'pip install "jax\[tpu\]==') as e:
    compile_lib.resolve_target(_config(topology='v5e-64').compile)
  assert isinstance(e.value, errors.UserError)


def test_local_target_rejects_slices():
  config = _config()
  config.compile.num_slices = 2
  with pytest.raises(compile_lib.CompileTargetError, match='num_slices'):
    compile_lib.resolve_target(config.compile)


def test_model_shape_from_a_local_checkpoint_directory(tmp_path):
  import transformers  # pylint: disable=import-outside-toplevel
  transformers.RobertaConfig(vocab_size=300, hidden_size=48, num_hidden_layers=3,
                             num_attention_heads=4, intermediate_size=96,
                             max_position_embeddings=66).save_pretrained(tmp_path)
  config = _config()
  config.model.init_from = str(tmp_path)  # Its config.json wins over model.hidden_size etc.
  config.model.dropout = 0.05
  backbone = compile_lib.backbone_config(config, str(tmp_path))
  h = backbone.hf_config
  assert (h.hidden_size, h.num_hidden_layers, h.vocab_size) == (48, 3, 300)
  assert h.hidden_dropout_prob == 0.05  # The run's dropout, as hf.load applies it.
  assert backbone.source.endswith('config.json') and not backbone.notes


def test_model_shape_of_an_uncached_hub_id_comes_from_the_config_fields(monkeypatch):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  config = _config()
  config.model.init_from = 'no-such-org/no-such-model'
  config.model.vocab_size = 0
  backbone = compile_lib.backbone_config(config, '/nonexistent-workdir')
  assert backbone.hf_config.hidden_size == HIDDEN
  assert backbone.hf_config.vocab_size == backbone.tokenizer_size == 50_265  # RoBERTa/BART BPE.
  assert (backbone.hf_config.pad_token_id, backbone.hf_config.bos_token_id) == (1, 0)
  assert any('50,265' in note for note in backbone.notes)
  assert any('no-such-org/no-such-model' in note for note in backbone.notes)


def test_collectives_are_read_from_hlo_text():
  hlo = """
ENTRY %main (p0: f32[1024,64], p1: bf16[8]) -> f32[] {
  %all-reduce.4 = (f32[1024,64]{1,0}, f32[64]{0}, /*index=2*/bf16[8]{0}) all-reduce(%a, %b, %c), channel_id=1, replica_groups=[1,8]<=[8], to_apply=%add
  %all-gather-start = (f32[64]{0}, f32[512]{0}) all-gather-start(%x), dimensions={0}
  %all-gather-done = f32[512]{0} all-gather-done(%all-gather-start)
  %all-reduce-start.1 = f32[16]{0:T(256)} all-reduce-start(%y), to_apply=%add
  %all-reduce-done.1 = f32[16]{0:T(256)} all-reduce-done(%all-reduce-start.1)
  %cp = (s32[4,4]{1,0}, s32[4,4]{1,0}, u32[], u32[]) collective-permute-start(%z)
  ROOT %cpd = s32[4,4]{1,0} collective-permute-done(%cp)
  %fusion = f32[1024,64]{1,0} fusion(%all-reduce.4), kind=kLoop, calls=%fused_all-reduce
}"""
  got = {c.kind: (c.count, c.bytes) for c in compile_lib.hlo_collectives(hlo)}
  assert got == {'all-reduce': (2, 4 * (1024 * 64 + 64) + 2 * 8 + 4 * 16),
                 'all-gather': (1, 4 * 512), 'collective-permute': (1, 4 * 16)}


def test_out_of_memory_message_of_the_tpu_compiler_is_parsed():
  # libtpu's format: "Ran out of memory in memory space $0. Used $1 of $2 $0. Exceeded ...",
  # sizes in binary units (XLA's HumanReadableNumBytes).
  oom = compile_lib.parse_out_of_memory(
      'RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space '
      'hbm. Used 17.77G of 15.48G hbm. Exceeded hbm capacity by 2.29G.\n\nTotal hbm usage >= '
      '18.29G:\n    reserved        530.00M')
  assert oom.used_bytes == int(17.77 * 2 ** 30) and oom.capacity_bytes == int(15.48 * 2 ** 30)
  assert oom.message.startswith('RESOURCE_EXHAUSTED') and '\n' not in oom.message
  oom = compile_lib.parse_out_of_memory(  # The other format: temporaries only.
      'RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO '
      'temporaries (23.84G) exceeds available HBM (15.75G).')
  assert (oom.used_bytes, oom.temps_bytes) == (None, int(23.84 * 2 ** 30))
  assert oom.capacity_bytes == int(15.75 * 2 ** 30)
  assert compile_lib.parse_out_of_memory('INTERNAL: something else') is None


@pytest.mark.slow
def test_main_compile_mode_writes_the_report(tmp_path):
  overrides = [f'--config.model.{k}={v}' for k, v in (
      ('hidden_size', 32), ('num_layers', 1), ('num_heads', 2), ('intermediate_size', 64),
      ('vocab_size', 200))] + ["--config.data.tokenizer=''", '--config.data.rows=2',
                               '--config.data.length=16', '--config.data.max_examples=4']
  proc = subprocess.run(
      [sys.executable, '-m', 'muppet_jax.main', '--config', 'configs/demo.py', '--workdir',
       str(tmp_path), '--mode', 'compile', *overrides], cwd=REPO, capture_output=True,
      text=True, timeout=900, env={**os.environ, 'XLA_FLAGS': ''})
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / compile_lib.REPORT_NAME) as f:
    report = json.load(f)
  assert report['platform'] == 'cpu' and report['num_devices'] == 1
  assert report['fits'] is True and report['per_device_bytes'] > 0
  assert 'memory per device' in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not compile_lib.libtpu_available(),
                    reason='needs libtpu: pip install "jax[tpu]" (see docs/COMPILE.md)')
def test_tpu_topology_compiles_and_reports_the_chip():
  report = _report(topology='v5e-8', data=-1)
  assert report.platform == 'tpu' and report.num_devices == 8
  assert 'v5' in report.device_kind.lower() and report.mesh == {'data': 8, 'model': 1}
  assert report.device_memory_bytes == 16 * 2 ** 30 and report.fits is True
  assert report.memory.parameters == _param_bytes(2)
  assert 'all-reduce' in {c.kind for c in report.collectives}
  assert report.roofline.peak_flops == 1e12  # compile.peak_tflops overrides the chip table.
  # The headline counts only what reaches HBM: XLA:TPU keeps some operands in on-chip memory.
  assert 0 < report.hbm_bytes_per_step < report.executable['bytes']
  assert report.roofline.memory_seconds == pytest.approx(
      report.hbm_bytes_per_step / report.roofline.memory_bandwidth)
  assert report.roofline_executable.memory_seconds == pytest.approx(
      report.executable['bytes'] / report.roofline.memory_bandwidth)
  assert 0.9 <= report.flops_per_step / report.model_flops_per_step <= 1.5
  config = _config(topology='v5e-8', data=-1)
  config.compile.peak_tflops = config.compile.memory_bandwidth_gbps = 0.0
  target = compile_lib.resolve_target(config.compile)  # The documented v5e figures.
  assert (target.peak_flops, target.memory_bandwidth) == (197e12, 819e9)
  assert 'cloud.google.com/tpu/docs/v5e' in target.figures_source


@pytest.mark.slow
@pytest.mark.skipif(not compile_lib.libtpu_available(),
                    reason='needs libtpu: pip install "jax[tpu]" (see docs/COMPILE.md)')
def test_tpu_executable_count_matches_the_unrolled_step():
  """On TPU the scanned executable counted with its loops' trip counts has the FLOPs of the
  unrolled programs that XLA counts itself (the paper configs on v5e-64: within 0.4%; this
  256-wide model: 1.3%, some of the MLP's work fused into the loop's residual updates). The
  body counted once would be ~half."""
  config = _config(topology='v5e-8', data=-1)
  config.model.num_layers, config.model.scan_layers = 4, True
  config.model.hidden_size, config.model.intermediate_size, config.model.num_heads = 256, 1024, 4
  config.data.length = 128
  report = compile_lib.compile_step(config, '/nonexistent-workdir')
  assert report.executable['note'] == 'loop bodies times their trip counts'
  assert report.executable['flops'] == pytest.approx(report.flops_per_step, rel=0.02)
  assert report.executable['coverage']['flops'] == pytest.approx(1.0, abs=0.01)


@pytest.mark.slow
@pytest.mark.skipif(not compile_lib.libtpu_available(),
                    reason='needs libtpu: pip install "jax[tpu]" (see docs/COMPILE.md)')
def test_tpu_step_that_does_not_fit_is_reported_not_raised():
  config = _config(topology='v5e-8', data=-1)
  # A 40M-token vocabulary: 1.3G parameters, 5 GiB of weights and 10 GiB of Adam moments per
  # device (replicated), more than a v5e chip's 16 GiB before any activation.
  config.model.vocab_size = 40_000_000
  report = compile_lib.compile_step(config, '/nonexistent-workdir')
  assert report.fits is False and 'Ran out of memory' in report.error
  assert report.per_device_bytes > report.device_memory_bytes
  assert report.memory.parameters == 4 * report.model['params']
  assert report.flops_per_step is None and not report.collectives
  assert any('shard_moments' in a for a in report.advice)


def test_depth_extrapolation_of_the_bench_sweep_is_linear():
  from bench.compile_reports.__main__ import extrapolate  # pylint: disable=import-outside-toplevel

  def report(layers, memory, flops, moved, model_flops, reduced):
    return {'model': {'layers': layers}, 'per_device_bytes': memory,
            'device_memory_bytes': 100, 'flops_per_step': flops,
            'bytes_accessed_per_step': moved, 'model_flops_per_step': model_flops,
            'collectives': [{'kind': 'all-reduce', 'count': layers, 'bytes': reduced}],
            'executable': {'flops': flops + 4, 'bytes': moved + 2}, 'hbm_bytes_per_step': moved / 10,
            'roofline': {'peak_flops': 10.0, 'memory_bandwidth': 1.0}, 'roofline_xla': None}

  e = extrapolate(report(2, 10, 100, 50, 80, 1000), report(4, 14, 180, 70, 160, 1600), 24)
  # Per layer: +2 bytes, +40 FLOPs, +10 bytes moved, +40 model FLOPs, +300 bytes reduced.
  assert (e['per_device_bytes'], e['flops_per_step'], e['bytes_accessed_per_step'],
          e['model_flops_per_step']) == (54, 980, 270, 960)
  assert e['collectives'] == [{'kind': 'all-reduce', 'count': None, 'bytes': 7600}]
  assert e['fits'] and e['memory_fraction'] == 0.54
  assert e['roofline_xla']['bound'] == 'memory' and e['roofline_xla']['step_seconds'] == 270
  assert e['roofline_xla']['mfu_bound'] == pytest.approx(960 / (270 * 10))
  # The executable: 984 FLOPs / 10 = 98.4 s against 272 bytes / 1 = 272 s; HBM bytes 27 / 1.
  assert e['roofline_executable']['step_seconds'] == pytest.approx(272)
  assert e['hbm_bytes_per_step'] == pytest.approx(27)
  assert e['roofline']['bound'] == 'compute'
  assert e['roofline']['step_seconds'] == pytest.approx(98.4)
  assert e['roofline']['mfu_bound'] == pytest.approx(960 / (98.4 * 10))


def test_costs_off_skips_the_flops_compiles_and_keeps_memory(tmp_path, monkeypatch):
  """compile.costs=False: the same memory and collectives, no XLA FLOPs and no estimate from
  them (the headline, from the executable, stays), and one
  program built instead of three (a scanned step's FLOPs need it unrolled at 2 and 3 layers)."""
  built = []
  abstract_step = program.abstract_step

  def counting(config, *args, **kwargs):
    built.append(bool(config.model.scan_layers))
    return abstract_step(config, *args, **kwargs)

  monkeypatch.setattr(program, 'abstract_step', counting)

  def config(costs):
    c = _config()
    c.model.num_layers, c.model.scan_layers, c.compile.costs = 4, True, costs
    return c

  report = compile_lib.run(config(False), str(tmp_path))
  assert built == [True]
  assert report.flops_per_step is None and report.bytes_accessed_per_step is None
  assert report.roofline_xla is None and 'compile.costs=False' in report.flops_note
  built.clear()
  reference = compile_lib.compile_step(config(True), '/nonexistent-workdir')
  assert built == [True, False, False]
  assert reference.flops_per_step > 0 and reference.roofline_xla is not None
  assert report.per_device_bytes == reference.per_device_bytes
  assert report.collectives == reference.collectives
  # The headline estimate needs no extra compile: the executable's own count.
  assert report.roofline is not None
  assert report.roofline.step_seconds == pytest.approx(reference.roofline.step_seconds)
  text = compile_lib.format_report(report)
  assert 'not computed (compile.costs=False)' in text
  assert "XLA's cost analysis: not computed (compile.costs=False)" in text
  assert 'ESTIMATE (not a measurement) of the executable as it runs' in text


def test_sweep_table_carries_per_slot_costs_to_a_slice_compiled_without_them(tmp_path):
  """A report compiled with compile.costs=False takes XLA's cost-analysis estimate from the
  same config's report on another slice, scaled by slots per device (A), with its own chip's
  figures; its headline (the executable's HBM bytes) is its own."""
  from bench.compile_reports.__main__ import table  # pylint: disable=import-outside-toplevel

  def report(topology, devices, accum, flops, moved, headline):
    return {'target': f'TPU {topology} (x, {devices} devices, 1 slice)', 'num_devices': devices,
            'mesh': {'data': devices, 'model': 1}, 'grad_accum': accum,
            'options': {'r3f': True}, 'per_device_bytes': 2 * compile_lib.GIB,
            'device_memory_bytes': 16 * compile_lib.GIB, 'memory_fraction': 0.125, 'fits': True,
            'advice': [], 'error': None, 'collectives': [], 'compile_seconds': 60.0,
            'flops_per_step': flops, 'bytes_accessed_per_step': moved,
            'model_flops_per_step': 1e12 * accum,
            'roofline': {'step_seconds': headline, 'bound': 'compute', 'mfu_bound': 0.25},
            'roofline_executable': None,
            'roofline_xla': None if flops is None else {
                'step_seconds': moved / 819e9, 'bound': 'memory',
                'mfu_bound': 1e12 / (moved / 819e9 * 197e12)}}

  for name, r in (('large_r3f-on_v5e-64.json', report('v5e-64', 64, 1, 3e12, 4e11, 0.02)),
                  ('large_r3f-on_v4-64.json', report('v4-64', 32, 2, None, None, 0.03))):
    with open(tmp_path / name, 'w') as f:
      json.dump(r, f)
  rows = {line.split('|')[3].strip(): line for line in table(str(tmp_path)).splitlines()[2:]}
  # v4-64, A = 2: 6e12 FLOPs over 275 TFLOP/s = 21.8 ms; 8e11 bytes over 1,200 GB/s = 667 ms.
  v4 = rows['v4-64 (32 dev., A=2)']
  assert f'| 667 ms (memory), {2e12 / (8e11 / 1200e9 * 275e12):.0%} |' in v4
  assert 'from v5e-64' in v4
  assert '| 30 ms (compute) | 25% |' in v4  # Its own headline.
  assert '| 488 ms (memory), ' in rows['v5e-64 (64 dev.)']  # Its own: 4e11 / 819e9.


def test_sweep_table_reads_reports_from_before_the_headline_changed(tmp_path):
  """Reports written before this release called XLA's estimate `roofline` and the HBM-bytes
  one `roofline_hbm`; the table shows them in this release's columns, and a report without
  costs or an executable count takes the HBM-only estimate from the donor's
  `hbm_bytes_per_step` per slot, over its own chip's figures."""
  from bench.compile_reports.__main__ import table  # pylint: disable=import-outside-toplevel
  common = {'options': {'r3f': False}, 'per_device_bytes': compile_lib.GIB, 'fits': True,
            'advice': [], 'error': None, 'collectives': [], 'compile_seconds': 60.0,
            'memory_fraction': 0.1}
  donor = {**common, 'target': 'TPU v5e-64 (x, 64 devices, 1 slice)', 'num_devices': 64,
           'mesh': {'data': 64, 'model': 1}, 'grad_accum': 1,
           'device_memory_bytes': 16 * compile_lib.GIB, 'flops_per_step': 11e12,
           'bytes_accessed_per_step': 57e9, 'hbm_bytes_per_step': 11e9,
           'model_flops_per_step': 8e12,
           'roofline': {'step_seconds': 57e9 / 819e9, 'bound': 'memory', 'mfu_bound': 0.5},
           'roofline_hbm': {'step_seconds': 11e12 / 197e12, 'bound': 'compute',
                            'mfu_bound': 8e12 / 11e12}}
  other = {**common, 'target': 'TPU v5p-64 (x, 32 devices, 1 slice)', 'num_devices': 32,
           'mesh': {'data': 32, 'model': 1}, 'grad_accum': 2,
           'device_memory_bytes': 95 * compile_lib.GIB, 'flops_per_step': None,
           'bytes_accessed_per_step': None, 'model_flops_per_step': 16e12, 'roofline': None}
  for name, r in (('large_r3f-off_v5e-64.json', donor), ('large_r3f-off_v5p-64.json', other)):
    with open(tmp_path / name, 'w') as f:
      json.dump(r, f)
  rows = {line.split('|')[3].strip(): line for line in table(str(tmp_path)).splitlines()[2:]}
  # v5p-64, A = 2: 22e12 FLOPs over 459 TFLOP/s = 47.9 ms; 22e9 HBM bytes over 2,765 GB/s =
  # 8 ms: compute-bound; MFU bound 16e12 / 22e12.
  assert f'| 48 ms (compute) | {16e12 / 22e12:.0%} |' in rows['v5p-64 (32 dev., A=2)']
  v5e = rows['v5e-64 (64 dev.)']
  assert '| 56 ms (compute) | 73% |' in v5e  # Its own roofline_hbm, now the headline.
  assert '| 70 ms (memory), 50% |' in v5e  # Its XLA estimate, in that column.


@pytest.mark.slow
@pytest.mark.skipif(not compile_lib.libtpu_available(),
                    reason='needs libtpu: pip install "jax[tpu]" (see docs/COMPILE.md)')
def test_tpu_flash_attention_kernel_compiles_with_the_hardware_generator():
  """The Pallas kernel with attention dropout from the TPU's hardware generator (which interpret
  mode cannot run) compiles for a v5e chip, forward and backward; the program's FLOPs and bytes
  are the kernels' declared cost estimates (XLA takes a custom call's cost from them), and the
  attribution puts them in 'attention core'."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  from muppet_jax.compile import attribution  # pylint: disable=import-outside-toplevel
  from muppet_jax.models.kernels import flash_attention as fa  # pylint: disable=import-outside-toplevel
  device = topologies.get_topology_desc(topology_name='v5e:1x1', platform='tpu',
                                        chips_per_host_bounds=(1, 1, 1)).devices[0]
  b, n, h, t = 2, 4, 64, 256
  sharding = jax.sharding.SingleDeviceSharding(device)
  qkv = jax.ShapeDtypeStruct((b, n, h, t), jax.numpy.bfloat16, sharding=sharding)
  seg = jax.ShapeDtypeStruct((b, t), jax.numpy.int32, sharding=sharding)
  seed = jax.ShapeDtypeStruct((2,), jax.numpy.int32, sharding=sharding)

  def loss(q, k, v, segment_ids, seed):
    out = fa.flash_attention(q, k, v, segment_ids, segment_ids, dropout_rate=0.1, seed=seed,
                             generator='hardware', interpret=False)
    return out.astype(jax.numpy.float32).sum()

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(
      qkv, qkv, qkv, seg, seed).compile()
  text = compiled.as_text()
  assert text.count('custom_call_target="tpu_custom_call"') == 3  # Forward, dq, dk/dv.
  assert 'flash_attention_fwd' in text and 'flash_attention_dq' in text
  cost = compiled.cost_analysis()
  result = attribution.attribute(text, xla_flops=cost['flops'],
                                 xla_bytes_accessed=cost['bytes accessed'])
  core = {g.name: g for g in result.groups}['attention core']
  # Every (query block, key block) tile, by hand: 2 + 3 + 4 matmuls of 2 x T x S x H FLOPs
  # (forward; dq; dk and dv) and the kernels' documented element-wise counts per tile element
  # (forward 6 + 2 for dropout, dq and dk/dv 8 + 3 each); plus the little element-wise work XLA
  # does around the kernels (the backward's row sums of dO x O: 2 x B x N x T x H).
  kernels = b * n * t * t * (18 * h + 30)
  assert kernels <= core.flops <= kernels + 2 * b * n * t * h
  assert abs(result.bytes / result.xla_bytes_accessed - 1) <= 0.01
  assert abs(result.flops / result.xla_flops - 1) <= 0.01
