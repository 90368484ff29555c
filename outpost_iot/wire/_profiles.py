"""Where the firmware profiles are, and the facts of one that a config is checked against.

The agent loads whole profiles (``agent.profiles``); the collector, which checks a desired
config before signing it, needs only :class:`~wire.ProfileFacts`: the transports a profile reads
over and its HTTP authentication. Both find the folder, and refuse an unknown name, here.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from outpost_iot.wire._managed import SCHEMES, ProfileFacts
from outpost_iot.wire._toml import read_toml

ENV_DIR = "OUTPOST_PROFILES_DIR"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")  # a folder of the profiles, never a path


def profiles_dir() -> Path:
    """``$OUTPOST_PROFILES_DIR``, the checkout's ``firmware-profiles/``, or the installed copy."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    checkout = Path(__file__).resolve().parents[2] / "firmware-profiles"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "outpost" / "firmware-profiles"


def profile_folder(name: str, root: Path | None = None) -> Path:
    """The folder of profile ``name``; :class:`ValueError` naming the known ones if there is
    none (a name is a folder's name: ``../x`` is unknown, not a path)."""
    base = root or profiles_dir()
    folder = base / name
    if not _NAME.match(name) or not (folder / "profile.toml").is_file():
        known = (
            ", ".join(sorted(p.name for p in base.iterdir() if (p / "profile.toml").is_file()))
            if base.is_dir()
            else "none"
        )
        raise ValueError(f"unknown profile {name!r}; known profiles: {known} (in {base})")
    return folder


def profile_facts(name: str, root: Path | None = None) -> ProfileFacts:
    """The facts of profile ``name`` read from its ``profile.toml``; :class:`ValueError` if it
    is unknown or does not say them (``outpost-agent profile check`` tells the rest)."""
    path = profile_folder(name, root) / "profile.toml"
    raw = read_toml(path, missing="missing", error=ValueError)
    transport = _table(raw, "profile").get("transport")
    transports = tuple(transport) if isinstance(transport, list) else (transport,)
    if not transports or not all(isinstance(t, str) and t in SCHEMES for t in transports):
        raise ValueError(f"{path}: profile.transport must be one or more of {', '.join(SCHEMES)}")
    auth = _table(raw, "http").get("auth", "none")
    return ProfileFacts(transports=transports, http_auth=str(auth))


def _table(raw: dict[str, object], key: str) -> dict[str, object]:
    value = raw.get(key, {})
    return value if isinstance(value, dict) else {}
