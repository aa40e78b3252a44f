"""What the miniature studies on the embedded demo share (configs/experiments/mini_*_demo.py).

Each miniature finishes in minutes on 2 CPU cores: pre-finetuning runs of 60 updates,
fine-tuning runs of two short epochs on part of a task's train split, evaluation on 200 dev
examples, two seeds. The tiny demo model (configs/demo.py) starts from random init, so its
"pretrained model" is random init, and a few dozen updates teach it little: the miniatures
show the protocol and the bookkeeping, not the paper's effect sizes. Only demo_topic learns
within these budgets from random init; a pre-finetuned start with its re-used head does much
better on it.
"""

from muppet_jax.experiments import spec

# The fine-tuning targets, in every pre-finetuning subset (data.required_tasks) as the paper's
# five targets are.
TARGETS = ['demo_topic', 'demo_choice']
# Held out of pre-finetuning for the low-resource study (QNLI and CoLA in the paper).
HELD_OUT = 'demo_compare'

# configs/demo.py, shortened: 60 updates of 4 heterogeneous slots.
PREFINETUNE = {
    'train.steps': 60,
    'train.checkpoint_every': 30,
    'train.log_every': 10,
    'train.eval_every': 0,  # One held-out evaluation, at the end.
    'data.eval_examples': 200,
}

# configs/finetune.py:<demo task> with fairseq's epoch schedule, shortened: 2 epochs over a
# quarter of the train split (16 updates per epoch for demo_topic, 71 for demo_choice), warmup
# 6% of the updates, the dev split evaluated after each epoch.
FINETUNE = {
    'finetune.epochs': 2.0,
    'finetune.warmup_fraction': 0.06,
    'finetune.train_fraction': 0.25,
    'train.checkpoint_every': 20,
    'data.eval_examples': 200,
}


def scale_stage() -> spec.Stage:
  """Pre-finetuning on 2, 3 and all 4 demo tasks left once HELD_OUT is removed, each subset
  holding the TARGETS (paper section 5.1; nested subsets from one seed)."""
  return spec.prefinetune('pft', 'configs/demo.py', axes={'num_tasks': [2, 3, -1]}, overrides={
      **PREFINETUNE,
      'data.required_tasks': ','.join(TARGETS),
      'data.excluded_tasks': HELD_OUT,
  })


def targets_stage() -> spec.Stage:
  """The TARGETS fine-tuned with two seeds, from random init (the demo's "pretrained model")
  and from every run of the 'pft' stage with its head re-used."""
  return spec.finetune('ft', 'configs/finetune.py:{task}', axes={
      'task': TARGETS,
      'start': [spec.pretrained('random_init'), spec.from_stage('pft', reuse_head=True)],
      'learning_rate': [1e-3],
      'seed': [0, 1],
  }, overrides=FINETUNE)
