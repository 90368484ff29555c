"""The collector's read API: tenants, fleet, series queries, events, health and metrics."""

from __future__ import annotations

import statistics

import pytest

from outpost_iot.collector.stores import (
    BatchRecord,
    SeriesWrite,
)
from outpost_iot.wire import Event, GatewayState
from tests.collector._api_fixture import MINUTE, T0, Api, batch_message, iso


def write_temperatures(api: Api, name: str, tenant: str, offset: float = 0.0) -> list[float]:
    """Two minutes of 1 s readings for two devices; returns device d1's values."""
    gw = api.gateways[name]
    values = []
    for device in ("d1", "d2"):
        points = []
        for i in range(120):
            v = 20.0 + offset + (i % 7) * 0.5 + (1.0 if device == "d2" else 0.0)
            points.append((T0 + i * 10**9, {"celsius": v}))
            if device == "d1":
                values.append(v)
        api.ts.write([SeriesWrite("climate", {"gateway": gw, "device": device}, points, tenant)])
    return values


async def test_a_viewer_sees_only_its_tenant(api: Api) -> None:
    write_temperatures(api, "a1", "acme")
    write_temperatures(api, "b1", "globex", offset=100.0)  # same measurement, other tenant
    b1 = api.gateways["b1"]

    listed = {g["id"] for g in (await api.get("/api/v1/gateways")).json()}
    assert listed == {api.gateways["a1"], api.gateways["a2"]}
    r = await api.get(f"/api/v1/gateways/{b1}")
    assert r.status_code == 404
    assert r.json() == {"error": "not_found", "detail": f"no gateway {b1!r}"}
    assert (await api.get(f"/api/v1/gateways/{b1}/devices")).status_code == 404

    window = {"start": iso(T0), "end": iso(T0 + 2 * MINUTE)}
    r = await api.get(
        "/api/v1/series", measurement="climate", field="celsius", aggregate="max", **window
    )
    assert r.status_code == 200
    values = [v for g in r.json()["groups"] for _, v in g["points"]]
    assert values
    assert max(values) < 100  # nothing of globex's (all ≥ 120)
    r = await api.get(
        "/api/v1/series", measurement="climate", field="celsius", tag=f"gateway:{b1}", **window
    )
    assert r.json()["groups"] == []
    latest = (await api.get("/api/v1/series/latest", measurement="climate")).json()
    assert {x["tags"]["gateway"] for x in latest} == {api.gateways["a1"]}

    # globex's viewer sees the mirror image; an admin sees both and may narrow to one tenant
    assert {g["id"] for g in (await api.get("/api/v1/gateways", token="viewer-b")).json()} == {b1}
    assert len((await api.get("/api/v1/gateways", token="admin")).json()) == 3
    narrowed = (await api.get("/api/v1/gateways", token="admin", tenant="globex")).json()
    assert [g["id"] for g in narrowed] == [b1]
    r = await api.get("/api/v1/gateways", tenant="globex")
    assert r.status_code == 403
    assert "own tenant" in r.json()["detail"]


async def test_series_aggregates_match_the_readings_written(api: Api) -> None:
    d1 = write_temperatures(api, "a1", "acme")
    window = {"start": iso(T0), "end": iso(T0 + 2 * MINUTE), "bucket": "1m"}
    minutes = [d1[:60], d1[60:]]
    expected = {
        "mean": [statistics.fmean(m) for m in minutes],
        "min": [min(m) for m in minutes],
        "max": [max(m) for m in minutes],
        "sum": [sum(m) for m in minutes],
        "count": [60, 60],
        "last": [m[-1] for m in minutes],
    }
    for aggregate, want in expected.items():
        r = await api.get(
            "/api/v1/series",
            measurement="climate",
            field="celsius",
            aggregate=aggregate,
            tag="device:d1",
            **window,
        )
        assert r.status_code == 200, r.text
        (group,) = r.json()["groups"]
        assert [ts for ts, _ in group["points"]] == [T0 / 1e9, T0 / 1e9 + 60]
        assert [v for _, v in group["points"]] == pytest.approx(want), aggregate

    r = await api.get(
        "/api/v1/series", measurement="climate", field="celsius", group_by="device", **window
    )
    groups = {g["tags"]["device"]: [v for _, v in g["points"]] for g in r.json()["groups"]}
    assert groups["d2"] == pytest.approx([v + 1 for v in expected["mean"]])

    latest = (await api.get("/api/v1/series/latest", measurement="climate", tag="device:d1")).json()
    assert latest[0]["fields"] == {"celsius": d1[-1]}
    assert latest[0]["ts"] == (T0 + 119 * 10**9) / 1e9


