from __future__ import annotations

import math

import pytest

from outpost_iot.agent.profiles import Mapper, Profile, RateTracker, snake

S = 1_000_000_000


def test_rates_unwrap_counter_wraps_and_skip_resets() -> None:
    r = RateTracker()
    key = ("net", "eth0")
    assert r.rate(key, 100, 0, 32) is None  # baseline
    assert r.rate(key, 1100, 10 * S, 32) == 100.0
    # A 32-bit counter wraps: 2**32 - 900 → 100 is 1,000 bytes, not a negative rate.
    r.rate(key, 2**32 - 900, 20 * S, 32)
    assert r.rate(key, 100, 30 * S, 32) == pytest.approx(100.0)
    # The device rebooted: its counter starts again near zero. No rate, no spike.
    r.rate(key, 5_000_000, 40 * S, 64)
    assert r.rate(key, 200, 50 * S, 64) is None
    assert r.rate(key, 1200, 60 * S, 64) == 100.0
    # Same timestamp twice: no division by zero.
    assert r.rate(key, 1300, 60 * S, 64) is None


def _profile(**rule: object) -> Profile:
    return Profile.model_validate(
        {
            "profile": {"name": "t", "title": "t", "transport": "http"},
            "http": {"endpoints": [{"key": "stat/device", "path": "/stat/device"}]},
            "readings": [{"match": "stat/device", "measurement": "dev", **rule}],
        }
    )


def test_lists_counters_enums_and_strings_as_numbers() -> None:
    profile = _profile(
        select="$.data[*]",
        tags={"device": "{.name}", "mac": "{.mac}"},
        fields={
            "rx_bytes_per_s": {"path": ".rx_bytes", "rate": True},
            "cpu_percent": ".system-stats.cpu",
            "state": {"path": ".state", "map": {"0": "disconnected", "1": "connected"}},
        },
    )
    m = Mapper(profile)
    body = {
        "data": [
            {
                "name": "ap-1",
                "mac": "aa",
                "rx_bytes": 1000,
                "system-stats": {"cpu": "12.5"},
                "state": 1,
            },
            {"mac": "bb", "rx_bytes": 5, "state": 9},
        ]
    }
    first = m.apply("stat/device", body, 0)
    assert [(r.tags, r.fields) for r in first.readings] == [
        ({"device": "ap-1", "mac": "aa"}, {"cpu_percent": 12.5, "state": "connected"}),
    ]  # the second has no name tag, no known state and no rate yet: only its tags → no reading
    body["data"][0]["rx_bytes"] = 3000
    second = m.apply("stat/device", body, 10 * S)
    assert second.readings[0].fields["rx_bytes_per_s"] == 200.0


def test_non_finite_values_give_no_field() -> None:
    m = Mapper(_profile(fields={"v": ".v", "w": ".w"}))
    [reading] = m.apply("stat/device", {"v": "nan", "w": 2}, 0).readings
    assert reading.fields == {"w": 2}
    assert not m.apply("stat/device", {"v": math.inf}, 0).readings


def test_keys_that_do_not_match_are_ignored() -> None:
    m = Mapper(_profile(fields={"v": ".v"}))
    assert not m.apply("stat/health", {"v": 1}, 0).readings


def test_snake_case() -> None:
    assert [
        snake(n) for n in ("DewPoint", "Temperature", "linkquality", "ApparentPower", "tx-bytes")
    ] == ["dew_point", "temperature", "linkquality", "apparent_power", "tx_bytes"]


def test_mqtt_filters_come_from_the_templates() -> None:
    from outpost_iot.agent.profiles import find_profile

    # Topics of several levels under a fixed prefix: one subscription covers every depth.
    assert Mapper(find_profile("tasmota")).mqtt_filters() == ["tele/#"]
    assert Mapper(find_profile("tasmota"), variables={"prefix": "site1/tele"}).mqtt_filters() == [
        "site1/tele/#"
    ]
    assert Mapper(find_profile("frigate")).mqtt_filters() == [
        "frigate/available",
        "frigate/events",
        "frigate/stats",
    ]
    # No fixed prefix: one subscription per depth (up to 8 levels), not the whole broker.
    shelly = Mapper(find_profile("shelly-gen2")).mqtt_filters()
    assert "+/status/+" in shelly
    assert "+/+/status/+" in shelly
    assert "+/+/+/+/+/+/+/+/status/+" in shelly
    assert "#" not in shelly


