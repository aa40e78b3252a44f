"""What one instruction of an optimized HLO module reads, writes and computes, by XLA:TPU's
cost-analysis rules, and the walk over a program that applies them (`attribution.py` groups the
result by model part; the rules are listed in its docstring)."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re

from muppet_jax.compile import hlo as hlo_lib
from muppet_jax.compile.hlo import HloModule, Instruction

# Opcodes that move no data: views, bookkeeping, and the values a fusion/loop passes through.
_FREE = frozenset({
    'parameter', 'constant', 'tuple', 'get-tuple-element', 'bitcast', 'after-all',
    'partition-id', 'replica-id', 'opt-barrier', 'add-dependency', 'domain', 'iota',
})
_TRANSCENDENTAL = frozenset({
    'exponential', 'exponential-minus-one', 'log', 'log-plus-one', 'tanh', 'logistic',
    'sqrt', 'rsqrt', 'cbrt', 'power', 'sine', 'cosine', 'tan', 'atan2', 'erf', 'erf-inv',
})
_ELEMENTWISE = frozenset({
    'add', 'subtract', 'multiply', 'divide', 'remainder', 'maximum', 'minimum', 'negate', 'abs',
    'sign', 'compare', 'select', 'and', 'or', 'xor', 'not', 'shift-left',
    'shift-right-logical', 'shift-right-arithmetic', 'clamp', 'floor', 'ceil',
    'round-nearest-afz', 'round-nearest-even', 'is-finite', 'popcnt', 'clz', 'real', 'imag',
    'stochastic-convert',
})
_SLICING = frozenset({'slice', 'dynamic-slice', 'gather'})
COLLECTIVE_OPCODES = frozenset(
    k + s for k in hlo_lib.COLLECTIVE_KINDS for s in ('', '-start', '-done'))
# Copies, memory-space assignment's asynchronous prefetches and evictions (whole arrays or
# slices) included.
COPY_OPCODES = frozenset({'copy', 'copy-start', 'copy-done', 'slice-start', 'slice-done'})

# The groups, in report order.
@dataclasses.dataclass
class Cost:
  flops: float = 0.0
  transcendentals: float = 0.0
  bytes: float = 0.0
  hbm_bytes: float = 0.0

  def __iadd__(self, other: 'Cost') -> 'Cost':
    self.flops += other.flops
    self.transcendentals += other.transcendentals
    self.bytes += other.bytes
    self.hbm_bytes += other.hbm_bytes
    return self

  def scaled(self, factor: float) -> 'Cost':
    return Cost(self.flops * factor, self.transcendentals * factor, self.bytes * factor,
                 self.hbm_bytes * factor)


# ---------------------------------------------------------------------------------------------
# FLOPs of one instruction (fused or not)
# ---------------------------------------------------------------------------------------------


def _elements(shape: str) -> int:
  return sum(a.elements for a in hlo_lib.parse_shape(shape))


def _dims_attr(instruction: Instruction, key: str) -> list[int]:
  match = re.search(rf'\b{key}=\{{([\d,]*)\}}', instruction.attributes)
  return [int(d) for d in match.group(1).split(',') if d] if match else []


class CostModel:
  """The cost model over one parsed module (memoised per computation)."""

  def __init__(self, module: HloModule):
    self.module = module

  def shape_of(self, computation: str, name: str) -> str:
    instruction = self.module.computations[computation].by_name.get(name)
    return instruction.shape if instruction else ''

  @functools.lru_cache(maxsize=None)
  def computation_flops(self, name: str) -> tuple[float, float]:
    """(FLOPs, transcendentals) of every instruction of a fused/applied computation."""
    computation = self.module.computations.get(name)
    if computation is None:
      return 0.0, 0.0
    flops = transcendentals = 0.0
    for instruction in computation.instructions:
      f, t = self.instruction_flops(name, instruction)
      flops += f
      transcendentals += t
    return flops, transcendentals

  def instruction_flops(self, computation: str, i: Instruction) -> tuple[float, float]:
    op = i.opcode
    if op in _FREE:
      return 0.0, 0.0
    if op in _TRANSCENDENTAL:
      return 0.0, float(_elements(i.shape))
    if op in _ELEMENTWISE or op == 'convert':
      return float(_elements(i.shape)), 0.0
    if op == 'dot':
      lhs = hlo_lib.parse_shape(self.shape_of(computation, i.operands[0]))
      contracted = math.prod(lhs[0].dims[d] for d in _dims_attr(i, 'lhs_contracting_dims')) \
          if lhs else 1
      return 2.0 * _elements(i.shape) * contracted, 0.0
    if op == 'convolution':
      return _convolution_flops(self.shape_of(computation, i.operands[0]),
                                self.shape_of(computation, i.operands[1]), i), 0.0
    if op == 'reduce':
      applied = i.called('to_apply')
      per_apply = self.computation_flops(applied[0])[0] if applied else 1.0
      inputs = sum(_elements(self.shape_of(computation, o))
                   for o in i.operands[:max(1, len(i.operands) // 2)])
      return max(0.0, (inputs - _elements(i.shape)) * per_apply), 0.0
    if op == 'reduce-window':
      # XLA:TPU counts a reduce-window that spans a whole padded dimension (the row-reduction
      # idiom of softmax and LayerNorm) as one reduction per row, not per window element.
      window = re.search(r'window=\{size=([\dx]+)', i.attributes)
      sizes = [int(s) for s in window.group(1).split('x')] if window else [1]
      span = math.prod((s + 1) // 2 for s in sizes if s > 1) or 1
      return _elements(i.shape) / span, 0.0
    if op in ('all-reduce', 'all-reduce-start', 'reduce-scatter'):  # One reduction per element.
      applied = i.called('to_apply')
      per_apply = self.computation_flops(applied[0])[0] if applied else 1.0
      return _elements(i.shape) * per_apply, 0.0
    if op in ('scatter', 'select-and-scatter'):
      applied = i.called('to_apply')
      per_apply = self.computation_flops(applied[0])[0] if applied else 1.0
      updates = _elements(self.shape_of(computation, i.operands[-1])) if i.operands else 0
      return updates * per_apply, 0.0
    if op in ('fusion', 'call', 'async-start'):
      called = i.called('calls') or i.called('to_apply')
      if called:
        return self.computation_flops(called[0])
      return 0.0, 0.0
    if op == 'custom-call':
      estimate = _kernel_cost_estimate(i)
      if estimate is not None:
        return estimate.flops, estimate.transcendentals
      return 0.0, 0.0
    if op == 'rng':
      return float(_elements(i.shape)), 0.0
    return 0.0, 0.0  # rng-bit-generator: the hardware generator on TPU; data movement.

  # -------------------------------------------------------------------------------------------
  # Bytes of one top-level instruction
  # -------------------------------------------------------------------------------------------

  def operand_arrays(self, computation: str, i: Instruction) -> list[hlo_lib.Array]:
    arrays = []
    for operand in i.operands:
      arrays.extend(hlo_lib.parse_shape(self.shape_of(computation, operand)))
    return arrays

  def _reads(self, fused: hlo_lib.Computation, name: str, space: int
             ) -> tuple[list[hlo_lib.Array], bool]:
    """What a fusion reads of its parameter `name`, as XLA's HloCostAnalysis counts it: a
    nested fusion what it reads of the value, a slice its slice, a broadcast or reshape the
    whole value each, all other (elementwise) users one shared read; on TPU a gather the
    tiles it touches and an in-place scatter its touched tiles twice. Returns (arrays,
    updated in place)."""
    instruction = fused.by_name[name]
    full = [dataclasses.replace(a, memory_space=space) for a in instruction.arrays]
    arrays, in_place, shared = [], False, False
    for user in fused.users.get(name, []):
      if user.opcode == 'tuple' and user is fused.root:
        continue  # Passed through to the result (aliased): neither read nor written.
      if user.opcode == 'fusion':  # A nested fusion: its parameter(s) bound to `name`.
        nested = self.module.computations.get((user.called('calls') or [''])[0])
        if _relabels(nested) and _holds_collective(fused):
          # XLA:TPU charges an asynchronous-collective fusion (a matmul overlapped with a
          # collective) nothing for an operand it reads through a nested fusion that only
          # re-labels it (a bitcast to the same shape, e.g. out of on-chip memory); elsewhere
          # such a read counts. Measured on v5e: without this rule RoBERTa-large's step counted
          # 39 MB per layer over XLA's total (1.6%), with it 6 MB (0.25%).
          continue
        params = {} if nested is None else {
            p.parameter_number: p for p in nested.instructions if p.opcode == 'parameter'}
        for k, operand in enumerate(user.operands):
          if operand == name and k in params:
            more, inner = self._reads(nested, params[k].name, space)
            arrays += more
            in_place |= inner
      elif user.opcode in ('slice', 'dynamic-slice') and user.operands[0] == name:
        arrays += [dataclasses.replace(a, memory_space=space) for a in user.arrays]
      elif user.opcode == 'dynamic-update-slice' and user.operands[0] == name:
        # Updated in place: only the update is written (counted with the result); XLA:TPU
        # charges no read of the buffer.
        in_place = True
      elif user.opcode == 'gather' and user.operands[0] == name and _TILE.search(
          instruction.shape):  # XLA:TPU: the tiles the gathered rows lie in.
        arrays += _touched_tiles(user.arrays, instruction.shape, space)
      elif user.opcode == 'scatter' and user.operands[0] == name and _TILE.search(
          instruction.shape):
        updates = fused.by_name.get(user.operands[-1])
        arrays += _touched_tiles(updates.arrays if updates else (), instruction.shape,
                                 space) * 2  # Read and written back in place.
        in_place = True
      elif user.opcode in ('broadcast', 'reshape'):
        arrays += full
      elif not shared:
        shared = True
        arrays += full
    return arrays, in_place

  def fusion_bytes(self, computation: str, i: Instruction) -> list[hlo_lib.Array]:
    called = i.called('calls')
    fused = self.module.computations.get(called[0]) if called else None
    if fused is None:
      return self.operand_arrays(computation, i) + list(i.arrays)
    if 'AsyncCollectiveDone' in fused.root.attributes:
      # The end of an asynchronous collective split around other work: its start counted
      # the collective's input and output; completing it writes the result once.
      return list(i.arrays)
    params = {p.parameter_number: p for p in fused.instructions if p.opcode == 'parameter'}
    arrays, in_place = [], False
    for k, operand in enumerate(i.operands):
      operand_arrays = hlo_lib.parse_shape(self.shape_of(computation, operand))
      space = operand_arrays[0].memory_space if operand_arrays else 0
      if k not in params:
        arrays += operand_arrays
        continue
      reads, inner = self._reads(fused, params[k].name, space)
      arrays += reads
      in_place |= inner
    root = fused.root
    outputs = list(i.arrays)
    if root.opcode == 'tuple' and len(root.operands) == len(outputs):
      # A multi-output fusion (e.g. a matmul overlapped with a collective): outputs that pass
      # a parameter through (aliased to it) or come out of the collective are not charged
      # to the fusion, as XLA:TPU counts them; an output updated in place (a
      # dynamic-update-slice, e.g. an optimizer shard written into the buffer that the
      # parameter all-gather then sums) is charged its update.
      charged = []
      for a, element in zip(outputs, root.operands):
        producer = fused.by_name[element]
        if producer.opcode == 'parameter' or producer.opcode in COLLECTIVE_OPCODES:
          continue
        if producer.opcode == 'dynamic-update-slice' and len(producer.operands) > 1:
          charged += _update_arrays(fused, producer, a.memory_space)
          continue
        charged.append(a)
      outputs = charged
    if root.opcode == 'dynamic-update-slice' and len(outputs) == 1:
      arrays += _update_arrays(fused, root, outputs[0].memory_space)
    elif not (in_place and root.opcode == 'scatter'):
      arrays += outputs
    return arrays

  def instruction_bytes(self, computation: str, i: Instruction) -> tuple[float, float]:
    """(bytes, HBM bytes) a top-level instruction reads and writes."""
    op = i.opcode
    if op in _FREE or op in ('while', 'conditional', 'call'):
      return 0.0, 0.0
    if op == 'fusion':
      arrays = self.fusion_bytes(computation, i)
    elif op == 'dynamic-update-slice' and len(i.operands) > 1:
      arrays = list(hlo_lib.parse_shape(self.shape_of(computation, i.operands[1]))) * 2
    elif op in ('slice', 'dynamic-slice'):
      arrays = list(i.arrays) * 2
    elif op in ('copy-start', 'copy-done', 'slice-start', 'slice-done'):
      return self._async_copy_bytes(computation, i)
    elif op.endswith('-done'):
      arrays = list(i.arrays)
    elif op.endswith('-start'):
      arrays = self.operand_arrays(computation, i)
    elif op == 'custom-call':
      estimate = _kernel_cost_estimate(i)
      if estimate is not None:  # A Pallas kernel: XLA takes the bytes it declares.
        arrays = self.operand_arrays(computation, i) + list(i.arrays)
        total = sum(a.padded_bytes for a in arrays) or 1
        hbm = sum(a.padded_bytes for a in arrays if a.memory_space == 0)
        return float(estimate.bytes_accessed), float(estimate.bytes_accessed) * hbm / total
      if re.search(r'custom_call_target="(AllocateBuffer|ConcatBitcast)"', i.attributes):
        return 0.0, 0.0  # A buffer allocation / a view: no data moves.
      arrays = self.operand_arrays(computation, i) + list(i.arrays)
    else:
      arrays = self.operand_arrays(computation, i) + list(i.arrays)
    # XLA:TPU charges each array as stored: its minor dimensions rounded up to whole tiles.
    total = sum(a.padded_bytes for a in arrays)
    return float(total), float(sum(a.padded_bytes for a in arrays if a.memory_space == 0))

  def _async_copy_bytes(self, computation: str, i: Instruction) -> tuple[float, float]:
    """An asynchronous copy (memory-space assignment's prefetches into on-chip memory and
    evictions back, as `copy-start`/`copy-done` or `slice-start`/`slice-done` pairs).

    XLA charges the start its source and destination and the done its result twice (so a
    prefetch of n bytes counts 4n). The HBM bytes are what the transfer itself moves there:
    n for each end of it in HBM, charged to the start; the done only waits."""
    op = i.opcode
    if op == 'copy-start':  # (destination, source, context): read, then written.
      source = self.operand_arrays(computation, i)
      destination = list(i.arrays[:1])
      arrays, moved = source + destination, source + destination
    elif op == 'slice-start':  # ((source), destination, context): the slice read, written.
      destination = list(i.arrays[1:2])
      source = self.operand_arrays(computation, i)
      space = source[0].memory_space if source else 0
      arrays = destination * 2
      moved = [dataclasses.replace(a, memory_space=space) for a in destination] + destination
    else:  # copy-done (its result, twice) or slice-done (its result).
      arrays = list(i.arrays) * (2 if op == 'copy-done' else 1)
      moved = []
    return (float(sum(a.padded_bytes for a in arrays)),
            float(sum(a.padded_bytes for a in moved if a.memory_space == 0)))


def _relabels(computation: hlo_lib.Computation | None) -> bool:
  """A fused computation that returns its parameter bitcast to the same shape."""
  if computation is None or computation.root.opcode != 'bitcast':
    return False
  source = computation.by_name.get(computation.root.operands[0])
  return (source is not None and source.opcode == 'parameter' and
          source.shape.split('{')[0] == computation.root.shape.split('{')[0])


def _holds_collective(computation: hlo_lib.Computation) -> bool:
  """Whether a fused computation runs a collective (an asynchronous-collective fusion)."""
  return any(i.opcode in COLLECTIVE_OPCODES for i in computation.instructions)


def _update_arrays(fused: hlo_lib.Computation, update_slice: Instruction,
                   space: int) -> list[hlo_lib.Array]:
  """What a dynamic-update-slice writes in place: its update, in the buffer's memory space."""
  update = fused.by_name.get(update_slice.operands[1])
  return [dataclasses.replace(a, memory_space=space) for a in (update.arrays if update else ())]


