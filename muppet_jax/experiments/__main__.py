r"""Runs an experiment's plan, or reports on it.

  python -m muppet_jax.experiments run EXPERIMENT.py[:ARG] --root DIR \
      [--list] [--index I] [--emit-slurm] [--verbosity N]
  python -m muppet_jax.experiments report DIR

run           checks the plan (every run's config), then runs every run that is not done, one
              after another on this machine's devices: finished runs are skipped, an
              interrupted one resumes from its checkpoint, a failing one is recorded and the
              others go on; then writes the report. Re-running the same command continues the
              experiment. Exit status 0 when every run is done, 1 when some failed or could not
              start, 143 after a SIGTERM (the current run checkpointed), 2 for bad input.
  --list      prints the plan (index, state, id, overrides) and changes nothing.
  --index I   runs only the plan's run I (a cluster job array's task); the runs it starts from
              must be done.
  --emit-slurm
              writes DIR/launch/: SLURM job arrays over launch/slurm_gpu.sbatch, a submit
              script and a TPU pod script (launch/README.md), and trains nothing.
report        writes DIR/results.csv, DIR/results.md, DIR/results.json and DIR/figures/*.png.

Bad input (an unknown axis, task or field, an empty grid, a root holding another experiment's
runs) stops before anything starts, with one `error:` line and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from absl import app
from absl import flags
from absl import logging as absl_logging

from muppet_jax import cli
from muppet_jax import errors

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_PREEMPTED_EXIT_CODE = 143


class _Parser(argparse.ArgumentParser):
  """argparse whose usage errors are one `error:` line and exit status 2."""

  def error(self, message: str) -> NoReturn:
    sys.stderr.write(f'error: {message} (see python -m muppet_jax.experiments --help)\n')
    sys.exit(cli.USER_ERROR_EXIT_CODE)


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog='python -m muppet_jax.experiments',
                   description='Run the paper\'s studies (configs/experiments/) and report them.',
                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  commands = parser.add_subparsers(dest='command', required=True, parser_class=_Parser)
  run = commands.add_parser('run', help='run (or continue) an experiment')
  run.add_argument('experiment', help='experiment file, FILE[:ARG] (configs/experiments/...)')
  run.add_argument('--root', required=True, help='the experiment\'s directory')
  what = run.add_mutually_exclusive_group()
  what.add_argument('--list', action='store_true', help='print the plan and its states')
  what.add_argument('--index', type=int, help='run only the plan\'s run I')
  what.add_argument('--emit-slurm', action='store_true',
                    help='write DIR/launch/ (SLURM arrays, TPU pod script); train nothing')
  run.add_argument('--verbosity', type=int, default=0,
                   help='0: one line per run; 1: the runs\' own lines and library logs too')
  report = commands.add_parser('report', help='write results.csv, tables and figures')
  report.add_argument('root', help='the experiment\'s directory')
  report.add_argument('--verbosity', type=int, default=0, help='console detail')
  return parser


def _parse(argv: list[str]) -> argparse.Namespace:
  """absl `flags_parser`: absl's own flags at their defaults, ours through argparse."""
  flags.FLAGS(argv[:1])
  return _parser().parse_args(argv[1:])


def _print_plan(plan, root: str) -> None:
  from muppet_jax.experiments import store  # pylint: disable=g-import-not-at-top

  states = store.states(plan, root)
  counts = {}
  for value in states.values():
    counts[value] = counts.get(value, 0) + 1
  print(f'experiment {plan.experiment} ({plan.file}): {len(plan.runs)} runs ('
        + ', '.join(f'{n} {s}' for s, n in sorted(counts.items())) + f') in {root}')
  width = max(len(run.id) for run in plan.runs)
  print(f'{"index":>5}  {"state":<11}  {"id":<{width}}  config and overrides')
  for run in plan.runs:
    overrides = ' '.join(f'{k}={v}' for k, v in run.overrides.items())
    print(f'{run.index:>5}  {states[run.id]:<11}  {run.id:<{width}}  {run.config} {overrides}')


