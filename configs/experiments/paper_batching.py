"""Paper Figure 2 (section 5.2): RoBERTa-base pre-finetuned on 35 random tasks with the three
batching strategies, then the five targets fine-tuned from each and from RoBERTa-base.

  python -m muppet_jax.experiments run configs/experiments/paper_batching.py --root DIR

Three pre-finetuning runs (configs/base.py) on the same 35 tasks (a seeded random subset
holding RTE, BoolQ, RACE, SQuAD and MNLI): dataset-homogeneous (datasets one after another),
batch-homogeneous (every slot of an update from one task) and batch-heterogeneous (the
paper's). The report draws figures/batching.png.
"""

from configs.experiments import paper_common
from muppet_jax.experiments import spec


def get_experiment():
  return spec.Experiment(
      name='paper_batching',
      description='Paper section 5.2: the batching strategy of pre-finetuning (RoBERTa-base, '
      '35 tasks).',
      stages=[
          spec.prefinetune('pft', 'configs/base.py', axes={
              'batching': ['dataset_homogeneous', 'batch_homogeneous', 'heterogeneous'],
          }, overrides={'data.num_tasks': 35,
                        'data.required_tasks': ','.join(paper_common.TARGETS),
                        'data.subset_seed': 0}),
          paper_common.targets_stage(),
      ])