@pytest.mark.parametrize(
    ("token", "params", "status", "error"),
    [
        (None, {}, 401, "unauthorized"),
        ("nobody", {}, 401, "unauthorized"),
        ("viewer-a", {"start": iso(T0 + MINUTE), "end": iso(T0)}, 400, "bad_time_range"),
        ("viewer-a", {"aggregate": "median"}, 422, "invalid_request"),
        ("viewer-a", {"bucket": "fortnight"}, 400, "bad_bucket"),
        ("viewer-a", {"tag": "no-colon"}, 400, "bad_tag"),
        ("viewer-a", {"max_points": 1}, 400, "too_many_points"),
        (
            "viewer-a",
            {"bucket": "1ms", "start": iso(T0), "end": iso(T0 + 10**12)},
            400,
            "too_many_points",
        ),
    ],
    ids=[
        "no-token",
        "wrong-token",
        "bad-range",
        "unknown-aggregate",
        "bad-bucket",
        "bad-tag",
        "too-many-points",
        "too-many-buckets",
    ],
)
async def test_bad_queries_are_4xx_saying_what_is_wrong(
    api: Api, token: str | None, params: dict[str, object], status: int, error: str
) -> None:
    write_temperatures(api, "a1", "acme")
    api.tokens["nobody"] = "opa_not_a_token"
    query = {
        "measurement": "climate",
        "field": "celsius",
        "start": iso(T0),
        "end": iso(T0 + 2 * MINUTE),
    }
    r = await api.get("/api/v1/series", token=token, **{**query, **params})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error
    assert "Traceback" not in r.text
    if error == "invalid_request":
        assert body["problems"][0]["field"] == "query.aggregate"


async def test_fleet_status_and_devices(api: Api) -> None:
    gw = api.gateways["a1"]
    api.docs.save_state(
        gw,
        GatewayState(
            state="online",
            ts=T0,
            boot_id="b-1",
            agent_version="0.1.0",
            backlog_batches=2,
            backlog_readings=1500,
            oldest_unsent_s=12.5,
            drops={"disk_full": 7},
        ),
        T0,
    )
    write_temperatures(api, "a1", "acme")
    api.docs.record(
        [BatchRecord(gw, "s", 1, 0, T0)],
        [
            (
                gw,
                Event(
                    id="av-1",
                    type="availability",
                    ts=T0 + 5 * 10**9,
                    source="d1",
                    body={"device": "d1", "state": "offline"},
                ),
            )
        ],
    )
    (item,) = [g for g in (await api.get("/api/v1/gateways")).json() if g["id"] == gw]
    assert item["state"] == "online"
    assert item["site"] == "hq"
    assert item["agent_version"] == "0.1.0"
    assert item["backlog_readings"] == 1500
    assert item["oldest_unsent_s"] == 12.5
    assert item["drops"] == {"disk_full": 7}
    assert item["last_seen"] == T0 / 1e9
    assert [g["id"] for g in (await api.get("/api/v1/gateways", site="depot")).json()] == [
        api.gateways["a2"]
    ]
    detail = (await api.get(f"/api/v1/gateways/{gw}")).json()
    assert detail["backlog_batches"] == 2
    assert detail["boot_id"] == "b-1"
    devices = {
        d["name"]: d for d in (await api.get(f"/api/v1/gateways/{gw}/devices")).json()["devices"]
    }
    assert devices["d1"]["availability"] == "offline"
    assert devices["d1"]["measurements"] == ["climate"]
    assert devices["d2"]["availability"] == "unknown"
    assert devices["d2"]["last_reading"] == (T0 + 119 * 10**9) / 1e9


