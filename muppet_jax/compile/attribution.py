"""Every FLOP and byte of a compiled step, attributed to the part of the model it belongs to.

XLA's `cost_analysis()` gives one total per program. This module recomputes the totals
instruction by instruction from the optimized HLO text (`hlo.parse_module`), with the rules of
XLA's HloCostAnalysis:

- bytes: each instruction that runs outside a fusion reads its operands and writes its result
  (a fusion counts its operands and its result, not the values inside it); an operand that the
  fusion only slices (slice, dynamic-slice, gather) counts the slices it reads, and a fusion
  whose result is a dynamic-update-slice in place counts the update, not the whole buffer.
  Parameters, constants, tuples, get-tuple-element and bitcasts move nothing.
- FLOPs: a dot is 2 x output elements x contracted elements, a convolution 2 x output elements
  x kernel elements per output feature; an elementwise operation one per element (exp, log,
  tanh, ... count as transcendentals, apart); a reduction one application of its reducer per
  input element; a fusion the sum over its fused instructions; a Pallas kernel its declared
  `CostEstimate`.
- control flow: a loop body counts once (as XLA does), a conditional its costliest branch.

Each instruction then goes to a group by its opcode (collectives, copies) or its JAX source stack
(the module's stack-frame table: which model function created it, e.g.
`RobertaSelfAttention.__call__` > `dot_product_attention`). The groups add up to the
instruction totals; `coverage` compares those with XLA's own totals (`xla_flops`,
`xla_bytes_accessed`, when XLA reports them: not on GPU).
"""

from __future__ import annotations

import collections
import dataclasses
import re

from muppet_jax.compile import hlo as hlo_lib
from muppet_jax.compile.hlo import HloModule, Instruction
from muppet_jax.compile.hlo_cost import COLLECTIVE_OPCODES, COPY_OPCODES, Cost, CostModel, walk

GROUPS = (
    'attention core',  # QK^T, mask, softmax, PV: the [batch, heads, T, S] tensors or the kernel.
    'attention dropout',  # The dropout of attention probabilities: random bits and mask.
    'attention projections',  # q, k, v and output projections.
    'mlp',  # Feed-forward up/down projections and activation.
    'norms and dropout',  # LayerNorms, residual adds, hidden-state dropout and its random bits.
    'embeddings and output heads',  # Token/position embeddings (+ their gradient), LM head.
    'task heads',  # Classification, multiple-choice and span heads.
    'losses and r3f',  # Per-family losses, log(n) scaling, R3F noise and symmetric KL.
    'optimizer',  # AdamW, gradient averaging over slots, the learning rate.
    'collectives',  # all-reduce, all-gather, ... across devices.
    'copies',  # Copies between buffers (into/out of branches and loops, layout changes, a
    # scan's slices of its stacked layers and writes into the stacks).
    'other',  # Anything else: RNG keys, metrics, index arithmetic.
)


@dataclasses.dataclass
class Group:
  name: str
  flops: float
  bytes: float  # XLA's bytes accessed (all memory spaces).
  hbm_bytes: float  # The part in device memory (HBM), as the layouts' memory spaces say.


@dataclasses.dataclass
class HeavyOp:
  """One of the heaviest instructions of the program."""

  name: str  # The HLO instruction.
  opcode: str  # 'fusion', 'convolution', 'custom-call', ...
  group: str
  flops: float
  bytes: float
  shape: str  # The result shape (abbreviated).
  source: str  # Innermost project frame: 'file.py:line function', or '' when unknown.


@dataclasses.dataclass
class Attribution:
  """What `--mode compile` reports under `attribution`."""

  groups: list[Group]
  top: list[HeavyOp]  # The heaviest instructions by bytes, then the heaviest by FLOPs.
  flops: float  # The sum over the groups.
  bytes: float
  hbm_bytes: float
  transcendentals: float
  # XLA's own totals (cost_analysis) for comparison; None where XLA reports none (GPU).
  xla_flops: float | None = None
  xla_bytes_accessed: float | None = None
  note: str = ''

  @property
  def coverage(self) -> dict[str, float | None]:
    """The groups' totals over XLA's: 1.0 = every FLOP and byte attributed."""
    return {'flops': self.flops / self.xla_flops if self.xla_flops else None,
            'bytes': self.bytes / self.xla_bytes_accessed if self.xla_bytes_accessed else None}

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out['coverage'] = self.coverage
    return out


# ---------------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------------

