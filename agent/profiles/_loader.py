"""Finding and loading profiles; a broken profile names the file, the key and the problem."""

from __future__ import annotations

import os
import sys
import tomllib
from functools import cache
from pathlib import Path

from pydantic import ValidationError

from agent._exceptions import ConfigError
from agent.profiles._model import Profile

ENV_DIR = "OUTPOST_PROFILES_DIR"


class ProfileError(ConfigError):
    """A profile that does not load."""


def profiles_dir() -> Path:
    """``$OUTPOST_PROFILES_DIR``, the checkout's ``firmware-profiles/``, or the installed copy."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    checkout = Path(__file__).resolve().parents[2] / "firmware-profiles"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "outpost" / "firmware-profiles"


def load_profile(folder: Path) -> Profile:
    path = folder / "profile.toml"
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"{path}: missing; every profile folder needs a profile.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None
    try:
        profile = Profile.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise ProfileError(f"{path}: {exc.error_count()} problem(s):\n{problems}") from None
    if profile.name != folder.name:
        raise ProfileError(
            f"{path}: profile.name: {profile.name!r} must equal the folder name {folder.name!r}"
        )
    return profile


@cache
def _load_cached(folder: str) -> Profile:
    return load_profile(Path(folder))


def find_profile(name: str, root: Path | None = None) -> Profile:
    base = root or profiles_dir()
    folder = base / name
    if not (folder / "profile.toml").is_file():
        known = (
            ", ".join(sorted(p.name for p in base.iterdir() if (p / "profile.toml").is_file()))
            if base.is_dir()
            else "none"
        )
        raise ProfileError(f"unknown profile {name!r}; known profiles: {known} (in {base})")
    return _load_cached(str(folder))


def all_profiles(root: Path | None = None) -> list[Profile]:
    base = root or profiles_dir()
    return [load_profile(p) for p in sorted(base.iterdir()) if (p / "profile.toml").is_file()]
