"""The rig is described by environment variables; a test whose device is absent skips, naming
the variable it needs. Nothing here runs in CI: ``.venv/bin/pytest hardware-tests``."""

from __future__ import annotations

import os

import pytest


def rig(*names: str) -> list[str]:
    """The values of ``names``; skip (naming the first missing one) when the rig lacks it."""
    values = []
    for name in names:
        value = os.environ.get(name, "")
        if not value:
            pytest.skip(f"set {name} to run this against a real device (hardware-tests/README.md)")
        values.append(value)
    return values


def optional(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def flag(name: str) -> bool:
    return os.environ.get(name, "") in ("1", "true", "yes")
