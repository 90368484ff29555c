"""Alarm rules evaluated over real stores: thresholds as batches are ingested (hysteresis, a
hold time, a batch sent again, two replicas), the scheduled rules from what gateways report,
and the rules' API (validation naming the field, tenancy, acknowledgement, audit)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from outpost_iot import wire
from outpost_iot.collector._alarms import AlarmEvaluator
from outpost_iot.collector._ingest import Incoming, Ingestor
from outpost_iot.collector.stores import AlarmRecord, NotifyEndpointRecord, SeriesWrite
from outpost_iot.wire import ConfigReport, Event, GatewayState, topics
from tests._alarm_model import readings_in_batches, threshold_model
from tests._fuzz import budget
from tests.collector._api_fixture import T0, Api

S = 10**9
pytestmark = pytest.mark.parametrize("api", ["sqlite"], indirect=True)


def power_batch(gw: str, seq: int, points: list[tuple[int, float]], device: str = "plug") -> Incoming:  # fmt: skip
    """A batch of ``power`` readings ``w`` of ``device`` at the given times."""
    readings = [
        wire.Reading(measurement="power", tags={"device": device}, fields={"w": w}, ts=ts)
        for ts, w in points
    ]
    b = wire.Batch.model_validate(
        {
            "gw": gw, "stream": "s1", "boot": "b1", "seq": seq, "created": points[0][0],
            "clock": {"offset_ns": 0, "synced": True},
            "series": wire.group_readings(readings), "events": [],
        }
    )  # fmt: skip
    props = {wire.PROP_STREAM: "s1", wire.PROP_SEQ: str(seq)}
    return Incoming(topics.up_batch(gw), wire.encode_batch(b), props, points[0][0])


def replica(api: Api) -> tuple[Ingestor, AlarmEvaluator]:
    """An ingestor with its own evaluator over the API's stores: one collector replica."""
    assert api.config is not None
    evaluator = AlarmEvaluator(docs=api.docs, timeseries=api.ts, stream=api.hub)
    ingest = Ingestor(
        config=api.config, timeseries=api.ts, documents=api.docs, stream=api.hub, alarms=evaluator
    )
    return ingest, evaluator


