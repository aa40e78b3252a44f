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
outputs, temporaries, aliases), `cost_analysis()` (FLOPs, bytes accessed), and the collectives
of the optimized HLO. The roofline step time is an estimate from the chip's documented peak
figures (`CHIPS`), not a measurement. docs/COMPILE.md explains every field.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import importlib.util
import json
import math
import os
import re
import time

import jax
import ml_collections
import numpy as np
import transformers
from absl import logging
from flax import nnx

from muppet_jax import build
from muppet_jax import errors
from muppet_jax import sharding
from muppet_jax import train
from muppet_jax import workdir as workdir_lib
from muppet_jax.data.features import BatchShape
from muppet_jax.models import muppet

REPORT_NAME = 'compile_report.json'
GIB = 1024 ** 3

# The RoBERTa/BART byte-level BPE (roberta-base/large, bart-base/large tokenizers).
ROBERTA_BART_VOCAB_SIZE = 50_265
_ROBERTA_BART_IDS = dict(pad_id=1, bos_id=0, eos_id=2)  # <pad>, <s>, </s>.


class CompileTargetError(errors.UserError):
  """`compile.topology` / `compile.num_slices` name no target this machine can compile for."""


class LibtpuMissingError(CompileTargetError):
  """A TPU topology was asked for but libtpu (the TPU compiler) is not installed."""


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
        f'{", ".join(sorted(CHIPS))} (e.g. v5e-64, v4-64, v5p-64, v6e-64 or "v5e:8x8")')
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


def libtpu_available() -> bool:
  """True when the TPU compiler can be loaded (the `libtpu` package is installed)."""
  return importlib.util.find_spec('libtpu') is not None


def resolve_target(compile_config: ml_collections.ConfigDict) -> Target:
  """The devices of `compile.topology` ('' = this machine's), with memory and peak figures.

  Raises:
    LibtpuMissingError: a TPU topology without libtpu installed (the message says how to get it).
    CompileTargetError: an unknown topology or a bad `compile.num_slices`.
  """
  num_slices = int(compile_config.num_slices)
  if num_slices < 1:
    raise CompileTargetError(f'compile.num_slices must be >= 1, got {num_slices}')
  topology = str(compile_config.topology).strip()
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
    return Target(
        description=f'local {device.platform.upper()} ({len(devices)} x {device.device_kind})',
        platform=device.platform, device_kind=device.device_kind, devices=devices,
        num_slices=1, device_memory_bytes=memory, memory_source=memory_source,
        peak_flops=peak, memory_bandwidth=bandwidth,
        figures_source=override if peak or bandwidth else 'unknown for local devices: set '
        'compile.peak_tflops and compile.memory_bandwidth_gbps for a roofline')
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


# ---------------------------------------------------------------------------------------------
# The model's shape without weights
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Backbone:
  """The backbone config the step is compiled with, and where it came from."""

  hf_config: transformers.PretrainedConfig
  tokenizer_size: int  # For the objective (summarization logits beyond it are dropped).
  source: str  # Human-readable origin of the shape.
  notes: list[str]  # Assumptions made (printed and reported).


