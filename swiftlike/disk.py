"""A directory made whole before it is published (renamed into place): checkpoints and exports."""
from __future__ import annotations

import os
from pathlib import Path


def _default_mode() -> int:
    """0o666 less the umask: read where Linux shows it (setting it to read it would race with other threads)."""
    try:
        status = Path("/proc/self/status").read_text()
        mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def settle(directory: Path) -> None:
    """Every file under `directory` readable as the user's umask says (safetensors writes its files 0600: a server
    running as another user could not read the weights) and on disk."""
    mode = _default_mode()
    for f in Path(directory).rglob("*"):
        if f.is_file() and not f.is_symlink():
            if f.stat().st_mode & 0o777 != mode:
                os.chmod(f, mode)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
