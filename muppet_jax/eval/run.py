r"""`--mode eval`: evaluate a workdir's checkpoint on every task of its run, changing nothing.

  python -m muppet_jax.main --config configs/demo.py --workdir W --mode eval \
      [--config.eval.step=N] [--config.data.eval_examples=-1] \
      [--config.eval.write_predictions=True]

What is evaluated comes from the workdir (`workdir.py`): checkpoint `eval.step` (-1, the
default: the newest), and the run's own config record saved with it: its tasks (in task-id
order), tokenizer, backbone config, model and batch shapes, which must match the checkpoint.
How it is evaluated comes from --config: `data.eval_examples` (the first N examples of each
task's held-out split; -1 = the whole split), `data.tfds_data_dir`, the `eval` section (answer
length, generation settings) and `mesh`.

Before any mesh or model is built, the data preflight checks that every task's held-out split
is prepared (otherwise one error names the missing datasets and the prepare command). The
numbers are the ones training's own evaluation computes (`eval/evaluator.py`, the same
compiled programs); they are printed as a per-task table and written to:

  W/eval_<step>.json                         {"step", "eval_examples", "metrics": {task: {...}}}
  W/tensorboard/eval/                        scalars eval/<task>/<metric> at the step
  W/eval_<step>_predictions/<task>.jsonl     with eval.write_predictions: one line per example
                                             (question), {"id", "prediction", "gold"}

Nothing else in the workdir changes: no checkpoint is written or moved, no metrics.jsonl line
is added. A workdir without checkpoints, or an `eval.step` it does not have, stops with one
line listing the steps available (`workdir.WorkdirError`).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
from absl import logging
from flax import nnx

from muppet_jax import objective
from muppet_jax import sharding
from muppet_jax import workdir as workdir_lib
from muppet_jax.data import prepare
from muppet_jax.data import tasks
from muppet_jax.eval import evaluator as evaluator_lib


@dataclasses.dataclass
class EvalReport:
  """What `run` evaluated and wrote."""

  step: int  # The checkpoint's step.
  metrics: dict[str, dict[str, float]]  # Per task, its metrics (evaluator.TaskEvaluation).
  path: str  # W/eval_<step>.json.
  predictions_dir: str | None  # W/eval_<step>_predictions (with eval.write_predictions).


def evaluation_config(run_config: ml_collections.ConfigDict,
                      config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run's saved config with the evaluation settings of `config` (--config): the eval
  section, `data.eval_examples`, `data.tfds_data_dir` and the mesh."""
  merged = ml_collections.ConfigDict(run_config.to_dict())
  merged.eval = ml_collections.ConfigDict(config.eval.to_dict())
  merged.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
  merged.data.eval_examples = int(config.data.eval_examples)
  merged.data.tfds_data_dir = str(config.data.tfds_data_dir)
  return merged


def run(config: ml_collections.ConfigDict, workdir: str) -> EvalReport:
  """Evaluates checkpoint `config.eval.step` (-1: the newest) of the run in `workdir`.

  Raises:
    workdir.WorkdirError: no checkpoint, or none for `eval.step` (the steps are listed).
    prepare.DataNotPreparedError: a task's held-out split is not prepared.
  """
  workdir = os.fspath(workdir)
  step = int(config.eval.step)
  # The checkpoint's config record only (no arrays yet): bad steps fail here, in a second.
  run_record = workdir_lib.read_record(workdir, None if step < 0 else step)
  eval_config = evaluation_config(run_record.config, config)
  # Before any array, mesh or model: every task's held-out split must be there (offline).
  prepare.preflight(run_record.task_names, eval_config.data.tfds_data_dir,
                    splits=(tasks.VALIDATION,))

  saved = workdir_lib.read(workdir, run_record.step)
  layout = sharding.make_mesh(eval_config.mesh)
  restored = workdir_lib.rebuild(workdir, saved)
  graphdef, params, rest = nnx.split(restored.model, nnx.Param, ...)
  params = sharding.put_global(params, sharding.state_shardings(layout.mesh, params))
  rest = sharding.put_global(rest, jax.tree.map(lambda _: layout.replicated, rest))
  settings = objective.ObjectiveSettings.from_config(eval_config,
                                                     restored.data.vocab.vocab_size)
  evaluator = evaluator_lib.Evaluator(graphdef=graphdef, data=restored.data,
                                      config=eval_config, layout=layout, settings=settings,
                                      hf_config=restored.hf_config)
  limit = eval_config.data.eval_examples
  logging.info('evaluating %s step %d on %d tasks (%s)', workdir, saved.step,
               len(saved.task_names),
               'whole held-out splits' if limit < 0 else f'first {limit} examples each')
  results = evaluator.evaluate(params, rest)
  metrics = {name: r.metrics for name, r in results.items()}
  evaluator_lib.print_summary(metrics, saved.step)

  path = os.path.join(workdir, f'eval_{saved.step}.json')
  predictions_dir = None
  if eval_config.eval.write_predictions:
    predictions_dir = os.path.join(workdir, f'eval_{saved.step}_predictions')
  if jax.process_index() == 0:
    _write_json(path, {'step': saved.step, 'eval_examples': limit, 'metrics': metrics})
    _write_tensorboard(os.path.join(workdir, 'tensorboard', 'eval'), saved.step, metrics)
    if predictions_dir is not None:
      os.makedirs(predictions_dir, exist_ok=True)
      for name, result in results.items():
        with open(os.path.join(predictions_dir, f'{name}.jsonl'), 'w') as f:
          f.writelines(json.dumps(p) + '\n' for p in result.predictions)
  logging.info('wrote %s%s', path, f' and {predictions_dir}/' if predictions_dir else '')
  return EvalReport(step=saved.step, metrics=metrics, path=path,
                    predictions_dir=predictions_dir)


def _write_json(path: str, value: dict) -> None:
  """Writes through a temporary file, so that a reader never sees half a file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


def _write_tensorboard(directory: str, step: int, metrics: dict[str, dict[str, float]]) -> None:
  """Scalars eval/<task>/<metric> at `step`, in a TensorBoard run of their own."""
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

  writer = SummaryWriter(directory)
  try:
    for task, values in metrics.items():
      for key, value in values.items():
        writer.add_scalar(f'eval/{task}/{key}', float(value), step)
  finally:
    writer.close()
