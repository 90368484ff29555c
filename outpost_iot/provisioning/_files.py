"""Writing identity files: all or nothing, secrets 0600."""

from __future__ import annotations

import os
from pathlib import Path

from outpost_iot.provisioning._exceptions import ProvisioningError


def replace_files(directory: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """Write every file to a temporary name, sync, then rename all: all or nothing visible."""
    temps: list[tuple[Path, Path]] = []
    try:
        for name, (data, mode) in files.items():
            tmp = directory / f".{name}.new"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            tmp.chmod(mode)
            temps.append((tmp, directory / name))
    except OSError as exc:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise ProvisioningError(
            f"cannot write the identity to {directory}: {exc.strerror}"
        ) from None
    for tmp, final in temps:
        tmp.replace(final)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
