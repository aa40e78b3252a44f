"""Paper Tables 3-4: RoBERTa and its MUPPET pre-finetuned version, fine-tuned on GLUE, SQuAD,
BoolQ and commonsense tasks with a hyperparameter search and seeds.

  python -m muppet_jax.experiments run configs/experiments/paper_glue_superglue.py --root DIR
  python -m muppet_jax.experiments run configs/experiments/paper_glue_superglue.py:base --root DIR

Starts from the hub models: FacebookAI/roberta-large and facebook/muppet-roberta-large (`:base`:
the base sizes), i.e. the released MUPPET checkpoints; to fine-tune your own pre-finetuned run
instead, export it (`python -m muppet_jax.export`) and put its directory in place of the hub
id. Prepare the datasets first (`python -m muppet_jax.data.prepare --mixture muppet_encoder`).
Grid (configs/experiments/paper_common.py): 3 learning rates x 2 Adam epsilons x 2 dropouts x
3 seeds per task and start: 12 tasks x 2 starts x 36 = 864 fine-tuning runs.
"""

from configs.experiments import paper_common
from muppet_jax.experiments import spec

_TASKS = ['mnli', 'qqp', 'rte', 'qnli', 'mrpc', 'sst2', 'squad',  # Table 3.
          'boolq', 'commonsense_qa', 'hellaswag', 'openbookqa',  # Table 4.
          'cola']


def get_experiment(size: str = 'large'):
  if size not in ('base', 'large'):
    raise ValueError(f"paper_glue_superglue.py takes 'base' or 'large', got {size!r}")
  roberta = f'FacebookAI/roberta-{size}'
  return spec.Experiment(
      name=f'paper_glue_superglue_{size}',
      description=f'Paper Tables 3-4: RoBERTa-{size} with and without MUPPET pre-finetuning '
      '(the released hub models), hyperparameters chosen on dev, mean over 3 seeds.',
      stages=[spec.finetune('ft', 'configs/finetune.py:{task}', axes={
          'task': _TASKS,
          'start': [spec.hub('roberta', roberta, pre_finetuned=False),
                    spec.hub('muppet', f'facebook/muppet-roberta-{size}', pre_finetuned=True)],
          'learning_rate': paper_common.LEARNING_RATES,
          'adam_eps': paper_common.ADAM_EPS,
          'dropout': paper_common.DROPOUTS,
          'seed': paper_common.SEEDS,
      }, overrides=paper_common.finetune_overrides(roberta))])
