"""The train step on abstract shapes, and XLA's FLOPs and bytes of one update.

`abstract_step` runs stages 3 and 5 of `train.run` on shapes only (the same model, optimizer,
state, shardings and jitted step), for any list of devices (a described TPU slice included).
`step_cost` counts one whole update, loops included (XLA counts a loop body once).
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
from flax import nnx

from muppet_jax import sharding
from muppet_jax import train
from muppet_jax.compile import attribution
from muppet_jax.compile import hlo
from muppet_jax.compile.backbone import Backbone, with_layers
from muppet_jax.data.features import BatchShape
from muppet_jax.models import muppet

def abstract_batch(shape: BatchShape, accum: int, layout: sharding.MeshLayout
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch `[A, D, ...]` of one update as sharded `ShapeDtypeStruct`s."""
  return {name: jax.ShapeDtypeStruct((accum, layout.data_size) + field_shape, dtype,
                                     sharding=layout.batch_sharding)
          for name, (field_shape, dtype) in shape.field_specs().items()}


def xla_cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0] if cost else {}
  return dict(cost or {})



@dataclasses.dataclass
class AbstractStep:
  """The jitted train step and the abstract arguments it is lowered with."""

  jitted: jax.stages.Wrapped  # `train.jit_train_step(...)`.
  state: object  # TrainState of sharded ShapeDtypeStructs.
  batch: dict[str, jax.ShapeDtypeStruct]
  layout: sharding.MeshLayout

  def compile(self) -> jax.stages.Compiled:
    return self.jitted.lower(self.state, self.batch).compile()


def abstract_step(config: ml_collections.ConfigDict, backbone: Backbone, task_table, devices,
                   accum: int) -> AbstractStep:
  """Stages 3 and 5 of `train.run` on shapes: the same model, optimizer, state, shardings and
  jitted step, with abstract arguments for `devices`."""

  def make_model():  # The model `build.build_model` makes (weights are never created here).
    return muppet.build_model(config, backbone.hf_config, task_table,
                              rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))

  layout = sharding.make_mesh(config.mesh, devices=devices)
  graphdef, params, rest = nnx.split(nnx.eval_shape(make_model), nnx.Param, ...)
  program = train.step_program(config, graphdef, task_table, backbone.tokenizer_size,
                               platform=devices[0].platform)
  state = jax.eval_shape(
      lambda p, r: train.initial_state(config, p, r, program.tx, program.rng_impl), params, rest)
  state_sharding = train.state_shardings(layout, state, program.tx,
                                         bool(config.optim.shard_moments),
                                         bool(config.optim.shard_params))
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                       state_sharding)
  return AbstractStep(jitted=train.jit_train_step(program, layout, state_sharding), state=state,
               batch=abstract_batch(BatchShape.from_config(config.data), accum, layout),
               layout=layout)


@dataclasses.dataclass(frozen=True)
class StepCost:
  """XLA's cost analysis of one update on one device, and its attribution."""

  flops: float
  bytes_accessed: float
  source: str  # How it was obtained (reported in `flops_note`).
  # The same FLOPs and bytes instruction by instruction, by model part (attribution.py),
  # scaled and extrapolated like the totals.
  attribution: attribution.Attribution | None = None


@dataclasses.dataclass(frozen=True)
class ExecutableCost:
  """One update of the compiled step as it runs, on one device: every instruction counted with
  XLA's rules (`attribution.attribute`), each loop body times its trip count."""

  flops: float
  bytes: float  # XLA's bytes-accessed rules (all memory spaces).
  hbm_bytes: float  # The part in device memory (HBM).
  groups: list[dict]  # [{name, flops, bytes, hbm_bytes}] (attribution.GROUPS).
  note: str  # How loops were counted; any loop whose trip count is unknown.
  # The same count with each loop body once, over XLA's cost analysis of this executable
  # (which counts a body once): how closely the rules follow XLA's ({flops, bytes}; None where
  # XLA reports nothing, e.g. on GPU).
  coverage: dict

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def executable_cost(compiled: jax.stages.Compiled) -> ExecutableCost:
  """`ExecutableCost` of a compiled step."""
  module = hlo.parse_module(compiled.as_text())  # Parsed once for both counts.
  cost = xla_cost(compiled)
  once = attribution.attribute(
      module, xla_flops=float(cost['flops']) if 'flops' in cost else None,
      xla_bytes_accessed=float(cost['bytes accessed']) if 'bytes accessed' in cost else None)
  runs = attribution.attribute(module, trip_counts=True)
  return ExecutableCost(flops=runs.flops, bytes=runs.bytes, hbm_bytes=runs.hbm_bytes,
                        groups=[dataclasses.asdict(g) for g in runs.groups], note=runs.note,
                        coverage=once.coverage)


