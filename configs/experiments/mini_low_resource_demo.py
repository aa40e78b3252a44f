"""Paper Figure 3 in miniature, on the embedded demo: training fraction x pre-finetuning scale.

  python -m muppet_jax.experiments run configs/experiments/mini_low_resource_demo.py --root /tmp/mini_lr
  # Or fine-tune from the pre-finetuning runs of mini_scale_demo.py (nothing pre-finetuned again):
  python -m muppet_jax.experiments run configs/experiments/mini_low_resource_demo.py:/tmp/mini_scale \
      --root /tmp/mini_lr

demo_compare, held out of every pre-finetuning run, fine-tuned on 10%, 30% and 100% of its
train split (seeded random subsets, nested) from random init and from each pre-finetuning run
of the scale study (2, 3, 4 tasks), two seeds: 24 fine-tuning runs (+3 pre-finetuning runs
without the argument). The report draws the heatmap figures/low_resource.png.
"""

from configs.experiments import demo_common
from muppet_jax.experiments import spec


def get_experiment(scale_root: str = ''):
  """`scale_root`: the --root of mini_scale_demo.py, whose pre-finetuning runs to start from."""
  stages = [] if scale_root else [demo_common.scale_stage()]
  return spec.Experiment(
      name='mini_low_resource_demo',
      description='Paper Figure 3 in miniature: a held-out demo task fine-tuned on 10-100% of '
      'its data from every pre-finetuning scale.',
      stages=stages + [
          spec.finetune('ft', 'configs/finetune.py:{task}', axes={
              'task': [demo_common.HELD_OUT],
              'train_fraction': [0.1, 0.3, 1.0],
              'start': [spec.pretrained('random_init'),
                        spec.from_stage('pft', root=scale_root or None)],
              'learning_rate': [1e-3],
              'seed': [0, 1],
          }, overrides={**demo_common.FINETUNE, 'finetune.train_fraction': 1.0}),
      ])