def backbone_config(config: ml_collections.ConfigDict, workdir: str) -> Backbone:
  """The backbone's `transformers` config, offline and without weights (see the module doc)."""
  overrides = build.dropout_overrides(config)
  if config.finetune.from_workdir:  # Fine-tuning: the pre-finetuned run's exact backbone.
    path = os.path.join(config.finetune.from_workdir, workdir_lib.BACKBONE_CONFIG)
    hf_config = workdir_lib.load_backbone_config(config.finetune.from_workdir)
    if hf_config is None:
      raise errors.UserError(f'{path} is missing: finetune.from_workdir must be a workdir '
                             'written by muppet_jax.train')
    return Backbone(hf_config, hf_config.vocab_size, f'{path}', [])
  init_from = config.model.init_from
  hf_config, source = None, ''
  if init_from and os.path.isdir(init_from):
    if not os.path.exists(os.path.join(init_from, 'config.json')):
      raise errors.UserError(f'model.init_from={init_from!r} is a directory without '
                             'config.json: point it at a Hugging Face checkpoint directory')
    hf_config = transformers.AutoConfig.from_pretrained(init_from)
    source = f'{init_from}/config.json'
  elif init_from:  # A hub id: its config.json if it is already in the local cache.
    try:
      hf_config = transformers.AutoConfig.from_pretrained(init_from, local_files_only=True)
      source = f'{init_from} config.json (local Hugging Face cache)'
    except (OSError, ValueError):
      hf_config = None
  notes = []
  tokenizer_size, ids = _local_tokenizer(config, workdir)
  if hf_config is not None:
    for key, value in overrides.items():  # As `hf.load` does: the run's dropout rates win.
      setattr(hf_config, key, value)
    if hf_config.model_type != config.model.type:
      raise errors.UserError(f'model.init_from={init_from!r} is a {hf_config.model_type!r} '
                             f'checkpoint but model.type is {config.model.type!r}')
    return Backbone(hf_config, tokenizer_size or hf_config.vocab_size, source, notes)
  if init_from:
    notes.append(f'model.init_from={init_from!r} is not a local directory (nor in the local '
                 'Hugging Face cache): the shape comes from the config\'s model.* fields')
  if tokenizer_size is None:  # Not local: assume a tokenizer of the model's vocabulary size.
    tokenizer_size = config.model.vocab_size or ROBERTA_BART_VOCAB_SIZE
    ids = _ROBERTA_BART_IDS
    if not config.model.vocab_size:
      notes.append(f'vocabulary: {ROBERTA_BART_VOCAB_SIZE:,} tokens, the RoBERTa/BART BPE of '
                   'the paper configs (set model.vocab_size for another tokenizer)')
  hf_config = build.shape_hf_config(config, tokenizer_size, **ids)
  return Backbone(hf_config, tokenizer_size, 'the config\'s model.* shape fields', notes)


def _local_tokenizer(config, workdir: str) -> tuple[int | None, dict]:
  """(size, special ids) of the run's tokenizer when it is local (demo or a directory), else
  (None, {}): a hub tokenizer is never downloaded here."""
  name = config.data.tokenizer or config.model.init_from
  if not name or (name != 'demo' and not os.path.isdir(name)):
    return None, {}
  from muppet_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  vocab = vocab_lib.HFVocabulary(build.resolve_tokenizer(config, workdir))
  return vocab.vocab_size, dict(pad_id=vocab.pad_id, bos_id=vocab.bos_id, eos_id=vocab.eos_id)


# ---------------------------------------------------------------------------------------------
# Model FLOPs (the formula bench/ uses for MFU)
# ---------------------------------------------------------------------------------------------

# Parameters that are table lookups, not matmuls (token, position and token-type embeddings;
# BART's shared table is a lookup for every family but summarization's LM head).
_EMBEDDING_NAMES = ('word_embeddings', 'position_embeddings', 'embed_positions', 'shared')


def model_flops_per_token(model_type: str, hidden_size: int, num_layers: int, length: int,
                          non_embedding_params: int) -> float:
  """Training FLOPs per token of a classification slot: 6 N + 12 x A x d x T.

  N = parameters in matmuls (all but the embedding tables), d = hidden size, T = tokens per row,
  A = attention layers: `num_layers` for RoBERTa, 3 x `num_layers` (per stack) for BART
  (encoder self-attention, decoder self- and cross-attention; the classification decoder reads
  all T tokens). The attention term counts QK^T and AV (2 x 2 T d per token and layer forward,
  x 3 for training), as PaLM's MFU (Chowdhery et al., 2022, appendix B). R3F's second pass and
  rematerialisation are not counted: MFU is for the plain step (bench/README.md).
  """
  attention_layers = num_layers if model_type == 'roberta' else 3 * num_layers
  return 6.0 * non_embedding_params + 12.0 * attention_layers * hidden_size * length


@dataclasses.dataclass(frozen=True)
class ParamCount:
  """Parameter counts of a model (from shapes only)."""

  total: int  # Every parameter.
  # N of the model-FLOPs formula: the parameters one slot multiplies with. Not the embedding
  # tables (lookups), and of the stacked classification heads only one (a slot uses its task's).
  slot_matmul: int


def count_params(params: nnx.State) -> ParamCount:
  """`ParamCount` of a (possibly abstract) parameter state."""
  total = slot_matmul = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    n = math.prod(leaf.shape)
    total += n
    name = jax.tree_util.keystr(path)
    if any(table in name for table in _EMBEDDING_NAMES):
      continue
    slot_matmul += n // leaf.shape[0] if 'classification_heads' in name else n
  return ParamCount(total=total, slot_matmul=slot_matmul)


