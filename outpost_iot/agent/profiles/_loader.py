"""Finding and loading profiles; a broken profile names the file, the key and the problem."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import ValidationError

from outpost_iot.agent._exceptions import ConfigError
from outpost_iot.agent.profiles._model import Profile
from outpost_iot.wire import (
    ProfileFacts,
    describe,
    problems,
    profile_folder,
    profiles_dir,
    read_toml,
)


class ProfileError(ConfigError):
    """A profile that does not load."""


def load_profile(folder: Path) -> Profile:
    path = folder / "profile.toml"
    raw = read_toml(
        path, missing="missing; every profile folder needs a profile.toml", error=ProfileError
    )
    try:
        profile = Profile.model_validate(raw)
    except ValidationError as exc:
        raise ProfileError(describe(str(path), problems(exc))) from None
    if profile.name != folder.name:
        raise ProfileError(
            f"{path}: profile.name: {profile.name!r} must equal the folder name {folder.name!r}"
        )
    return profile


@cache
def _load_cached(folder: str) -> Profile:
    return load_profile(Path(folder))


def find_profile(name: str, root: Path | None = None) -> Profile:
    try:
        folder = profile_folder(name, root)
    except ValueError as exc:
        raise ProfileError(str(exc)) from None
    return _load_cached(str(folder))


def facts(name: str) -> ProfileFacts:
    """What a config is checked against (:func:`wire.profile_problems`); :class:`ValueError`
    if the profile is unknown or does not load."""
    try:
        profile = find_profile(name)
    except ProfileError as exc:
        raise ValueError(str(exc)) from None
    return ProfileFacts(transports=tuple(profile.profile.transports), http_auth=profile.http.auth)


def all_profiles(root: Path | None = None) -> list[Profile]:
    base = root or profiles_dir()
    return [load_profile(p) for p in sorted(base.iterdir()) if (p / "profile.toml").is_file()]