async def test_events_come_a_page_at_a_time(api: Api) -> None:
    gw, other = api.gateways["a1"], api.gateways["b1"]
    events = [
        (gw, Event(id=f"e{i:02d}", type="motion", ts=T0 + i * 10**9, source="cam", body={"i": i}))
        for i in range(25)
    ]
    events.append((other, Event(id="x", type="motion", ts=T0, source="cam", body={})))
    api.docs.record([], events)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, object] = {"limit": 10, "type": "motion"}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get("/api/v1/events", **params)).json()
        pages += 1
        seen += [e["id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [f"e{i:02d}" for i in range(25)]  # in order, none twice, not globex's "x"
    r = await api.get("/api/v1/events", cursor="not-a-cursor")
    assert r.status_code == 400
    assert r.json()["error"] == "bad_cursor"
    only = await api.get(
        "/api/v1/events", gateway=gw, start=iso(T0 + 20 * 10**9), end=iso(T0 + 22 * 10**9)
    )
    assert [e["id"] for e in only.json()["events"]] == ["e20", "e21"]


async def test_readyz_names_what_is_not_ready_and_metrics_are_prometheus(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    r = await api.client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["status"] == "ready"
    api.broker_up[0] = False
    r = await api.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["failing"] == ["broker"]
    api.broker_up[0] = True
    api.ts.close()
    r = await api.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["failing"] == ["timeseries_store"]

    api.metrics.readings_stored = 1234
    api.metrics.nacks["rate_limited"] = 3
    api.metrics.write_latency.observe(0.004)
    api.metrics.dropped["quarantine_full"] = 2
    api.metrics.contained = 1
    api.metrics.retained_cleared = 5
    text = (await api.client.get("/metrics")).text
    assert 'outpost_dropped_total{reason="quarantine_full"} 2.0' in text
    assert "outpost_contained_total 1.0" in text
    assert "outpost_retained_cleared_total 5.0" in text
    assert "outpost_readings_stored_total 1234.0" in text
    assert 'outpost_nacks_total{reason="rate_limited"} 3.0' in text
    assert 'outpost_store_write_seconds_bucket{le="0.005"} 1.0' in text
    assert "outpost_store_write_seconds_count 1.0" in text


def post(api: Api, path: str, token: str = "operator-a"):  # type: ignore[no-untyped-def]
    return api.client.post(path, headers={"Authorization": f"Bearer {api.tokens[token]}"})


async def test_quarantine_is_listed_and_replayed_after_a_fix(api: Api) -> None:
    gw, other = api.gateways["a1"], api.gateways["b1"]
    deployed = api.ingestors[0]
    # A batch over the deployed limit is quarantined (and acked), one of globex's too.
    [reply] = deployed.handle([batch_message(gw, 1, [float(i) for i in range(8)])])
    assert reply.message.status == "quarantined"  # type: ignore[union-attr]
    deployed.handle([batch_message(other, 1, [float(i) for i in range(9)])])
    page = (await api.get("/api/v1/quarantine", token="operator-a")).json()
    (entry,) = page["entries"]  # not globex's
    assert entry["gateway_id"] == gw
    assert entry["reason"] == "oversized"
    assert entry["replayed"] is None
    assert (await api.get("/api/v1/quarantine", token="viewer-a")).status_code == 403

    # Replayed with the deployed limit: it still fails, says why, and is not quarantined twice.
    api.ingestors.append(deployed)
    r = await post(api, f"/api/v1/quarantine/{entry['id']}/replay")
    assert r.json()["result"] == "still_invalid"
    assert "oversized: 8 readings, the limit is 5" in r.json()["detail"]
    assert len(api.docs.quarantined(tenant="acme")) == 1
    api.ingestors.pop()

    # After the fix (a higher limit), the replay stores the readings once.
    r = await post(api, f"/api/v1/quarantine/{entry['id']}/replay")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": entry["id"], "result": "stored", "detail": ""}
    assert api.ts.count_points("power") == 8
    r = await post(api, f"/api/v1/quarantine/{entry['id']}/replay")
    assert r.json()["result"] == "duplicate"
    assert api.ts.count_points("power") == 8
    (after,) = (await api.get("/api/v1/quarantine", token="operator-a")).json()["entries"]
    assert after["replay_result"].startswith("duplicate")

    # Another tenant's entry is a 404 for this operator.
    (theirs,) = api.docs.quarantined(tenant="globex")
    assert (await post(api, f"/api/v1/quarantine/{theirs.id}/replay")).status_code == 404

    # Every replay is in the audit log: who, what, when, from where.
    log = (await api.get("/api/v1/audit", token="operator-a")).json()
    assert [e["action"] for e in log] == ["quarantine.replay"] * 3
    assert log[0]["actor"] == "token:operator-a"
    assert log[0]["target"] == str(entry["id"])
    assert log[0]["source"] == "127.0.0.1"
    assert log[0]["detail"] == {"result": "duplicate"}
    assert (await api.get("/api/v1/audit", token="operator-b")).json() == []
