"""Files that hold what others must not read (buffers, stores, configs with device passwords).

Both sides create them through :func:`private_file` so their mode does not depend on the umask
of whoever started the process: 0600 for the file (SQLite gives its -wal and -shm files the mode
of the database), 0700 for a directory it creates.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def private_file(path: Path) -> None:
    """Create ``path`` (and missing parents, 0700) as an empty 0600 file, or take group and
    other permissions away from an existing one. Raises :class:`OSError`."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO) and os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, stat.S_IMODE(mode) & ~(stat.S_IRWXG | stat.S_IRWXO))
    finally:
        os.close(fd)
