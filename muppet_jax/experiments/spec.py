"""What an experiment file says: stages of runs over named axes, and where fine-tuning starts.

An experiment file `configs/experiments/NAME.py` defines `get_experiment(*args)` (args from
`FILE:ARG`, as config files take them) returning an `Experiment`:

  from muppet_jax.experiments import spec

  def get_experiment():
    return spec.Experiment(name='mini_glue_demo', stages=[
        spec.prefinetune('pft', 'configs/demo.py', axes={'seed': [0]},
                         overrides={'train.steps': 60}),
        spec.finetune('ft', 'configs/finetune.py:{task}', axes={
            'task': ['demo_topic', 'demo_sentiment'],
            'start': [spec.pretrained(), spec.from_stage('pft', reuse_head=True)],
            'learning_rate': [5e-4, 1e-3],
            'seed': [0, 1]},
            overrides={'finetune.epochs': 2.0}),
    ])

Each stage is a grid: one run per combination of its axes' values (in the order the axes are
written), each a normal run of the stage's config file (`{task}` is replaced by the run's task)
with overrides: the stage's, then each axis' field (`AXES`), then the starting point's. Axis
names are a fixed vocabulary, so that the report knows which axes are hyperparameters (chosen
on the dev score), which are seeds (averaged) and which are the study's own (task, starting
point, training fraction, number of pre-finetuning tasks, batching strategy).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

from muppet_jax import errors

PREFINETUNE = 'prefinetune'
FINETUNE = 'finetune'


@dataclasses.dataclass(frozen=True)
class Axis:
  """One name of the axis vocabulary."""

  field: str | None  # The config field the value sets (None: handled by the planner).
  tag: str  # Prefix of the value in run ids ('lr' -> 'lr1e-05').
  kinds: tuple[str, ...]  # Stage kinds that may use it.
  role: str  # 'study' (a table / figure dimension), 'hparam' (chosen on dev), 'seed' (averaged).
  doc: str


AXES: dict[str, Axis] = {
    'task': Axis(None, '', (FINETUNE,), 'study',
                 "the fine-tuned task: a task name or slug ('rte'); fills {task}"),
    'start': Axis(None, '', (FINETUNE,), 'study',
                  'where fine-tuning starts: spec.pretrained(), spec.hub(...), '
                  'spec.from_stage(...)'),
    'train_fraction': Axis('finetune.train_fraction', 'f', (FINETUNE,), 'study',
                           'seeded random fraction of the train split'),
    'num_tasks': Axis('data.num_tasks', 'n', (PREFINETUNE,), 'study',
                      'pre-finetuning tasks (-1: all); see data.required_tasks'),
    'batching': Axis('data.batching', 'b', (PREFINETUNE,), 'study',
                     'heterogeneous, batch_homogeneous or dataset_homogeneous'),
    'learning_rate': Axis('optim.learning_rate', 'lr', (PREFINETUNE, FINETUNE), 'hparam',
                          'peak learning rate'),
    'adam_eps': Axis('optim.eps', 'eps', (PREFINETUNE, FINETUNE), 'hparam', 'Adam epsilon'),
    'dropout': Axis('model.dropout', 'do', (PREFINETUNE, FINETUNE), 'hparam',
                    'hidden dropout (fairseq --dropout)'),
    'seed': Axis('seed', 's', (PREFINETUNE, FINETUNE), 'seed',
                 'the run seed (init, dropout, data order)'),
}
HPARAM_AXES = tuple(name for name, axis in AXES.items() if axis.role == 'hparam')

# Short names of the batching strategies in run ids.
BATCHING_TAGS = {'heterogeneous': 'het', 'batch_homogeneous': 'bhom',
                 'dataset_homogeneous': 'dhom'}

_NAME = re.compile(r'^[a-z][a-z0-9_]*$')


@dataclasses.dataclass(frozen=True)
class Start:
  """Where a fine-tuning run starts (a value of the 'start' axis).

  Attributes:
    name: its part of run ids and its row label in the report ('pretrained', 'muppet').
    pre_finetuned: whether it is a pre-finetuned model (the report's "with" side).
    init_from: `model.init_from` (a hub id or an exported directory); None: the config's own.
    stage: a pre-finetuning stage: one start per run of that stage (its workdir).
    root: with `stage`, the root of another experiment that holds that stage's runs (they
      must have finished); None: this experiment's own stage (planned before fine-tuning).
    reuse_head: start the task's classification head from its pre-finetuning head (a bool,
      or a function of the task name); only with `stage`.
  """

  name: str
  pre_finetuned: bool
  init_from: str | None = None
  stage: str | None = None
  root: str | None = None
  reuse_head: Union[bool, Callable[[str], bool]] = False


def pretrained(name: str = 'pretrained') -> Start:
  """The stage config's own model (its `model.init_from`; random init for the demo)."""
  return Start(name=name, pre_finetuned=False)


def hub(name: str, init_from: str, *, pre_finetuned: bool) -> Start:
  """A Hugging Face hub id or local directory (e.g. an exported MUPPET run)."""
  return Start(name=name, pre_finetuned=pre_finetuned, init_from=init_from)


