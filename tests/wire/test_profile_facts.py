"""The facts a desired config is checked against, as the collector reads them (wire) and as the
agent reads them (its whole profiles): the same for every profile."""

from __future__ import annotations

from pathlib import Path

import pytest

import wire
from agent.profiles import all_profiles, facts


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
