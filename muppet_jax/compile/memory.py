"""Device memory of a step: per-device bytes of sharded state, and the TPU compiler's
out-of-memory verdict for programs that do not fit."""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import numpy as np

def per_device_bytes(abstract_tree) -> int:
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
