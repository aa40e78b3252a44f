"""Reading the optimized HLO text of a compiled step: its computations, instructions, source
frames, and collectives.

`parse_module(compiled.as_text())` gives every computation of the program with its
instructions (result shape, opcode, operands, called computations, and the JAX source stack of
each instruction from the module's stack-frame table). `hlo_collectives` counts the collectives.
The byte and FLOP attribution built on this is in `attribution.py`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import re

COLLECTIVE_KINDS = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
                    'collective-permute', 'collective-broadcast', 'ragged-all-to-all')
# One HLO instruction: `[ROOT] %name = <shape> <opcode>(`; the shape may be a tuple.
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\(',
                          re.MULTILINE)
# One array in a shape: dtype, dimensions, and the layout in braces when printed
# (`f32[8,128]{1,0:T(8,128)S(1)}`: tiling, then the memory space S(n); none = HBM / default).
_ARRAY_SHAPE = re.compile(r'\b(pred|[suf]\d+|bf16|f8e\w+|c64|c128|token)\[([\d,]*)\](\{[^}]*\})?')
_DTYPE_BYTES = {'pred': 1, 'bf16': 2, 'c64': 8, 'c128': 16, 'token': 0}
_MEMORY_SPACE = re.compile(r'S\((\d+)\)')
# The first tile of a TPU layout, with the packing sub-tile that may follow: `T(8,128)(2,1)`.
_TILE = re.compile(r'T\(([\d,]+)\)(?:\((\d+),1\))?')


@dataclasses.dataclass(frozen=True)
class Array:
  """One array of a (possibly tuple) HLO shape."""

  dtype: str
  dims: tuple[int, ...]
  memory_space: int  # 0 = device memory (HBM); 1 = on-chip memory on TPU; 2 = ...
  # The minor-most tile of the layout (`T(8,128)` -> (8, 128); bf16's `T(8,128)(2,1)` packs
  # two rows per sublane -> (16, 128)); () when the layout has none (CPU, GPU).
  tile: tuple[int, ...] = ()
  minor_to_major: tuple[int, ...] = ()  # The layout's dimension order, minor first.

  @property
  def elements(self) -> int:
    return math.prod(self.dims)

  @property
  def bytes(self) -> int:
    return _dtype_bytes(self.dtype) * self.elements

  @property
  def padded_bytes(self) -> int:
    """Bytes as stored: the two physically minor dimensions (by the layout's minor-to-major
    order) rounded up to whole tiles. A TPU vector of 64 lanes occupies 128 (head_dim 64 arrays
    take twice their logical size), a scalar a whole tile row; XLA:TPU's cost analysis counts
    these sizes. Without a tile (CPU, GPU): the logical bytes."""
    if not self.tile:
      return self.bytes
    dims = list(self.dims) or [1]
    order = list(self.minor_to_major) or list(range(len(dims) - 1, -1, -1))
    for k, size in enumerate(reversed(self.tile)):
      if k < len(order) and order[k] < len(dims):
        d = order[k]
        dims[d] = -(-dims[d] // size) * size
    return _dtype_bytes(self.dtype) * math.prod(dims)


def _dtype_bytes(dtype: str) -> int:
  size = _DTYPE_BYTES.get(dtype)
  if size is None:  # f32, s8, u4, f8e4m3fn, ...: the bit width after the letter.
    size = max(1, int(re.sub(r'\D', '', dtype.split('e')[0]) or 8) // 8)
  return size


@functools.lru_cache(maxsize=None)
def parse_shape(shape: str) -> tuple[Array, ...]:
  """The arrays of an HLO shape string (`f32[1024,64]{1,0}` or a tuple of them)."""
  arrays = []
  for dtype, dims, layout in _ARRAY_SHAPE.findall(shape):
    space = _MEMORY_SPACE.search(layout or '')
    tile = _TILE.search(layout or '')
    tile_dims = ()
    if tile:
      tile_dims = tuple(int(d) for d in tile.group(1).split(','))
      if tile.group(2) and len(tile_dims) == 2:  # Packed rows: (2,1) for 16-bit, (4,1) 8-bit.
        tile_dims = (tile_dims[0] * int(tile.group(2)), tile_dims[1])
    order = re.match(r'\{([\d,]*)', layout or '')
    arrays.append(Array(dtype=dtype, dims=tuple(int(d) for d in dims.split(',') if d),
                        memory_space=int(space.group(1)) if space else 0, tile=tile_dims,
                        minor_to_major=tuple(int(d) for d in order.group(1).split(',') if d)
                        if order else ()))
  return tuple(arrays)


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string (`f32[1024,64]{1,0}` or a tuple of them)."""
  return sum(a.bytes for a in parse_shape(shape))


# ---------------------------------------------------------------------------------------------
# The module: computations, instructions, source frames
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Instruction:
  """One HLO instruction as printed in the optimized module."""

  name: str
  opcode: str
  shape: str  # The result shape as printed (a tuple for multi-output instructions).
  operands: tuple[str, ...]  # Names of the operand instructions (same computation).
  attributes: str  # Everything after the operand list (called computations, config, ...).
  frame: int  # The JAX source stack-frame id (0: none).
  parameter_number: int = -1  # For a parameter: its number in the computation's signature.
  literal: str = ''  # For a constant: its value as printed (`6`, `{1, 2}`, ...).

  @functools.cached_property
  def arrays(self) -> tuple[Array, ...]:
    return parse_shape(self.shape)

  def called(self, key: str) -> list[str]:
    """Computations named by attribute `key` (`calls`, `to_apply`, `body`, `condition`,
    `branch_computations`, `true_computation`, `false_computation`)."""
    match = re.search(rf'\b{key}=(\{{[^}}]*\}}|%[\w.\-]+)', self.attributes)
    if not match:
      return []
    return re.findall(r'%([\w.\-]+)', match.group(1))


