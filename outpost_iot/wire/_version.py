"""The installed distribution's name and version, for everything that reports a version."""

from __future__ import annotations

from importlib import metadata

# The name on the package index. `outpost` there is another project's (a proxy server):
# everything that asks for our version, or tells a user what to install, uses this one.
DISTRIBUTION = "outpost-iot"


def installed_version() -> str:
    """The installed version of Outpost (``0+unknown`` when run from a bare checkout)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # pragma: no cover - a bare checkout
        return "0+unknown"
