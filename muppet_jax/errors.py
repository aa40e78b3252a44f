"""User-facing errors: bad input that the user can fix (config, data, paths, checkpoints).

`main.py` (and the other command-line entry points, through `cli.py`) print such an error as
one line naming the problem and the fix, with no traceback, and exit with status 2. Anything
else is a bug and keeps its traceback.

Raise `UserError` (or a subclass) where the input is checked; subclasses that also derive from
a builtin (`ConfigError` is a `ValueError`) keep `except ValueError` callers working.
"""


class UserError(Exception):
  """Base class of errors caused by the user's input; the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
  """A config field has a value that cannot work; the message names the field (`train.steps`)."""
