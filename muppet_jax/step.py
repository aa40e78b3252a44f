"""Pure train and eval steps: heterogeneous slots, gradient accumulation, one optimizer update.

One update has S = A x D slots (A accumulation steps, D devices on the mesh's `data` axis); slot
s = a * D + d is device d's sub-batch at accumulation step a and holds one task's examples.
Inside `jax.shard_map` over `data`, every device scans over its A slots: it computes its slot's
family loss (`objective.slot_loss`, a `lax.switch` on the family, so only that family's
computation runs) and the gradient of its share of the average (the slot loss / (A x D)),
and sums them (at A = 1 without a loop). Outside, one `psum` over devices completes the
average. Every slot weighs the same (the paper: "the gradients from each task are
averaged"); fairseq instead weighs by sample size.

Two properties of `shard_map` shape the code: replicated parameters are made device-varying
with `pcast` before `grad` and `switch`, otherwise JAX inserts a psum inside each branch (devices
on different branches deadlock, or the gradient comes back D times too large); and every
collective sits outside the branches and the scan.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from muppet_jax import objective
from muppet_jax import rng as rng_lib
from muppet_jax.data.features import TaskTable
from muppet_jax import sharding
from muppet_jax.sharding import DATA


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (the model's graph is static, kept aside)."""

  step: jax.Array  # [] int32, updates done.
  params: nnx.State  # Trainable parameters (nnx.Param).
  rest: nnx.State  # Non-trainable model state: the dropout RNG streams, BART's logits bias.
  opt_state: optax.OptState
  rng: jax.Array  # Base key data (rng.py); each slot's key derives from (rng, step, slot).


@flax.struct.dataclass
class StepMetrics:
  """Per-update metrics; per-task arrays are indexed by task id (fixed size T)."""

  loss: jax.Array  # [] mean of the slot objectives (what the gradient is of).
  grad_norm: jax.Array  # [] global gradient norm before clipping.
  learning_rate: jax.Array  # [] learning rate of this update.
  task_loss: jax.Array  # [T] summed slot objectives per task.
  task_unscaled_loss: jax.Array  # [T] summed unscaled task losses (no log(n), no R3F).
  task_sym_kl: jax.Array  # [T] summed R3F symmetric KL.
  task_slots: jax.Array  # [T] slots per task.
  task_examples: jax.Array  # [T] examples per task.
  task_correct: jax.Array  # [T] correct predictions per task (classification, choice).
  tokens: jax.Array  # [] real (non-pad) encoder + decoder tokens in the update.


def slot_rng(base: jax.Array, step: jax.Array, slot: jax.Array) -> jax.Array:
  """The key of slot `slot` at update `step`: independent of how slots map onto devices."""
  return jax.random.fold_in(jax.random.fold_in(base, step), slot)


def _per_task(task_id: jax.Array, value: jax.Array, num_tasks: int) -> jax.Array:
  return jax.nn.one_hot(task_id, num_tasks, dtype=jnp.float32) * value.astype(jnp.float32)


