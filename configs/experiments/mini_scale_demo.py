"""Paper Figure 1 in miniature, on the embedded demo: fine-tuning against the number of
pre-finetuning tasks.

  python -m muppet_jax.experiments run configs/experiments/mini_scale_demo.py --root /tmp/mini_scale

Three pre-finetuning runs on nested random subsets of 2, 3 and 4 demo tasks (always holding
the two targets; demo_compare held out for mini_low_resource_demo.py), then both targets
fine-tuned from each and from random init, two seeds: 19 runs. The report draws
figures/scale.png.
"""

from configs.experiments import demo_common
from muppet_jax.experiments import spec


def get_experiment():
  return spec.Experiment(
      name='mini_scale_demo',
      description='Paper Figure 1 in miniature: fine-tuning from pre-finetuning runs on 2, 3 '
      'and 4 demo tasks, and from random init.',
      stages=[
          demo_common.scale_stage(),
          demo_common.targets_stage(),
      ])