def from_stage(stage: str, *, reuse_head: Union[bool, Callable[[str], bool]] = False,
               root: str | None = None) -> Start:
  """Every run of a pre-finetuning stage (of this experiment, or of the experiment in `root`)."""
  return Start(name=stage, pre_finetuned=True, stage=stage, root=root, reuse_head=reuse_head)


Overrides = Union[Mapping[str, Any], Callable[[dict], Mapping[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Stage:
  """A grid of runs of one kind.

  Attributes:
    name: its part of run ids ('pft', 'ft').
    kind: PREFINETUNE or FINETUNE.
    config: the config file, 'FILE[:ARG]'; '{task}' is replaced by the run's task.
    axes: axis name (`AXES`) -> its values; the grid is their product.
    overrides: {'section.field': value} for every run, or a function of the run's point
      (axis name -> value; 'task' as a task name, 'start' as the start's name) returning them
      (per-task settings such as head re-use or batch shape).
  """

  name: str
  kind: str
  config: str
  axes: Mapping[str, Sequence[Any]]
  overrides: Overrides = dataclasses.field(default_factory=dict)


def prefinetune(name: str, config: str, axes: Mapping[str, Sequence[Any]],
                overrides: Overrides | None = None) -> Stage:
  return Stage(name=name, kind=PREFINETUNE, config=config, axes=axes,
               overrides=overrides or {})


def finetune(name: str, config: str, axes: Mapping[str, Sequence[Any]],
             overrides: Overrides | None = None) -> Stage:
  return Stage(name=name, kind=FINETUNE, config=config, axes=axes, overrides=overrides or {})


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A named list of stages; pre-finetuning stages are planned before fine-tuning ones."""

  name: str
  stages: Sequence[Stage]
  description: str = ''


class ExperimentError(errors.UserError, ValueError):
  """An experiment file or plan that cannot work; the message names the problem and the fix."""


def check(experiment: Experiment, where: str) -> None:
  """Names, kinds and axes of `experiment` (values are checked when planning).

  Raises:
    ExperimentError: the first problem, naming the stage and axis.
  """
  if not isinstance(experiment, Experiment):
    raise ExperimentError(f'{where}: get_experiment() must return a spec.Experiment, got '
                          f'{type(experiment).__name__}')
  if not _NAME.match(experiment.name or ''):
    raise ExperimentError(f'{where}: experiment name {experiment.name!r} must be lower-case '
                          'letters, digits and _')
  if not experiment.stages:
    raise ExperimentError(f'{where}: the experiment has no stages (an empty grid)')
  seen = set()
  for stage in experiment.stages:
    label = f'{where}: stage {stage.name!r}'
    if not _NAME.match(stage.name or '') or stage.name in seen:
      raise ExperimentError(f'{label}: stage names must be unique lower-case identifiers')
    seen.add(stage.name)
    if stage.kind not in (PREFINETUNE, FINETUNE):
      raise ExperimentError(f'{label}: kind {stage.kind!r} is not {PREFINETUNE!r} or '
                            f'{FINETUNE!r}')
    for name, values in stage.axes.items():
      axis = AXES.get(name)
      if axis is None:
        raise ExperimentError(f'{label}: unknown axis {name!r}; the axes are '
                              f'{", ".join(AXES)} (other fields go in overrides)')
      if stage.kind not in axis.kinds:
        raise ExperimentError(f'{label}: axis {name!r} belongs to '
                              f'{" / ".join(axis.kinds)} stages, not {stage.kind}')
      if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ExperimentError(f'{label}: axis {name!r} has no values (an empty grid): give a '
                              'non-empty list')
      if len(set(map(repr, values))) != len(values):
        raise ExperimentError(f'{label}: axis {name!r} lists a value twice: {list(values)}')
    if stage.kind == FINETUNE and 'task' not in stage.axes and '{task}' in stage.config:
      raise ExperimentError(f"{label}: its config {stage.config!r} needs the 'task' axis")
    for start in stage.axes.get('start', ()):
      if not isinstance(start, Start):
        raise ExperimentError(f"{label}: axis 'start' takes spec.pretrained(), spec.hub(...) "
                              f'or spec.from_stage(...), got {start!r}')


def load(path: str) -> Experiment:
  """The experiment of a file, 'FILE[:ARG]' -> `get_experiment(ARG)`, checked.

  Raises:
    ExperimentError: no such file, no `get_experiment`, an error inside it, or a bad spec.
  """
  filename, *args = path.split(':', 1)
  if not os.path.isfile(filename):
    raise ExperimentError(f'experiment file {filename} does not exist (e.g. '
                          'configs/experiments/mini_glue_demo.py)')
  module_name = '_muppet_experiment_' + re.sub(r'\W', '_', os.path.abspath(filename))
  spec_ = importlib.util.spec_from_file_location(module_name, filename)
  module = importlib.util.module_from_spec(spec_)
  try:
    spec_.loader.exec_module(module)
    get = getattr(module, 'get_experiment', None)
    if get is None:
      raise ExperimentError(f'{filename} defines no get_experiment()')
    experiment = get(*args)
  except errors.UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (the file's own bug, named)
    raise ExperimentError(f'{path}: get_experiment failed: {type(e).__name__}: {e}') from e
  check(experiment, filename)
  return experiment
