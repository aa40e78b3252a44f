"""Paper Tables 3-4 in miniature, on the embedded demo: fine-tune with and without pre-finetuning.

  python -m muppet_jax.experiments run configs/experiments/mini_glue_demo.py --root /tmp/mini_glue

One pre-finetuning run of the tiny demo RoBERTa on the demo mixture (60 updates), then two demo
tasks fine-tuned from it (its heads re-used) and from random init (the demo's "pretrained
model") over two learning rates and two seeds: 17 runs, 5-10 minutes on 2 CPU cores. The
report chooses the learning rate per task and start on the mean best dev score over seeds.
"""

from configs.experiments import demo_common
from muppet_jax.experiments import spec


def get_experiment():
  return spec.Experiment(
      name='mini_glue_demo',
      description='Paper Tables 3-4 in miniature: two demo tasks fine-tuned with and without '
      'pre-finetuning, learning rate chosen on dev, two seeds.',
      stages=[
          spec.prefinetune('pft', 'configs/demo.py', axes={'seed': [0]},
                           overrides=demo_common.PREFINETUNE),
          spec.finetune('ft', 'configs/finetune.py:{task}', axes={
              'task': demo_common.TARGETS,
              'start': [spec.pretrained('random_init'),
                        spec.from_stage('pft', reuse_head=True)],
              'learning_rate': [5e-4, 1e-3],
              'seed': [0, 1],
          }, overrides=demo_common.FINETUNE),
      ])
