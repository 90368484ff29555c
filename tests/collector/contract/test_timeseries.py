"""The time-series store contract: SQLite and VictoriaMetrics answer the same questions alike.

Where a backend differs by nature it is said here and in docs/operations.md: VictoriaMetrics
keeps milliseconds and numbers only (booleans read back as 1/0, text is not stored).
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from outpost_iot.collector._exceptions import TooManyPoints
from outpost_iot.collector.stores import SeriesQuery, SeriesWrite, TimeSeriesStore
from tests.collector.contract.conftest import visible
from tests.collector.test_retention import expected

S = 10**9
MS = 10**6
HOUR = 3600 * S
# Recent, whole hours: VictoriaMetrics refuses samples far in the future or past its retention.
T = (time.time_ns() // HOUR - 3) * HOUR


def num(value: Any) -> float:
    return float(value)


def climate(tenant: str = "acme", gateway: str = "gw-1", n: int = 600, seed: int = 1) -> dict[str, list[tuple[int, float]]]:  # fmt: skip
    """1 s readings of two devices; returns what was written per device."""
    rng = random.Random(seed)
    return {
        device: [(T + i * S + 250 * MS, round(rng.uniform(-5, 35), 3)) for i in range(n)]
        for device in ("d1", "d2")
    }


def write_climate(
    ts: TimeSeriesStore, written: dict[str, list[tuple[int, float]]], tenant: str = "acme"
) -> None:
    ts.write(
        [
            SeriesWrite(
                "climate",
                {"gateway": "gw-1", "device": d, "room": "lab" if d == "d1" else "hall"},
                [(t, {"celsius": v, "n": i, "on": i % 2 == 0}) for i, (t, v) in enumerate(pts)],
                tenant,
            )
            for d, pts in written.items()
        ]
    )
    visible(ts)


def test_points_come_back_with_their_tags_and_fields_per_tenant(ts: TimeSeriesStore) -> None:
    written = climate(n=20)
    write_climate(ts, written)
    write_climate(ts, climate(n=5, seed=9), tenant="globex")  # same series names, other tenant
    points = ts.query("climate", tenant="acme", tags={"device": "d1"})
    assert [p.ts for p in points] == [t for t, _ in written["d1"]]
    first = points[0]
    assert first.tags == {"gateway": "gw-1", "device": "d1", "room": "lab"}
    assert num(first.fields["celsius"]) == pytest.approx(written["d1"][0][1])
    assert num(first.fields["n"]) == 0
    assert num(first.fields["on"]) == 1  # True; VictoriaMetrics keeps it as 1
    assert len(ts.query("climate", tenant="acme")) == 40
    assert len(ts.query("climate", tenant="globex")) == 10
    assert len(ts.query("climate")) == 50  # an admin's view
    window = ts.query(
        "climate", tenant="acme", tags={"device": "d2"}, start_ns=T + 5 * S, end_ns=T + 10 * S
    )
    assert [p.ts for p in window] == [t for t, _ in written["d2"][5:10]]
    assert ts.query("climate", tenant="nobody") == []
    assert ts.query("other", tenant="acme") == []


def test_writing_the_same_points_again_stores_them_once(ts: TimeSeriesStore) -> None:
    written = climate(n=50)
    write_climate(ts, written)
    before = ts.count_points("climate")
    write_climate(ts, written)  # a batch redelivered after a replica died before its ack
    assert ts.count_points("climate") == before == 100
    assert len(ts.query("climate", tenant="acme", tags={"device": "d1"})) == 50
    # Row level: the second write replaced the first, it did not sit beside it (count_points
    # and query merge by timestamp, so only this sees a point kept twice).
    assert ts.duplicate_points("climate") == 0
    assert ts.duplicate_points() == 0


@pytest.mark.parametrize("aggregate", ["mean", "min", "max", "sum", "count", "last"])
def test_buckets_hold_start_to_end_exactly(ts: TimeSeriesStore, aggregate: str) -> None:
    written = climate(n=600)
    write_climate(ts, written)
    # Unaligned start, 60 s buckets, a last bucket cut short by `end`.
    start, end, bucket = T + 7 * S, T + 7 * S + 9 * 60 * S + 30 * S, 60 * S
    (group,) = ts.aggregate(
        SeriesQuery("acme", "climate", "celsius", start, end, bucket, aggregate, {"device": "d1"})
    )
    want = expected(written["d1"], start, end, bucket, aggregate)
    assert [b for b, _ in group.points] == [b for b, _ in want]
    assert [num(v) for _, v in group.points] == pytest.approx([v for _, v in want], rel=1e-9)


@pytest.mark.parametrize("aggregate", ["mean", "max", "count", "last"])
def test_series_are_merged_into_groups(ts: TimeSeriesStore, aggregate: str) -> None:
    written = climate(n=300)
    write_climate(ts, written)
    start, end, bucket = T, T + 300 * S, 100 * S
    both = ts.aggregate(SeriesQuery("acme", "climate", "celsius", start, end, bucket, aggregate))
    (group,) = both
    assert group.tags == {}
    want = expected(written["d1"] + written["d2"], start, end, bucket, aggregate)
    if aggregate == "last":  # both devices read at the same instants: either one is the last
        assert [b for b, _ in group.points] == [b for b, _ in want]
    else:
        assert [num(v) for _, v in group.points] == pytest.approx([v for _, v in want], rel=1e-9)
    by_room = ts.aggregate(
        SeriesQuery("acme", "climate", "celsius", start, end, bucket, aggregate, group_by=("room",))
    )
    assert [g.tags for g in by_room] == [{"room": "hall"}, {"room": "lab"}]
    lab = expected(written["d1"], start, end, bucket, aggregate)
    assert [num(v) for _, v in by_room[1].points] == pytest.approx([v for _, v in lab], rel=1e-9)
    assert ts.aggregate(SeriesQuery("globex", "climate", "celsius", start, end, bucket, aggregate)) in ([], [type(group)({}, [])])  # fmt: skip


def test_a_query_past_its_point_limit_is_refused(ts: TimeSeriesStore) -> None:
    write_climate(ts, climate(n=120))
    with pytest.raises(TooManyPoints):
        ts.aggregate(
            SeriesQuery("acme", "climate", "celsius", T, T + 120 * S, S, "mean", max_points=50)
        )


def test_latest_values_and_devices(ts: TimeSeriesStore) -> None:
    written = climate(n=30)
    write_climate(ts, written)
    latest = ts.latest("acme", "climate", tags={"device": "d2"})
    by_field = {v.field: v for v in latest}
    assert set(by_field) == {"celsius", "n", "on"}
    assert by_field["celsius"].ts == written["d2"][-1][0]
    assert num(by_field["celsius"].value) == pytest.approx(written["d2"][-1][1])
    assert num(by_field["n"].value) == 29
    assert by_field["celsius"].tags == {"gateway": "gw-1", "device": "d2", "room": "hall"}
    assert ts.latest("globex", "climate") == []
    devices = ts.devices("acme", "gw-1")
    assert devices == {
        "d1": (["climate"], written["d1"][-1][0]),
        "d2": (["climate"], written["d2"][-1][0]),
    }
    assert ts.devices("globex", "gw-1") == {}


def test_the_catalog_lists_a_tenants_series_with_their_fields(ts: TimeSeriesStore) -> None:
    write_climate(ts, climate(n=5))
    write_climate(ts, climate(n=5), tenant="globex")
    ts.write([SeriesWrite("power", {"gateway": "gw-2", "device": "p"}, [(T, {"w": 1.5})], "acme")])
    visible(ts)
    found = {(s.measurement, tuple(sorted(s.tags.items()))): s.fields for s in ts.catalog("acme")}
    assert found == {
        ("climate", (("device", "d1"), ("gateway", "gw-1"), ("room", "lab"))): ("celsius", "n", "on"),
        ("climate", (("device", "d2"), ("gateway", "gw-1"), ("room", "hall"))): ("celsius", "n", "on"),
        ("power", (("device", "p"), ("gateway", "gw-2"))): ("w",),
    }  # fmt: skip
    assert [s.measurement for s in ts.catalog("acme")] == ["climate", "climate", "power"]
    # Tags narrow it; another tenant's series never show; the limit holds.
    assert [s.tags["device"] for s in ts.catalog("acme", tags={"room": "hall"})] == ["d2"]
    assert ts.catalog("initech") == []
    assert len(ts.catalog("acme", limit=1)) == 1
    assert len(ts.catalog("*")) == 5


def test_ping(ts: TimeSeriesStore) -> None:
    ts.ping()


def test_a_value_a_backend_cannot_keep_is_counted_not_lost_silently(ts: TimeSeriesStore) -> None:
    """Text fields: a backend keeps them (they read back) or counts each one in ``not_kept()``
    (VictoriaMetrics has no text values), and never both or neither."""
    assert all(count == 0 for count in ts.not_kept().values())
    ts.write(
        [
            SeriesWrite("notes", {"device": "d"}, [(T, {"text": "door open", "n": 1.0})], "acme"),
            SeriesWrite("notes", {"device": "d"}, [(T + S, {"text": "door shut"})], "acme"),
        ]
    )
    visible(ts)
    kept = [p.fields.get("text") for p in ts.query("notes", tenant="acme")]
    skipped = ts.not_kept().get("text_fields_skipped", 0)
    assert (kept, skipped) in ((["door open", "door shut"], 0), ([None], 2)), (kept, skipped)
