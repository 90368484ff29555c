"""Every profile folder: loads, is documented, and maps its golden testcases exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.profiles import Mapper, ProfileError, decode_mqtt_payload, load_profile, profiles_dir

ROOT = profiles_dir()
FOLDERS = sorted(p for p in ROOT.iterdir() if p.is_dir())
CASES = [
    (folder, case) for folder in FOLDERS for case in sorted((folder / "testcases").glob("*.json"))
]


def test_the_required_profiles_exist() -> None:
    names = {p.name for p in FOLDERS}
    assert {
        "pfsense-snmp",
        "pfsense-rest",
        "unifi-network",
        "frigate",
        "tasmota",
        "zigbee2mqtt",
        "shelly-gen2",
        "esphome",
        "host",
    } <= names


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_profile_loads_and_is_documented(folder: Path) -> None:
    profile = load_profile(folder)
    readme = (folder / "README.md").read_text()
    for section in ("**Reads**", "**Example output**", "**Firmware verified**"):
        assert section in readme, f"{folder.name}/README.md lacks {section}"
    assert list((folder / "testcases").glob("*.json")), f"{folder.name} has no golden testcases"
    for rule in profile.readings:
        assert f"`{rule.measurement}`" in readme, f"README does not name {rule.measurement}"


@pytest.mark.parametrize(("folder", "case"), CASES, ids=[f"{f.name}/{c.stem}" for f, c in CASES])
def test_golden_case(folder: Path, case: Path) -> None:
    profile = load_profile(folder)
    spec = json.loads(case.read_text())
    mapper = Mapper(profile, variables=spec.get("variables", {}), device=spec.get("device", ""))
    readings, events = [], []
    for item in spec["inputs"]:
        payload = item["payload"]
        if isinstance(payload, str) and "mqtt" in profile.profile.transports:
            payload = decode_mqtt_payload(profile, payload)
        out = mapper.apply(item["key"], payload, item["ts"])
        readings += [r.model_dump() for r in out.readings]
        events += [e.model_dump() for e in out.events]
    expected = spec["expected"]
    assert readings == expected["readings"]
    for got, want in zip(events, expected["events"], strict=True):
        if "id" not in want:  # a random id when the device gives none
            got.pop("id")
        assert got == want


def test_a_broken_profile_names_the_file_the_key_and_the_problem(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "profile.toml").write_text(
        '[profile]\nname = "broken"\ntitle = "x"\ntransport = "mqtt"\n\n'
        '[[readings]]\nmatch = "a/{device}"\nmeasurement = "m"\nfields.t = "Temperature"\n'
    )
    with pytest.raises(ProfileError) as err:
        load_profile(folder)
    text = str(err.value)
    assert str(folder / "profile.toml") in text
    assert "readings.0" in text
    assert "fields.t: 'Temperature' is not a path" in text
    (folder / "profile.toml").write_text(
        '[profile]\nname = "other"\ntitle = "x"\ntransport = "carrier-pigeon"\n'
    )
    with pytest.raises(ProfileError, match=r"profile\.transport"):
        load_profile(folder)
