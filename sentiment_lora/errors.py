"""The one exception type for mistakes a user can fix (bad config, bad CSV, missing weights), and how the
command-line entry points report it."""

from __future__ import annotations

import sys
from typing import NoReturn

# The exit status of a user's mistake, in every command (argparse uses 2 for a malformed command line too).
USER_ERROR_EXIT = 2


class UserError(Exception):
    """Reported as a single line and a non-zero exit, never as a traceback."""


def exit_with(error: UserError) -> NoReturn:
    """The entry points' policy for a user's mistake: one `error:` line on stderr, exit status 2."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT)
