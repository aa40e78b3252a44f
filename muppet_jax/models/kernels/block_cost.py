"""A Pallas kernel's cost estimate from its block loop: what the TPU pipeline copies between HBM
and VMEM as it walks the grid, and the work of every grid step (`pl.CostEstimate`, which XLA's
cost analysis reports for the kernel)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
from jax.experimental import pallas as pl

NUM_LANES = 128  # TPU arrays are stored in tiles of 128 lanes on the minor dimension.



@dataclasses.dataclass(frozen=True)
class Operand:
  """One blocked input or output of a kernel, for `block_loop_cost`."""

  block_bytes: int  # Bytes of one block.
  index_map: Callable[..., tuple[int, ...]]  # Grid indices -> block indices.
  output: bool = False


def block_loop_cost(grid: Sequence[int], operands: Sequence[Operand], step_flops: int,
                    step_transcendentals: int) -> pl.CostEstimate:
  """The kernel's cost by walking its grid in order, as the Pallas TPU pipeline runs it: an
  input block is copied from HBM when its block index differs from the previous step's, an
  output block is written back when its index is about to change (and at the end); every
  grid step does `step_flops` and `step_transcendentals`."""
  nbytes = 0
  previous: list = [None] * len(operands)
  steps = 0
  for point in np.ndindex(*grid):
    steps += 1
    for k, operand in enumerate(operands):
      index = tuple(int(i) for i in operand.index_map(*point))
      if index != previous[k]:
        if operand.output:
          if previous[k] is not None:
            nbytes += operand.block_bytes  # The previous block is written back.
        else:
          nbytes += operand.block_bytes
        previous[k] = index
  nbytes += sum(o.block_bytes for o in operands if o.output)  # The last blocks.
  return pl.CostEstimate(flops=int(steps * step_flops),
                         transcendentals=int(steps * step_transcendentals),
                         bytes_accessed=int(nbytes))


def padded_block_bytes(shape: Sequence[int], dtype) -> int:
  """Bytes one block moves between HBM and VMEM: TPU arrays are stored in tiles of 128
  lanes, so a block whose minor dimension is 64 (head_dim 64) moves 128 lanes per row."""
  shape = list(shape)
  shape[-1] = -(-shape[-1] // NUM_LANES) * NUM_LANES
  return math.prod(shape) * np.dtype(dtype).itemsize
