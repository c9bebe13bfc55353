"""The one exception type users see as a one-line message (exit code 2)."""


class UserError(Exception):
    """Bad input or configuration: reported as one line, no traceback (unless --debug)."""
