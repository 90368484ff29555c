"""Every profile folder: loads, is documented, and maps its golden testcases exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from outpost_iot.agent.profiles import (
    Mapper,
    ProfileError,
    decode_mqtt_payload,
    explain,
    load_profile,
    profiles_dir,
    unmapped,
)

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


# The naming convention of firmware-profiles/README.md: a field with a unit ends in it.
UNIT_SUFFIXES = (
    "_c", "_pct", "_bytes", "_kb", "_bps", "_mbps", "_wh", "_kwh", "_w", "_va", "_var", "_v", "_mv",
    "_a", "_hz", "_s", "_ms", "_dbm", "_hpa", "_lux", "_ppm", "_ugm3", "_fps", "_dbfs", "_per_s",
    "_packets", "_errors", "_drops",
)  # fmt: skip
UNITLESS = {
    "on", "up", "ok", "connected", "enabled", "running", "monitored", "overheating", "full_duplex",
    "admin_up", "poe_enabled", "uplink_up", "restart_required", "external_power", "detection_enabled",
    "state", "status", "substatus", "version", "latest_version", "sys_name", "description", "value",
    "count", "cpu_count", "clients", "users", "guests", "aps", "adopted", "disconnected", "pending",
    "states", "state_limit", "current", "limit", "channel", "drops", "load1", "load5", "load15",
    "load_avg", "power_factor", "wifi_link_count",
}  # fmt: skip


def _source_repos(spec: dict[str, object]) -> list[str]:
    """Where a case's data was seen: the repository (owner/name) or the page of each source."""
    out = []
    for source in spec.get("sources", []):  # type: ignore[attr-defined]
        assert isinstance(source, str), "a source is a text naming where the data was seen"
        assert source.strip(), "a source must name where it was seen"
        first = source.split()[0]
        out.append(first.rstrip(","))
    return out


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_testcases_come_from_real_devices_and_say_where(folder: Path) -> None:
    """Each case names its sources, or says it is synthetic and why; two sources at least."""
    readme = (folder / "README.md").read_text()
    seen: set[str] = set()
    for case in sorted((folder / "testcases").glob("*.json")):
        spec = json.loads(case.read_text())
        has_sources = bool(spec.get("sources"))
        synthetic = spec.get("synthetic")
        assert has_sources != bool(synthetic), (
            f"{case.name}: give 'sources' (where the data was seen) or 'synthetic' (why none)"
        )
        for repo in _source_repos(spec):
            assert repo in readme, (
                f"{folder.name}/README.md: Firmware verified does not list {repo}"
            )
            seen.add(repo)
    assert len(seen) >= 2, f"{folder.name}: testcases from {len(seen)} public source(s), need 2"


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_field_names_carry_their_unit(folder: Path) -> None:
    profile = load_profile(folder)
    names = set()
    for rule in profile.readings:
        names |= set(rule.fields)
        names |= {member + suffix for member, suffix in rule.units.items()}
    wrong = sorted(n for n in names if not n.endswith(UNIT_SUFFIXES) and n not in UNITLESS)
    assert not wrong, f"{folder.name}: no unit suffix (firmware-profiles/README.md): {wrong}"
    readme = (ROOT / "README.md").read_text()
    for suffix in UNIT_SUFFIXES:
        assert f"`{suffix}`" in readme, f"firmware-profiles/README.md does not explain {suffix}"


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


@pytest.mark.parametrize(("folder", "case"), CASES, ids=[f"{f.name}/{c.stem}" for f, c in CASES])
def test_the_probe_explains_every_silent_message_of_the_corpus(folder: Path, case: Path) -> None:
    """What the technician's probe says about real messages: a message that gives nothing gets a
    reason naming the rule or the exclusion, and what no rule read is really in the message."""
    profile = load_profile(folder)
    spec = json.loads(case.read_text())
    mapper = Mapper(profile, variables=spec.get("variables", {}), device=spec.get("device", ""))
    for item in spec["inputs"]:
        payload = item["payload"]
        if isinstance(payload, str) and "mqtt" in profile.profile.transports:
            payload = decode_mqtt_payload(profile, payload)
        out = mapper.apply(item["key"], payload, item["ts"])
        reason = explain(mapper, item["key"], payload)
        if not out.readings and not out.events and reason:
            assert reason != "its rules give nothing", item["key"]
            assert any(
                word in reason
                for word in ("not a device", "finds nothing", "where", "none of its fields",
                             "no rule", "missing", ", not ", "first state", "rates only")
            ), reason  # fmt: skip
        for path, value in unmapped(mapper, item["key"], payload):
            assert value is not None, path
            assert not isinstance(value, dict | list), path
            assert _somewhere(payload, path, value), f"{item['key']}: {path} = {value!r}"


def _somewhere(payload: object, path: str, value: object) -> bool:
    """Whether ``path`` (``[*]`` for any index) leads to ``value`` in ``payload``."""
    if path in ("", "$"):
        return payload == value
    step = re.match(r"\.([^.\[]+)|\[(\*)\]", path)
    assert step, path
    rest = path[step.end() :]
    if step.group(1) is not None:
        return isinstance(payload, dict) and _somewhere(payload.get(step.group(1)), rest, value)
    return isinstance(payload, list) and any(_somewhere(x, rest, value) for x in payload)