async def make_rule(api: Api, body: dict[str, Any], token: str = "operator-a") -> dict[str, Any]:
    r = await api.client.post(
        "/api/v1/alarm-rules", json=body, headers={"Authorization": f"Bearer {api.tokens[token]}"}
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def too_hot(**condition: Any) -> dict[str, Any]:
    return {
        "name": "Plug drawing too much",
        "severity": "critical",
        "condition": {
            "kind": "threshold",
            "measurement": "power",
            "field": "w",
            "above": 10,
            "clear": 8,
            **condition,
        },
    }


def alarms_of(api: Api, rule_id: str) -> list[AlarmRecord]:
    return [a for a in api.docs.alarms("*", limit=1000) if a.rule_id == rule_id][::-1]


async def test_a_threshold_raises_once_holds_through_the_band_and_clears_below_the_clear_level(
    api: Api,
) -> None:
    rule = await make_rule(api, too_hot())
    ingest, _ = replica(api)
    gw = api.gateways["a1"]
    api.docs.save_endpoint(NotifyEndpointRecord("ep", "acme", "ops", "webhook", {"url": "https://x.example"}, "k", "warning", True, T0))  # fmt: skip
    t = T0
    ingest.handle([power_batch(gw, 1, [(t, 5.0), (t + S, 12.0), (t + 2 * S, 15.0)])])
    [a] = alarms_of(api, rule["id"])
    assert (a.status, a.originator, a.gateway_id, a.raised_ns) == ("active", f"{gw}/device=plug", gw, t + S)  # fmt: skip
    assert a.details["value"] == 12.0
    # Between the clear level and the threshold: still the same one alarm (no flapping).
    ingest.handle([power_batch(gw, 2, [(t + 3 * S, 9.0), (t + 4 * S, 11.0), (t + 5 * S, 8.5)])])
    assert [x.status for x in alarms_of(api, rule["id"])] == ["active"]
    # Below the clear level: cleared, at the reading's time; above again: a new alarm.
    ingest.handle([power_batch(gw, 3, [(t + 6 * S, 7.9), (t + 7 * S, 20.0)])])
    first, second = alarms_of(api, rule["id"])
    assert (first.status, first.cleared_ns, first.details["value"]) == ("cleared", t + 6 * S, 7.9)
    assert (second.status, second.raised_ns) == ("active", t + 7 * S)
    # One notification per raise and per clear.
    events = sorted((n.alarm_id, n.event) for n in api.docs.notifications("acme"))
    assert events == [(first.id, "cleared"), (first.id, "raised"), (second.id, "raised")]


async def test_a_hold_time_counts_by_the_readings_times(api: Api) -> None:
    rule = await make_rule(api, too_hot(for_s=60))
    ingest, _ = replica(api)
    gw = api.gateways["a1"]
    ingest.handle([power_batch(gw, 1, [(T0 + i * 10 * S, 11.0) for i in range(6)])])  # 50 s
    assert alarms_of(api, rule["id"]) == []
    ingest.handle([power_batch(gw, 2, [(T0 + 55 * S, 7.0), (T0 + 65 * S, 11.0)])])  # broken
    ingest.handle([power_batch(gw, 3, [(T0 + 100 * S, 12.0), (T0 + 124 * S, 13.0)])])
    assert alarms_of(api, rule["id"]) == []  # above since 65 s: 60 s only at 125 s
    ingest.handle([power_batch(gw, 4, [(T0 + 125 * S, 13.0)])])
    [a] = alarms_of(api, rule["id"])
    assert a.raised_ns == T0 + 125 * S
    assert a.details["since"] == pytest.approx((T0 + 65 * S) / 1e9)


async def test_a_batch_sent_again_or_ingested_by_two_replicas_raises_one_alarm(api: Api) -> None:
    rule = await make_rule(api, too_hot())
    a, _ = replica(api)
    b, _ = replica(api)
    gw = api.gateways["a1"]
    batch = power_batch(gw, 1, [(T0, 50.0)])
    # Two replicas, the same batch at the same time (the broker gave it to both after a
    # reconnect), then the gateway sends it again.
    await asyncio.gather(asyncio.to_thread(a.handle, [batch]), asyncio.to_thread(b.handle, [batch]))
    a.handle([batch])
    b.handle([power_batch(gw, 2, [(T0 + S, 60.0)])])
    assert len(alarms_of(api, rule["id"])) == 1


async def test_scope_and_tenancy_choose_what_a_rule_watches(api: Api) -> None:
    other_device = await make_rule(api, {**too_hot(), "scope": {"device": "heater"}})
    other_site = await make_rule(api, {**too_hot(), "scope": {"site": "depot"}})
    theirs = await make_rule(api, too_hot(), token="operator-b")
    mine = await make_rule(api, {**too_hot(), "scope": {"site": "hq", "device": "plug"}})
    ingest, _ = replica(api)
    ingest.handle([power_batch(api.gateways["a1"], 1, [(T0, 50.0)])])  # acme, site hq
    assert alarms_of(api, other_device["id"]) == []
    assert alarms_of(api, other_site["id"]) == []
    assert alarms_of(api, theirs["id"]) == []  # globex's rule never sees acme's readings
    assert len(alarms_of(api, mine["id"])) == 1


async def test_scheduled_rules_follow_what_gateways_report(api: Api) -> None:
    gw = api.gateways["a1"]
    rules = {
        kind: (
            await make_rule(
                api,
                {
                    "name": kind,
                    "severity": "major",
                    "condition": {"kind": kind, **extra},
                    "scope": {"gateway": gw},
                },
            )
        )["id"]
        for kind, extra in {
            "gateway_offline": {"for_s": 300},
            "backlog": {"older_than_s": 3600},
            "clock_flagged": {},
            "certificate_expiring": {"days": 400},  # the test CA's certificates: within 400 days
            "drops": {"at_least": 10, "window_s": 600},
        }.items()
    }
    clock = [time.time_ns()]
    ev = AlarmEvaluator(docs=api.docs, timeseries=api.ts, stream=api.hub, clock=lambda: clock[0])
    now = clock[0]

    def report(state: str, oldest: float, dropped: int, seen: int) -> None:
        api.docs.save_state(
            gw,
            GatewayState(
                state=state,
                ts=seen,
                boot_id="b",
                backlog_readings=10,
                oldest_unsent_s=oldest,
                drops={"buffer_full": dropped},
            ),
            seen,
        )

    def open_kinds() -> set[str]:
        return {a.kind for a in api.docs.alarms("acme", status="open") if a.gateway_id == gw}

    report("online", 5.0, 0, now)
    ev.evaluate_scheduled()
    assert open_kinds() == {"certificate_expiring"}
    # It goes offline (its will) with a backlog 2 h old and 25 more drops; its clock is
    # flagged; ten minutes pass.
    report("offline", 7200.0, 25, now)
    api.docs.set_clock(gw, 30.0, True)
    clock[0] += 600 * S
    ev.evaluate_scheduled()
    assert open_kinds() == {"certificate_expiring", "gateway_offline", "backlog", "clock_flagged", "drops"}  # fmt: skip
    [drops] = [a for a in api.docs.alarms("acme", status="open") if a.kind == "drops"]
    assert drops.details == {"dropped": 25, "reason": "any"}
    ev.evaluate_scheduled()  # nothing new: nothing raised twice
    assert len(api.docs.alarms("acme")) == 5
    # Back: online, backlog gone, clock fixed; the drops clear after a window without more.
    report("online", 1.0, 25, clock[0])
    api.docs.set_clock(gw, 0.1, False)
    ev.evaluate_scheduled()
    assert open_kinds() == {"certificate_expiring", "drops"}
    clock[0] += 601 * S
    report("online", 1.0, 25, clock[0])
    ev.evaluate_scheduled()
    assert open_kinds() == {"certificate_expiring"}
    assert {a.rule_id for a in api.docs.alarms("acme")} == set(rules.values())
    # Decommissioned: out of every rule's scope, its last alarm clears.
    api.docs.revoke_gateway(gw, clock[0])
    ev.evaluate_scheduled()
    assert open_kinds() == set()
    [cert] = [a for a in api.docs.alarms("acme") if a.kind == "certificate_expiring"]
    assert cert.details == {"reason": "out of scope"}


async def test_a_config_rejected_raises_and_one_applied_clears(api: Api) -> None:
    rule = await make_rule(api, {"name": "config", "condition": {"kind": "config_failed"}})
    ingest, _ = replica(api)
    gw = api.gateways["a2"]

    def report(status: str, version: int) -> None:
        r = ConfigReport(version=version, status=status, applied_version=version if status == "applied" else 1, reason="bad_config" if status != "applied" else "", errors=["devices.0.url: bad"] if status != "applied" else [], ts=T0)  # type: ignore[arg-type]  # fmt: skip
        ingest.handle([Incoming(topics.up_config(gw), r.model_dump_json().encode(), {}, T0)])

    report("rejected", 2)
    [a] = alarms_of(api, rule["id"])
    assert (a.status, a.details["reason"], a.details["errors"]) == ("active", "bad_config", ["devices.0.url: bad"])  # fmt: skip
    report("applied", 3)
    assert [x.status for x in alarms_of(api, rule["id"])] == ["cleared"]


async def test_a_rule_that_does_not_validate_is_refused_naming_the_field(api: Api) -> None:
    headers = {"Authorization": f"Bearer {api.tokens['operator-a']}"}
    for body, field in (
        ({**too_hot(), "severity": "urgent"}, "severity"),
        (
            {"name": "x", "condition": {"kind": "threshold", "measurement": "power", "field": "w"}},
            "condition.threshold",
        ),
        (too_hot(above="hot"), "condition.threshold.above"),
        (too_hot(clear=12), "condition.threshold"),
        ({"name": "x", "condition": {"kind": "teleport"}}, "condition"),
        ({**too_hot(), "scope": {"tags": {"bad key!": "x"}}}, "scope.tags.bad key!.[key]"),
        ({"name": "x", "edge": True, "condition": {"kind": "clock_flagged"}}, ""),
    ):
        r = await api.client.post("/api/v1/alarm-rules", json=body, headers=headers)
        assert r.status_code == 422, (body, r.text)
        assert field in {p["field"] for p in r.json()["problems"]}, (field, r.json())
    assert api.docs.rules("acme") == []
    viewer = {"Authorization": f"Bearer {api.tokens['viewer-a']}"}
    assert (await api.client.post("/api/v1/alarm-rules", json=too_hot(), headers=viewer)).status_code == 403  # fmt: skip


async def test_rules_alarms_and_acknowledgement_through_the_api(api: Api) -> None:
    rule = await make_rule(api, too_hot())
    op = {"Authorization": f"Bearer {api.tokens['operator-a']}"}
    assert (await api.get("/api/v1/alarm-rules")).json()[0]["id"] == rule["id"]
    assert "outpost_alarm_rules 1.0" in (await api.get("/metrics")).text
    assert (await api.get("/api/v1/alarm-rules", token="viewer-b")).json() == []
    ingest, _ = replica(api)
    ingest.handle([power_batch(api.gateways["a1"], 1, [(T0, 50.0)])])
    [alarm] = (await api.get("/api/v1/alarms", status="open")).json()
    assert (alarm["status"], alarm["severity"], alarm["name"]) == ("active", "critical", "Plug drawing too much")  # fmt: skip
    assert (await api.get("/api/v1/alarms", token="viewer-b")).json() == []
    assert (await api.get(f"/api/v1/alarms/{alarm['id']}")).json() == alarm
    assert (await api.get(f"/api/v1/alarms/{alarm['id']}", token="viewer-b")).status_code == 404
    assert (await api.get(f"/api/v1/alarms/{alarm['id'] + 1}")).status_code == 404
    assert (
        await api.get(f"/api/v1/alarms/{2**63 - 1}")
    ).status_code == 404  # found by schemathesis
    counts = (await api.get("/api/v1/alarms/counts")).json()
    assert counts["severity"]["critical"] == {"active": 1, "acknowledged": 0}
    assert counts["gateways"] == {api.gateways["a1"]: {"open": 1, "severity": "critical"}}
    # Another tenant's operator cannot acknowledge it; this tenant's can, once.
    theirs = {"Authorization": f"Bearer {api.tokens['operator-b']}"}
    assert (await api.client.post(f"/api/v1/alarms/{alarm['id']}/acknowledge", headers=theirs)).status_code == 404  # fmt: skip
    assert (await api.client.post(f"/api/v1/alarms/{2**63 - 1}/acknowledge", headers=op)).status_code == 404  # fmt: skip
    r = await api.client.post(f"/api/v1/alarms/{alarm['id']}/acknowledge", headers=op)
    assert (r.json()["status"], r.json()["acknowledged_by"]) == ("acknowledged", "token:operator-a")
    again = await api.client.post(f"/api/v1/alarms/{alarm['id']}/acknowledge", headers=op)
    assert again.json()["acknowledged"] == r.json()["acknowledged"]
    # Changes are audited; a deleted rule's alarm clears.
    r = await api.client.put(f"/api/v1/alarm-rules/{rule['id']}", json={**too_hot(), "severity": "minor"}, headers=op)  # fmt: skip
    assert r.json()["severity"] == "minor"
    assert (await api.client.delete(f"/api/v1/alarm-rules/{rule['id']}", headers=op)).status_code == 204  # fmt: skip
    assert (await api.get("/api/v1/alarms", status="open")).json() == []
    actions = [e.action for e in api.docs.audit_log("acme")]
    assert {"alarm_rule.create", "alarm.acknowledge", "alarm_rule.update", "alarm_rule.delete"} <= set(actions)  # fmt: skip


def alarm_event(gw: str, seq: int, rule_id: str, originator: str, state: str, ts: int) -> Incoming:
    """A batch carrying one ``alarm`` event, as a gateway's edge rule makes it."""
    b = wire.Batch.model_validate(
        {
            "gw": gw, "stream": "s1", "boot": "b1", "seq": seq, "created": ts,
            "clock": {"offset_ns": 0, "synced": True}, "series": [],
            "events": [{"id": f"a{seq}", "type": "alarm", "ts": ts, "source": originator[:256],
                        "body": {"rule": rule_id, "state": state, "originator": originator, "value": 3.5}}],
        }
    )  # fmt: skip
    props = {wire.PROP_STREAM: "s1", wire.PROP_SEQ: str(seq)}
    return Incoming(topics.up_batch(gw), wire.encode_batch(b), props, ts)


async def test_edge_rules_reach_the_gateways_in_scope_and_their_alarms_come_back(api: Api) -> None:
    a1, a2 = api.gateways["a1"], api.gateways["a2"]
    rule = await make_rule(api, {**too_hot(for_s=30), "edge": True, "scope": {"gateway": a1, "device": "plug"}})  # fmt: skip
    configs = api.app.state.services.configs
    ev = AlarmEvaluator(docs=api.docs, timeseries=api.ts)
    assert ev.sync_edge_rules(configs) == 1  # a1 only: a2 is out of scope and has no config
    assert configs.current(a1)["alarms"]["rules"] == [
        {"id": rule["id"], "name": "Plug drawing too much", "severity": "critical",
         "measurement": "power", "field": "w", "above": 10.0, "clear": 8.0, "for_s": 30.0, "device": "plug"}
    ]  # fmt: skip
    assert configs.current(a2) == {}
    assert ev.sync_edge_rules(configs) == 0  # nothing changed: no new version
    # The gateway raises it while its uplink is down; the event comes later, with its own time.
    ingest, _ = replica(api)
    ingest.handle([alarm_event(a1, 1, rule["id"], f"{a1}/device=plug", "raised", T0)])
    [a] = alarms_of(api, rule["id"])
    assert (a.raised_ns, a.originator, a.details) == (T0, f"{a1}/device=plug", {"value": 3.5, "at_edge": True})  # fmt: skip
    # A gateway speaks only for itself: not for another's originator, not out of the scope.
    ingest.handle([alarm_event(a1, 2, rule["id"], f"{a2}/device=plug", "raised", T0)])
    ingest.handle([alarm_event(a2, 1, rule["id"], f"{a2}/device=plug", "raised", T0)])
    assert len(alarms_of(api, rule["id"])) == 1
    assert ingest._alarms.metrics.errors["edge"] == 2  # type: ignore[union-attr]
    ingest.handle([alarm_event(a1, 3, rule["id"], f"{a1}/device=plug", "cleared", T0 + 60 * S)])
    [a] = alarms_of(api, rule["id"])
    assert a.cleared_ns == T0 + 60 * S
    # The rule deleted: the gateway's config no longer carries it.
    op = {"Authorization": f"Bearer {api.tokens['operator-a']}"}
    assert (await api.client.delete(f"/api/v1/alarm-rules/{rule['id']}", headers=op)).status_code == 204  # fmt: skip
    ev.refresh(force=True)
    assert ev.sync_edge_rules(configs) == 1
    assert configs.current(a1)["alarms"]["rules"] == []


async def test_no_data_and_an_unavailable_device_raise_after_their_duration_and_clear(api: Api) -> None:  # fmt: skip
    from outpost_iot.collector.stores import SeriesWrite
    from outpost_iot.wire import Event

    gw = api.gateways["a1"]
    quiet = await make_rule(api, {"name": "quiet", "condition": {"kind": "no_data", "measurement": "power", "for_s": 600}})  # fmt: skip
    away = await make_rule(api, {"name": "away", "condition": {"kind": "device_unavailable", "for_s": 300}})  # fmt: skip
    now = T0 + 86400 * S
    clock = [now]
    ev = AlarmEvaluator(docs=api.docs, timeseries=api.ts, clock=lambda: clock[0])

    def series(at: int) -> None:
        api.ts.write([SeriesWrite("power", {"gateway": gw, "device": "plug"}, [(at, {"w": 1.0})], "acme")])  # fmt: skip

    def availability(state: str, at: int, n: int) -> None:
        api.docs.record([], [(gw, Event(id=f"av{n}", type="availability", ts=at, source="pump", body={"state": state}))])  # fmt: skip

    series(now - 300 * S)  # 5 min ago: not yet quiet
    availability("offline", now - 60 * S, 1)  # offline a minute: not yet away
    ev.evaluate_scheduled()
    assert alarms_of(api, quiet["id"]) == alarms_of(api, away["id"]) == []
    clock[0] += 400 * S
    ev.evaluate_scheduled()
    [q] = alarms_of(api, quiet["id"])
    [a] = alarms_of(api, away["id"])
    assert (q.originator, q.details["last_reading"]) == (f"{gw}/device=plug", (now - 300 * S) / 1e9)
    assert (a.originator, a.details["state"]) == (f"{gw}/device=pump", "offline")
    series(clock[0])
    availability("online", clock[0], 2)
    ev.evaluate_scheduled()
    assert [x.status for x in alarms_of(api, quiet["id"]) + alarms_of(api, away["id"])] == ["cleared", "cleared"]  # fmt: skip


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@example(bodies=[{"rule": "RULE", "state": "raised", "originator": "OTHER/device=plug"}])
@example(bodies=[{"rule": "RULE", "state": "raised", "originator": "x" * 2000}])
@given(
    bodies=st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "rule": st.sampled_from(["RULE", "rule-nope", ""]) | _json,
                "state": st.sampled_from(["raised", "cleared", "teleported"]) | _json,
                "originator": st.sampled_from(
                    ["SELF/device=plug", "OTHER/device=plug", "SELF", "x" * 2000]
                )
                | _json,
                "value": _json,
                "since": _json,
            },
        ),
        min_size=1,
        max_size=5,
    )
)
async def test_no_alarm_event_a_gateway_sends_raises_for_another_or_fails(
    api: Api, bodies: list[dict[str, Any]]
) -> None:
    """Whatever ``alarm`` events a gateway sends, the collector raises at most alarms of the
    tenant's edge rules in its scope, on the gateway's own originators, and never fails."""
    a1, a2 = api.gateways["a1"], api.gateways["a2"]
    if not api.docs.rules("acme"):
        await make_rule(api, {**too_hot(), "edge": True, "scope": {"gateway": a1}})
    [rule] = api.docs.rules("acme")
    ev = AlarmEvaluator(docs=api.docs, timeseries=api.ts)
    events = []
    for i, body in enumerate(bodies):
        body = {k: (v.replace("SELF", a1).replace("OTHER", a2).replace("RULE", rule.id) if isinstance(v, str) else v) for k, v in body.items()}  # fmt: skip
        events.append(("acme", a1, Event(id=f"e{i}", type="alarm", ts=T0 + i, source="x", body=body)))  # fmt: skip
    ev.on_edge_events(events)
    for alarm in api.docs.alarms("*", limit=1000):
        assert alarm.rule_id == rule.id
        assert alarm.originator == a1 or alarm.originator.startswith(a1 + "/")
        assert alarm.gateway_id == a1
        assert len(alarm.originator) <= 1024