def make_gradient_fn(graphdef: nnx.GraphDef, task_table: TaskTable,
                     settings: objective.ObjectiveSettings, mesh: jax.sharding.Mesh,
                     rng_impl: str = 'threefry', grad_specs=None):
  """Returns `(params, rest, batch [A, D, ...], rng, step) -> (grads, metric_sums)`.

  `grads` is the average over the S = A x D slots of each slot's gradient; `metric_sums` are
  sums over the slots (per-task arrays of size T). `rng` is the base key's data for the
  generator `rng_impl` (rng.py).

  `grad_specs` (a PartitionSpec per parameter; default: all replicated) says how the average
  leaves: a leaf whose spec splits a dimension over `data` is reduce-scattered onto that split
  (`optim.shard_params`: each device gets the sum of its own shard only, half the bytes of an
  all-reduce), every other leaf is all-reduced.
  """
  num_tasks = len(task_table)
  num_devices = mesh.shape[DATA]

  def slot_objective(params, rest, slot_batch, rng, weight):
    model = nnx.merge(graphdef, params, rest)
    loss, metrics = objective.slot_loss(model, slot_batch, rng, task_table=task_table,
                                        settings=settings, deterministic=False)
    # Differentiate the slot's share of the average (1 / (A x D)): the gradients come out
    # already scaled, so that the average over slots is one psum, with no pass over every
    # gradient to divide it (on a TPU that pass reads and writes all the float32 gradients).
    return loss * weight, (loss, metrics)

  grad_fn = jax.value_and_grad(slot_objective, has_aux=True)

  def per_device(specs, dtypes, params, rest, batch, rng, step):
    """Runs on one device: batch fields are [A, 1, ...] (this device's slots); `specs` are the
    gradients' out_specs, `dtypes` the parameters' own (their gathered copies may be cast)."""
    # Make the replicated parameters device-varying before grad/switch (see the module doc).
    params = jax.tree.map(lambda p: jax.lax.pcast(p, DATA, to='varying'), params)
    rest = jax.tree.map(lambda p: jax.lax.pcast(p, DATA, to='varying'), rest)
    device = jax.lax.axis_index(DATA)
    rng = rng_lib.wrap(rng, rng_impl)
    local = jax.tree.map(lambda x: x[:, 0], batch)  # [A, ...]
    accum_steps = local['task_id'].shape[0]
    weight = jnp.float32(1.0 / (accum_steps * num_devices))

    def accumulate(carry, inputs):
      grads_sum, metric_sums = carry
      a, slot_batch = inputs
      slot = a * num_devices + device
      (_, (loss, m)), grads = grad_fn(params, rest, slot_batch, slot_rng(rng, step, slot),
                                      weight)
      task = slot_batch['task_id']
      tokens = jnp.sum(slot_batch['segment_ids'] > 0) + jnp.sum(slot_batch['decoder_mask'])
      sums = {
          'loss': loss.astype(jnp.float32),
          'task_loss': _per_task(task, loss, num_tasks),
          'task_unscaled_loss': _per_task(task, m.unscaled_loss, num_tasks),
          'task_sym_kl': _per_task(task, m.sym_kl, num_tasks),
          'task_slots': _per_task(task, jnp.float32(1), num_tasks),
          'task_examples': _per_task(task, m.num_examples, num_tasks),
          'task_correct': _per_task(task, m.correct, num_tasks),
          'tokens': tokens.astype(jnp.float32),
      }
      # A kernel gathered in the matmul dtype has its gradient in that dtype: the master's
      # gradient is the same value (the model's cast of a master kernel transposes to this
      # conversion), summed in the master's dtype. Not upcasting the kernel itself: XLA may
      # drop a bfloat16 -> float32 -> bfloat16 round trip and gather float32 again.
      grads_sum = jax.tree.map(lambda s, g: s + g.astype(s.dtype), grads_sum, grads)
      metric_sums = jax.tree.map(jnp.add, metric_sums, sums)
      return (grads_sum, metric_sums), None

    zero_metrics = {
        'loss': jnp.float32(0), 'tokens': jnp.float32(0),
        **{k: jnp.zeros((num_tasks,), jnp.float32) for k in (
            'task_loss', 'task_unscaled_loss', 'task_sym_kl', 'task_slots', 'task_examples',
            'task_correct')}}
    zero_metrics = jax.tree.map(lambda x: jax.lax.pcast(x, DATA, to='varying'), zero_metrics)
    zero_grads = jax.tree.map(lambda p, d: jnp.zeros_like(p, dtype=d), params, dtypes)
    if accum_steps == 1:
      # No loop at A = 1: XLA:TPU hoists a copy of the forward out of a one-trip loop and
      # keeps the one inside (loop-invariant code motion), running the forward twice.
      slot_batch = jax.tree.map(lambda x: x[0], local)
      (grads_sum, metric_sums), _ = accumulate((zero_grads, zero_metrics),
                                               (jnp.int32(0), slot_batch))
    else:
      (grads_sum, metric_sums), _ = jax.lax.scan(
          accumulate, (zero_grads, zero_metrics), (jnp.arange(accum_steps), local))
    # The only collectives of the step: add the (pre-scaled) gradients and the metrics over
    # all S slots: the gradients' sum is their average.
    grads = jax.tree.map(_sum_over_data, grads_sum, specs)
    metric_sums = jax.lax.psum(metric_sums, DATA)
    return grads, metric_sums

  def gradients(params, rest, batch, rng, step):
    specs = (jax.tree.map(lambda _: P(), params) if grad_specs is None else
             jax.tree.map(_data_only, grad_specs, params))
    dtypes = jax.tree.map(lambda p: p.dtype, params)
    if grad_specs is not None and settings.matmul_dtype:
      # Split weights are gathered into every device at the shard_map's entry: cast the
      # matmul kernels on the shards first, so that the gather moves half the bytes (the
      # model casts them to this dtype anyway, `objective.cast_matmul_kernels`).
      # Pinned to the weights' split: otherwise XLA may gather first and cast after. (Whole
      # weights, as `train.jit_train_step` passes their specs too, take the same path: the
      # cast then runs once per update instead of once per slot, with the same values.)
      params = jax.lax.with_sharding_constraint(
          objective.cast_matmul_kernels(params, jnp.dtype(settings.matmul_dtype)),
          jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec), grad_specs))
    return jax.shard_map(
        functools.partial(per_device, specs, dtypes), mesh=mesh,
        in_specs=(P(), P(), P(None, DATA), P(), P()), out_specs=(specs, P()),
        axis_names=sharding.manual_axes(mesh))(params, rest, batch, rng, step)

  return gradients


