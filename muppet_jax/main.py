r"""Train, evaluate or compile a MUPPET run from a config file.

  python -m muppet_jax.main --config configs/demo.py --workdir /tmp/muppet_demo \
      [--mode train|eval|compile] [--config.train.steps=100 --config.train.r3f.enabled=True ...]

--config FILE[:ARG]   an ml_collections config file (configs/demo.py, configs/base.py,
                      configs/finetune.py:rte, ...); ARG goes to its get_config(ARG).
--workdir DIR         checkpoints, metrics.jsonl, TensorBoard, config.json and logs/; re-running
                      the same command resumes from the newest readable checkpoint in DIR.
--mode                train (default), eval (evaluate the newest checkpoint, change nothing) or
                      compile (ahead-of-time compile, write DIR/compile_report.json).
--config.SECTION.FIELD=VALUE
                      overrides one config field, e.g. --config.train.steps=100,
                      --config.model.init_from=/path/to/hf_dir, --config.train.r3f.enabled=True;
                      a key that does not exist fails at once ("Could not override ...").
--verbosity N         console detail: 0 (default) progress, checkpoints and results; 1 adds
                      library logs; -1 warnings and errors only. Everything (orbax, seqio,
                      TensorFlow, JAX) always goes to DIR/logs/<mode>.log.

Bad input (a config value, a path, a mesh that does not fit the devices or the model) stops the
run before any heavy work with one line, `error: <problem and fix>`, and exit status 2.

This module only parses the command line, sets up the console and the log file and dispatches;
the work lives in importable modules (`muppet_jax.train.run` is what a notebook calls). Other
command-line tools: `python -m muppet_jax.export` (Hugging Face export),
`python -m muppet_jax.data.prepare` (dataset preparation), `python -m muppet_jax.data.inspect`.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from muppet_jax import cli
from muppet_jax import config_lib
from muppet_jax import errors

_CONFIG = config_flags.DEFINE_config_file(
    'config', None,
    'Experiment config file, e.g. configs/demo.py or configs/demo.py:bart. Override any field '
    'with --config.<section>.<field>=<value>, e.g. --config.train.steps=100.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics.jsonl, TensorBoard, config.json and '
    'logs/ (library logs); re-running the same command resumes from it.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'eval', 'compile'],
    'train: train or resume the run in --workdir. eval: evaluate its newest checkpoint (or '
    '--config.eval.step) on every task, changing nothing in the workdir. compile: compile the '
    'train step ahead of time (--config.compile.topology for a TPU slice) and write '
    'WORKDIR/compile_report.json; no weights, no data.')
flags.mark_flags_as_required(['config', 'workdir'])

# Exit status of a single-process run stopped by SIGTERM after saving its checkpoint
# (128 + SIGTERM). The processes of a multi-process run all exit 0 after a preemption notice:
# each saved its part of the checkpoint at the step they agreed on, most were not signalled.
_PREEMPTED_EXIT_CODE = 143


def _header(config_file: str, overrides: dict, workdir: str, log_file: str) -> None:
  """The run header: what runs (config file and its overrides) and where its files are."""
  changed = ', '.join(f'{k}={v!r}' for k, v in overrides.items()) or 'none'
  logging.info('muppet_jax %s: config %s, overrides: %s', _MODE.value, config_file, changed)
  logging.info('workdir %s: full config in config.json, metrics in metrics.jsonl, library logs '
               'in %s', workdir, os.path.relpath(log_file, workdir))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  verbosity = flags.FLAGS.verbosity
  cli.silence_native_logs(verbosity)  # Before anything imports TensorFlow.
  cli.setup_logging(verbosity, None)  # Console only until the process index is known.
  try:
    config = _CONFIG.value
    config_lib.validate(config)  # Bad values fail here, in a second, before any import.
    from muppet_jax import multihost  # pylint: disable=g-import-not-at-top
    if _MODE.value != 'compile':  # Ahead of time: no distributed runtime, no devices needed.
      multihost.initialize(config.distributed)
    import jax  # pylint: disable=g-import-not-at-top
    process = jax.process_index() if _MODE.value != 'compile' else 0
    if _MODE.value == 'train':  # A workdir of another run is refused before the log file.
      from muppet_jax import run_record  # pylint: disable=g-import-not-at-top
      run_record.check_resume(config, _WORKDIR.value)
    log_file = cli.log_path(_WORKDIR.value, _MODE.value, process)
    cli.setup_logging(verbosity, log_file, is_chief=process == 0)
    _header(config_flags.get_config_filename(flags.FLAGS['config']),
            config_flags.get_override_values(flags.FLAGS['config']), _WORKDIR.value, log_file)
    _dispatch(config, _WORKDIR.value, log_file, verbosity)
  except errors.UserError as e:
    cli.exit_on_user_error(e)


def _dispatch(config, workdir: str, log_file: str, verbosity: int) -> None:
  # What C++ libraries print while they load (TensorFlow) goes to the log file.
  with cli.native_stderr_to_log(log_file, verbosity):
    if _MODE.value == 'compile':
      from muppet_jax import compile as compile_lib  # pylint: disable=g-import-not-at-top
    elif _MODE.value == 'eval':
      from muppet_jax.eval import run as eval_run  # pylint: disable=g-import-not-at-top
    else:
      from muppet_jax import train  # pylint: disable=g-import-not-at-top
  if _MODE.value == 'compile':
    compile_lib.run(config, workdir)
    return
  if _MODE.value == 'eval':
    eval_run.run(config, workdir)
    return
  result = train.run(config, workdir)
  if result.preempted:
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_count() > 1:
      logging.warning('stopped by a preemption notice at step %d after every process saved '
                      'checkpoint %d; re-run the same command on every process to resume',
                      result.step, result.step)
      return
    logging.warning('stopped by SIGTERM at step %d after saving a checkpoint; re-run the same '
                    'command to resume', result.step)
    raise SystemExit(_PREEMPTED_EXIT_CODE)
  logging.info('done: step %d; metrics in %s', result.step,
               os.path.join(workdir, 'metrics.jsonl'))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
