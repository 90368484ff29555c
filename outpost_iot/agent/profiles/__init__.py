"""Firmware profiles: declarative descriptions of device types, and the engine that applies them."""

from outpost_iot.agent.profiles._diagnose import explain, unmapped
from outpost_iot.agent.profiles._engine import (
    Mapper,
    RateTracker,
    decode_mqtt_payload,
    get_path,
    snake,
)
from outpost_iot.agent.profiles._loader import (
    ProfileError,
    all_profiles,
    facts,
    find_profile,
    load_profile,
)
from outpost_iot.agent.profiles._model import Profile
from outpost_iot.wire import profiles_dir

__all__ = [
    "Mapper",
    "Profile",
    "ProfileError",
    "RateTracker",
    "all_profiles",
    "decode_mqtt_payload",
    "explain",
    "facts",
    "find_profile",
    "get_path",
    "load_profile",
    "profiles_dir",
    "snake",
    "unmapped",
]
