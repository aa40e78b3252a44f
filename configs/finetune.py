"""Fine-tune one task, from a pre-finetuned MUPPET run or a Hugging Face model (paper section 4).

  # From the demo's pre-finetuned workdir, re-using the task's pre-finetuning head:
  python -m muppet_jax.main --config configs/finetune.py:muppet_demo_sentiment \
      --workdir /tmp/ft_sentiment --config.finetune.from_workdir=/tmp/muppet_demo \
      --config.finetune.reuse_head=True
  # RTE from an exported MUPPET model (or any HF RoBERTa/BART), on 10% of its training data:
  python -m muppet_jax.main --config configs/finetune.py:rte --workdir /tmp/ft_rte \
      --config.model.init_from=/path/to/hf_dir --config.finetune.train_fraction=0.1

The argument is a task name (`muppet_rte`) or a catalogue slug (`rte`); an unknown one fails at
once, naming the closest task names.

The schedule of real tasks is fairseq's RoBERTa fine-tuning recipe (its GLUE example: 10
epochs, warmup 6% of the updates, linear decay, Adam betas (0.9, 0.98), eps 1e-6, weight decay
0.1, dropout 0.1): `finetune.epochs` passes over the train split, the updates per epoch
measured by packing a sample of it; the dev split is evaluated after every epoch. Demo tasks
train a fixed 150 updates unless `--config.finetune.epochs` is set. Every run writes its best
dev score to WORKDIR/best_eval.json (the paper reports the best dev score). For a whole
hyperparameter grid with seeds, tables and figures see configs/experiments/ and
`python -m muppet_jax.experiments`.
"""

import difflib

from configs import demo as demo_config
from muppet_jax import config_lib
from muppet_jax import errors
from muppet_jax.data import catalogue
from muppet_jax.data import demo as demo_data


def task_names() -> list[str]:
  """Every task that can be fine-tuned: the catalogue's datasets with training data, the demo's."""
  records = [r for r in catalogue.RECORDS if r.has_training_data] + list(demo_data.RECORDS)
  return [r.task_name for r in records]


def _check_task(task: str) -> None:
  known = task_names()
  if task in known:
    return
  slugs = {name.removeprefix('muppet_'): name for name in known}
  close = [slugs[s] for s in difflib.get_close_matches(task.removeprefix('muppet_'), slugs,
                                                        n=3, cutoff=0.6)]
  hint = f'did you mean {" or ".join(close)}?' if close else (
      f'known tasks: {", ".join(sorted(known))}')
  raise errors.UserError(f'configs/finetune.py: unknown task {task!r}; {hint} (pass a task '
                         'name such as muppet_rte or its slug rte after the colon)')


def get_config(task: str = 'muppet_demo_sentiment'):
  """Single-task config; demo tasks get the demo's CPU-sized model and schedule."""
  task = task if task.startswith('muppet_') else f'muppet_{task}'
  _check_task(task)
  if task.startswith('muppet_demo_'):
    c = demo_config.get_config('bart' if task == 'muppet_demo_summarize' else 'roberta')
    # A fixed number of updates (the demo's comparison with and without MUPPET); epochs as
    # fairseq with e.g. --config.finetune.epochs=3 (~57 updates per epoch on demo_sentiment:
    # 4,000 examples, ~70 packed per sub-batch), as configs/experiments/*demo*.py do.
    c.finetune.epochs = 0.0
    c.train.steps = 150  # Only with finetune.epochs=0 (otherwise set from the epochs).
    c.train.eval_every = 0  # Only with finetune.epochs=0 (otherwise every epoch).
    c.optim.warmup_steps = 15  # Only with finetune.warmup_fraction=-1.
    c.train.log_every = 10
    c.train.checkpoint_every = 50
    c.train.grad_accum = 1  # One task: no heterogeneous accumulation needed.
    c.optim.learning_rate = 5e-4  # A random-init tiny model wants a larger step than 1e-5.
  else:
    c = config_lib.default()
    c.model.init_from = 'FacebookAI/roberta-large'  # Or an exported MUPPET directory.
    # 2 x 512 tokens per slot: ~16 GLUE sentence pairs packed (fairseq: 16-32 sentences per
    # update). An update has devices x grad_accum slots: fine-tune on a few devices.
    c.data.rows = 2
    c.data.length = 512
    c.data.max_examples = 32
    c.train.grad_accum = 1
    c.finetune.epochs = 10.0  # fairseq --max-epoch 10.
    c.finetune.warmup_fraction = 0.06  # fairseq: --warmup-updates = 6% of --total-num-update.
    c.train.steps = 10_000  # Only with finetune.epochs=0 (otherwise set from the epochs).
    c.train.eval_every = 1_000  # Only with finetune.epochs=0 (otherwise every epoch).
    c.train.checkpoint_every = 1_000
    c.optim.learning_rate = 1e-5  # fairseq's RoBERTa GLUE rates: 1e-5 .. 3e-5.
    c.optim.b2 = 0.98
    c.optim.eps = 1e-6
    c.optim.weight_decay = 0.1
    c.data.eval_examples = -1  # The whole evaluation split.
  c.unlock()
  c.data.mixture = task  # A single task name works where a mixture name does.
  c.finetune.from_workdir = ''  # Pre-finetuned workdir to start from (set on the command line).
  c.finetune.reuse_head = False  # Re-use the task's pre-finetuning head.
  c.finetune.train_fraction = 1.0  # Low-resource runs: e.g. 0.1 (a seeded random subset).
  return config_lib.lock(c)