def _run(args: argparse.Namespace) -> int:
  from muppet_jax.experiments import plan as plan_lib  # pylint: disable=g-import-not-at-top
  from muppet_jax.experiments import spec  # pylint: disable=g-import-not-at-top
  from muppet_jax.experiments import store  # pylint: disable=g-import-not-at-top

  root = os.path.abspath(args.root)
  experiment = spec.load(args.experiment)
  store.check_owner(root, experiment.name)  # Before the heavy imports of planning.
  with cli.native_stderr_to_log(os.devnull, args.verbosity):  # TensorFlow's loading noise.
    from muppet_jax import build  # pylint: disable=g-import-not-at-top,unused-import
  plan = plan_lib.make_plan(experiment, args.experiment)
  store.check_root(root, plan)
  if args.list:
    _print_plan(plan, root)
    return 0
  if args.emit_slurm:
    from muppet_jax.experiments import slurm  # pylint: disable=g-import-not-at-top
    store.record_plan(root, plan)
    written = slurm.emit(plan, root, _REPO)
    print(f'wrote {len(written)} files under {os.path.dirname(written[0])}: submit with '
          f'{os.path.join(os.path.dirname(written[0]), "submit.sh")} (SLURM) or run '
          f'{os.path.join(os.path.dirname(written[0]), "tpu_pod.sh")} (TPU pod)')
    return 0
  if args.index is not None:
    if not 0 <= args.index < len(plan.runs):
      raise spec.ExperimentError(f'--index {args.index} is not in the plan, whose runs are '
                                 f'0..{len(plan.runs) - 1} (see --list)')
    run = plan.runs[args.index]
    states = store.states(plan, root)
    waiting = [d for d in run.after if states[d] != store.DONE]
    if waiting:
      indices = [plan.by_id()[d].index for d in waiting]
      raise spec.ExperimentError(f'run {run.id} starts from {", ".join(waiting)} (index '
                                 f'{", ".join(map(str, indices))}), which has not finished; '
                                 'run it first')
  return _train(args, plan, root)


def _train(args: argparse.Namespace, plan, root: str) -> int:
  from muppet_jax import multihost  # pylint: disable=g-import-not-at-top
  from muppet_jax.experiments import report  # pylint: disable=g-import-not-at-top
  from muppet_jax.experiments import runner  # pylint: disable=g-import-not-at-top
  from muppet_jax.experiments import store  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  multihost.initialize()  # A multi-process launch: every process runs the plan.
  if not jax.config.jax_compilation_cache_dir:
    # The runs of a grid compile the same programs (a task's eval step, a learning rate's
    # train step): JAX's persistent cache compiles each once per experiment.
    jax.config.update('jax_compilation_cache_dir', os.path.join(root, 'logs', 'jax_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  is_chief = jax.process_index() == 0
  if is_chief:
    store.record_plan(root, plan)
  log_file = cli.log_path(root, 'experiment', jax.process_index())
  os.makedirs(os.path.dirname(log_file), exist_ok=True)
  log = logging.FileHandler(log_file, mode='a')
  log.setFormatter(absl_logging.PythonFormatter())
  log.addFilter(runner.OnlyExperimentLines())
  logging.getLogger().addHandler(log)
  absl_logging.info('experiment %s: %d runs in %s%s', plan.experiment, len(plan.runs), root,
                    f' (only run {args.index})' if args.index is not None else '')
  outcome = runner.run_plan(plan, root, only=args.index, is_chief=is_chief)
  if outcome.already_done and args.index is not None:
    absl_logging.info('run %s is done: nothing to train', outcome.already_done[0])
  if outcome.preempted:
    return _PREEMPTED_EXIT_CODE
  if args.index is None and is_chief:
    written = report.write(root)
    absl_logging.info('report: %s, %s, %d figure(s) in %s', written.markdown, written.csv,
                      len(written.figures), os.path.dirname(written.figures[0])
                      if written.figures else '-')
  return 1 if outcome.failed or outcome.blocked else 0


def main(args: argparse.Namespace) -> None:
  cli.silence_native_logs(args.verbosity)  # Before anything imports TensorFlow.
  cli.setup_logging(args.verbosity, None)
  if args.verbosity <= 0:  # The runs' own lines go to their log files.
    from muppet_jax.experiments import runner  # pylint: disable=g-import-not-at-top
    absl_logging.get_absl_handler().addFilter(runner.OnlyExperimentLines())
  try:
    if args.command == 'report':
      from muppet_jax.experiments import report  # pylint: disable=g-import-not-at-top
      written = report.write(os.path.abspath(args.root))
      print(f'wrote {written.csv}, {written.markdown}, {written.json}' +
            ''.join(f', {p}' for p in written.figures))
      code = 0
    else:
      code = _run(args)
  except errors.UserError as e:
    cli.exit_on_user_error(e)
  sys.exit(code)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse)
