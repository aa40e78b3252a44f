"""An experiment as a plan: the ordered list of its runs, each a normal run config.

`make_plan(experiment)` expands every stage's grid (`spec.py`) into `PlannedRun`s: a stable,
readable id (the stage name and each axis value, e.g. `ft-rte-pft-n10-s0-lr1e-05-s1`), the
config file and the overrides that make its config, the values of the study's axes for the
report, and the runs it starts from. Pre-finetuning stages come first, so every run starts
after the runs it needs. Every run's config is built and validated here (unknown fields, bad
values, unknown tasks, task subsets that do not fit): a plan that exists can be started.

Overrides that name a path inside the experiment's root (a fine-tuning run's
`finetune.from_workdir`) hold `{root}`, filled in by `run_config`, so that a plan does not
depend on where its root is mounted.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import ml_collections

from muppet_jax import config_lib
from muppet_jax import errors
from muppet_jax.experiments import spec

# The plan of the experiment in a root, rewritten by every `run` (the report reads it).
EXPERIMENT_FILE = 'experiment.json'
# Where the runs' workdirs are, under the root.
RUNS_DIR = 'runs'
ROOT_PLACEHOLDER = '{root}'


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  """One run of a plan.

  Attributes:
    index: its position in the plan (`--index`).
    id: stable, readable, unique in the plan; its workdir is ROOT/runs/<id>.
    stage: the stage it comes from.
    kind: spec.PREFINETUNE or spec.FINETUNE.
    config: the config file, 'FILE[:ARG]'.
    overrides: {'section.field': value}, sorted by key (strings may hold '{root}').
    axes: the study's values for the report: every axis of `spec.AXES` that applies (the
      run's own config values for hyperparameters that are not axes; a fine-tuning run takes
      `num_tasks` and `batching` from the run it starts from, `num_tasks` 0 without
      pre-finetuning).
    after: ids of the runs of this plan it starts from (they run first).
    pre_finetuned: fine-tuning runs: whether the start is a pre-finetuned model.
    tasks: pre-finetuning runs: their tasks.
  """

  index: int
  id: str
  stage: str
  kind: str
  config: str
  overrides: dict[str, Any]
  axes: dict[str, Any]
  after: tuple[str, ...] = ()
  pre_finetuned: bool | None = None
  tasks: tuple[str, ...] = ()

  def workdir(self, root: str) -> str:
    return os.path.join(root, RUNS_DIR, self.id)

  def to_json(self) -> dict:
    record = dataclasses.asdict(self)
    record['after'], record['tasks'] = list(self.after), list(self.tasks)
    return record

  @classmethod
  def from_json(cls, record: Mapping[str, Any]) -> 'PlannedRun':
    fields = {f.name for f in dataclasses.fields(cls)}
    record = {k: v for k, v in record.items() if k in fields}
    return cls(**{**record, 'after': tuple(record.get('after', ())),
                  'tasks': tuple(record.get('tasks', ()))})

  def settings(self) -> tuple[str, dict]:
    """What makes the run's config (compared when a root is reused)."""
    return self.config, self.overrides


@dataclasses.dataclass(frozen=True)
class Plan:
  """An experiment's runs in the order they run."""

  experiment: str  # The experiment's name.
  file: str  # The experiment file it came from ('FILE[:ARG]').
  runs: tuple[PlannedRun, ...]
  description: str = ''

  def by_id(self) -> dict[str, PlannedRun]:
    return {run.id: run for run in self.runs}

  def to_json(self) -> dict:
    return {'experiment': self.experiment, 'file': self.file, 'description': self.description,
            'runs': [run.to_json() for run in self.runs]}

  @classmethod
  def from_json(cls, record: Mapping[str, Any]) -> 'Plan':
    return cls(experiment=record['experiment'], file=record.get('file', ''),
               description=record.get('description', ''),
               runs=tuple(PlannedRun.from_json(r) for r in record['runs']))


