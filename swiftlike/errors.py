"""The one exception type users see as a one-line message (exit code 2)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class UserError(Exception):
    """Bad input or configuration: reported as one line, no traceback (unless --debug)."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message as one line of at most `limit` characters (its type's name when it has none)."""
    text = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip()) or type(e).__name__
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


@contextmanager
def intact(where) -> Iterator[None]:
    """A damaged or cut-short safetensors file read inside is one line naming `where` (safetensors' own error names
    no file)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001  (safetensors' error type is in its compiled module)
        if type(e).__name__ != "SafetensorError":
            raise
        raise UserError(f"{where}: a weights file there is damaged or incomplete ({one_line(e)}); copy or download "
                        "it again") from None