_TILE = re.compile(r'T\((\d+),(\d+)\)(?:\((\d+),1\))?')


def _touched_tiles(arrays, table_shape: str, space: int) -> list[hlo_lib.Array]:
  """The bytes a gather or scatter of rows touches in a table with a tiled TPU layout: each
  row lies in a tile of `T(r, 128)` rows (r = 8 for 32-bit types; bf16 `T(8,128)(2,1)` packs
  16 rows), and the whole tile is moved."""
  match = _TILE.search(table_shape)
  rows = 1
  if match:
    rows = int(match.group(1)) * (int(match.group(3)) if match.group(3) else 1)
  return [dataclasses.replace(a, dims=a.dims + (rows,), memory_space=space, tile=(),
                              minor_to_major=()) for a in arrays]


def _convolution_flops(lhs_shape: str, rhs_shape: str, i: Instruction) -> float:
  """XLA's count: 2 x batch x output features x input features per group x the number of
  (output position, window tap) pairs that read a real input element (not padding, not a
  hole of a dilated input), per spatial dimension. TPU expresses batched matmuls as such
  dilated convolutions, where only one tap per output position is real."""
  lhs, rhs = hlo_lib.parse_shape(lhs_shape), hlo_lib.parse_shape(rhs_shape)
  labels = re.search(r'dim_labels=(\w+)_(\w+)->(\w+)', i.attributes)
  if not lhs or not rhs or not labels:
    return 0.0
  lhs_labels, rhs_labels, _ = labels.groups()
  lhs_dims, rhs_dims = lhs[0].dims, rhs[0].dims
  batch = lhs_dims[lhs_labels.index('b')]
  in_features = rhs_dims[rhs_labels.index('i')]
  out_features = rhs_dims[rhs_labels.index('o')]
  spatial = [c for c in lhs_labels if c.isdigit()]
  window = _window(i.attributes, len(spatial))
  valid = 1
  for k, label in enumerate(spatial):
    size_in = lhs_dims[lhs_labels.index(label)]
    taps = rhs_dims[rhs_labels.index(label)]
    w = window[k]
    dilated = (size_in - 1) * w['lhs_dilate'] + 1
    out_size = max(0, (dilated + w['pad_lo'] + w['pad_hi'] -
                       ((taps - 1) * w['rhs_dilate'] + 1)) // w['stride'] + 1)
    count = 0
    for o in range(out_size):
      for t in range(taps):
        pos = o * w['stride'] + t * w['rhs_dilate'] - w['pad_lo']
        if 0 <= pos < dilated and pos % w['lhs_dilate'] == 0:
          count += 1
    valid *= count
  groups = re.search(r'feature_group_count=(\d+)', i.attributes)
  del groups  # The kernel's input-feature dimension is already per group.
  return 2.0 * batch * out_features * in_features * valid


def _window(attributes: str, rank: int) -> list[dict[str, int]]:
  """The `window={size=.. stride=.. pad=.. lhs_dilate=.. rhs_dilate=..}` of a convolution."""
  out = [dict(stride=1, pad_lo=0, pad_hi=0, lhs_dilate=1, rhs_dilate=1) for _ in range(rank)]
  match = re.search(r'window=\{([^}]*)\}', attributes)
  if not match:
    return out
  for field in match.group(1).split():
    key, _, value = field.partition('=')
    parts = value.split('x')
    for k, part in enumerate(parts[:rank]):
      if key == 'pad':
        lo, _, hi = part.partition('_')
        out[k]['pad_lo'], out[k]['pad_hi'] = int(lo), int(hi)
      elif key in ('stride', 'lhs_dilate', 'rhs_dilate'):
        out[k][key] = int(part)
  return out


@dataclasses.dataclass(frozen=True)
class _KernelCost:
  flops: float
  transcendentals: float
  bytes_accessed: float


def _kernel_cost_estimate(i: Instruction) -> _KernelCost | None:
  """The `pl.CostEstimate` a Pallas TPU kernel declares (in its custom call's backend config)."""
  if 'tpu_custom_call' not in i.attributes:
    return None
  match = re.search(r'backend_config=(\{.*\})\s*(?:,\s*\w+=|$)', i.attributes)
  if not match:
    return None
  try:
    config = json.loads(match.group(1))
  except json.JSONDecodeError:
    return None
  cost = config.get('cost_estimate') or config.get('custom_call_config', {}).get('cost_estimate')
  if not cost:
    return None
  return _KernelCost(flops=float(cost.get('flops', 0)),
                     transcendentals=float(cost.get('transcendentals', 0)),
                     bytes_accessed=float(cost.get('bytes_accessed', 0)))


# ---------------------------------------------------------------------------------------------
# The walk over the program
# ---------------------------------------------------------------------------------------------


def trip_count(module: hlo_lib.HloModule, computation: str, loop: Instruction) -> int | None:
  """How many times the while loop `loop` (in `computation`) runs its body, when the program
  says so: XLA's `known_trip_count`, else the counted-loop form that `lax.scan` and
  `lax.fori_loop` lower to (the condition `i < N` on a tuple element that starts at a constant
  and that the body increments by 1). None when neither is there."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"', loop.attributes)
  if known:
    return int(known.group(1))
  condition = module.computations.get((loop.called('condition') or [''])[0])
  body = module.computations.get((loop.called('body') or [''])[0])
  parent = module.computations.get(computation)
  if condition is None or body is None or parent is None or len(loop.operands) != 1:
    return None

  def constant(comp: hlo_lib.Computation, name: str) -> int | None:
    instruction = comp.behind(name)
    if instruction is None or instruction.opcode != 'constant':
      return None
    return int(instruction.literal) if re.fullmatch(r'-?\d+', instruction.literal) else None

  def element(comp: hlo_lib.Computation, name: str) -> int | None:
    instruction = comp.behind(name)
    if instruction is None or instruction.opcode != 'get-tuple-element':
      return None
    index = re.search(r'\bindex=(\d+)', instruction.attributes)
    operand = comp.by_name.get(instruction.operands[0])
    if not index or operand is None or operand.opcode != 'parameter':
      return None
    return int(index.group(1))

  compare = condition.root
  direction = re.search(r'direction=(\w+)', compare.attributes)
  if compare.opcode != 'compare' or not direction or len(compare.operands) != 2:
    return None
  k, limit = element(condition, compare.operands[0]), constant(condition, compare.operands[1])
  if direction.group(1) != 'LT' or k is None or limit is None:
    return None
  start_tuple = parent.by_name.get(loop.operands[0])
  next_tuple = body.root
  if (start_tuple is None or start_tuple.opcode != 'tuple' or next_tuple.opcode != 'tuple'
      or k >= len(start_tuple.operands) or k >= len(next_tuple.operands)):
    return None
  start = constant(parent, start_tuple.operands[k])
  step = body.by_name.get(next_tuple.operands[k])
  if start is None or step is None or step.opcode != 'add' or len(step.operands) != 2:
    return None
  a, b = step.operands
  if not ((element(body, a) == k and constant(body, b) == 1) or
          (element(body, b) == k and constant(body, a) == 1)):
    return None
  return max(0, limit - start)


def walk(model: CostModel, computation: str, factor: float, out: list, seen: tuple = (), *,
         trip_counts: bool = False, unknown_loops: list | None = None):
  """Appends (instruction, computation, cost) of every top-level instruction reachable from
  `computation`, the costliest branch of each conditional, and each loop body once (as XLA's
  cost analysis counts it) or, with `trip_counts`, times the loop's `trip_count` (what the
  program runs; a loop whose count the program does not say counts once and is appended to
  `unknown_loops`)."""
  comp = model.module.computations.get(computation)
  if comp is None or computation in seen:
    return
  seen = seen + (computation,)
  more = dict(trip_counts=trip_counts, unknown_loops=unknown_loops)
  for i in comp.instructions:
    if i.opcode == 'while':
      times = 1
      if trip_counts:
        count = trip_count(model.module, computation, i)
        if count is None and unknown_loops is not None:
          unknown_loops.append(i.name)
        times = 1 if count is None else count
      for body in i.called('body') + i.called('condition'):
        walk(model, body, factor * times, out, seen, **more)
      continue
    if i.opcode == 'conditional':
      # XLA counts each property (FLOPs, bytes) of the branch where it is largest: the FLOPs
      # are attributed from the branch with the most FLOPs, the bytes from the one with the
      # most bytes.
      branches = i.called('branch_computations') or (
          i.called('true_computation') + i.called('false_computation'))
      trials = []
      for branch in branches:
        trial = []
        walk(model, branch, factor, trial, seen, **more)
        trials.append(trial)
      if trials:
        by_flops = max(trials, key=lambda x: (sum(c.flops + c.transcendentals for *_, c in x),
                                              sum(c.bytes for *_, c in x)))
        by_bytes = max(trials, key=lambda x: (sum(c.bytes for *_, c in x),
                                              sum(c.flops for *_, c in x)))
        if by_flops is by_bytes:
          out.extend(by_flops)
        else:
          out.extend((x, comp_name, Cost(c.flops, c.transcendentals, 0.0, 0.0))
                     for x, comp_name, c in by_flops)
          out.extend((x, comp_name, Cost(0.0, 0.0, c.bytes, c.hbm_bytes))
                     for x, comp_name, c in by_bytes)
      continue
    if i.opcode in ('call', 'async-start') and not i.called('calls') == []:
      called = i.called('calls') or i.called('to_apply')
      if i.opcode == 'call':
        for c in called:
          walk(model, c, factor, out, seen, **more)
        continue
    flops, transcendentals = model.instruction_flops(computation, i)
    nbytes, hbm = model.instruction_bytes(computation, i)
    if flops or transcendentals or nbytes:
      out.append((i, computation, Cost(flops, transcendentals, nbytes, hbm).scaled(factor)))