# ---------------------------------------------------------------------------------------------
# Collectives of the compiled HLO
# ---------------------------------------------------------------------------------------------

COLLECTIVE_KINDS = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
                    'collective-permute', 'collective-broadcast', 'ragged-all-to-all')
# One HLO instruction: `[ROOT] %name = <shape> <opcode>(`; the shape may be a tuple.
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\(',
                          re.MULTILINE)
_ARRAY_SHAPE = re.compile(r'\b(pred|[suf]\d+|bf16|f8e\w+|c64|c128)\[([\d,]*)\]')
_DTYPE_BYTES = {'pred': 1, 'bf16': 2, 'c64': 8, 'c128': 16}


@dataclasses.dataclass
class Collective:
  """One kind of collective in the compiled program."""

  kind: str  # 'all-reduce', 'all-gather', 'reduce-scatter', ...
  count: int  # Instructions of this kind in the program text.
  bytes: int  # Sum of their result sizes on one device.


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string (`f32[1024,64]{1,0}` or a tuple of them)."""
  total = 0
  for dtype, dims in _ARRAY_SHAPE.findall(shape):
    size = _DTYPE_BYTES.get(dtype)
    if size is None:
      size = max(1, int(re.sub(r'\D', '', dtype.split('e')[0]) or 8) // 8)
    total += size * math.prod(int(d) for d in dims.split(',') if d)
  return total


def hlo_collectives(hlo_text: str) -> list[Collective]:
  """The collectives of an optimized HLO module, by kind.

  A synchronous collective counts once with its result shape; an asynchronous pair
  (`all-gather-start` / `all-gather-done`) counts once, at its `-done`, whose shape is the
  result. Instructions are counted as they appear in the program: one inside a loop body (the
  gradient-accumulation scan) runs once per iteration but counts once here.
  """
  counts, sizes = collections.Counter(), collections.Counter()
  for shape, opcode in _INSTRUCTION.findall(hlo_text):
    if opcode.endswith('-start'):
      continue
    kind = opcode[:-len('-done')] if opcode.endswith('-done') else opcode
    if kind in COLLECTIVE_KINDS:
      counts[kind] += 1
      sizes[kind] += shape_bytes(shape)
  return [Collective(kind=k, count=counts[k], bytes=sizes[k]) for k in COLLECTIVE_KINDS
          if counts[k]]


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


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
  roofline: Roofline | None  # None when the device's peak figures are unknown.
  advice: list[str]  # What to change when the step does not fit.
  notes: list[str]  # Assumptions made (shape source, vocabulary).
  # The TPU compiler's out-of-memory message when the step does not fit (then only the memory
  # fields are known: a TPU program that does not fit does not compile).
  error: str | None = None

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _per_device_bytes(abstract_tree) -> int:
  """Bytes of the shards one device holds of a tree of sharded `ShapeDtypeStruct`s (the first
  device's shard: every shard of these arrays has the same shape)."""
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    dtype = leaf.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):  # Typed keys: their key data.
      dtype = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct((), dtype)).dtype
      shape = shape + jax.eval_shape(jax.random.key_data,
                                     jax.ShapeDtypeStruct((), leaf.dtype)).shape
    total += math.prod(shape) * np.dtype(dtype).itemsize
  return total


