"""Rollups agree with the raw points; retention deletes what it should and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from outpost_iot.collector.stores import (
    AuditEntry,
    QuarantineEntry,
    SeriesQuery,
    SeriesWrite,
    SqliteDocumentStore,
    SqliteTimeSeriesStore,
)
from outpost_iot.wire import Event
from tests._wait import until

S = 10**9
HOUR = 3600 * S
DAY = 24 * HOUR
T = 1_795_298_400 * S  # a whole hour (2026-11-21T20:00Z)


@pytest.fixture
def ts(tmp_path: Path) -> Iterator[SqliteTimeSeriesStore]:
    # The store's clock stands a few hours after T, so T's raw points are recent whatever the date.
    store = SqliteTimeSeriesStore(
        tmp_path / "ts.db", raw_retention_s=7 * 86400, clock=lambda: T + 4 * HOUR
    )
    yield store
    store.close()


def write_hours(
    ts: SqliteTimeSeriesStore, start: int, hours: int, seed: int = 1
) -> dict[str, list[tuple[int, float]]]:
    """1 s readings of two devices for ``hours``; returns what was written, per device."""
    rng = random.Random(seed)
    written: dict[str, list[tuple[int, float]]] = {}
    for device in ("d1", "d2"):
        points = [(start + i * S, round(rng.uniform(-5, 35), 3)) for i in range(hours * 3600)]
        written[device] = points
        for chunk in range(0, len(points), 1000):  # as batches arrive
            part = points[chunk : chunk + 1000]
            ts.write(
                [
                    SeriesWrite(
                        "climate",
                        {"gateway": "gw-1", "device": device},
                        [(t, {"celsius": v}) for t, v in part],
                        "acme",
                    )
                ]
            )
    return written


def expected(
    points: list[tuple[int, float]], start: int, end: int, bucket: int, aggregate: str
) -> list[tuple[int, float]]:
    buckets: dict[int, list[tuple[int, float]]] = {}
    for t, v in points:
        if start <= t < end:
            buckets.setdefault(start + (t - start) // bucket * bucket, []).append((t, v))
    fn = {
        "mean": lambda xs: statistics.fmean(v for _, v in xs),
        "min": lambda xs: min(v for _, v in xs),
        "max": lambda xs: max(v for _, v in xs),
        "sum": lambda xs: sum(v for _, v in xs),
        "count": len,
        "last": lambda xs: max(xs)[1],
    }[aggregate]
    return [(b, fn(xs)) for b, xs in sorted(buckets.items())]


def query(
    ts: SqliteTimeSeriesStore, start: int, end: int, bucket: int, aggregate: str, device: str
) -> list[tuple[int, float]]:
    (group,) = ts.aggregate(
        SeriesQuery(
            tenant="acme",
            measurement="climate",
            field="celsius",
            start_ns=start,
            end_ns=end,
            bucket_ns=bucket,
            aggregate=aggregate,
            tags={"device": device},
        )
    )
    return [(b, float(v)) for b, v in group.points]  # type: ignore[arg-type]


@pytest.mark.parametrize("aggregate", ["mean", "min", "max", "sum", "count", "last"])
def test_rollups_agree_with_the_raw_points(ts: SqliteTimeSeriesStore, aggregate: str) -> None:
    written = write_hours(ts, T, 3)
    end = T + 3 * HOUR
    for bucket in (5 * 60 * S, 15 * 60 * S, HOUR, 3 * HOUR):  # served by 5-min or 1-h rollups
        for device, points in written.items():
            got = query(ts, T, end, bucket, aggregate, device)
            want = expected(points, T, end, bucket, aggregate)
            assert [b for b, _ in got] == [b for b, _ in want]
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-9)
    # Raw 1-minute buckets (not aligned to any rollup) agree too.
    got = query(ts, T + 30 * S, T + 3600 * S, 60 * S, aggregate, "d1")
    want = expected(written["d1"], T + 30 * S, T + 3600 * S, 60 * S, aggregate)
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-9)


def test_rollups_serve_the_range_after_the_raw_points_expired(
    ts: SqliteTimeSeriesStore,
) -> None:
    written = write_hours(ts, T, 2)
    before = query(ts, T, T + 2 * HOUR, 5 * 60 * S, "mean", "d1")
    gone = ts.expire(
        raw_before_ns=T + 2 * HOUR,  # every raw point
        rollup_5m_before_ns=T - DAY,
        rollup_1h_before_ns=T - DAY,
    )
    assert gone == {"raw_points": 2 * 7200, "rollups_5m": 0, "rollups_1h": 0}  # 2 devices × 2 h
    assert ts.count_points() == 0
    after = query(ts, T, T + 2 * HOUR, 5 * 60 * S, "mean", "d1")
    assert [b for b, _ in after] == [b for b, _ in before]
    assert [v for _, v in after] == pytest.approx([v for _, v in before])

    # A gateway that was offline sends readings for that period now: they are added into the
    # rollup (not replacing it), and the raw points, already past retention, are dropped.
    late = [(T + 3 * S + i * 10 * S, 100.0) for i in range(5)]  # in the first 5-min bucket
    ts.write(
        [
            SeriesWrite(
                "climate",
                {"gateway": "gw-1", "device": "d1"},
                [(t, {"celsius": v}) for t, v in late],
                "acme",
            )
        ]
    )
    ts.refresh_rollups(raw_horizon_ns=T + 2 * HOUR)
    want = expected(written["d1"] + late, T, T + 2 * HOUR, 5 * 60 * S, "mean")
    got = query(ts, T, T + 2 * HOUR, 5 * 60 * S, "mean", "d1")
    assert [v for _, v in got] == pytest.approx([v for _, v in want])
    assert got[0][1] != pytest.approx(before[0][1])  # the late readings count
    assert ts.count_points() == 0
    counts = query(ts, T, T + 2 * HOUR, HOUR, "count", "d1")
    assert counts == [(T, 3600.0 + 5), (T + HOUR, 3600.0)]


def test_retention_deletes_what_it_should_and_nothing_else(
    ts: SqliteTimeSeriesStore, tmp_path: Path
) -> None:
    now = T + 100 * DAY
    write_hours(ts, now - 8 * DAY, 1, seed=2)  # past raw retention (7 d), within the rollups'
    write_hours(ts, now - 1 * DAY, 1, seed=3)  # recent
    ts.refresh_rollups(raw_horizon_ns=now - 9 * DAY)  # as when they arrived: both were recent
    gone = ts.expire(
        raw_before_ns=now - 7 * DAY,
        rollup_5m_before_ns=now - 2 * DAY,
        rollup_1h_before_ns=now - 365 * DAY,
    )
    assert gone == {"raw_points": 2 * 3600, "rollups_5m": 2 * 12, "rollups_1h": 0}
    assert ts.count_points() == 2 * 3600  # the recent hour, whole
    old_hour = query(ts, now - 8 * DAY, now - 8 * DAY + HOUR, HOUR, "count", "d1")
    assert old_hour == [(now - 8 * DAY, 3600.0)]  # still there as an hourly rollup
    recent = query(ts, now - DAY, now - DAY + HOUR, 5 * 60 * S, "count", "d2")
    assert [v for _, v in recent] == [300.0] * 12

    docs = SqliteDocumentStore(tmp_path / "docs.db")
    try:
        for age_days, i in ((100, 0), (10, 1), (1, 2)):
            ts_ns = now - age_days * DAY
            docs.record([], [("gw-1", Event(id=f"e{i}", type="motion", ts=ts_ns, body={}))])
            docs.quarantine(QuarantineEntry(ts_ns, "t", "malformed", "", b"x", "gw-1"))
            docs.audit(AuditEntry(ts_ns, "cli:ops", "acme", "gateway.decommission", "gw", "cli"))
        gone = docs.expire(
            events_before_ns=now - 90 * DAY,
            quarantine_before_ns=now - 30 * DAY,
            audit_before_ns=now - 5 * DAY,
        )
        assert gone == {
            "events": 1,
            "quarantined": 1,
            "audit_records": 2,
            "alarms": 0,
            "notifications": 0,
        }
        assert [e.id for e in docs.events("gw-1")] == ["e1", "e2"]
        assert len(docs.quarantined()) == 2
        assert len(docs.audit_log("*")) == 1
    finally:
        docs.close()


async def test_the_collector_keeps_rollups_current_and_expires_old_data(tmp_path: Path) -> None:
    """The service's maintenance task, as `serve` runs it, on real stores."""
    from outpost_iot.collector._config import RetentionConfig, StoresConfig
    from outpost_iot.collector._ingest import Ingestor
    from outpost_iot.collector._service import CollectorService
    from outpost_iot.collector.stores import SqliteDocumentStore as Docs
    from tests.collector.test_ingest import make_config

    config = make_config(tmp_path)
    assert isinstance(config.stores, StoresConfig)
    ts = SqliteTimeSeriesStore(config.stores.timeseries_path)
    docs = Docs(config.stores.documents_path)
    try:
        now = time.time_ns()
        hour = now - now % HOUR - HOUR
        write_hours(ts, hour - 10 * DAY, 1)  # older than the 7 days of raw readings
        write_hours(ts, hour, 1)
        docs.record([], [("gw-1", Event(id="old", type="motion", ts=now - 100 * DAY, body={}))])
        service = CollectorService(
            broker=config.broker,
            ingestor=Ingestor(config=config, timeseries=ts, documents=docs),
            documents=docs,
            dedup_window_s=86400,
            timeseries=ts,
            retention=RetentionConfig(rollup_interval_s=0.05),
        )

        def state() -> tuple[object, ...]:
            return (
                ts.count_points(),
                docs.events("gw-1"),
                query(ts, hour - 10 * DAY, hour - 10 * DAY + HOUR, HOUR, "count", "d1"),
                query(ts, hour, hour + HOUR, HOUR, "count", "d1"),
            )

        # The recent hour only as raw points, no event, and both hours in the rollups (the old
        # one lives on there).
        expected = (2 * 3600, [], [(hour - 10 * DAY, 3600.0)], [(hour, 3600.0)])
        task = asyncio.create_task(service._maintain(ts, RetentionConfig(rollup_interval_s=0.05)))
        await until(lambda: state() == expected, within=60, what="the maintenance", seen=state)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        ts.close()
        docs.close()
