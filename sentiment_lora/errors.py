"""The one exception type for mistakes a user can fix (bad config, bad CSV, missing weights)."""


class UserError(Exception):
    """Reported as a single line and a non-zero exit, never as a traceback."""