def abstract_batch(shape: BatchShape, accum: int, layout: sharding.MeshLayout
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch `[A, D, ...]` of one update as sharded `ShapeDtypeStruct`s."""
  return {name: jax.ShapeDtypeStruct((accum, layout.data_size) + field_shape, dtype,
                                     sharding=layout.batch_sharding)
          for name, (field_shape, dtype) in shape.field_specs().items()}


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0] if cost else {}
  return dict(cost or {})


def _advice(config, report_fits: bool | None, memory: MemoryBreakdown) -> list[str]:
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


@dataclasses.dataclass
class _Step:
  """The jitted train step and the abstract arguments it is lowered with."""

  jitted: jax.stages.Wrapped  # `train.jit_train_step(...)`.
  state: object  # TrainState of sharded ShapeDtypeStructs.
  batch: dict[str, jax.ShapeDtypeStruct]
  layout: sharding.MeshLayout

  def compile(self) -> jax.stages.Compiled:
    return self.jitted.lower(self.state, self.batch).compile()


def _abstract_step(config: ml_collections.ConfigDict, backbone: Backbone, task_table, devices,
                   accum: int) -> _Step:
  """Stages 3 and 5 of `train.run` on shapes: the same model, optimizer, state, shardings and
  jitted step, with abstract arguments for `devices`."""

  def make_model():  # The model `build.build_model` makes (weights are never created here).
    return muppet.build_model(config, backbone.hf_config, task_table,
                              rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))

  layout = sharding.make_mesh(config.mesh, devices=devices)
  graphdef, params, rest = nnx.split(nnx.eval_shape(make_model), nnx.Param, ...)
  program = train.step_program(config, graphdef, task_table, backbone.tokenizer_size)
  state = jax.eval_shape(lambda p, r: train.initial_state(config, p, r, program.tx), params,
                         rest)
  state_sharding = train.state_shardings(layout, state, program.tx,
                                         bool(config.optim.shard_moments))
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                       state_sharding)
  return _Step(jitted=train.jit_train_step(program, layout, state_sharding), state=state,
               batch=abstract_batch(BatchShape.from_config(config.data), accum, layout),
               layout=layout)


@dataclasses.dataclass(frozen=True)
class StepCost:
  """XLA's cost analysis of one update on one device."""

  flops: float
  bytes_accessed: float
  source: str  # How it was obtained (reported in `flops_note`).


def _with_layers(backbone: Backbone, layers: int) -> Backbone:
  """`backbone` with `layers` layers (per stack for BART)."""
  hf_config = copy.deepcopy(backbone.hf_config)
  if hf_config.model_type == 'bart':
    hf_config.encoder_layers = hf_config.decoder_layers = layers
  else:
    hf_config.num_hidden_layers = layers
  return dataclasses.replace(backbone, hf_config=hf_config)


def _step_cost(config: ml_collections.ConfigDict, backbone: Backbone, task_table, devices,
               accum: int, layers: int, compiled: jax.stages.Compiled) -> StepCost:
  """FLOPs and bytes accessed of one update, loops counted in full.

  XLA's cost analysis counts a while-loop body once (and, on TPU, not all of it). So with
  A > 1 accumulation steps the figures come from the same step compiled with A = 1, times A
  (the optimizer update is then counted A times instead of once: well under 1% of the FLOPs);
  and with `model.scan_layers` from the same step with unrolled layers at depths 2 and 3,
  extrapolated linearly to the real depth (the two small programs compile in a fraction of the
  time and host memory of the full unrolled one). On TPU the cost is linear in the depth
  (checked against a full 8-layer compile: FLOPs exact, bytes accessed within 4%); XLA:CPU
  counts a little more per layer as the program grows (+1.4% at 4 layers).
  """

  def cost_of(compiled) -> tuple[float, float]:
    cost = _cost(compiled)
    return float(cost.get('flops', 0.0)), float(cost.get('bytes accessed', 0.0))

  if not config.model.get('scan_layers', False):
    if accum == 1:
      flops, bytes_accessed = cost_of(compiled)
      return StepCost(flops, bytes_accessed, 'of the compiled step')
    flops, bytes_accessed = cost_of(_abstract_step(config, backbone, task_table, devices,
                                                   1).compile())
    return StepCost(flops * accum, bytes_accessed * accum,
                    f'of the same step with A = 1, times A = {accum}')
  unrolled = config.copy_and_resolve_references()
  with unrolled.unlocked():
    unrolled.model.scan_layers = False
  if layers <= 3:  # Small enough to compile unrolled as it is.
    flops, bytes_accessed = cost_of(_abstract_step(unrolled, backbone, task_table, devices,
                                                   1).compile())
    return StepCost(flops * accum, bytes_accessed * accum,
                    'of the same step with unrolled layers (model.scan_layers=False) and A = 1'
                    f'{f", times A = " + str(accum) if accum > 1 else ""} (XLA counts a scan '
                    'body once)')
  (f2, b2), (f3, b3) = (
      cost_of(_abstract_step(unrolled, _with_layers(backbone, depth), task_table, devices,
                             1).compile())
      for depth in (2, 3))
  flops = (f3 + (layers - 3) * (f3 - f2)) * accum
  bytes_accessed = (b3 + (layers - 3) * (b3 - b2)) * accum
  return StepCost(flops, bytes_accessed,
                  f'of the same step with unrolled layers (model.scan_layers=False) and A = 1 '
                  f'at 2 and 3 layers, extrapolated linearly to {layers} layers'
                  f'{f", times A = " + str(accum) if accum > 1 else ""} (XLA counts a scan '
                  'body once)')


@dataclasses.dataclass(frozen=True)
class OutOfMemory:
  """The TPU compiler's verdict on a program that does not fit one device."""

  capacity_bytes: int  # What XLA may use of the device's memory.
  used_bytes: int | None  # What the whole program needs, when XLA says.
  temps_bytes: int | None  # What its temporaries alone need, when XLA says only that.
  message: str  # XLA's line.


# The TPU compiler's two out-of-memory messages (libtpu), sizes in binary units (K, M, G, ...).
_SIZE = r'([\d.]+)([KMGTPE]?)B?'
_USED_OF = re.compile(rf'Ran out of memory in memory space (\w+)\. Used {_SIZE} of {_SIZE} \1')
_TEMPS_EXCEED = re.compile(rf'Ran out of memory on HBM, the total memory required for HLO '
                           rf'temporaries \({_SIZE}\) exceeds available HBM \({_SIZE}\)')
_UNITS = {'': 1, 'K': 2 ** 10, 'M': 2 ** 20, 'G': 2 ** 30, 'T': 2 ** 40, 'P': 2 ** 50,
          'E': 2 ** 60}


def parse_out_of_memory(message: str) -> OutOfMemory | None:
  """XLA:TPU's 'Ran out of memory in memory space hbm. Used 17.77G of 15.48G hbm. ...' or 'Ran
  out of memory on HBM, the total memory required for HLO temporaries (23.84G) exceeds
  available HBM (15.75G).', or None for any other error."""

  def size(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit])

  line = next((l.strip() for l in message.splitlines() if 'Ran out of memory' in l), '')[:500]
  if match := _USED_OF.search(message):
    _, used, used_unit, capacity, capacity_unit = match.groups()
    return OutOfMemory(capacity_bytes=size(capacity, capacity_unit),
                       used_bytes=size(used, used_unit), temps_bytes=None, message=line)
  if match := _TEMPS_EXCEED.search(message):
    temps, temps_unit, capacity, capacity_unit = match.groups()
    return OutOfMemory(capacity_bytes=size(capacity, capacity_unit), used_bytes=None,
                       temps_bytes=size(temps, temps_unit), message=line)
  return None


