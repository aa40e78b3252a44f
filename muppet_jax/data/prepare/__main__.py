"""`python -m muppet_jax.data.prepare ...`: see `cli.py`."""

import sys

from muppet_jax.data.prepare import cli

if __name__ == '__main__':
  sys.exit(cli.main())
