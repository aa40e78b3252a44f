"""Fine-tuning as the paper and fairseq do it, and the task subsets of pre-finetuning.

- `data.num_tasks`: a seeded random subset that keeps the required tasks, nested across sizes;
- `finetune.train_fraction`: a seeded random subset of the split, the same for every run seed;
- `finetune.epochs` / `finetune.warmup_fraction`: the schedule, checked against sub-batches
  built independently;
- the best dev score of a run, from a hand-written metrics.jsonl;
- a fine-tuning config's dropout reaches the backbone of a pre-finetuned start.
"""

import collections
import json
import math
import os

import numpy as np
import pytest
import transformers

from configs import finetune as finetune_config
from muppet_jax import build
from muppet_jax import finetune
from muppet_jax.data import batching
from muppet_jax.data import demo
from muppet_jax.data import streams
from muppet_jax.data import tasks

ENCODER_DEMO = tasks.mixture_tasks('muppet_demo_encoder')
NAMES = [name for name, _ in ENCODER_DEMO]


def _names(selection):
  return [name for name, _ in selection]


def test_subsets_are_seeded_nested_and_keep_the_required_tasks():
  required = ['muppet_demo_span']
  by_size = {k: _names(tasks.select_tasks(ENCODER_DEMO, num_tasks=k, required=required,
                                          seed=3)) for k in range(1, 6)}
  for k, chosen in by_size.items():
    assert len(chosen) == k and 'muppet_demo_span' in chosen
    assert chosen == [n for n in NAMES if n in chosen]  # Mixture order (task ids follow it).
    if k > 1:
      assert set(by_size[k - 1]) < set(chosen)  # The paper's nesting.
  assert by_size[5] == NAMES
  # The same seed gives the same subset; over seeds, every other task is drawn sometimes.
  assert _names(tasks.select_tasks(ENCODER_DEMO, num_tasks=2, required=required, seed=3)) == \
      by_size[2]
  drawn = collections.Counter(
      n for seed in range(40) for n in _names(tasks.select_tasks(
          ENCODER_DEMO, num_tasks=2, required=required, seed=seed)) if n not in required)
  assert set(drawn) == set(NAMES) - set(required)
  # Rates stay the mixture's.
  rates = dict(ENCODER_DEMO)
  assert all(rate == rates[name] for name, rate in tasks.select_tasks(ENCODER_DEMO, num_tasks=3))


def test_subset_seed_minus_one_takes_the_first_tasks_and_exclusion_comes_first():
  assert _names(tasks.select_tasks(ENCODER_DEMO, num_tasks=2, seed=-1)) == NAMES[:2]
  assert _names(tasks.select_tasks(ENCODER_DEMO, num_tasks=2, required=[NAMES[3]],
                                   seed=-1)) == [NAMES[0], NAMES[3]]
  kept = _names(tasks.select_tasks(ENCODER_DEMO, excluded=[NAMES[1]]))
  assert kept == NAMES[:1] + NAMES[2:]
  for seed in range(10):
    assert NAMES[1] not in _names(tasks.select_tasks(ENCODER_DEMO, num_tasks=4,
                                                     excluded=[NAMES[1]], seed=seed))


@pytest.mark.parametrize('kwargs,message', [
    ({'num_tasks': 1, 'required': NAMES[:2]}, 'between the 2 required tasks'),
    ({'num_tasks': 5, 'excluded': NAMES[:1]}, 'the 4 tasks of the mixture left after'),
    ({'required': NAMES[:1], 'excluded': NAMES[:1]}, 'both required'),
    ({'num_tasks': 2, 'required': ['muppet_rte']}, 'not in the mixture'),
])
def test_bad_subsets_are_config_errors(kwargs, message):
  with pytest.raises(tasks.TaskSelectionError, match=message):
    tasks.select_tasks(ENCODER_DEMO, **kwargs)


def test_run_tasks_reads_the_subset_fields():
  config = finetune_config.get_config('demo_topic')
  config.data.mixture = 'muppet_demo_encoder'
  config.data.num_tasks = 3
  config.data.required_tasks = 'demo_compare, muppet_demo_topic'
  config.data.excluded_tasks = 'demo_span'
  config.data.subset_seed = 7
  names = build.run_tasks(config).names
  assert len(names) == 3 and {'muppet_demo_compare', 'muppet_demo_topic'} <= set(names)
  assert 'muppet_demo_span' not in names
  assert list(names) == _names(tasks.select_tasks(
      ENCODER_DEMO, num_tasks=3, required=['muppet_demo_compare', 'muppet_demo_topic'],
      excluded=['muppet_demo_span'], seed=7))
  config.data.required_tasks = 'demo_topik'
  with pytest.raises(tasks.UnknownNameError, match='demo_topic'):
    build.run_tasks(config)


def _records(stream, n):
  return [json.dumps(next(stream), sort_keys=True) for _ in range(n)]


def test_train_fraction_is_a_seeded_random_subset():
  record = demo.RECORDS[0]
  split = [json.dumps(e, sort_keys=True) for e in demo.examples(record.slug, 'train')]

  def subset(fraction, seed=0, fraction_seed=0, shards=3):
    size = streams.train_split_size(record, fraction=fraction)
    seen = []
    for shard in range(shards):  # One epoch over the slots' shards: each record once.
      stream = streams.train_stream(record, shard, shards, seed=seed, fraction=fraction,
                                    fraction_seed=fraction_seed)
      seen += _records(stream, len(range(shard, size, shards)))
    assert len(seen) == len(set(seen)) == size
    return set(seen)

  small, large = subset(0.01), subset(0.02)
  assert len(small) == math.ceil(0.01 * len(split)) and small <= set(split)
  assert small != set(split[:len(small)])  # Random, not the first records.
  assert small < large  # Nested: a smaller fraction is part of a larger one.
  assert subset(0.01, seed=5) == small  # The same subset for every run seed.
  assert subset(0.01, fraction_seed=1) != small