def _data_only(spec: P, _) -> P:
  """`spec` with only its `data` entries (the axis the gradient function is manual over)."""
  return P(*[DATA if DATA in jax.tree.leaves(entry) else None for entry in spec])


def _sum_over_data(grad: jax.Array, spec: P) -> jax.Array:
  """The sum of `grad` over the devices of `data`: reduce-scattered onto the dimension `spec`
  splits over `data`, else all-reduced."""
  for dim, entry in enumerate(spec):
    if entry == DATA:
      return jax.lax.psum_scatter(grad, DATA, scatter_dimension=dim, tiled=True)
  return jax.lax.psum(grad, DATA)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, task_table: TaskTable,
                    settings: objective.ObjectiveSettings, mesh: jax.sharding.Mesh,
                    rng_impl: str = 'threefry', grad_specs=None
                    ) -> Callable[[TrainState, dict[str, jax.Array]],
                                  tuple[TrainState, StepMetrics]]:
  """Returns the pure train step `(state, batch [A, D, ...]) -> (state, metrics)`.

  Jit it where it is called, with the state's shardings and `donate_argnums=0`. `grad_specs`:
  the parameters' PartitionSpecs when they are split over `data` (`optim.shard_params`), so
  that the gradients are reduce-scattered onto the same split (`make_gradient_fn`).
  """
  gradients = make_gradient_fn(graphdef, task_table, settings, mesh, rng_impl, grad_specs)

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    grads, sums = gradients(state.params, state.rest, batch, state.rng, state.step)
    num_slots = batch['task_id'].shape[0] * batch['task_id'].shape[1]
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics = StepMetrics(
        loss=sums['loss'] / num_slots, grad_norm=optax.global_norm(grads),
        learning_rate=jnp.asarray(schedule(state.step), jnp.float32),
        task_loss=sums['task_loss'], task_unscaled_loss=sums['task_unscaled_loss'],
        task_sym_kl=sums['task_sym_kl'], task_slots=sums['task_slots'],
        task_examples=sums['task_examples'], task_correct=sums['task_correct'],
        tokens=sums['tokens'])
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, task_table: TaskTable,
                   settings: objective.ObjectiveSettings, mesh: jax.sharding.Mesh):
  """Returns `(params, rest, batch [A, D, ...]) -> SlotPredictions [A, D, ...]`.

  Every device predicts its own slots with dropout off; there are no collectives.
  """

  def per_device(params, rest, batch):
    model = nnx.merge(graphdef, params, rest)
    local = jax.tree.map(lambda x: x[:, 0], batch)
    preds = jax.lax.map(lambda b: objective.slot_predictions(
        model, b, task_table=task_table, settings=settings), local)
    return jax.tree.map(lambda x: x[:, None], preds)

  def eval_step(params, rest, batch):
    return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(None, DATA)),
                         out_specs=P(None, DATA), axis_names=sharding.manual_axes(mesh))(
                             params, rest, batch)

  return eval_step