def read_recorded(root: str) -> Plan | None:
  """The plan recorded in ROOT/experiment.json, or None if there is none.

  Raises:
    spec.ExperimentError: the file exists but cannot be read.
  """
  path = os.path.join(root, EXPERIMENT_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return Plan.from_json(json.load(f))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise spec.ExperimentError(f'{path} cannot be read ({e}); it is not an experiment root '
                               'written by muppet_jax.experiments') from e


# --- Configs ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _base_config(config: str) -> ml_collections.ConfigDict:
  """`get_config(ARG)` of 'FILE[:ARG]' (cached: a grid loads each file once per task)."""
  filename, *args = config.split(':', 1)
  if not os.path.isfile(filename):
    raise spec.ExperimentError(f'config file {filename} does not exist')
  name = '_muppet_experiment_config_' + re.sub(r'\W', '_', os.path.abspath(filename))
  module_spec = importlib.util.spec_from_file_location(name, filename)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    return module.get_config(*args)
  except errors.UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (the config file's error, named)
    raise spec.ExperimentError(f'config {config}: {type(e).__name__}: {e}') from e


def _fill_root(value: Any, root: str) -> Any:
  return value.replace(ROOT_PLACEHOLDER, root) if isinstance(value, str) else value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
                    where: str, root: str = '/ROOT') -> ml_collections.ConfigDict:
  """A copy of `config` with `overrides` set (type-checked, locked) and validated.

  Raises:
    spec.ExperimentError: an unknown field (closest ones named), a value of the wrong type,
      or a value `config_lib.validate` rejects.
  """
  config = config.copy_and_resolve_references()
  config.lock()
  for key, value in overrides.items():
    unknown = config_lib.unknown_key_message(config, key)
    if unknown:
      raise spec.ExperimentError(f'{where}: {unknown}')
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node[part]
    try:
      node[leaf] = _fill_root(value, root)
    except (TypeError, ValueError) as e:
      raise spec.ExperimentError(f'{where}: {key}={value!r}: {e}') from e
  try:
    config_lib.validate(config)
  except errors.ConfigError as e:
    raise spec.ExperimentError(f'{where}: {e}') from e
  return config


def run_config(run: PlannedRun, root: str) -> ml_collections.ConfigDict:
  """The run's config: its config file with its overrides, `{root}` filled in."""
  return apply_overrides(_base_config(run.config), run.overrides, f'run {run.id}',
                         root=os.path.abspath(root))


# --- Ids ----------------------------------------------------------------------------------------


def _value_tag(name: str, value: Any) -> str:
  axis = spec.AXES[name]
  if name == 'task':
    return value.removeprefix('muppet_')
  if name == 'num_tasks' and value == -1:
    return axis.tag + 'all'
  if name == 'batching':
    return spec.BATCHING_TAGS.get(value, str(value))
  if isinstance(value, float):
    return f'{axis.tag}{value:g}'
  return f'{axis.tag}{value}'


def _safe(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.+-]', '_', text)


# --- Expansion ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _StartPoint:
  """One concrete starting point of a fine-tuning run."""

  tag: str  # Its part of the run id.
  label: str  # The report's start name.
  pre_finetuned: bool
  overrides: dict[str, Any]
  after: tuple[str, ...]
  inherited: dict[str, Any]  # num_tasks, batching of the start.
  reuse_head: Any


def _starts(start: spec.Start, planned: list[PlannedRun], where: str) -> list[_StartPoint]:
  """The concrete starting points of one 'start' value."""
  if start.stage is None:
    overrides = {}
    if start.init_from:
      overrides = {'model.init_from': start.init_from, 'data.tokenizer': ''}
    return [_StartPoint(tag=_safe(start.name), label=start.name,
                        pre_finetuned=start.pre_finetuned, overrides=overrides, after=(),
                        inherited={'num_tasks': None if start.pre_finetuned else 0,
                                   'batching': None},
                        reuse_head=False)]
  if start.root is None:
    runs = [r for r in planned if r.stage == start.stage]
    if not runs:
      raise spec.ExperimentError(
          f'{where}: spec.from_stage({start.stage!r}) names no pre-finetuning stage of this '
          'experiment (pre-finetuning stages are planned first)')
    base, after = ROOT_PLACEHOLDER, True
  else:
    other = read_recorded(start.root)
    if other is None:
      raise spec.ExperimentError(f'{where}: spec.from_stage({start.stage!r}, root='
                                 f'{start.root!r}): {start.root} holds no experiment')
    runs = [r for r in other.runs if r.stage == start.stage and r.kind == spec.PREFINETUNE]
    if not runs:
      raise spec.ExperimentError(f'{where}: {start.root} has no pre-finetuning stage '
                                 f'{start.stage!r} (experiment {other.experiment!r})')
    base, after = os.path.abspath(start.root), False
  return [_StartPoint(tag=run.id, label=run.id, pre_finetuned=True,
                      overrides={'finetune.from_workdir': f'{base}/{RUNS_DIR}/{run.id}',
                                 'model.init_from': ''},
                      after=(run.id,) if after else (),
                      inherited={'num_tasks': run.axes.get('num_tasks'),
                                 'batching': run.axes.get('batching')},
                      reuse_head=start.reuse_head)
          for run in runs]


def _expand_values(stage: spec.Stage, planned: list[PlannedRun], where: str
                   ) -> list[tuple[str, list]]:
  """Each axis with its concrete values (tasks resolved, starts expanded)."""
  from muppet_jax.data import tasks  # pylint: disable=g-import-not-at-top  (seqio, TF)

  axes = []
  for name, values in stage.axes.items():
    if name == 'task':
      try:
        values = [tasks.resolve_task_name(str(v)) for v in values]
      except errors.UserError as e:
        raise spec.ExperimentError(f"{where}: axis 'task': {e}") from e
    elif name == 'start':
      values = [p for start in values for p in _starts(start, planned, where)]
    axes.append((name, list(values)))
  return axes


def _user_overrides(stage: spec.Stage, point: dict, where: str) -> dict[str, Any]:
  overrides = stage.overrides
  if callable(overrides):
    try:
      overrides = overrides(dict(point))
    except Exception as e:  # pylint: disable=broad-except  (the experiment file's bug, named)
      raise spec.ExperimentError(f'{where}: its overrides function failed for {point}: '
                                 f'{type(e).__name__}: {e}') from e
  if not isinstance(overrides, Mapping):
    raise spec.ExperimentError(f'{where}: overrides must be a dict of field -> value')
  return dict(overrides)


def _plan_stage(stage: spec.Stage, planned: list[PlannedRun], where: str) -> list[PlannedRun]:
  from muppet_jax import build  # pylint: disable=g-import-not-at-top  (seqio, TF)

  axes = _expand_values(stage, planned, f'{where}: stage {stage.name!r}')
  runs = []
  for values in itertools.product(*[v for _, v in axes]):
    chosen = dict(zip([name for name, _ in axes], values))
    start = chosen.get('start')
    point = {name: (value.label if name == 'start' else value)
             for name, value in chosen.items()}
    point['stage'] = stage.name
    parts = [stage.name] + [start.tag if name == 'start' else _value_tag(name, value)
                            for name, value in chosen.items()]
    run_id = _safe('-'.join(parts))
    label = f'{where}: run {run_id}'
    overrides = _user_overrides(stage, point, label)
    for name, value in chosen.items():
      if spec.AXES[name].field:
        overrides[spec.AXES[name].field] = value
    if start is not None:
      overrides.update(start.overrides)
      if start.after or start.overrides.get('finetune.from_workdir'):
        reuse = start.reuse_head
        overrides['finetune.reuse_head'] = bool(reuse(point.get('task', ''))
                                                if callable(reuse) else reuse)
    config_file = stage.config.replace('{task}', chosen.get('task', ''))
    config = apply_overrides(_base_config(config_file), overrides, label)
    report_axes = {
        'task': chosen.get('task', ''),
        'start': start.label if start else '',
        'train_fraction': float(config.finetune.train_fraction),
        'learning_rate': float(config.optim.learning_rate),
        'adam_eps': float(config.optim.eps),
        'dropout': float(config.model.dropout),
        'seed': int(config.seed),
    }
    run_tasks = ()
    if stage.kind == spec.PREFINETUNE:
      try:
        run_tasks = build.run_tasks(config).names
      except errors.UserError as e:
        raise spec.ExperimentError(f'{label}: {e}') from e
      report_axes.update(num_tasks=len(run_tasks), batching=str(config.data.batching))
    else:
      report_axes.update(start.inherited if start else {'num_tasks': 0, 'batching': None})
    runs.append(PlannedRun(
        index=len(planned) + len(runs), id=run_id, stage=stage.name, kind=stage.kind,
        config=config_file, overrides=dict(sorted(overrides.items())), axes=report_axes,
        after=start.after if start else (),
        pre_finetuned=(start.pre_finetuned if start else False)
        if stage.kind == spec.FINETUNE else None,
        tasks=tuple(run_tasks)))
  return runs


def make_plan(experiment: spec.Experiment, file: str) -> Plan:
  """Every run of `experiment`, pre-finetuning stages first, each config validated.

  Raises:
    spec.ExperimentError (or another errors.UserError): the first run that cannot be built,
      named with its stage and id; two runs with one id.
  """
  ordered = ([s for s in experiment.stages if s.kind == spec.PREFINETUNE] +
             [s for s in experiment.stages if s.kind == spec.FINETUNE])
  planned: list[PlannedRun] = []
  for stage in ordered:
    planned += _plan_stage(stage, planned, file)
  seen = {}
  for run in planned:
    if run.id in seen:
      raise spec.ExperimentError(f'{file}: two runs have the id {run.id} (stages '
                                 f'{seen[run.id]!r} and {run.stage!r}): give their starts or '
                                 'stages distinct names')
    seen[run.id] = run.stage
  return Plan(experiment=experiment.name, file=file, runs=tuple(planned),
              description=experiment.description)
