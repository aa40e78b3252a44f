"""What the command-line entry points share: the console, the log file and one-line errors.

The console (stderr) shows, by absl's `--verbosity` (default 0):

  >= 1  every record, library INFO included (and DEBUG in the log file);
     0  this package's INFO lines (the run header, progress, one line per checkpoint, the
        results table) and every warning and error, except the libraries' logged exceptions
        (orbax logs a failed save before raising it): those go to the log file;
    -1  warnings and errors only;
    -2  errors only.

The log file (`setup_logging`) receives every record at INFO and above from every library
(orbax, seqio, TensorFlow, JAX, absl, this package), tracebacks included, whatever the console
shows. TensorFlow's C++ log lines bypass Python logging: `silence_native_logs` turns them off
(TF_CPP_MIN_LOG_LEVEL; an explicit setting in the environment wins) before TensorFlow is
imported, and `native_stderr_to_log` sends what TensorFlow 2.21 prints while it loads (before
it reads that setting) to the log file.

Bad input (`errors.UserError`) ends a program through `exit_on_user_error`: one line
`error: <message>` on stderr as the last line, the traceback in the log file only, exit
status 2. `parse_flags` (absl's `flags_parser`) does the same for flag and config-override
errors, e.g. "error: Could not override config key 'train.stepz': ... did you mean train.steps?".
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

import ml_collections
from absl import flags
from absl import logging as absl_logging

from muppet_jax import config_lib
from muppet_jax import errors

# Records logged with `extra={FILE_ONLY: True}` go to the log file and never to the console.
FILE_ONLY = 'muppet_file_only'
# Exit status of a program stopped by bad input (a usage error, as argparse's).
USER_ERROR_EXIT_CODE = 2

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def silence_native_logs(verbosity: int) -> None:
  """Turns TensorFlow's C++ logging off below `--verbosity=1` (call before importing TF)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '0' if verbosity >= 1 else '3')


@contextlib.contextmanager
def native_stderr_to_log(path: str | None, verbosity: int):
  """Within the block, everything written to file descriptor 2 (C++ libraries loading: TF's
  'oneDNN custom operations', 'Could not find cuda drivers' ...) goes to the log file `path`.

  For imports of heavy modules only: Python logging inside the block lands in the file too.
  Does nothing at `verbosity >= 1` or without a log file.
  """
  if path is None or verbosity >= 1:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(path, 'ab') as log:
      os.dup2(log.fileno(), 2)
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def _is_ours(record: logging.LogRecord) -> bool:
  return record.pathname.startswith(_PACKAGE_DIR) or record.name.startswith('muppet_jax')


class ConsoleFilter(logging.Filter):
  """What reaches the console at a verbosity (see the module docstring)."""

  def __init__(self, verbosity: int, *, is_chief: bool = True):
    super().__init__()
    self.verbosity = verbosity
    self.is_chief = is_chief  # Other processes of a multi-process run print warnings only.

  def filter(self, record: logging.LogRecord) -> bool:
    if getattr(record, FILE_ONLY, False):
      return False
    if self.verbosity <= 0 and record.exc_info and not _is_ours(record):
      return False  # A library logging an exception it raises: the error reaches us anyway.
    if record.levelno >= logging.ERROR:
      return True
    if record.levelno >= logging.WARNING:
      return self.verbosity >= -1
    if self.verbosity >= 1:
      return True
    return self.verbosity == 0 and self.is_chief and _is_ours(record)


class ConsoleFormatter(logging.Formatter):
  """'HH:MM:SS message' for this package's INFO lines; level and origin for the rest; library
  tracebacks only at --verbosity >= 1 (they are in the log file)."""

  def __init__(self, verbosity: int):
    super().__init__()
    self.verbosity = verbosity

  def format(self, record: logging.LogRecord) -> str:
    text = f'{time.strftime("%H:%M:%S", time.localtime(record.created))} '
    if record.levelno != logging.INFO:
      text += f'{record.levelname} '
    if not _is_ours(record):
      text += f'[{record.name} {os.path.basename(record.pathname)}:{record.lineno}] '
    text += record.getMessage()
    if record.exc_info and (_is_ours(record) or self.verbosity >= 1):
      text += '\n' + self.formatException(record.exc_info)
    return text


def log_path(workdir: str, program: str, process_index: int = 0) -> str:
  """WORKDIR/logs/<program>.log (`<program>.process<i>.log` on processes other than 0)."""
  name = program if process_index == 0 else f'{program}.process{process_index}'
  return os.path.join(os.fspath(workdir), 'logs', f'{name}.log')


