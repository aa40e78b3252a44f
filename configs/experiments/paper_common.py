"""What the paper's studies at real scale share (configs/experiments/paper_*.py).

The paper (section 4) fine-tunes every task "with a fixed hyper-parameter search ... over
learning rate, Adam epsilon and dropout" and reports dev scores, without listing the values.
The grid here is fairseq's RoBERTa fine-tuning recipe around its defaults (configs/finetune.py:
10 epochs, warmup 6% of the updates, Adam betas (0.9, 0.98), weight decay 0.1): learning rates
1e-5, 2e-5, 3e-5 (fairseq's GLUE README), Adam epsilon 1e-6 (fairseq's) and 1e-8 (the paper's
pre-finetuning value, Table 8), dropout 0.1 (fairseq's) and 0.2; three seeds per point.
"""

from muppet_jax.experiments import spec

LEARNING_RATES = [1e-5, 2e-5, 3e-5]
ADAM_EPS = [1e-6, 1e-8]
DROPOUTS = [0.1, 0.2]
SEEDS = [0, 1, 2]

# Paper section 5.1: the five fine-tuning targets of the scale and batching studies, in every
# pre-finetuning subset. The text names STS-B, the figure RTE; STS-B is a regression task
# (not among the pre-finetuning datasets, no head here), so RTE.
TARGETS = ['rte', 'boolq', 'race', 'squad', 'mnli']
# Paper section 5.3: fine-tuned at low resource, "not available in any of the pre-finetuning
# MTL datasets", so removed from the scale study's mixture.
HELD_OUT = ['qnli', 'cola']
# Section 5.1: "six uniformly chosen between 10 and 40" and all of them (here the 39 encoder
# tasks left after HELD_OUT).
SCALE_NUM_TASKS = [10, 15, 20, 25, 30, 35, -1]

# Multiple choice and extractive QA need more room per slot than sentence pairs; SQuAD and RACE
# train 2-3 epochs in the usual recipes (a long context gives several windows per question).
_PER_FAMILY = {
    'muppet_squad': {'data.rows': 8, 'finetune.epochs': 2.0},
    'muppet_race': {'data.rows': 8, 'finetune.epochs': 3.0},
    'muppet_hellaswag': {'data.rows': 4},
    'muppet_commonsense_qa': {'data.rows': 4},
    'muppet_openbookqa': {'data.rows': 4},
}
# The paper re-uses pre-finetuning heads for MRC, commonsense and small sentence tasks (its
# Tables 3-4 notes): the span and multiple-choice heads are shared and always carried over;
# classification heads are re-used for the small datasets.
_REUSE_HEAD = {'muppet_rte', 'muppet_boolq', 'muppet_mrpc', 'muppet_cola', 'muppet_cb',
               'muppet_copa', 'muppet_wic', 'muppet_wsc'}


def reuse_head(task: str) -> bool:
  return task in _REUSE_HEAD


def finetune_overrides(base_model: str):
  """Per-run overrides of a fine-tuning stage: `base_model` (hub id) for the plain pretrained
  start, the per-family batch shapes and epochs."""

  def overrides(point: dict) -> dict:
    values = dict(_PER_FAMILY.get(point['task'], {}))
    if point.get('start') == 'pretrained':
      values['model.init_from'] = base_model
    return values

  return overrides


def scale_stage() -> spec.Stage:
  """Paper section 5.1: RoBERTa-base pre-finetuned on nested random subsets of the encoder
  mixture without HELD_OUT, each holding the TARGETS."""
  return spec.prefinetune('pft', 'configs/base.py', axes={'num_tasks': SCALE_NUM_TASKS},
                          overrides={'data.required_tasks': ','.join(TARGETS),
                                     'data.excluded_tasks': ','.join(HELD_OUT),
                                     'data.subset_seed': 0})


def targets_stage() -> spec.Stage:
  """The five TARGETS fine-tuned with the learning-rate grid and SEEDS, from RoBERTa-base and
  from every run of the 'pft' stage (sections 5.1 and 5.2)."""
  return spec.finetune('ft', 'configs/finetune.py:{task}', axes={
      'task': TARGETS,
      'start': [spec.pretrained(), spec.from_stage('pft', reuse_head=reuse_head)],
      'learning_rate': LEARNING_RATES,
      'seed': SEEDS,
  }, overrides=finetune_overrides('FacebookAI/roberta-base'))
