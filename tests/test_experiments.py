"""Experiments: plans from experiment files, bad input, roots, and reports from run directories.

The report tests write fake run directories (config.json, metrics.jsonl with hand-chosen
scores, the runner's record) and check every number of the report against a hand computation.
Nothing here trains; tests/test_experiments_e2e.py runs a miniature end to end (slow).
"""

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

from muppet_jax.experiments import plan as plan_lib
from muppet_jax.experiments import report as report_lib
from muppet_jax.experiments import spec
from muppet_jax.experiments import store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _write_experiment(tmp_path, body: str, name='exp.py') -> str:
  path = tmp_path / name
  path.write_text('from muppet_jax.experiments import spec\n\n' + textwrap.dedent(body))
  return str(path)


_SMALL = '''
def _reuse(task):
  return task == 'muppet_demo_topic'

def get_experiment():
  return spec.Experiment(name='small', stages=[
      spec.finetune('ft', 'configs/finetune.py:{task}', axes={
          'task': ['demo_topic', 'muppet_demo_compare'],
          'start': [spec.pretrained('scratch'), spec.from_stage('pft', reuse_head=_reuse)],
          'learning_rate': [1e-3, 5e-4],
          'seed': [0, 1],
      }, overrides={'finetune.epochs': 1.0}),
      spec.prefinetune('pft', 'configs/demo.py', axes={'num_tasks': [3, -1]},
                       overrides={'train.steps': 7,
                                  'data.required_tasks': 'demo_topic,demo_compare'}),
  ])
'''