@pytest.fixture(scope='module')
def topic_setup(tmp_path_factory):
  config = finetune_config.get_config('demo_topic')
  data = build.setup_data(config, str(tmp_path_factory.mktemp('tokenizer')))
  return config, data


def test_epochs_set_the_updates_warmup_and_evaluations(topic_setup):
  config, data = topic_setup
  config = config.copy_and_resolve_references()
  config.finetune.train_fraction = 0.1
  config.finetune.epochs = 3.0
  config.finetune.warmup_fraction = 0.25
  plan = finetune.schedule(config, data, num_slots=2)
  assert plan.records == math.ceil(0.1 * 3000)
  assert plan.steps_per_epoch == math.ceil(plan.records / (plan.records_per_sub_batch * 2))
  assert plan.steps == 3 * plan.steps_per_epoch and plan.eval_every == plan.steps_per_epoch
  assert plan.warmup_steps == round(0.25 * plan.steps)
  # One epoch of updates reads about one pass over the split: build that many sub-batches
  # per slot from fresh streams, as training's slots would, and count the records they read.
  builder = batching.SubBatchBuilder(data.shape, data.vocab, data.task_table,
                                     span_stride=config.data.span_stride)
  record = tasks.record_for_task('muppet_demo_topic')
  read = 0
  for slot in range(2):
    stream = builder.stream('muppet_demo_topic', streams.train_stream(
        record, slot, 2, seed=config.seed, fraction=0.1))
    for _ in range(plan.steps_per_epoch):
      builder.build(stream)
    read += stream.position()['next_index']
  per_sub_batch = plan.records_per_sub_batch
  assert plan.records <= read < plan.records + 2 * 2 * per_sub_batch
  applied = finetune.apply_schedule(config, data, num_slots=2)
  assert (applied.train.steps, applied.optim.warmup_steps, applied.train.eval_every) == (
      plan.steps, plan.warmup_steps, plan.eval_every)
  assert config.train.steps == finetune_config.get_config('demo_topic').train.steps  # A copy.


def test_step_based_runs_keep_their_schedule(topic_setup):
  config, data = topic_setup
  config = config.copy_and_resolve_references()
  config.finetune.epochs = 0.0
  config.finetune.warmup_fraction = -1.0
  assert finetune.apply_schedule(config, data, num_slots=1) is config
  config.finetune.warmup_fraction = 0.1
  config.train.steps = 55
  applied = finetune.apply_schedule(config, data, num_slots=1)
  assert (applied.train.steps, applied.optim.warmup_steps) == (55, 6)


def test_epochs_need_one_task(topic_setup):
  config, data = topic_setup
  config = config.copy_and_resolve_references()
  config.finetune.epochs = 2.0
  several = build.DataSetup(vocab=data.vocab, task_names=tuple(NAMES[:2]), rates=(1.0, 1.0),
                            task_table=data.task_table, shape=data.shape)
  with pytest.raises(finetune.errors.ConfigError, match='needs a run of one task'):
    finetune.schedule(config, several, num_slots=1)


def test_best_eval_is_the_highest_headline_score(tmp_path):
  lines = [
      {'step': 10, 'loss': 1.0},
      {'step': 10, 'eval': {'muppet_cola': {'mcc': 0.31, 'accuracy': 0.7, 'examples': 9.0}}},
      {'step': 20, 'eval': {'muppet_cola': {'mcc': 0.45, 'accuracy': 0.6, 'examples': 9.0}}},
      {'step': 30, 'eval': {'muppet_cola': {'mcc': 0.45, 'accuracy': 0.9, 'examples': 9.0}}},
  ]
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.writelines(json.dumps(line) + '\n' for line in lines)
    f.write('{"step": 40, "ev')  # A line cut by a crash is skipped.
  best = finetune.record_best(str(tmp_path))
  # CoLA's primary metric is MCC (not accuracy); the earliest of equal scores wins.
  assert (best.step, best.score, best.metric) == (20, 0.45, 'muppet_cola mcc')
  assert best.evaluations == [(10, 0.31), (20, 0.45), (30, 0.45)]
  saved = json.loads((tmp_path / finetune.BEST_EVAL).read_text())
  assert saved['step'] == 20 and saved['metrics']['muppet_cola']['accuracy'] == 0.6
  assert finetune.best_eval(str(tmp_path / 'nothing')) is None
  metric, score = finetune.headline({'muppet_squad': {'f1': 0.8, 'exact_match': 0.7},
                                     'muppet_rte': {'accuracy': 0.6}})
  assert metric == 'mean primary metric over 2 tasks' and score == pytest.approx(0.7)


def test_finetuning_dropout_reaches_a_pre_finetuned_backbone():
  config = finetune_config.get_config('demo_topic')
  config.model.dropout = 0.3
  config.model.attention_dropout = 0.2
  pre = finetune.PreFinetuned(
      workdir='/nowhere', step=1, params={}, tasks=['muppet_demo_topic'],
      hf_config=transformers.RobertaConfig(hidden_dropout_prob=0.0,
                                           attention_probs_dropout_prob=0.0),
      config={'model': {'type': 'roberta', 'init_from': ''},
              'data': {'tokenizer': 'some/tokenizer'}})
  adopted = finetune.adopt(config, pre)
  assert adopted.data.tokenizer == 'some/tokenizer'
  assert pre.hf_config.hidden_dropout_prob == 0.3
  assert pre.hf_config.attention_probs_dropout_prob == 0.2
  assert np.isclose(adopted.model.dropout, 0.3)