# -- thresholds against a model ------------------------------------------------------------------

_SERIES = [  # (gateway, device, room, the tenant the write claims)
    ("b1", "d1", "r1", "acme"),  # a write that lies about its tenant, before the others
    ("a1", "d1", "r1", "acme"), ("a1", "d2", "r2", "acme"), ("a2", "d1", "r1", "acme"),
    ("b1", "d1", "r1", "globex"),
]  # fmt: skip
_SCOPES = st.fixed_dictionaries(
    {},
    optional={
        "site": st.sampled_from(["hq", "depot"]),
        "tag": st.just("cold"),  # a1's gateway tag
        "gateway": st.sampled_from(["a1", "a2", "b1"]),
        "device": st.sampled_from(["d1", "d2"]),
        "tags": st.just({"room": "r1"}),
    },
)


def _in_scope(scope: dict[str, Any], series: tuple[str, str, str, str]) -> bool:
    gw, device, room, claimed = series
    tenant, site = {"a1": ("acme", "hq"), "a2": ("acme", "depot"), "b1": ("globex", "hq")}[gw]
    return (
        claimed == tenant == "acme"
        and scope.get("site", site) == site
        and ("tag" not in scope or gw == "a1")
        and scope.get("gateway", gw) == gw
        and scope.get("device", device) == device
        and scope.get("tags", {}).get("room", room) == room
    )


