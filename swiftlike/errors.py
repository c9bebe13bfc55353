"""The one exception type users see as a one-line message (exit code 2)."""


class UserError(Exception):
    """Bad input or configuration: reported as one line, no traceback (unless --debug)."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message as one line of at most `limit` characters (its type's name when it has none)."""
    text = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip()) or type(e).__name__
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."