def _mqtt_profile(**extra: object) -> Profile:
    return Profile.model_validate(
        {"profile": {"name": "t", "title": "t", "transport": "mqtt"}, **extra}
    )


def test_a_device_name_may_span_topic_levels_and_exclusions_are_globs() -> None:
    profile = _mqtt_profile(
        mqtt={"exclude_devices": ["bridge", "bridge/*", "*/availability"]},
        readings=[
            {"match": "z/{device*}", "measurement": "m", "tags": {"d": "{device}"},
             "numeric_fields": True}
        ],
    )  # fmt: skip
    m = Mapper(profile)
    got = [r.tags["d"] for key in ("z/a", "z/kitchen/floor_light", "z/a/b/c/d/e/f/g/h")
           for r in m.apply(key, {"v": 1}, 0).readings]  # fmt: skip
    assert got == ["a", "kitchen/floor_light", "a/b/c/d/e/f/g/h"]
    for excluded in ("z/bridge", "z/bridge/state", "z/kitchen/floor_light/availability"):
        assert not m.apply(excluded, {"v": 1}, 0).readings, excluded
    assert not m.apply("z/a/b/c/d/e/f/g/h/i", {"v": 1}, 0).readings  # more than 8 levels


def test_members_become_items_with_their_index_and_a_default() -> None:
    m = Mapper(
        _mqtt_profile(
            readings=[
                {"match": "s", "members": "^POWER(?P<relay>\\d*)$", "measurement": "relay",
                 "tags": {"relay": "{relay|'1'}", "member": "{key}"},
                 "fields": {"on": {"path": "$", "type": "bool"}}}
            ]
        )
    )  # fmt: skip
    out = m.apply("s", {"POWER": "ON", "POWER2": "off", "POWERX": "ON", "Uptime": 5}, 0)
    assert [(r.tags, r.fields) for r in out.readings] == [
        ({"relay": "1", "member": "POWER"}, {"on": True}),
        ({"relay": "2", "member": "POWER2"}, {"on": False}),
    ]


def test_list_values_split_into_one_reading_per_index() -> None:
    m = Mapper(
        _mqtt_profile(
            readings=[
                {"match": "s", "select": "$.E", "split_arrays": "ch", "measurement": "e",
                 "fields": {"p": ".Power", "v": ".Voltage", "wh": {"path": ".Total", "scale": 1000}}}
            ]
        )
    )  # fmt: skip
    out = m.apply("s", {"E": {"Power": [52, 5], "Voltage": 235, "Total": [2.5, 0.25]}}, 0)
    assert [(r.tags, r.fields) for r in out.readings] == [
        ({}, {"v": 235}),
        ({"ch": "1"}, {"p": 52, "wh": 2500.0}),
        ({"ch": "2"}, {"p": 5, "wh": 250.0}),
    ]


def test_path_fallbacks_durations_and_numbers_with_units() -> None:
    m = Mapper(
        _profile(
            fields={
                "limit": {"path": [".max", ".default_max"]},
                "up_s": {"path": [".secs", ".text"], "type": "duration"},
                "delay_ms": {"path": ".delay", "type": "float"},
                "loss_pct": {"path": ".loss", "type": "float"},
            }
        )
    )
    [r] = m.apply("stat/device", {"max": None, "default_max": 7, "text": "9T09:29:01",
                                  "delay": "0.663ms", "loss": "12 %"}, 0).readings  # fmt: skip
    assert r.fields == {"limit": 7, "up_s": 811741.0, "delay_ms": 0.663, "loss_pct": 12.0}
    [r] = m.apply("stat/device", {"max": 3, "default_max": 7, "secs": 12}, 0).readings
    assert r.fields == {"limit": 3, "up_s": 12.0}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5 Days 01 Hour 37 Minutes 40 Seconds", 437860.0),
        ("1 Day 01 Hour 00 Minutes 01 Second", 90001.0),
        ("42 Minutes 10 Seconds", 2530.0),
        ("0T01:35:14", 5714.0),
        ("01:02:03", 3723.0),
        ("3 days, 4:05:06", 273906.0),
        ("1d 2h 3m 4s", 93784.0),
        ("250ms", 0.25),
        ("3600", 3600.0),
        ("unknown", None),
        ("5 parsecs", None),
        ("", None),
    ],
)
def test_durations_as_devices_write_them(text: str, seconds: float | None) -> None:
    from outpost_iot.agent.profiles._engine import parse_duration

    assert parse_duration(text) == seconds