def compile_step(config: ml_collections.ConfigDict, workdir: str,
                 target: Target | None = None) -> CompileReport:
  """Builds the config's train step from abstract shapes, compiles it for `target` (default:
  `resolve_target(config.compile)`) and analyses the executable. Writes nothing."""
  target = target or resolve_target(config.compile)
  accum = int(config.train.grad_accum)
  if accum < 1:
    raise ValueError(f'train.grad_accum must be >= 1, got {accum}')
  backbone = backbone_config(config, workdir)
  if backbone.hf_config.model_type != config.model.type:  # finetune.from_workdir's model type.
    config = config.copy_and_resolve_references()
    config.model.type = backbone.hf_config.model_type
  run_tasks = build.run_tasks(config)
  build.check_sizes(config, backbone.tokenizer_size, backbone.hf_config)
  step = _abstract_step(config, backbone, run_tasks.table, target.devices, accum)
  state, batch, layout = step.state, step.batch, step.layout
  state_memory = dict(parameters=_per_device_bytes(state.params),
                      optimizer_state=_per_device_bytes(state.opt_state),
                      other_state=_per_device_bytes((state.step, state.rest, state.rng)),
                      batch=_per_device_bytes(batch))
  start = time.perf_counter()
  try:
    compiled = step.compile()
  except jax.errors.JaxRuntimeError as e:  # The TPU compiler refuses programs that do not fit.
    oom = parse_out_of_memory(str(e))
    if oom is None:
      raise
    compiled = None
  compile_seconds = time.perf_counter() - start
  counts = count_params(state.params)
  hf_config = backbone.hf_config
  layers = getattr(hf_config, 'num_hidden_layers', None) or hf_config.encoder_layers
  model_flops = model_flops_per_token(
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
        roofline=None, advice=_advice(config, False, memory), error=oom.message)

  stats = compiled.memory_analysis()
  memory = MemoryBreakdown(
      arguments=int(stats.argument_size_in_bytes), outputs=int(stats.output_size_in_bytes),
      aliases=int(stats.alias_size_in_bytes), temps=int(stats.temp_size_in_bytes),
      generated_code=int(stats.generated_code_size_in_bytes), **state_memory)
  per_device = memory.arguments + memory.outputs + memory.temps - memory.aliases
  device_memory = target.device_memory_bytes
  fits = None if device_memory is None else per_device <= device_memory

  start = time.perf_counter()
  cost = (_step_cost(config, backbone, run_tasks.table, target.devices, accum, layers, compiled)
          if config.compile.get('costs', True) else None)
  cost_seconds = time.perf_counter() - start

  roofline = None
  if cost is not None and target.peak_flops and target.memory_bandwidth and cost.flops:
    compute_s = cost.flops / target.peak_flops
    memory_s = cost.bytes_accessed / target.memory_bandwidth
    step_s = max(compute_s, memory_s)
    roofline = Roofline(
        step_seconds=step_s, compute_seconds=compute_s, memory_seconds=memory_s,
        bound='compute' if compute_s >= memory_s else 'memory',
        mfu_bound=model_flops / (step_s * target.peak_flops), peak_flops=target.peak_flops,
        memory_bandwidth=target.memory_bandwidth, source=target.figures_source)

  model_note = ('model_flops_per_step: 6 N + 12 x layers x d x T per token of a '
                'classification slot (the bench/ formula), no R3F, no remat.')
  if cost is None:
    flops_note = ('flops_per_step: not computed (compile.costs=False). ' + model_note)
  else:
    flops_note = (f'flops_per_step: XLA cost analysis {cost.source}; of the family branches '
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
      collectives=hlo_collectives(compiled.as_text()), roofline=roofline,
      advice=_advice(config, fits, memory))


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
        (f'FLOPs per update per device: {report.flops_per_step:.3e} (XLA), '
         f'{report.model_flops_per_step:.3e} (model formula); bytes accessed '
         f'{report.bytes_accessed_per_step:.3e}' if report.flops_per_step is not None else
         f'FLOPs per update per device: {report.model_flops_per_step:.3e} (model formula); '
         'XLA\'s not computed (compile.costs=False)'),
        'collectives: ' + (', '.join(f'{c.kind} x{c.count} ({gib(c.bytes)})'
                                     for c in report.collectives) or 'none'),
        f'compile time: {report.compile_seconds:.1f} s'
        + (f' (+ {report.cost_seconds:.1f} s for the FLOPs)' if report.cost_seconds >= 0.05
           else '')]
  r = report.roofline
  if report.error is not None:
    pass
  elif r is None and report.flops_per_step is None:
    lines.append('roofline: needs the FLOPs (compile.costs=True)')
  elif r is None:
    lines.append('roofline: no peak figures for this device (compile.peak_tflops, '
                 'compile.memory_bandwidth_gbps)')
  else:
    lines.append(f'roofline ESTIMATE (not a measurement): step >= {r.step_seconds * 1e3:.1f} ms '
                 f'({r.bound}-bound; compute {r.compute_seconds * 1e3:.1f} ms at '
                 f'{r.peak_flops / 1e12:.0f} TFLOP/s, memory {r.memory_seconds * 1e3:.1f} ms at '
                 f'{r.memory_bandwidth / 1e9:.0f} GB/s; {r.source}); MFU <= {r.mfu_bound:.0%}')
  lines += [f'to fit: {a}' for a in report.advice]
  lines += [f'note: {n}' for n in report.notes]
  return '\n'.join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> CompileReport:
  """`--mode compile`: compiles the config's train step, prints and writes the report."""
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  report = compile_step(config, workdir)
  path = os.path.join(workdir, REPORT_NAME)
  with open(path, 'w') as f:
    json.dump(report.to_json(), f, indent=1)
  for line in format_report(report).splitlines():
    logging.info('%s', line)
  logging.info('wrote %s', path)
  return report
