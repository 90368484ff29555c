"""Config patches: a merge patch in which devices merge by name, laid over a desired config."""

from __future__ import annotations

from typing import Any

import pytest

from outpost_iot.collector._configs import ConfigInvalid, apply_patch, deleted_secrets

BASE: dict[str, Any] = {
    "devices": [
        {"name": "fw-1", "profile": "pfsense-snmp", "target": "snmp://10.0.0.1", "interval": 30},
        {"name": "ctl", "profile": "unifi-network", "target": "https://10.0.0.2", "insecure": True},
    ],
    "sources": [{"type": "host", "interval": 10}],
    "uplink": {"host": "mqtt.example.net", "port": 8883},
}


def test_named_items_merge_by_name_and_keep_their_order() -> None:
    out = apply_patch(
        BASE,
        {
            "devices": [
                {"name": "ctl", "interval": 60, "insecure": None},  # change one, drop a key
                {"name": "nvr", "profile": "frigate-http", "target": "http://10.0.0.3:5000"},
            ]
        },
    )
    assert [d["name"] for d in out["devices"]] == ["fw-1", "ctl", "nvr"]
    assert out["devices"][0] == BASE["devices"][0]  # untouched
    assert out["devices"][1] == {
        "name": "ctl",
        "profile": "unifi-network",
        "target": "https://10.0.0.2",
        "interval": 60,
    }
    assert out["sources"] == BASE["sources"]
    assert BASE["devices"][1]["insecure"] is True  # the base is not changed in place


def test_objects_merge_null_removes_and_other_lists_replace() -> None:
    out = apply_patch(
        BASE,
        {"uplink": {"host": "mqtt2.example.net"}, "sources": [{"type": "host", "interval": 5}]},
    )
    assert out["uplink"] == {"host": "mqtt2.example.net", "port": 8883}
    assert out["sources"] == [{"type": "host", "interval": 5}]  # unnamed items: replaced
    assert "uplink" not in apply_patch(BASE, {"uplink": None})
    assert apply_patch(BASE, {"log_level": "debug"})["log_level"] == "debug"


def test_an_item_is_removed_with_the_delete_marker() -> None:
    out = apply_patch(BASE, {"devices": [{"name": "fw-1", "$patch": "delete"}]})
    assert [d["name"] for d in out["devices"]] == ["ctl"]
    # Removing what is not there changes nothing (a fleet-wide removal where it exists).
    assert apply_patch(BASE, {"devices": [{"name": "gone", "$patch": "delete"}]}) == BASE


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        (
            {"devices": [{"name": "fw-1", "$patch": "remove"}]},
            "devices[fw-1]",
            '"$patch": "delete"',
        ),
        (
            {"devices": [{"name": "fw-1", "$patch": "delete", "interval": 5}]},
            "devices[fw-1]",
            "give only",
        ),
        ({"uplink": {"$patch": "delete"}}, "uplink", "only for items of a list"),
    ],
)
def test_a_wrong_marker_names_its_place(patch: dict[str, Any], field: str, words: str) -> None:
    base = {k: v for k, v in BASE.items() if k != "uplink"} if field == "uplink" else BASE
    with pytest.raises(ConfigInvalid) as caught:
        apply_patch(base, patch)
    ((f, problem),) = caught.value.problems
    assert f == field
    assert words in problem


def test_items_of_a_list_the_gateway_takes_from_agent_toml_cannot_be_patched() -> None:
    with pytest.raises(ConfigInvalid) as caught:
        apply_patch({}, {"devices": [{"name": "fw-1", "interval": 60}]})
    ((field, problem),) = caught.value.problems
    assert field == "devices"
    assert "come from its own agent.toml" in problem
    # Sections that are objects can be set on such a gateway: only the broker moves.
    assert apply_patch({}, {"uplink": {"host": "mqtt2.example.net", "port": 8883}}) == {
        "uplink": {"host": "mqtt2.example.net", "port": 8883}
    }


def test_secrets_set_to_null_are_deleted_not_carried() -> None:
    patch = {
        "devices": [{"name": "fw-1", "community": None, "interval": 5}],
        "x": {"password": None},
    }
    assert deleted_secrets(patch) == {"devices[fw-1].community", "x.password"}
