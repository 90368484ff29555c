"""The facts a desired config is checked against, as the collector reads them (wire) and as the
agent reads them (its whole profiles): the same for every profile."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outpost_iot import wire
from outpost_iot.agent.profiles import all_profiles, facts


def test_the_collector_and_the_agent_read_the_same_facts_of_every_profile() -> None:
    profiles = all_profiles()
    assert len(profiles) >= 8
    for profile in profiles:
        assert wire.profile_facts(profile.name) == facts(profile.name), profile.name


@pytest.mark.parametrize("name", ["../firmware-profiles/host", "host/../host", "/etc", "", "Host"])
def test_a_profile_name_is_a_folder_name_never_a_path(name: str) -> None:
    with pytest.raises(ValueError, match=r"unknown profile .*known profiles: .*host"):
        wire.profile_facts(name)


def test_a_profile_file_that_does_not_say_its_transport_is_refused(tmp_path: Path) -> None:
    (tmp_path / "odd").mkdir()
    for text, words in (
        ("[profile]\nname = 'odd'\n", "profile.transport must be one or more of"),
        ("profile = 'odd'\n", "profile.transport must be one or more of"),
        ("[profile]\ntransport = ['mqtt', 'carrier-pigeon']\n", "one or more of mqtt, http"),
        ("[profile\n", "not valid TOML"),
    ):
        (tmp_path / "odd" / "profile.toml").write_text(text)
        with pytest.raises(ValueError, match=words):
            wire.profile_facts("odd", tmp_path)
    (tmp_path / "odd" / "profile.toml").write_text(
        "[profile]\ntransport = ['http', 'snmp']\n[http]\nauth = 'basic'\n"
    )
    assert wire.profile_facts("odd", tmp_path) == wire.ProfileFacts(("http", "snmp"), "basic")


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=300))
def test_any_profile_name_is_answered_with_facts_or_a_clear_refusal(name: str) -> None:
    """A desired config's profile name comes from an API caller: whatever it is, the answer is
    the facts of a shipped profile or a ValueError naming the known ones, never another error
    and never a file outside the profiles."""
    if name in {p.name for p in all_profiles()}:
        assert wire.profile_facts(name) == facts(name)
    else:
        with pytest.raises(ValueError, match=r"unknown profile .*known profiles:"):
            wire.profile_facts(name)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000) | st.text(max_size=2000).map(str.encode))
def test_any_config_file_is_read_or_refused_naming_it(tmp_path_factory, data: bytes) -> None:  # type: ignore[no-untyped-def]
    """A config file or a profile on disk may hold anything: it is read as TOML or refused with
    the error class asked for, saying which file."""
    path = tmp_path_factory.mktemp("toml") / "agent.toml"
    path.write_bytes(data)

    class Refused(Exception):
        pass

    try:
        out: object = wire.read_toml(path, missing="missing", error=Refused)
    except Refused as exc:
        out = str(exc)
        assert out.startswith(f"{path}: not valid TOML: ")