def test_where_keeps_only_items_that_pass_every_test() -> None:
    m = Mapper(
        _profile(
            select="$.*",
            where={".descr": {"not_matches": "^(UMA|MALLOC): "}, ".size": {"gt": 0}},
            tags={"s": "{.descr}"},
            fields={"size": ".size"},
        )
    )
    body = {
        "1": {"descr": "/", "size": 10},
        "2": {"descr": "UMA: mbuf", "size": 99},
        "3": {"descr": "/dev", "size": 0},
        "4": {"descr": "MALLOC: temp", "size": 1},
        "5": {"size": 4},  # no descr: not_matches fails on a missing value
    }
    assert [r.tags["s"] for r in m.apply("stat/device", body, 0).readings] == ["/"]


def test_conditions_compare_numbers_as_numbers_and_present() -> None:
    from outpost_iot.agent.profiles._engine import _holds
    from outpost_iot.agent.profiles._model import Condition

    assert not _holds(Condition.model_validate({"ne": 0}), 0.0)
    assert _holds(Condition.model_validate({"eq": "1"}), 1)
    assert not _holds(Condition.model_validate({"eq": True}), 1)  # a bool is not a number
    assert _holds(Condition.model_validate(["a", "b"]), "b")
    assert _holds(Condition.model_validate({"present": False}), None)
    assert not _holds(Condition.model_validate({"ne": "x"}), None)
    assert _holds(Condition.model_validate({"ge": 2, "lt": 3}), "2.5")
    assert not _holds(Condition.model_validate({"gt": 0}), "n/a")


def test_events_on_changes_per_item_with_a_normal_start() -> None:
    m = Mapper(
        Profile.model_validate(
            {
                "profile": {"name": "t", "title": "t", "transport": "http"},
                "http": {"endpoints": [{"key": "gw", "path": "/gw"}]},
                "events": [
                    {"match": "gw", "type": "gw", "select": "$[*]", "source": "{.name}",
                     "changes": [".sub", ".status"], "normal": ["none"], "body": [".name"]}
                ],
            }
        )
    )  # fmt: skip
    polls = [
        [{"name": "a", "status": "none"}, {"name": "b", "status": "online", "sub": "loss"}],
        [{"name": "a", "status": "none"}, {"name": "b", "status": "online", "sub": "loss"}],
        [{"name": "a", "status": "down"}, {"name": "b", "status": "online", "sub": "none"}],
    ]
    got = [[(e.source, e.body) for e in m.apply("gw", p, i).events] for i, p in enumerate(polls)]
    assert got == [
        [("b", {"name": "b", "value": "loss", "previous": None})],  # "none" at start: no news
        [],
        [
            ("a", {"name": "a", "value": "down", "previous": "none"}),
            ("b", {"name": "b", "value": "none", "previous": "loss"}),
        ],
    ]


def test_nested_selections_see_the_enclosing_item_and_tags_take_part_of_a_value() -> None:
    m = Mapper(
        _profile(
            select="$.data[*].ports[*]",
            objects_only=True,
            tags={
                "dev": "{^.name}",
                "port": "{.idx|.ifname}",
                "kind": {"template": "{^.descr}", "pattern": "^([^,]+)", "map": {"gw": "gateway"}},
            },
            fields={"up": {"path": ".up", "type": "bool"}},
        )
    )
    body = {"data": [{"name": "sw", "descr": "switch, 24 ports", "ports": [{"idx": 1, "up": True}]},
                     {"name": "fw", "descr": "gw", "ports": [{"ifname": "eth0", "up": False}, 7]}]}  # fmt: skip
    assert [r.tags for r in m.apply("stat/device", body, 0).readings] == [
        {"dev": "sw", "port": "1", "kind": "switch"},
        {"dev": "fw", "port": "eth0", "kind": "gateway"},
    ]


def test_an_int_is_scaled_before_it_is_rounded_and_empty_text_is_no_value() -> None:
    m = Mapper(
        _profile(
            fields={
                "total_bytes": {"path": ".mib", "type": "int", "scale": 1048576},
                "alias": {"path": ".alias", "type": "str"},
                "auto": ".blank",
            }
        )
    )
    [r] = m.apply("stat/device", {"mib": 67.1, "alias": "", "blank": "  "}, 0).readings
    assert r.fields == {"total_bytes": 70359450}


def test_a_broken_where_or_members_pattern_names_the_problem() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="is not a regular expression"):
        _profile(fields={"v": ".v"}, where={".v": {"matches": "("}})
    with pytest.raises(ValidationError, match="members selects from one object"):
        _profile(fields={"v": ".v"}, select="$.*", members="^a")
    with pytest.raises(ValidationError, match="a condition needs a test"):
        _profile(fields={"v": ".v"}, where={".v": {}})


