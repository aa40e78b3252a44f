"""Paper Figure 2 (section 5.2) in miniature, on the embedded demo: the batching strategy of
pre-finetuning.

  python -m muppet_jax.experiments run configs/experiments/mini_batching_demo.py --root /tmp/mini_batching

Three pre-finetuning runs on the same random 3 demo tasks (holding the two targets), with
heterogeneous, batch-homogeneous and dataset-homogeneous batches, then both targets fine-tuned
from each and from random init, two seeds: 19 runs. The report draws figures/batching.png.
"""

from configs.experiments import demo_common
from muppet_jax.experiments import spec


def get_experiment():
  return spec.Experiment(
      name='mini_batching_demo',
      description='Paper section 5.2 in miniature: pre-finetuning with the three batching '
      'strategies, then fine-tuning.',
      stages=[
          spec.prefinetune('pft', 'configs/demo.py', axes={
              'batching': ['heterogeneous', 'batch_homogeneous', 'dataset_homogeneous'],
          }, overrides={**demo_common.PREFINETUNE, 'data.num_tasks': 3,
                        'data.required_tasks': ','.join(demo_common.TARGETS)}),
          demo_common.targets_stage(),
      ])
