"""Paper Figure 1 (section 5.1): RoBERTa-base pre-finetuned on 10 to all tasks, then the five
targets fine-tuned from each checkpoint and from RoBERTa-base.

  python -m muppet_jax.experiments run configs/experiments/paper_scale.py --root DIR

Seven pre-finetuning runs (configs/base.py, 200k updates each: pass e.g. a shorter schedule
through the stage's overrides for a cheaper study) on nested random subsets of the encoder
mixture without QNLI and CoLA (held out for paper_low_resource.py), each holding RTE, BoolQ,
RACE, SQuAD and MNLI; then those five fine-tuned from every checkpoint and from RoBERTa-base
over 3 learning rates x 3 seeds. The report draws figures/scale.png. paper_low_resource.py
can fine-tune from this study's checkpoints (`paper_low_resource.py:DIR`).
"""

from configs.experiments import paper_common
from muppet_jax.experiments import spec


def get_experiment():
  return spec.Experiment(
      name='paper_scale',
      description='Paper Figure 1: fine-tuning against the number of pre-finetuning tasks '
      '(RoBERTa-base).',
      stages=[
          paper_common.scale_stage(),
          paper_common.targets_stage(),
      ])