# The probe's diagnosis: why a message gave nothing, and what in it no rule read.


def _real(name: str) -> Mapper:
    from outpost_iot.agent.profiles import find_profile

    return Mapper(find_profile(name), device="d")


def test_explain_says_why_a_message_gives_nothing() -> None:
    from outpost_iot.agent.profiles import explain

    z2m = _real("zigbee2mqtt")
    # A message that maps has nothing to explain.
    assert explain(z2m, "zigbee2mqtt/hall", {"temperature": 21.5}) == ""
    # The bridge's own topics are not devices, and the probe says so instead of blaming a device.
    assert "'bridge/logging' is not a device (mqtt.exclude_devices)" in explain(
        z2m, "zigbee2mqtt/bridge/logging", {"level": "info", "message": "x"}
    )
    # A device object with nothing the rules read: each rule says what it looked for.
    why = explain(z2m, "zigbee2mqtt/hall", {"update": {"state": "idle"}})
    assert "sensor: none of its fields (on) has a value" in why
    assert "event action: .action missing" in why
    why = explain(z2m, "zigbee2mqtt/hall", {"action": ""})
    assert "event action: .action = '', not ne ''" in why
    assert explain(_real("tasmota"), "elsewhere/x", {"a": 1}) == (
        "no rule of the profile reads this key"
    )
    # A where that leaves every item out, and a selection that finds nothing.
    snmp = _real("pfsense-snmp")
    storage = {"1": {"descr": "UMA: 256 Bucket", "size": 0, "used": 0}}
    assert "storage: 1 item(s), none passes its where" in explain(snmp, "storage", storage)
    assert "finds nothing" in explain(_real("unifi-network"), "stat/device", {"data": "x"})
    # Rates need a second poll: the first gives nothing, and that is no fault of the device.
    rates = Mapper(_profile(select="$.data[*]", fields={"rx_bps": {"path": ".rx", "rate": True}}))
    assert explain(rates, "stat/device", {"data": [{"rx": 5}]}) == (
        "dev: rates only, given from the second poll on"
    )


def test_explain_never_changes_what_the_agent_sends() -> None:
    from outpost_iot.agent.profiles import explain

    z2m = _real("zigbee2mqtt")
    z2m.apply("zigbee2mqtt/bridge/state", "online", 1)
    explain(z2m, "zigbee2mqtt/bridge/state", "offline")
    # The mapper still remembers "online": going offline now is still a change, reported once.
    out = z2m.apply("zigbee2mqtt/bridge/state", "offline", 2)
    assert [e.body for e in out.events] == [{"value": "offline", "previous": "online"}]


def test_unmapped_lists_what_no_rule_read() -> None:
    from outpost_iot.agent.profiles import unmapped

    z2m = _real("zigbee2mqtt")
    payload = {
        "temperature": 21.5,
        "state": "ON",
        "color": {"x": 0.31, "y": 0.33},
        "update": {"state": "idle"},
        "last_seen": None,
        "firmware": "2.1",
    }
    assert unmapped(z2m, "zigbee2mqtt/hall", payload) == [
        (".color.x", 0.31),
        (".color.y", 0.33),
        (".update.state", "idle"),
        (".firmware", "2.1"),
    ]
    pf = _real("pfsense-rest")
    status = {"data": {"cpu_usage": 3.2, "mem_usage": 41, "new_in_2_9": 7}}
    assert unmapped(pf, "status/system", status) == [(".data.new_in_2_9", 7)]
    # A fallback the profile knows is not new, though the first path had the value.
    states = {"data": {"maximumstates": 500, "defaultmaximumstates": 398000, "currentstates": 1}}
    assert unmapped(pf, "firewall/states/size", states) == []
    snmp_if = {"1": {"name": "igc0", "descr": "igc0", "oper": 1}}
    assert unmapped(_real("pfsense-snmp"), "interfaces", snmp_if) == []
    # Values a where read and found wanting count as read: they are known, only left out.
    snmp = _real("pfsense-snmp")
    storage = {"1": {"descr": "UMA: 256 Bucket", "size": 0, "used": 0}}
    assert unmapped(snmp, "storage", storage) == []
    # A bare value: read, or listed as the whole payload.
    assert unmapped(_real("esphome"), "node/sensor/t/state", "21.5") == []
