from __future__ import annotations

import math

import pytest

from agent.profiles import Mapper, Profile, RateTracker, snake

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
    from agent.profiles import find_profile

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