@st.composite
def _threshold_runs(draw: st.DrawFn) -> dict[str, Any]:
    up = draw(st.booleans())
    return {
        "up": up,
        "level": 10.0,
        "clear": draw(st.sampled_from([None, 8.0 if up else 12.0])),
        "for_s": draw(st.sampled_from([0, 3, 10])),
        "scope": draw(_SCOPES),
        "batches": draw(readings_in_batches(len(_SERIES))),
        # Before a batch: another replica takes over, knowing only what the store keeps.
        "restarts": draw(st.lists(st.booleans(), min_size=5, max_size=5)),
        # A batch stored in one group with the one before (a backlog arriving): one call.
        "together": draw(st.lists(st.booleans(), min_size=5, max_size=5)),
    }


def _run(**run: Any) -> dict[str, Any]:
    return {"level": 10.0, "clear": None, "scope": {}, "restarts": [False] * 5, "together": [False] * 5, **run}  # fmt: skip


_RUN = [0]


@settings(max_examples=budget(200), deadline=None, suppress_health_check=list(HealthCheck))
@example(run=_run(up=True, clear=8.0, for_s=3, restarts=[False, True, False, False, False],
                  batches=[[(1, 1, 10.0), (1, 2, 11.0)], [(1, 5, 12.0), (1, 0, 11.0), (1, 6, 8.0)], [(1, 7, 7.5)]]))  # fmt: skip