def step_cost(config: ml_collections.ConfigDict, backbone: Backbone, task_table, devices,
              accum: int, layers: int, compiled: jax.stages.Compiled) -> StepCost:
  """FLOPs and bytes accessed of one update, loops counted in full, and their attribution.

  XLA's cost analysis counts a while-loop body once (and, on TPU, not all of it). So with
  A > 1 accumulation steps the figures come from the same step compiled with A = 1, times A
  (the optimizer update is then counted A times instead of once: well under 1% of the FLOPs);
  and with `model.scan_layers` from the same step with unrolled layers at depths 2 and 3,
  extrapolated linearly to the real depth (the two small programs compile in a fraction of the
  time and host memory of the full unrolled one). On TPU the cost is linear in the depth
  (checked against a full 8-layer compile: FLOPs exact, bytes accessed within 4%); XLA:CPU
  counts a little more per layer as the program grows (+1.4% at 4 layers). The attribution
  of each program is combined with the same weights, group by group.
  """

  def cost_of(compiled) -> tuple[float, float, attribution.Attribution]:
    cost = xla_cost(compiled)
    xla_flops = float(cost['flops']) if cost and 'flops' in cost else None
    xla_bytes = float(cost['bytes accessed']) if cost and 'bytes accessed' in cost else None
    counted = attribution.attribute(compiled.as_text(), xla_flops=xla_flops,
                                    xla_bytes_accessed=xla_bytes)
    if xla_flops is None:  # XLA:GPU has no cost analysis: its HLO counted with the same rules.
      return counted.flops, counted.bytes, counted
    return xla_flops, xla_bytes or 0.0, counted

  def result(parts, source):
    flops = sum(w * p[0] for p, w in parts)
    nbytes = sum(w * p[1] for p, w in parts)
    combined = attribution.combine([(p[2], w) for p, w in parts], xla_flops=flops,
                                   xla_bytes_accessed=nbytes, note=source)
    return StepCost(flops, nbytes, source, combined)

  times_a = f', times A = {accum}' if accum > 1 else ''
  if not config.model.get('scan_layers', False):
    if accum == 1:
      return result([(cost_of(compiled), 1)], 'of the compiled step')
    return result([(cost_of(abstract_step(config, backbone, task_table, devices, 1).compile()),
                    accum)], f'of the same step with A = 1{times_a}')
  unrolled = config.copy_and_resolve_references()
  with unrolled.unlocked():
    unrolled.model.scan_layers = False
  if layers <= 3:  # Small enough to compile unrolled as it is.
    return result(
        [(cost_of(abstract_step(unrolled, backbone, task_table, devices, 1).compile()), accum)],
        'of the same step with unrolled layers (model.scan_layers=False) and A = 1'
        f'{times_a} (XLA counts a scan body once)')
  two, three = (
      cost_of(abstract_step(unrolled, with_layers(backbone, depth), task_table, devices,
                            1).compile())
      for depth in (2, 3))
  # f(L) = f3 + (L - 3) (f3 - f2) = (L - 2) f3 - (L - 3) f2, per update: x A.
  return result([(three, (layers - 2) * accum), (two, -(layers - 3) * accum)],
                'of the same step with unrolled layers (model.scan_layers=False) and A = 1 '
                f'at 2 and 3 layers, extrapolated linearly to {layers} layers{times_a} (XLA '
                'counts a scan body once)')