@dataclasses.dataclass
class Computation:
  name: str
  instructions: list[Instruction]
  is_entry: bool

  @functools.cached_property
  def by_name(self) -> dict[str, Instruction]:
    return {i.name: i for i in self.instructions}

  @functools.cached_property
  def users(self) -> dict[str, list[Instruction]]:
    users = collections.defaultdict(list)
    for i in self.instructions:
      for o in i.operands:
        users[o].append(i)
    return users

  @property
  def root(self) -> Instruction:
    return self.instructions[-1]

  def behind(self, name: str, views: tuple[str, ...] = ('copy', 'bitcast')
             ) -> Instruction | None:
    """The instruction `name`, or the one it is a view of through the `views` opcodes (copies
    and bitcasts by default): what computes the value. None for an unknown name."""
    instruction = self.by_name.get(name)
    while instruction is not None and instruction.opcode in views and instruction.operands:
      operand = self.by_name.get(instruction.operands[0])
      if operand is None:
        break
      instruction = operand
    return instruction


@dataclasses.dataclass(frozen=True)
class Frame:
  """One JAX source location of a stack: innermost call first in `HloModule.stack`."""

  function: str  # e.g. 'RobertaSelfAttention.__call__'.
  file: str  # The source file's path as traced.
  line: int


@dataclasses.dataclass
class HloModule:
  computations: dict[str, Computation]
  entry: str
  # Stack-frame table: frame id -> (Frame, parent frame id or 0).
  frames: dict[int, tuple[Frame, int]]

  def stack(self, frame: int) -> tuple[Frame, ...]:
    """The source stack of frame id `frame`, innermost call first (empty for 0)."""
    out, seen = [], set()
    while frame and frame in self.frames and frame not in seen:
      seen.add(frame)
      location, frame = self.frames[frame]
      out.append(location)
    return tuple(out)


_COMPUTATION_HEADER = re.compile(r'^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$')
_INSTRUCTION_HEAD = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\(')
_FRAME_ID = re.compile(r'stack_frame_id=(\d+)')


def _split_operands(text: str, start: int) -> tuple[str, str]:
  """(operand text, rest of the line) for the parenthesised list opening at text[start]."""
  depth = 0
  for i in range(start, len(text)):
    c = text[i]
    if c in '({[':
      depth += 1
    elif c in ')}]':
      depth -= 1
      if depth == 0:
        return text[start + 1:i], text[i + 1:]
  return text[start + 1:], ''


def _frame_table(text: str) -> dict[int, tuple[Frame, int]]:
  """The module's FileNames / FunctionNames / FileLocations / StackFrames tables.

  Printed ids are 1-based; a frame's printed `parent_frame_id` is the parent's id + 1
  (so 1 = no parent, i.e. the outermost call).
  """

  def section(name: str) -> list[str]:
    marker = f'\n{name}\n'
    if marker not in text:
      return []
    body = text.split(marker, 1)[1].split('\n\n', 1)[0]
    return [l for l in body.splitlines() if l.strip()]

  def names(name: str) -> dict[int, str]:
    out = {}
    for line in section(name):
      key, _, value = line.partition(' ')
      out[int(key)] = value.strip().strip('"')
    return out

  files, functions = names('FileNames'), names('FunctionNames')
  locations = {}
  for line in section('FileLocations'):
    key, _, rest = line.partition(' ')
    fields = dict(re.findall(r'(\w+)=(\d+)', rest))
    locations[int(key)] = Frame(function=functions.get(int(fields['function_name_id']), '?'),
                                file=files.get(int(fields['file_name_id']), '?'),
                                line=int(fields.get('line', 0)))
  frames = {}
  for line in section('StackFrames'):
    key, _, rest = line.partition(' ')
    fields = dict(re.findall(r'(\w+)=(\d+)', rest))
    location = locations.get(int(fields['file_location_id']))
    if location is not None:
      frames[int(key)] = (location, int(fields['parent_frame_id']) - 1)
  return frames


def parse_module(text: str) -> HloModule:
  """Parses the text of an optimized HLO module (`compiled.as_text()`)."""
  computations: dict[str, Computation] = {}
  entry = ''
  current: Computation | None = None
  for line in text.splitlines():
    if current is None:
      header = _COMPUTATION_HEADER.match(line)
      if header:
        current = Computation(name=header.group(2), instructions=[],
                              is_entry=bool(header.group(1)))
        if current.is_entry:
          entry = current.name
      continue
    if line.startswith('}'):
      computations[current.name] = current
      current = None
      continue
    head = _INSTRUCTION_HEAD.match(line)
    if not head:
      continue
    name, shape, opcode = head.groups()
    operand_text, rest = _split_operands(line, head.end() - 1)
    operands = () if opcode == 'constant' else tuple(re.findall(r'%([\w.\-]+)', operand_text))
    frame = _FRAME_ID.search(rest)
    number = operand_text.strip()
    current.instructions.append(Instruction(
        name=name, opcode=opcode, shape=shape, operands=operands, attributes=rest,
        frame=int(frame.group(1)) if frame else 0,
        parameter_number=int(number) if opcode == 'parameter' and number.isdigit() else -1,
        literal=number if opcode == 'constant' else ''))
  return HloModule(computations=computations, entry=entry, frames=_frame_table(text))


# ---------------------------------------------------------------------------------------------
# Collectives
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Collective:
  """One kind of collective in the compiled program."""

  kind: str  # 'all-reduce', 'all-gather', 'reduce-scatter', ...
  count: int  # Instructions of this kind in the program text.
  bytes: int  # Sum of their result sizes on one device.


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