# A hold that ended must not be remembered by the replica that comes next.
@example(run=_run(up=True, for_s=10, restarts=[False, False, True, False, False],
                  batches=[[(1, 0, 11.0)], [(1, 5, 9.0)], [(1, 20, 11.0)], [(1, 30, 11.0)]]))  # fmt: skip
# Two batches of one series in one group: the second sees what the first raised.
@example(run=_run(up=True, for_s=0, together=[False, True, False, False, False],
                  batches=[[(1, 1, 11.0)], [(1, 2, 7.0)]]))  # fmt: skip
# Two readings out of order in one batch; two at the same time.
@example(run=_run(up=False, for_s=0, batches=[[(1, 5, 9.0), (1, 1, 11.0)]]))
@example(run=_run(up=True, for_s=0, batches=[[(1, 1, 11.0), (1, 1, 12.0)]]))
# A hold that ended, a clear, in the same replica: it must know, without reading the store.
@example(run=_run(up=True, for_s=10, batches=[[(1, 0, 11.0)], [(1, 5, 9.0)], [(1, 20, 11.0)], [(1, 30, 11.0)]]))  # fmt: skip
@example(run=_run(up=True, for_s=0, batches=[[(1, 1, 11.0)], [(1, 2, 7.0)], [(1, 3, 11.0)]]))
# A hold carried across a restart, and across two batches of one group.
@example(run=_run(up=True, for_s=10, restarts=[False, True, False, False, False],
                  batches=[[(1, 0, 11.0)], [(1, 5, 11.0)], [(1, 11, 11.0)]]))  # fmt: skip
