r"""Command-line entry point: the only place that defines flags.

  python -m muppet_jax.main --config configs/demo.py --workdir /tmp/muppet_demo \
      [--config.train.steps=100 ...]

Re-running the same command resumes from the newest checkpoint in --workdir. Everything else
lives in importable modules (`muppet_jax.train.run` is what a notebook calls).
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from muppet_jax import sharding
from muppet_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/demo.py or configs/demo.py:bart.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory (local or gs://) for checkpoints, metrics.jsonl and TensorBoard.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'eval', 'compile'],
    'train: train or resume the run in --workdir. eval: evaluate its newest checkpoint (or '
    '--config.eval.step) on every task, changing nothing in the workdir. compile: compile the '
    'train step ahead of time (--config.compile.topology for a TPU slice) and write '
    'WORKDIR/compile_report.json; no weights, no data.')
flags.mark_flags_as_required(['config', 'workdir'])

# Exit status of a run stopped by SIGTERM after saving its checkpoint (128 + SIGTERM).
_PREEMPTED_EXIT_CODE = 143


class _QuietLibraries:
  """Keeps library chatter out of the progress log: orbax's per-save INFO lines, and seqio's
  warning about uncached in-memory sources, printed for every task stream of the demo."""

  def filter(self, record) -> bool:
    if 'uncached FunctionDataset' in str(record.msg):
      return False
    return record.levelno >= logging.WARNING or 'orbax' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if _MODE.value == 'compile':  # Ahead of time: no distributed runtime, no devices needed.
    from muppet_jax import compile as compile_lib  # pylint: disable=g-import-not-at-top
    compile_lib.run(_CONFIG.value, _WORKDIR.value)
    return
  sharding.initialize_distributed()
  if _MODE.value == 'eval':
    from muppet_jax.eval import run as eval_run  # pylint: disable=g-import-not-at-top
    eval_run.run(_CONFIG.value, _WORKDIR.value)
    return
  result = train.run(_CONFIG.value, _WORKDIR.value)
  if result.preempted:
    logging.warning('stopped by SIGTERM at step %d after saving a checkpoint; re-run the same '
                    'command to resume', result.step)
    raise SystemExit(_PREEMPTED_EXIT_CODE)


if __name__ == '__main__':
  app.run(main)