def setup_logging(verbosity: int, path: str | None, *, is_chief: bool = True) -> None:
  """Routes Python logging: console by `verbosity`, everything to the file `path` (appended).

  Call once, early in `main` (absl's handler must be installed, as `app.run` does).

  Raises:
    errors.UserError: the log file cannot be created (an unwritable workdir).
  """
  root = logging.getLogger()
  root.setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
  console = absl_logging.get_absl_handler()
  for handler in list(root.handlers):  # e.g. logging.basicConfig() from an early library call.
    if handler is not console and isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler) and handler.stream in (sys.stderr, sys.stdout):
      root.removeHandler(handler)
  if console not in root.handlers:
    root.addHandler(console)
  for old in [f for f in console.filters if isinstance(f, ConsoleFilter)]:
    console.removeFilter(old)
  console.addFilter(ConsoleFilter(verbosity, is_chief=is_chief))
  console.setFormatter(ConsoleFormatter(verbosity))
  logging.captureWarnings(True)  # Python warnings (deprecations ...) are library chatter too.
  if path is None:
    return
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path, mode='a', encoding='utf-8')
  except OSError as e:
    raise errors.UserError(f'cannot write the log file {path}: {e}; choose a writable '
                           '--workdir') from e
  handler.setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
  handler.setFormatter(absl_logging.PythonFormatter())
  root.addHandler(handler)
  absl_logging.info('---- %s, pid %d: %s', time.strftime('%Y-%m-%d %H:%M:%S'), os.getpid(),
                    ' '.join(sys.argv), extra={FILE_ONLY: True})


def one_line(error: BaseException) -> str:
  """The error's message on one line (a multi-line message's lines joined by '; ')."""
  lines = [' '.join(line.split()) for line in str(error).splitlines()]
  text = '; '.join(line for line in lines if line)
  return re.sub(r':; ', ': ', text) or type(error).__name__


def _flush_logs() -> None:
  for handler in logging.getLogger().handlers:
    try:
      handler.flush()
    except Exception:  # pylint: disable=broad-except  (a closed stream: nothing to flush)
      pass
  sys.stdout.flush()


def exit_on_user_error(error: errors.UserError) -> NoReturn:
  """Ends the program: `error: <message>` as one line, the traceback in the log file only.

  The process exits at once (`os._exit`): after bad input nothing is worth tearing down, and
  library teardown (input-pipeline threads, TensorFlow) can take a minute or print more lines
  after ours. Checkpoints are written atomically, so none is left half-written.
  """
  exit_with_error(one_line(error), USER_ERROR_EXIT_CODE, error)


def exit_with_error(message: str, code: int, error: BaseException | None = None) -> NoReturn:
  """Ends the process at once with `error: <message>` as the last line on stderr, the message
  (and the traceback of `error`) in the log file, and exit status `code`. Callable from any
  thread (a process that stops because another one was lost, `multihost`)."""
  absl_logging.error('stopped: %s', message, exc_info=error, extra={FILE_ONLY: True})
  _flush_logs()
  sys.stderr.write(f'error: {message}\n')
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def _innermost(error: BaseException) -> BaseException:
  """The first exception of the chain (ml_collections and absl re-raise config errors)."""
  seen = set()
  while id(error) not in seen:
    seen.add(id(error))
    inner = error.__cause__ or error.__context__
    if inner is None:
      break
    error = inner
  return error


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
    if arg == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def flag_error_message(error: BaseException, argv: Sequence[str],
                       config_flag: str = 'config') -> str:
  """One line naming a command-line problem and its fix: an unknown config key (with the
  closest existing ones), a bad value, an unknown flag, a config file that fails."""
  inner = _innermost(error)
  for e in (error, inner):
    if isinstance(e, errors.UserError):
      return one_line(e)
  overrides = [arg[len(f'--{config_flag}.'):].split('=', 1)[0] for arg in argv
               if arg.startswith(f'--{config_flag}.')]
  path = _flag_value(argv, config_flag)
  if overrides and path and isinstance(inner, (AttributeError, KeyError)):
    try:
      config = _load_config_file(path)
    except Exception:  # pylint: disable=broad-except  (reported below as the error itself)
      config = None
    for key in overrides if config is not None else ():
      message = config_lib.unknown_key_message(config, key)
      if message:
        return message
  if isinstance(error, flags.Error) and 'Traceback' not in str(error):
    return f'{one_line(error)} (see --help)'
  # An exception inside the config file (ml_collections puts its traceback into the message).
  where = f'--{config_flag}={path}: ' if path else ''
  return f'{where}{type(inner).__name__}: {one_line(inner)}'


def _load_config_file(path: str):
  """`get_config(ARG)` of a 'FILE[:ARG]' config file, as ml_collections' config flag loads it."""
  filename, *arg = path.split(':', 1)
  spec = importlib.util.spec_from_file_location('_muppet_config_file', filename)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*arg)


def _check_config_file(name: str) -> None:
  """ml_collections defers a config file that cannot be read until first use: fail now."""
  if name not in flags.FLAGS or flags.FLAGS[name].value is None:
    return
  value = flags.FLAGS[name].value
  if not isinstance(value, ml_collections.ConfigDict):
    try:
      value.keys()  # Raises the error that loading the file deferred.
    except Exception as e:  # pylint: disable=broad-except
      raise errors.UserError(f'--{name}={flags.FLAGS[name].config_filename}: cannot load the '
                             f'config file ({one_line(e)}); check the path') from e


def parse_flags(argv: list[str]) -> list[str]:
  """absl `flags_parser`: parses `argv`; on an error prints one line and exits with status 2."""
  try:
    remaining = flags.FLAGS(argv)
    _check_config_file('config')
    return remaining
  except Exception as e:  # pylint: disable=broad-except  (every parse failure is bad input)
    message = flag_error_message(e, argv)
  sys.stderr.write(f'error: {message}\n')
  sys.exit(USER_ERROR_EXIT_CODE)