@example(run=_run(up=True, for_s=3, together=[False, True, False, False, False],
                  batches=[[(1, 0, 11.0)], [(1, 5, 11.0)]]))  # fmt: skip
# A write that lies about its tenant, then an honest one, in one group.
@example(run=_run(up=True, for_s=0, batches=[[(0, 1, 11.0), (1, 1, 11.0)]]))
@given(run=_threshold_runs())
async def test_thresholds_raise_and_clear_as_the_model_says_whatever_the_batches_and_replicas(
    api: Api, run: dict[str, Any]
) -> None:
    """Any readings, in any order and batches, with the evaluator replaced between batches (a
    replica restarted, or another one taking over) give the alarms that the rule's definition
    gives: raised at the reading that completed the hold, with its value and since; cleared at
    the reading back past the clear level; none for a series outside the scope or the tenant."""
    api.docs.set_gateway_tags(api.gateways["a1"], ["cold"])
    _RUN[0] += 1
    measurement = f"m{_RUN[0]}"  # each example its own rule and series
    level = "above" if run["up"] else "below"
    scope = {k: api.gateways[v] if k == "gateway" else v for k, v in run["scope"].items()}
    condition = {"kind": "threshold", "measurement": measurement, "field": "v", level: run["level"], "for_s": run["for_s"]}  # fmt: skip
    if run["clear"] is not None:
        condition["clear"] = run["clear"]
    rule = await make_rule(api, {"name": "model", "condition": condition, "scope": scope})
    evaluators = [AlarmEvaluator(docs=api.docs, timeseries=api.ts)]
    # Each group starts with a write no rule reads (another measurement): passed over.
    other = SeriesWrite("other", {"gateway": api.gateways["a1"]}, [(T0, {"v": 99.0})], tenant="acme")  # fmt: skip
    writes: list[SeriesWrite] = [other]
    for i, batch in enumerate(run["batches"]):
        restart, together = run["restarts"][i % 5], run["together"][i % 5]
        if len(writes) > 1 and (restart or not together):
            evaluators[-1].on_stored(writes)
            writes = [other]
        if restart:
            evaluators.append(AlarmEvaluator(docs=api.docs, timeseries=api.ts))
        for s in sorted({s for s, _, _ in batch}):
            gw, device, room, claimed = _SERIES[s]
            tags = {"gateway": api.gateways[gw], "device": device, "room": room}
            points = [(T0 + ts * S, {"v": v, "flag": True}) for s2, ts, v in batch if s2 == s]
            # Half a second after each, a reading without the rule's field: passed over.
            points += [(ts + S // 2, {"flag": False}) for ts, _ in points]
            writes.append(SeriesWrite(measurement, tags, points, tenant=claimed))
    evaluators[-1].on_stored(writes)
    got: dict[int, list[Any]] = {}
    for a in alarms_of(api, rule["id"]):
        s = next(i for i, (gw, d, r, _) in enumerate(_SERIES) if a.originator == f"{api.gateways[gw]}/device={d},room={r}")  # fmt: skip
        if a.cleared_ns is None:
            assert a.details["level"] == run["level"]
            since = round(a.details["since"] - T0 / 1e9)
            got.setdefault(s, []).append(((a.raised_ns - T0) // S, since, None, a.details["value"]))  # fmt: skip
        else:
            got.setdefault(s, []).append(((a.raised_ns - T0) // S, None, (a.cleared_ns - T0) // S, a.details["value"]))  # fmt: skip
    clear_at = run["clear"] if run["clear"] is not None else run["level"]
    want = threshold_model(run["up"], run["level"], clear_at, run["for_s"], run["batches"])
    want = {s: alarms for s, alarms in want.items() if _in_scope(run["scope"], _SERIES[s])}
    assert got == want
    # Every reading of a series in the scope was checked, once.
    in_scope = sum(1 for b in run["batches"] for s, _, _ in b if _in_scope(run["scope"], _SERIES[s]))  # fmt: skip
    assert sum(e.metrics.evaluations for e in evaluators) == in_scope