def test_plan_expands_the_grid_pre_finetuning_first(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  path = _write_experiment(tmp_path, _SMALL)
  plan = plan_lib.make_plan(spec.load(path), path)
  assert len(plan.runs) == 2 + 2 * 3 * 2 * 2  # Each pre-finetuning run is a start.
  assert [r.index for r in plan.runs] == list(range(len(plan.runs)))
  pft = plan.runs[:2]
  assert [r.id for r in pft] == ['pft-n3', 'pft-nall']
  assert [r.kind for r in pft] == [spec.PREFINETUNE] * 2
  assert pft[0].overrides == {'data.num_tasks': 3, 'data.required_tasks': 'demo_topic,demo_compare',
                              'train.steps': 7}
  # The subset holds the required targets; 'all' resolves to the mixture's 5 encoder tasks.
  assert {'muppet_demo_topic', 'muppet_demo_compare'} <= set(pft[0].tasks)
  assert [r.axes['num_tasks'] for r in pft] == [3, 5]
  ft = {r.id: r for r in plan.runs[2:]}
  first = plan.runs[2]
  assert first.id == 'ft-demo_topic-scratch-lr0.001-s0'
  assert first.overrides == {'finetune.epochs': 1.0, 'optim.learning_rate': 1e-3, 'seed': 0}
  assert first.axes['num_tasks'] == 0 and first.pre_finetuned is False and first.after == ()
  reused = ft['ft-demo_topic-pft-n3-lr0.0005-s1']
  assert reused.after == ('pft-n3',) and reused.pre_finetuned
  assert reused.overrides['finetune.from_workdir'] == '{root}/runs/pft-n3'
  assert reused.overrides['finetune.reuse_head'] is True
  assert reused.axes['num_tasks'] == 3 and reused.axes['batching'] == 'heterogeneous'
  assert reused.config == 'configs/finetune.py:muppet_demo_topic'
  assert ft['ft-demo_compare-pft-nall-lr0.001-s0'].overrides['finetune.reuse_head'] is False
  # The same file gives the same plan (stable ids), and the config of a run is buildable.
  again = plan_lib.make_plan(spec.load(path), path)
  assert again.to_json() == plan.to_json()
  config = plan_lib.run_config(reused, str(tmp_path / 'root'))
  assert config.finetune.from_workdir == f'{tmp_path}/root/runs/pft-n3'
  assert config.optim.learning_rate == 5e-4 and config.seed == 1
  assert plan_lib.Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


@pytest.mark.parametrize('body,message', [
    ("""
     def get_experiment():
       return spec.Experiment(name='x', stages=[
           spec.finetune('ft', 'configs/finetune.py:{task}',
                         axes={'task': ['demo_topic'], 'lerning_rate': [1e-3]})])
     """, "unknown axis 'lerning_rate'"),
    ("""
     def get_experiment():
       return spec.Experiment(name='x', stages=[
           spec.finetune('ft', 'configs/finetune.py:{task}', axes={'task': ['demo_topic'],
                                                                   'seed': []})])
     """, "axis 'seed' has no values (an empty grid)"),
    ("""
     def get_experiment():
       return spec.Experiment(name='x', stages=[])
     """, 'no stages (an empty grid)'),
    ("""
     def get_experiment():
       return spec.Experiment(name='x', stages=[
           spec.prefinetune('pft', 'configs/demo.py', axes={'task': ['demo_topic']})])
     """, "axis 'task' belongs to finetune stages"),
])
def test_bad_experiment_files_are_named(tmp_path, body, message):
  path = _write_experiment(tmp_path, body)
  with pytest.raises(spec.ExperimentError, match=message.replace('(', r'\(').replace(')', r'\)')):
    spec.load(path)


@pytest.mark.parametrize('axes,overrides,message', [
    ({'task': ['demo_topik']}, {}, "unknown task 'demo_topik'"),
    ({'task': ['demo_topic']}, {'optim.learnig_rate': 1.0}, 'did you mean optim.learning_rate'),
    ({'task': ['demo_topic']}, {'train.steps': 'many'}, 'train.steps'),
    ({'task': ['demo_topic'], 'learning_rate': [-1.0]}, {}, 'optim.learning_rate=-1.0'),
    ({'task': ['demo_topic'], 'start': [spec.from_stage('nope')]}, {},
     r"from_stage\('nope'\) names no pre-finetuning stage"),
])
def test_bad_plans_are_named(monkeypatch, axes, overrides, message):
  monkeypatch.chdir(REPO)
  experiment = spec.Experiment(name='x', stages=[
      spec.finetune('ft', 'configs/finetune.py:{task}', axes=axes, overrides=overrides)])
  spec.check(experiment, 'x.py')
  with pytest.raises(spec.ExperimentError, match=message):
    plan_lib.make_plan(experiment, 'x.py')


def test_required_task_outside_the_mixture_is_a_plan_error(monkeypatch):
  monkeypatch.chdir(REPO)
  experiment = spec.Experiment(name='x', stages=[spec.prefinetune(
      'pft', 'configs/demo.py', axes={'num_tasks': [2]},
      overrides={'data.required_tasks': 'rte'})])
  with pytest.raises(spec.ExperimentError, match=r"required tasks \['muppet_rte'\]"):
    plan_lib.make_plan(experiment, 'x.py')


def _run(run_id, index, kind=spec.FINETUNE, after=(), **axes):
  defaults = {'task': 'muppet_demo_topic', 'start': 'scratch', 'train_fraction': 1.0,
              'learning_rate': 1e-3, 'adam_eps': 1e-8, 'dropout': 0.0, 'seed': 0,
              'num_tasks': 0, 'batching': None}
  return plan_lib.PlannedRun(
      index=index, id=run_id, stage='ft' if kind == spec.FINETUNE else 'pft', kind=kind,
      config='configs/x.py', overrides={'seed': axes.get('seed', 0)},
      axes={**defaults, **axes}, after=tuple(after),
      pre_finetuned=(axes.get('start', 'scratch') != 'scratch') if kind == spec.FINETUNE
      else None)


def test_root_checks(tmp_path):
  plan = plan_lib.Plan('alpha', 'a.py', (_run('a', 0),))
  root = str(tmp_path / 'root')
  assert store.check_root(root, plan) is None  # New.
  store.record_plan(root, plan)
  assert store.check_root(root, plan).experiment == 'alpha'
  other = plan_lib.Plan('beta', 'b.py', (_run('a', 0),))
  with pytest.raises(spec.ExperimentError, match="holds the runs of experiment 'alpha'"):
    store.check_root(root, other)
  (tmp_path / 'junk').mkdir()
  (tmp_path / 'junk' / 'notes.txt').write_text('mine')
  with pytest.raises(spec.ExperimentError, match='not an experiment root'):
    store.check_root(str(tmp_path / 'junk'), plan)
  # A run that started with other settings cannot silently change; a pending one can.
  changed = plan_lib.Plan('alpha', 'a.py',
                          (dataclass_replace(_run('a', 0), overrides={'seed': 5}),))
  assert store.check_root(root, changed) is not None
  os.makedirs(os.path.join(root, 'runs', 'a', 'checkpoints'))
  with pytest.raises(spec.ExperimentError, match=r"run a .* other settings \(seed: 0 -> 5\)"):
    store.check_root(root, changed)


def dataclass_replace(obj, **changes):
  import dataclasses  # pylint: disable=g-import-not-at-top
  return dataclasses.replace(obj, **changes)


def _fake_run(root, run: plan_lib.PlannedRun, scores, *, steps=None, task=None,
              record_state='done', wall=12.5, final=True):
  """A run directory as train.run leaves it: config.json, metrics.jsonl (one eval line per
  score, every `steps / len(scores)` steps; the last at train.steps when `final`)."""
  workdir = run.workdir(root)
  os.makedirs(workdir, exist_ok=True)
  task = task or run.axes['task']
  steps = steps or 10 * len(scores)
  every = steps // len(scores)
  store.write_json(os.path.join(workdir, 'config.json'), {'train': {'steps': steps}})
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for i, score in enumerate(scores, 1):
      step = every * i if (i < len(scores) or final) else every * i - 1
      f.write(json.dumps({'step': step, 'loss': 1.0}) + '\n')
      metrics = ({t: {'accuracy': s, 'examples': 100.0} for t, s in score.items()}
                 if isinstance(score, dict) else {task: {'accuracy': score, 'examples': 100.0}})
      f.write(json.dumps({'step': step, 'eval': metrics}) + '\n')
  store.write_record(workdir, store.RunRecord(id=run.id, state=record_state, attempts=1,
                                              wall_time_s=wall))


@pytest.fixture
def reported(tmp_path):
  """A finished fake experiment: 2 pre-finetuning runs (3 and 5 tasks), fine-tuning of topic
  from scratch and from each, two learning rates, two seeds, two training fractions; plus a
  failed and a pending run."""
  root = str(tmp_path / 'root')
  runs, scores = [], {}
  runs.append(_run('pft-n3', 0, spec.PREFINETUNE, num_tasks=3, batching='heterogeneous'))
  runs.append(_run('pft-n5', 1, spec.PREFINETUNE, num_tasks=5, batching='heterogeneous'))
  scores['pft-n3'] = [{'muppet_demo_topic': 0.5, 'muppet_demo_compare': 0.3}]
  scores['pft-n5'] = [{'muppet_demo_topic': 0.6, 'muppet_demo_compare': 0.5}]
  # Best dev score per run = the max of its evaluations; chosen lr = highest mean over seeds.
  table = {  # (start, num_tasks, fraction, lr, seed) -> evaluations
      ('scratch', 0, 1.0, 1e-3, 0): [0.30, 0.40], ('scratch', 0, 1.0, 1e-3, 1): [0.50, 0.44],
      ('scratch', 0, 1.0, 5e-4, 0): [0.20, 0.42], ('scratch', 0, 1.0, 5e-4, 1): [0.43, 0.41],
      ('pft-n3', 3, 1.0, 1e-3, 0): [0.70, 0.60], ('pft-n3', 3, 1.0, 1e-3, 1): [0.65, 0.66],
      ('pft-n3', 3, 1.0, 5e-4, 0): [0.80, 0.81], ('pft-n3', 3, 1.0, 5e-4, 1): [0.70, 0.75],
      ('pft-n5', 5, 1.0, 1e-3, 0): [0.90, 0.85], ('pft-n5', 5, 1.0, 1e-3, 1): [0.88, 0.92],
      ('scratch', 0, 0.5, 1e-3, 0): [0.25, 0.31], ('pft-n3', 3, 0.5, 1e-3, 0): [0.55, 0.5],
      ('pft-n5', 5, 0.5, 1e-3, 0): [0.6, 0.7],
  }
  for (start, n, fraction, lr, seed), evaluations in table.items():
    run_id = f'ft-{start}-f{fraction}-lr{lr}-s{seed}'
    runs.append(_run(run_id, len(runs), start=start, num_tasks=n, train_fraction=fraction,
                     learning_rate=lr, seed=seed, after=() if start == 'scratch' else (start,),
                     batching=None if start == 'scratch' else 'heterogeneous'))
    scores[run_id] = evaluations
  failed = _run('ft-failed', len(runs), start='pft-n5', num_tasks=5, learning_rate=5e-4)
  pending = _run('ft-pending', len(runs) + 1, start='pft-n5', num_tasks=5, learning_rate=5e-4,
                 seed=1)
  runs += [failed, pending]
  plan = plan_lib.Plan('fake', 'fake.py', tuple(runs), description='A fake experiment.')
  store.record_plan(root, plan)
  for run in runs:
    if run.id in scores:
      _fake_run(root, run, scores[run.id])
  os.makedirs(failed.workdir(root))
  store.write_record(failed.workdir(root), store.RunRecord(
      id=failed.id, state=store.FAILED, error='ConfigError: data.rows=0 is not valid'))
  return root, plan, report_lib.write(root)


def test_report_rows_and_states(reported):
  root, plan, written = reported
  with open(written.csv) as f:
    rows = list(csv.DictReader(f))
  assert [r['id'] for r in rows] == [run.id for run in plan.runs]  # One row per run, in order.
  by_id = {r['id']: r for r in rows}
  assert by_id['ft-failed']['state'] == 'failed'
  assert by_id['ft-failed']['error'] == 'ConfigError: data.rows=0 is not valid'
  assert by_id['ft-pending']['state'] == 'pending'
  row = by_id['ft-scratch-f1.0-lr0.001-s1']
  assert row['state'] == 'done' and float(row['best_score']) == 0.50
  assert int(row['best_step']) == 10 and float(row['final_score']) == 0.44
  assert row['metric'] == 'muppet_demo_topic accuracy' and row['train_steps'] == '20'
  assert float(row['wall_time_s']) == 12.5 and row['learning_rate'] == '0.001'
  # A pre-finetuning run's score is the mean of its tasks' primary metrics.
  assert float(by_id['pft-n5']['best_score']) == pytest.approx(0.55)
  assert by_id['pft-n5']['metric'] == 'mean primary metric over 2 tasks'


def test_report_selects_hyperparameters_on_dev_and_averages_seeds(reported):
  _, _, written = reported
  with open(written.json) as f:
    selected = {(s['start'], s['train_fraction']): s for s in json.load(f)['selected']}
  # Scratch at fraction 1: lr 1e-3 runs' best scores 0.40 and 0.50 (mean 0.45) beat 5e-4's
  # 0.42 and 0.43 (0.425).
  scratch = selected[('scratch', 1.0)]
  assert scratch['hparams']['learning_rate'] == 1e-3
  assert sorted(scratch['scores']) == [0.40, 0.50]
  assert scratch['mean'] == pytest.approx(0.45)
  assert scratch['std'] == pytest.approx(0.0707106781, abs=1e-9)  # Sample sd of 0.4, 0.5.
  pft3 = selected[('pft-n3', 1.0)]  # 5e-4: 0.81, 0.75 (0.78) beats 1e-3: 0.70, 0.66 (0.68).
  assert pft3['hparams']['learning_rate'] == 5e-4
  assert pft3['mean'] == pytest.approx(0.78)
  assert pft3['difference'] == pytest.approx(0.78 - 0.45)
  assert pft3['baseline_start'] == 'scratch'
  assert selected[('pft-n5', 1.0)]['mean'] == pytest.approx(0.91)  # ft-failed is left out.
  assert selected[('pft-n5', 0.5)]['difference'] == pytest.approx(0.70 - 0.31)
  text = open(written.markdown).read()
  assert '| scratch (fraction 1) | 45.0 ± 7.1 |' in text
  assert '| pft-n3 (fraction 1) | 78.0 ± 4.2 |' in text
  assert '| Δ pft-n3 (fraction 1) | +33.0 |' in text
  assert '| Δ pft-n5 (fraction 0.5) | +39.0 |' in text
  assert '**ft-failed** failed: ConfigError: data.rows=0 is not valid' in text
  assert '1 run(s) not finished: ft-pending' in text


def test_report_figures_are_pngs(reported):
  _, _, written = reported
  names = sorted(os.path.basename(p) for p in written.figures)
  # Two task counts and two fractions: the scale line and the low-resource heatmap.
  assert names == ['low_resource.png', 'scale.png', 'starts.png']
  from PIL import Image  # pylint: disable=g-import-not-at-top  (matplotlib's dependency)
  for path in written.figures:
    with open(path, 'rb') as f:
      assert f.read(8) == PNG_MAGIC
    with Image.open(path) as image:
      image.verify()
  assert f'![scale.png](figures/scale.png)' in open(written.markdown).read()


def test_report_of_a_root_without_experiment_is_an_error(tmp_path):
  with pytest.raises(spec.ExperimentError, match='holds no experiment.json'):
    report_lib.write(str(tmp_path))


def _cli(*args, cwd=REPO):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             PYTHONPATH=REPO)
  return subprocess.run([sys.executable, '-m', 'muppet_jax.experiments', *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=600)


def test_cli_bad_input_is_one_error_line(tmp_path):
  bad = _write_experiment(tmp_path, """
      def get_experiment():
        return spec.Experiment(name='x', stages=[
            spec.finetune('ft', 'configs/finetune.py:{task}',
                          axes={'task': ['demo_topic'], 'lr': [1e-3]})])
      """)
  root = tmp_path / 'root'
  proc = _cli('run', bad, '--root', str(root))
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and "unknown axis 'lr'" in lines[-1]
  assert not root.exists()  # Nothing started.
  proc = _cli('run', bad)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith('error: ')


def test_cli_refuses_the_root_of_another_experiment(tmp_path):
  root = str(tmp_path / 'root')
  store.record_plan(root, plan_lib.Plan('other_experiment', 'o.py', (_run('a', 0),)))
  before = sorted(os.listdir(root)), open(os.path.join(root, 'experiment.json')).read()
  path = _write_experiment(tmp_path, """
      def get_experiment():
        return spec.Experiment(name='mine', stages=[
            spec.prefinetune('pft', 'configs/demo.py', axes={'seed': [0]})])
      """)
  proc = _cli('run', path, '--root', root)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and "holds the runs of experiment 'other_experiment'" in last
  assert (sorted(os.listdir(root)), open(os.path.join(root, 'experiment.json')).read()) == before


@pytest.mark.parametrize('name,runs', [
    ('mini_glue_demo', 17), ('mini_scale_demo', 19), ('mini_batching_demo', 19),
    ('mini_low_resource_demo', 27), ('paper_glue_superglue', 864), ('paper_scale', 367),
    ('paper_batching', 183), ('paper_low_resource', 1303)])
def test_the_shipped_experiments_plan(monkeypatch, name, runs):
  monkeypatch.chdir(REPO)
  path = f'configs/experiments/{name}.py'
  plan = plan_lib.make_plan(spec.load(path), path)
  assert len(plan.runs) == runs
  pft = [r for r in plan.runs if r.kind == spec.PREFINETUNE]
  assert plan.runs[:len(pft)] == tuple(pft)  # Pre-finetuning first.
  for run in plan.runs:
    assert all(plan.by_id()[d].index < run.index for d in run.after)
  if name in ('paper_scale', 'paper_low_resource', 'mini_scale_demo'):
    subsets = [set(r.tasks) for r in pft]
    assert all(a < b for a, b in zip(subsets, subsets[1:]))  # Nested, growing.
    held_out = ({'muppet_qnli', 'muppet_cola'} if name.startswith('paper')
                else {'muppet_demo_compare'})
    assert all(not s & held_out for s in subsets)
  if name == 'paper_scale':
    assert [r.axes['num_tasks'] for r in pft] == [10, 15, 20, 25, 30, 35, 39]
    assert all({'muppet_rte', 'muppet_boolq', 'muppet_race', 'muppet_squad',
                'muppet_mnli'} <= set(r.tasks) for r in pft)
  if name == 'paper_low_resource':
    assert sorted({r.axes['train_fraction'] for r in plan.runs if r.kind == spec.FINETUNE}) == \
        [0.1, 0.2125, 0.325, 0.4375, 0.55, 0.6625, 0.775, 0.8875, 1.0]


def test_low_resource_starts_from_another_roots_scale_runs(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  scale_root = str(tmp_path / 'scale')
  scale = plan_lib.make_plan(spec.load('configs/experiments/mini_scale_demo.py'), 'scale.py')
  store.record_plan(scale_root, scale)
  path = f'configs/experiments/mini_low_resource_demo.py:{scale_root}'
  plan = plan_lib.make_plan(spec.load(path), path)
  assert len(plan.runs) == 24 and all(r.kind == spec.FINETUNE for r in plan.runs)
  reused = [r for r in plan.runs if r.pre_finetuned]
  assert {r.overrides['finetune.from_workdir'] for r in reused} == {
      f'{scale_root}/runs/{i}' for i in ('pft-n2', 'pft-n3', 'pft-nall')}
  assert all(r.after == () for r in reused)  # Another root's runs: not part of this plan.
  assert sorted({r.axes['num_tasks'] for r in plan.runs}) == [0, 2, 3, 4]
  with pytest.raises(spec.ExperimentError, match='holds no experiment'):
    plan_lib.make_plan(spec.load(f'configs/experiments/mini_low_resource_demo.py:{tmp_path}'),
                       'x.py')


def test_failing_runs_are_recorded_and_the_experiment_goes_on(tmp_path, monkeypatch):
  """Runs that fail at once (bad paths, caught by train.run's preflight) are recorded with their
  error line; the run that starts from a failed one is skipped; the others still run."""
  from muppet_jax.experiments import runner  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(REPO)
  root = str(tmp_path / 'root')

  def planned(run_id, index, overrides, after=()):
    return plan_lib.PlannedRun(index=index, id=run_id, stage='pft', kind=spec.PREFINETUNE,
                               config='configs/demo.py', overrides=overrides,
                               axes={'task': '', 'start': ''}, after=after)

  plan = plan_lib.Plan('failing', 'f.py', (
      planned('bad-tokenizer', 0, {'data.tokenizer': str(tmp_path / 'no_tokenizer')}),
      planned('after-bad', 1, {}, after=('bad-tokenizer',)),
      planned('bad-model', 2, {'model.init_from': str(tmp_path / 'no_model')}),
  ))
  store.record_plan(root, plan)
  outcome = runner.run_plan(plan, root)
  assert sorted(outcome.failed) == ['bad-model', 'bad-tokenizer']
  assert 'no_tokenizer' in outcome.failed['bad-tokenizer']
  assert 'no_model' in outcome.failed['bad-model']
  assert outcome.blocked == {'after-bad': 'starts from bad-tokenizer, which did not finish'}
  assert outcome.completed == [] and not outcome.preempted
  record = store.read_record(plan.runs[0].workdir(root))
  assert record.state == store.FAILED and record.error == outcome.failed['bad-tokenizer']
  assert record.attempts == 1
  assert store.states(plan, root) == {'bad-tokenizer': 'failed', 'after-bad': 'pending',
                                      'bad-model': 'failed'}
  with open(os.path.join(plan.runs[0].workdir(root), 'logs', 'train.log')) as f:
    assert 'Traceback' in f.read()  # The traceback is in the run's log file.
  text = open(report_lib.write(root).markdown).read()
  assert f'**bad-model** failed: {outcome.failed["bad-model"]}' in text
  # The next `run` tries a failed run again.
  assert runner.run_plan(plan, root, only=2).failed.keys() == {'bad-model'}
  assert store.read_record(plan.runs[2].workdir(root)).attempts == 2


def test_emit_slurm_writes_arrays_that_run_each_plans_run(tmp_path, monkeypatch):
  """The generated scripts are valid bash; an array task runs launch/slurm_gpu.sbatch (here a
  stand-in that prints its arguments) with its run's config and overrides, skips a finished
  run, records a failure; submit.sh chains the stages."""
  from muppet_jax.experiments import slurm  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(REPO)
  path = _write_experiment(tmp_path, _SMALL)
  plan = plan_lib.make_plan(spec.load(path), path)
  root = str(tmp_path / 'root')
  written = slurm.emit(plan, root, repo=str(tmp_path / 'repo'))
  names = sorted(os.path.basename(p) for p in written)
  assert names == ['run_array.sbatch', 'stage1_pft.tsv', 'stage2_ft.tsv', 'submit.sh',
                   'tpu_pod.sh']
  for script in ('run_array.sbatch', 'submit.sh', 'tpu_pod.sh'):
    subprocess.run(['bash', '-n', os.path.join(root, 'launch', script)], check=True)
  lines = open(os.path.join(root, 'launch', 'stage2_ft.tsv')).read().splitlines()
  assert len(lines) == 24
  # A stand-in for launch/slurm_gpu.sbatch: prints its arguments, fails for one config.
  fake = tmp_path / 'repo' / 'launch'
  fake.mkdir(parents=True)
  (fake / 'slurm_gpu.sbatch').write_text(
      '#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n[[ "$*" != *lr0.001-s1* ]] || exit 3\n')
  run = plan.by_id()['ft-demo_topic-pft-n3-lr0.0005-s1']
  task = [i for i, line in enumerate(lines) if line.split('\t')[1] == run.id][0]
  env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(task), SLURM_JOB_ID='7')
  table = os.path.join(root, 'launch', 'stage2_ft.tsv')
  array = os.path.join(root, 'launch', 'run_array.sbatch')
  proc = subprocess.run(['bash', array, table], env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  printed = proc.stdout.splitlines()[1:]
  assert printed == ['--config', run.config, '--workdir', run.workdir(root),
                     *slurm.command_args(run, root)]
  assert f'--config.finetune.from_workdir={root}/runs/pft-n3' in printed
  assert '--config.optim.learning_rate=0.0005' in printed
  # A finished run is skipped; a failing one is recorded for the report.
  os.makedirs(run.workdir(root))
  open(os.path.join(run.workdir(root), 'best_eval.json'), 'w').close()
  proc = subprocess.run(['bash', array, table], env=env, capture_output=True, text=True)
  assert 'is done: nothing to do' in proc.stdout
  failing = plan.by_id()['ft-demo_topic-scratch-lr0.001-s1']
  env['SLURM_ARRAY_TASK_ID'] = str(failing.index - 2)
  proc = subprocess.run(['bash', array, table], env=env, capture_output=True, text=True)
  assert proc.returncode == 3
  assert store.state(failing.workdir(root)) == store.FAILED
  assert 'exit status 3' in store.read_record(failing.workdir(root)).error
  proc = subprocess.run(['bash', os.path.join(root, 'launch', 'submit.sh')],
                        env=dict(os.environ, DRY_RUN='1'), capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  submitted = proc.stderr.splitlines()
  assert len(submitted) == 2 and '--array=0-1' in submitted[0]
  assert '--array=0-23' in submitted[1] and '--dependency=afterany:JOB_stage1_pft' in submitted[1]
