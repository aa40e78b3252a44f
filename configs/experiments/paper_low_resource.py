"""Paper Figure 3 (section 5.3): QNLI and CoLA, held out of pre-finetuning, fine-tuned on nine
training fractions from 10% to 100% from every checkpoint of the scale study and from
RoBERTa-base.

  # With the scale study's runs (paper_scale.py, in DIR_SCALE): nothing is pre-finetuned again.
  python -m muppet_jax.experiments run configs/experiments/paper_low_resource.py:DIR_SCALE --root DIR
  # Self-contained: the same seven pre-finetuning runs as paper_scale.py first.
  python -m muppet_jax.experiments run configs/experiments/paper_low_resource.py --root DIR

The fractions are seeded random subsets (finetune.fraction_seed: the same subset for every
start and seed; a smaller one inside every larger one), as the paper's "selected through
random sampling". The report draws the heatmaps figures/low_resource.png.
"""

import numpy as np

from configs.experiments import paper_common
from muppet_jax.experiments import spec

# "nine partitions ... sampled uniformly between 10% of the data-set and 100%".
FRACTIONS = [round(float(f), 4) for f in np.linspace(0.1, 1.0, 9)]


def get_experiment(scale_root: str = ''):
  """`scale_root`: the --root of paper_scale.py (its pre-finetuning runs must be done)."""
  stages = [] if scale_root else [paper_common.scale_stage()]
  return spec.Experiment(
      name='paper_low_resource',
      description='Paper Figure 3: QNLI and CoLA at nine training fractions x every '
      'pre-finetuning scale (RoBERTa-base).',
      stages=stages + [spec.finetune('ft', 'configs/finetune.py:{task}', axes={
          'task': paper_common.HELD_OUT,
          'train_fraction': FRACTIONS,
          'start': [spec.pretrained(), spec.from_stage('pft', root=scale_root or None)],
          'learning_rate': paper_common.LEARNING_RATES,
          'seed': paper_common.SEEDS,
      }, overrides=paper_common.finetune_overrides('FacebookAI/roberta-base'))])