# (group, any of these function names in the stack) in priority order; the first rule whose
# function appears anywhere in the instruction's source stack decides.
_ATTENTION_CORE = ('dot_product_attention', 'flash_attention', 'attention_reference')
_DROPOUT = ('keep_mask', 'Dropout.__call__', 'dropout_keep_mask')
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ('losses and r3f', ('noised_embeddings', 'symmetric_kl', 'log_n_scale',
                        'label_smoothed_cross_entropy', 'sentence_ranking', 'span_loss',
                        'cross_entropy', 'masked_mean', 'masked_sum')),
    ('task heads', ('ClassificationHeads.__call__', 'MultipleChoiceHead.__call__',
                    'SpanHead.__call__', 'MuppetModel.classify', 'MuppetModel.choose',
                    'MuppetModel.span', 'best_spans')),
    ('mlp', ('RobertaIntermediate.__call__', 'RobertaOutput.__call__', '_ffn')),
    ('attention projections', ('RobertaSelfAttention.__call__', 'RobertaSelfOutput.__call__',
                               'BartAttention.project_kv', 'BartAttention.attend',
                               'BartAttention.__call__')),
    ('embeddings and output heads', ('RobertaEmbeddings.__call__', 'embed_tokens',
                                     '_Stack.embed', 'lm_logits', 'Embed.__call__',
                                     'RobertaPooler.__call__')),
    ('norms and dropout', ('LayerNorm.__call__', 'RobertaLayer.__call__',
                           'BartEncoderLayer.__call__', 'BartDecoderLayer.forward')),
)


# What a fusion computes, by priority: its matmuls, a kernel, a scatter/gather, random bits.
_ANCHORS = (('convolution', 'dot'), ('custom-call',), ('scatter', 'gather'),
            ('rng-bit-generator',))


def _anchor_frame(module: HloModule, computation, opcodes, depth: int = 0) -> int:
  for inner in computation.instructions:
    if inner.opcode in opcodes and inner.frame and (
        inner.opcode != 'custom-call' or 'tpu_custom_call' in inner.attributes):
      return inner.frame
    if inner.opcode == 'fusion' and depth < 4:
      nested = module.computations.get((inner.called('calls') or [''])[0])
      if nested is not None:
        frame = _anchor_frame(module, nested, opcodes, depth + 1)
        if frame:
          return frame
  return 0


def source_frame(module: HloModule, i: Instruction) -> int:
  """The stack frame that says what `i` computes: for a fusion, that of its main operation
  (a matmul, a kernel, a scatter, ... inside it, nested fusions included), else of its root,
  else its own; a fusion's own metadata can be that of whatever op XLA fused last (e.g. the
  all-gather it overlaps with a matmul)."""
  called = i.called('calls') if i.opcode == 'fusion' else []
  fused = module.computations.get(called[0]) if called else None
  if fused is None:
    return i.frame
  for opcodes in _ANCHORS:
    frame = _anchor_frame(module, fused, opcodes)
    if frame:
      return frame
  # A loop writing a value into its stacked result (a scan's saved residuals): the update's
  # source, not the scan machinery that the dynamic-update-slice itself comes from.
  root = fused.behind(fused.root.name, _VIEWS)
  if root.opcode == 'dynamic-update-slice' and len(root.operands) > 1:
    update = fused.behind(root.operands[1], _VIEWS)
    if update is not None and update.frame:
      return update.frame
  return fused.root.frame or i.frame or next(
      (x.frame for x in fused.instructions if x.frame), 0)


# Instructions that only re-present a value (what computes it lies behind them).
_VIEWS = ('bitcast', 'reshape', 'convert', 'copy')


# What a fusion may hold and still only move data: a scan's per-layer slice of its stacked
# weights and saved activations, and its writes of each layer's results into the stacks.
_MOVES = frozenset({'parameter', 'constant', 'bitcast', 'reshape', 'transpose', 'copy', 'slice',
                    'dynamic-slice', 'dynamic-update-slice', 'concatenate', 'broadcast', 'pad',
                    'tuple', 'get-tuple-element', 'iota', 'clamp', 'compare', 'select', 'add',
                    'subtract', 'convert'})


def _moves_only(module: HloModule, i: Instruction) -> bool:
  """A fusion that slices, updates or rearranges buffers and computes nothing but indices: the
  loop's copies of stacked layers (the index arithmetic's adds, compares and selects are
  scalar; a convert counts as computing)."""
  if i.opcode != 'fusion':
    return False
  fused = module.computations.get((i.called('calls') or [''])[0])
  if fused is None or not any(x.opcode in ('dynamic-slice', 'dynamic-update-slice')
                              for x in fused.instructions):
    return False
  for x in fused.instructions:
    if x.opcode not in _MOVES:
      return False
    if x.opcode in ('add', 'subtract', 'compare', 'select', 'clamp', 'convert') and any(
        a.elements > 1 for a in x.arrays):
      return False
  return True


def _kernel_name(i: Instruction) -> str:
  match = re.search(r'"kernel_name"\s*:\s*"([^"]*)"', i.attributes) or re.search(
      r'name="([^"]*)"', i.attributes)
  return match.group(1) if match else ''


