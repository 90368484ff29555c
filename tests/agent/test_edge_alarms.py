"""Edge alarm rules on the gateway: raised and cleared by the readings as they are collected
(hysteresis, hold time, scope), as events in the buffer's commit, and published retained on the
site's broker for local automation."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from typing import Any

import paho.mqtt.client as mqtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from outpost_iot import wire
from outpost_iot.agent._edge_alarms import EdgeAlarms
from outpost_iot.dev._processes import LocalBroker
from tests._alarm_model import readings_in_batches, threshold_model
from tests._fuzz import budget

S = 10**9
RULE = wire.EdgeRule(id="rule-1", name="Freezer too warm", severity="critical", measurement="sensor", field="temperature_c", above=-15, clear=-17, for_s=60, device="freezer")  # fmt: skip


def reading(t: int, celsius: float, device: str = "freezer") -> wire.Reading:
    return wire.Reading(measurement="sensor", tags={"device": device}, fields={"temperature_c": celsius}, ts=t * S)  # fmt: skip


def test_a_rule_raises_after_its_hold_time_and_clears_past_its_clear_level() -> None:
    edge = EdgeAlarms("gw-1", wire.EdgeAlarms(rules=[RULE]))
    assert edge.check([reading(0, -12), reading(30, -11)]) == ([], 0)  # above, not for 60 s yet
    assert edge.check([reading(40, -16)]) == ([], 0)  # back in the band: the hold starts again
    assert edge.check([reading(50, -14), reading(100, -13), reading(105, -10, device="other")]) == ([], 0)  # fmt: skip
    [raised], _ = edge.check([reading(110, -12)])
    assert (raised.type, raised.ts, raised.source) == ("alarm", 110 * S, "gw-1/device=freezer")
    assert raised.body == {
        "rule": "rule-1", "name": "Freezer too warm", "severity": "critical", "state": "raised",
        "originator": "gw-1/device=freezer", "value": -12.0, "level": -15.0, "since": 50.0,
    }  # fmt: skip
    assert edge.check([reading(120, -9), reading(130, -16)]) == ([], 0)  # still open: in the band
    [cleared], _ = edge.check([reading(140, -18)])
    assert (cleared.body["state"], cleared.ts, cleared.body["value"]) == ("cleared", 140 * S, -18.0)
    assert (edge.raised, edge.cleared) == (1, 1)


async def test_alarms_are_published_retained_on_the_site_broker(site_broker: LocalBroker) -> None:  # fmt: skip
    got: dict[str, dict[str, object]] = {}
    seen = threading.Event()

    def on_message(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        got[m.topic] = json.loads(m.payload)
        seen.set()

    edge = EdgeAlarms("gw-1", wire.EdgeAlarms(rules=[RULE.model_copy(update={"for_s": 0})], local_broker=f"mqtt://127.0.0.1:{site_broker.port}"))  # fmt: skip
    edge.check([reading(1, -10)])  # before the publisher runs: queued, not lost
    task = asyncio.create_task(edge.run())
    try:
        publisher = edge._publisher
        assert publisher is not None
        async with asyncio.timeout(20):
            while publisher.published < 1:  # noqa: ASYNC110 - a counter, no event to wait on
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # A home-automation client that connects afterwards still sees the alarm (retained).
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.on_message = on_message
    c.connect("127.0.0.1", site_broker.port)
    c.subscribe("outpost/alarms/#", qos=1)
    c.loop_start()
    try:
        assert seen.wait(20)
    finally:
        c.loop_stop()
        c.disconnect()
    msg = got["outpost/alarms/gw-1/rule-1"]
    assert (msg["state"], msg["ts"], msg["value"]) == ("raised", 1.0, -10.0)


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=1024)
_value = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False, width=64), st.text(max_size=50))  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    readings=st.lists(
        st.builds(
            lambda tags, v, t: wire.Reading(
                measurement="sensor", tags=tags, fields={"temperature_c": v}, ts=t
            ),
            st.dictionaries(st.from_regex(r"[a-z_]{1,16}", fullmatch=True), _text, max_size=64),
            _value,
            st.integers(0, wire.limits.TIME_MAX_NS),
        ),
        max_size=30,
    )
)
def test_any_readings_give_valid_events_or_counted_drops_never_an_error(readings: list[wire.Reading]) -> None:  # fmt: skip
    """Whatever a device sends (64 tags of a kilobyte, any value, any time), the edge rules
    answer with events the wire accepts, each for one originator of bounded length, or count
    what they could not send; they never fail the source that handed the readings over."""
    rule = RULE.model_copy(update={"device": None, "for_s": 0})
    edge = EdgeAlarms("gw-1", wire.EdgeAlarms(rules=[rule]))
    events, invalid = edge.check(readings)
    assert invalid == 0
    for e in events:
        wire.Event.model_validate(e.model_dump())
        assert len(e.body["originator"]) <= wire.MAX_ORIGINATOR_CHARS
        assert e.body["originator"].startswith("gw-1")
    assert len(events) == edge.raised + edge.cleared


# -- against the model of a threshold ------------------------------------------------------------

_SERIES = [("d1", "r1"), ("d2", "r1"), ("d1", "r2")]  # (device, room)


@st.composite
def _edge_runs(draw: st.DrawFn) -> dict[str, object]:
    up = draw(st.booleans())
    return {
        "up": up,
        "clear": draw(st.sampled_from([None, 8.0 if up else 12.0])),
        "for_s": draw(st.sampled_from([0, 3, 10])),
        "device": draw(st.sampled_from([None, "d1"])),
        "tags": draw(st.sampled_from([{}, {"room": "r1"}])),
        "batches": draw(readings_in_batches(len(_SERIES))),
        "other": draw(st.booleans()),  # readings of another measurement with the same field
    }


@settings(max_examples=budget(300), deadline=None)
@given(run=_edge_runs())
def test_edge_rules_raise_and_clear_as_the_model_says_whatever_the_batches(run: dict[str, Any]) -> None:  # fmt: skip
    """The gateway's evaluator gives, over any readings in any order and groups, the alarms the
    threshold's definition gives, for the series its device and tags select only."""
    level = "above" if run["up"] else "below"
    rule = wire.EdgeRule(id="r", name="model", severity="major", measurement="m", field="v",
                         **{level: 10.0}, clear=run["clear"], for_s=run["for_s"],
                         device=run["device"], tags=run["tags"])  # fmt: skip
    edge = EdgeAlarms("gw-1", wire.EdgeAlarms(rules=[rule]))
    got: dict[int, list[Any]] = {}
    originators = [f"gw-1/device={d},room={r}" for d, r in _SERIES]
    for batch in run["batches"]:
        readings = [wire.Reading(measurement="m", tags={"device": _SERIES[s][0], "room": _SERIES[s][1]}, fields={"v": v}, ts=t * S) for s, t, v in batch]  # fmt: skip
        if run["other"]:
            readings += [r.model_copy(update={"measurement": "other"}) for r in readings]
        events, invalid = edge.check(readings)
        assert invalid == 0
        for e in events:
            s = originators.index(e.body["originator"])
            assert e.source == e.body["originator"]
            if e.body["state"] == "raised":
                assert e.body["level"] == 10.0
                got.setdefault(s, []).append([e.ts // S, round(e.body["since"]), None, e.body["value"]])  # fmt: skip
            else:
                got[s][-1][1:] = [None, e.ts // S, e.body["value"]]
    clear_at = run["clear"] if run["clear"] is not None else 10.0
    want = threshold_model(run["up"], 10.0, clear_at, run["for_s"], run["batches"])
    want = {
        s: alarms for s, alarms in want.items()
        if run["device"] in (None, _SERIES[s][0]) and run["tags"].get("room", _SERIES[s][1]) == _SERIES[s][1]
    }  # fmt: skip
    assert {s: [tuple(a) for a in alarms] for s, alarms in got.items()} == want
    assert edge.raised == sum(len(a) for a in want.values())
    assert edge.cleared == sum(1 for alarms in want.values() for a in alarms if a[2] is not None)


def test_an_originator_is_the_gateway_then_the_sorted_tags_and_a_long_one_ends_in_a_digest() -> None:  # fmt: skip
    assert wire.series_originator("gw-1", {}) == "gw-1"
    assert wire.series_originator("gw-1", {"gateway": "gw-1"}) == "gw-1"
    assert wire.series_originator("gw-1", {"room": "b", "device": "a"}) == "gw-1/device=a,room=b"
    most = wire.MAX_ORIGINATOR_CHARS
    fits = "x" * (most - len("gw-1/device="))
    assert wire.series_originator("gw-1", {"device": fits}) == f"gw-1/device={fits}"  # exactly
    name = f"gw-1/device={fits}y"
    cut = wire.series_originator("gw-1", {"device": fits + "y"})
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    assert cut == f"{name[: most - 18]}#{digest}"
    assert len(cut) == most - 1  # room for the digest and its mark, one to spare


def test_a_rule_matches_its_measurement_and_each_of_its_device_and_tags() -> None:
    rule = wire.EdgeRule(id="r", name="n", severity="minor", measurement="m", field="v", above=1, device="d1", tags={"room": "r1", "floor": "2"})  # fmt: skip
    assert rule.matches("m", {"device": "d1", "room": "r1", "floor": "2", "extra": "x"})
    assert not rule.matches("other", {"device": "d1", "room": "r1", "floor": "2"})
    assert not rule.matches("m", {"device": "d2", "room": "r1", "floor": "2"})
    assert not rule.matches("m", {"device": "d1", "room": "r1"})
    assert not rule.matches("m", {"device": "d1", "room": "r2", "floor": "2"})
    anywhere = rule.model_copy(update={"device": None, "tags": {}})
    assert anywhere.matches("m", {})
    assert not anywhere.matches("n", {})
