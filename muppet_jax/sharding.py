"""Device mesh, parameter partitioning from logical axis names, and host-local -> global batches.

The mesh has a `data` axis (one task sub-batch per device: MUPPET's heterogeneous batches) and a
`model` axis for tensor parallelism (size 1 by default). Model code names logical axes on its
parameters (`vocab`, `embed`, `mlp`, `heads`, `positions`, `heads_stack`, and `layers`, the
leading axis of scanned layer stacks, `model.scan_layers`, always replicated: every device runs
every layer); `LOGICAL_RULES` maps them onto mesh axes. With `mesh.model == 1` every parameter
is replicated.

A mesh that cannot work (more devices than there are, a `mesh.model` that does not divide a
sharded parameter dimension) fails with an `errors.ConfigError` naming the mesh field and the
dimension, before any array is placed.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from muppet_jax import errors

DATA = 'data'
MODEL = 'model'

# Logical parameter axis -> mesh axis. Feed-forward, attention-head and vocabulary dimensions
# are split over `model` (Megatron-style); the residual `embed` dimension stays whole.
LOGICAL_RULES: dict[str, str | None] = {
    'vocab': MODEL,
    'embed': None,
    'mlp': MODEL,
    'heads': MODEL,
    'kv': None,
    'positions': None,
    'layers': None,
    'heads_stack': None,
}


@dataclasses.dataclass(frozen=True)
class MeshLayout:
  """The mesh and the facts about it the trainer needs."""

  mesh: Mesh
  data_size: int  # D: devices on the data axis (one slot each per accumulation step).
  local_data_indices: tuple[int, ...]  # Positions on the data axis fed by this process.

  @property
  def batch_sharding(self) -> NamedSharding:
    """Sharding of a global batch laid out as [A, D, ...]."""
    return NamedSharding(self.mesh, P(None, DATA))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())


def manual_axes(mesh: Mesh) -> frozenset[str]:
  """The axes the per-device programs (train, eval and generation steps) are manual over:
  `data`, and every other axis too when it has a single device (`mesh.model=1`, the paper
  configs). A Pallas TPU kernel (the flash attention) needs every axis manual; with a real
  `model` axis, XLA partitions the tensor-parallel matmuls inside the step instead."""
  if all(size == 1 for name, size in mesh.shape.items() if name != DATA):
    return frozenset(mesh.axis_names)
  return frozenset({DATA})


def make_mesh(mesh_config, devices=None) -> MeshLayout:
  """Builds the (data, model) mesh from `config.mesh`; data = -1 takes every device left."""
  devices = list(jax.devices() if devices is None else devices)
  model = int(mesh_config.model)
  data = int(mesh_config.data)
  if model < 1 or (data == -1 and len(devices) % model):  # -1: every device, none left over.
    raise errors.ConfigError(
        f'mesh.model={model} must divide the number of devices ({len(devices)}); set '
        f'--config.mesh.model to a divisor of {len(devices)} (1 = no tensor parallelism)')
  if data == -1:
    data = len(devices) // model
  if data < 1 or data * model > len(devices):
    raise errors.ConfigError(
        f'mesh.data={mesh_config.data} x mesh.model={model} needs {data * model} devices but '
        f'{len(devices)} are available; lower mesh.data (-1 = all devices left)')
  if data * model < len(devices):
    devices = devices[:data * model]
  grid = np.asarray(devices, dtype=object).reshape(data, model)
  mesh = Mesh(grid, (DATA, MODEL))
  me = jax.process_index()
  local = tuple(i for i in range(data) if any(d.process_index == me for d in grid[i]))
  return MeshLayout(mesh=mesh, data_size=data, local_data_indices=local)


def _logical_names(variable) -> tuple | None:
  meta = variable.get_metadata() if hasattr(variable, 'get_metadata') else {}
  for key in ('out_sharding', 'sharding_names', 'sharding'):  # flax 0.12: 'out_sharding'.
    names = meta.get(key)
    if names is not None:
      return tuple(names)
  return None


def logical_to_mesh_spec(names: tuple | None, ndim: int,
                         rules: dict[str, str | None] = LOGICAL_RULES) -> P:
  """PartitionSpec for a parameter with logical axis `names` (None = replicated)."""
  if names is None:
    return P()
  if len(names) != ndim:
    raise ValueError(f'logical names {names} do not match a rank-{ndim} parameter')
  mesh_axes = []
  for name in names:
    if name is not None and name not in rules:
      raise KeyError(f'logical axis {name!r} has no sharding rule; known: {sorted(rules)}')
    mesh_axes.append(None if name is None else rules[name])
  return P(*mesh_axes)


def state_shardings(mesh: Mesh, state: nnx.State,
                    rules: dict[str, str | None] = LOGICAL_RULES) -> nnx.State:
  """NamedSharding for every leaf of an NNX state, from its logical axis metadata.

  Raises:
    errors.ConfigError: a mesh axis does not divide a dimension it shards (e.g. mesh.model=3
      and a vocabulary of 1312); every such logical dimension and size is named.
  """
  indivisible: dict[tuple[str, str, int], str] = {}

  def one(path, variable):
    value = variable.get_value() if hasattr(variable, 'get_value') else variable.value
    names = _logical_names(variable)
    spec = logical_to_mesh_spec(names, np.ndim(value), rules)
    # A mesh axis of size 1 shards nothing: keep those parameters simply replicated.
    spec = P(*[a if a is not None and mesh.shape[a] > 1 else None for a in spec])
    for dim, axis in enumerate(spec):
      if axis is not None and np.shape(value)[dim] % mesh.shape[axis]:
        key = (axis, names[dim], np.shape(value)[dim])
        indivisible.setdefault(key, '/'.join(str(getattr(k, 'key', k)) for k in path))
    return variable.replace(NamedSharding(mesh, spec))

  out = jax.tree_util.tree_map_with_path(one, state,
                                         is_leaf=lambda x: isinstance(x, nnx.Variable))
  if indivisible:
    axis = next(iter(indivisible))[0]
    dims = '; '.join(f'{name} dimension {size} (e.g. {where})'
                     for (_, name, size), where in indivisible.items())
    raise errors.ConfigError(
        f'mesh.{axis}={mesh.shape[axis]} does not divide the model: {dims}; choose a '
        f'mesh.{axis} that divides these sizes (1 = no tensor parallelism)')
  return out


def shard_over_data(sharding: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
  """`sharding` with the mesh's `data` axis added on one more dimension (ZeRO-1 style).

  The largest dimension that is not sharded yet and that `data` divides takes it (so the
  embedding table's vocabulary rows, a kernel's longer side); when none qualifies (scalars, a
  2-class head's bias, sizes `data` does not divide) the sharding is returned unchanged.
  """
  mesh = sharding.mesh
  data = mesh.shape[DATA]
  spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
  if data == 1 or DATA in jax.tree.leaves(spec):
    return sharding
  free = [i for i, n in enumerate(shape) if spec[i] is None and n % data == 0]
  if not free:
    return sharding
  spec[max(free, key=lambda i: shape[i])] = DATA
  return NamedSharding(mesh, P(*spec))


def optimizer_state_shardings(tx, opt_state, param_shardings, replicated: NamedSharding, *,
                              shard_moments: bool):
  """Shardings for `tx`'s state: per-parameter leaves (Adam's moments) follow their
  parameter's sharding, additionally split over `data` when `shard_moments` (ZeRO-1: each data
  replica keeps and updates 1/D of the moments; XLA all-gathers the updates); the rest (step
  counters) is replicated. `param_shardings` is `state_shardings(...)` of the parameters."""

  def moment(leaf, param_sharding):
    return shard_over_data(param_sharding, leaf.shape) if shard_moments else param_sharding

  return optax.tree_map_params(tx, moment, opt_state, param_shardings,
                               transform_non_params=lambda _: replicated)


def put_global(tree, shardings):
  """Places host values that every process holds identically (e.g. a freshly initialised
  state) as global arrays; unlike `jax.device_put` this works across processes."""

  def put(x, sharding):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = put(jax.random.key_data(x), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree, shardings)


def global_batch(layout: MeshLayout, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Host-local slots [A, D_local, ...] -> one global array [A, D, ...] sharded over `data`."""

  def place(x):
    global_shape = (x.shape[0], layout.data_size) + x.shape[2:]
    return jax.make_array_from_process_local_data(layout.batch_sharding, x, global_shape)

  return {k: place(v) for k, v in local_batch.items()}