def classify(module: HloModule, i: Instruction) -> str:
  """The group of one top-level instruction."""
  if i.opcode in COLLECTIVE_OPCODES:
    return 'collectives'
  if i.opcode in COPY_OPCODES or _moves_only(module, i):
    return 'copies'
  if i.opcode == 'custom-call' and 'flash_attention' in (_kernel_name(i) + i.name):
    return 'attention core'  # The kernel draws its dropout bits inside.
  stack = module.stack(source_frame(module, i))
  functions = [f.function for f in stack]
  files = [f.file for f in stack]
  if any('optax' in f for f in files):
    return 'optimizer'
  if any(name in f for f in functions for name in _ATTENTION_CORE):
    if any(name in f for f in functions for name in _DROPOUT):
      return 'attention dropout'
    return 'attention core'
  if any(name in f for f in functions for name in _DROPOUT):
    return 'norms and dropout'
  for group, names in _RULES:
    if any(f.endswith(name) or f == name for f in functions for name in names):
      return group
  # Outside the model: the update (its stack ends in the step's body, not in the per-device
  # gradient computation) and the gradient averaging (the step's lambdas and pmean).
  in_step = any('per_device' in f for f in functions)
  if (not in_step and any(f.endswith('train_step') for f in functions)) or (
      in_step and any(f.endswith('<lambda>') for f in functions[:2])) or any(
          'pmean' in f for f in functions):
    return 'optimizer'
  return 'other'


def _source(module: HloModule, i: Instruction) -> str:
  """'file.py:line function' of the innermost frame in the project (not jax/flax/optax)."""
  stack = module.stack(source_frame(module, i))
  for frame in stack:
    if '/site-packages/' not in frame.file:
      return f'{frame.file.rsplit("/", 1)[-1]}:{frame.line} {frame.function}'
  return f'{stack[0].file.rsplit("/", 1)[-1]}:{stack[0].line} {stack[0].function}' \
      if stack else ''


def attribute(hlo: str | HloModule, *, xla_flops: float | None = None,
              xla_bytes_accessed: float | None = None, top: int = 15,
              trip_counts: bool = False) -> Attribution:
  """The attribution of one compiled program (`compiled.as_text()`, or that text parsed).

  Loop bodies count once, as XLA's cost analysis counts them (so that `coverage` compares like
  with like), or with `trip_counts` times the number of iterations the program runs
  (`hlo_cost.trip_count`): the cost of the program as it executes (`note` names any loop
  whose count the program does not say; it counts once)."""
  module = hlo if isinstance(hlo, HloModule) else hlo_lib.parse_module(hlo)
  model = CostModel(module)
  items: list = []
  unknown: list[str] = []
  walk(model, module.entry, 1.0, items, trip_counts=trip_counts, unknown_loops=unknown)
  totals = collections.defaultdict(Cost)
  for i, _, cost in items:
    totals[classify(module, i)] += cost
  counted = _assemble(module, items, totals, xla_flops, xla_bytes_accessed, top)
  if trip_counts:
    counted.note = ('loop bodies times their trip counts' + (
        f'; trip count unknown (counted once): {", ".join(unknown)}' if unknown else ''))
  return counted


def _assemble(module, items, totals, xla_flops, xla_bytes_accessed, top) -> Attribution:
  groups = [Group(name=g, flops=totals[g].flops, bytes=totals[g].bytes,
                  hbm_bytes=totals[g].hbm_bytes) for g in GROUPS]
  heavy = sorted(items, key=lambda x: -x[2].bytes)[:top]
  by_flops = [x for x in sorted(items, key=lambda x: -x[2].flops)[:top] if x not in heavy]
  ops = [HeavyOp(name=i.name, opcode=i.opcode, group=classify(module, i), flops=c.flops,
                 bytes=c.bytes, shape=i.shape[:120], source=_source(module, i))
         for i, _, c in heavy + by_flops]
  return Attribution(
      groups=groups, top=ops, flops=sum(g.flops for g in groups),
      bytes=sum(g.bytes for g in groups), hbm_bytes=sum(g.hbm_bytes for g in groups),
      transcendentals=sum(c.transcendentals for c in totals.values()),
      xla_flops=xla_flops, xla_bytes_accessed=xla_bytes_accessed)


def combine(parts: list[tuple[Attribution, float]], *, xla_flops: float | None = None,
            xla_bytes_accessed: float | None = None, note: str = '') -> Attribution:
  """sum(weight x attribution) group by group (e.g. a 3-layer program plus (L - 3) x the
  difference between the 3- and 2-layer programs, for a step whose layers are scanned).
  `top` comes from the part with the largest weight."""
  groups = []
  for k, name in enumerate(GROUPS):
    groups.append(Group(
        name=name, flops=sum(w * a.groups[k].flops for a, w in parts),
        bytes=sum(w * a.groups[k].bytes for a, w in parts),
        hbm_bytes=sum(w * a.groups[k].hbm_bytes for a, w in parts)))
  first = max(parts, key=lambda p: p[1])[0]
  return Attribution(
      groups=groups, top=first.top, flops=sum(g.flops for g in groups),
      bytes=sum(g.bytes for g in groups), hbm_bytes=sum(g.hbm_bytes for g in groups),
      transcendentals=sum(w * a.transcendentals for a, w in parts), xla_flops=xla_flops,
      xla_bytes_accessed=xla_bytes_accessed, note=note)
