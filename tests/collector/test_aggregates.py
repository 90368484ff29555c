"""The SQLite time-series store's aggregates against an oracle, for any points.

Whatever is written (integers, floats, booleans or text; one to three series in one or two
groups; points rewritten by a later batch; rollups brought up to date between writes; raw points
expired and late readings arriving for the expired period), every aggregate of every bucket,
from the raw points or from the 5-minute and hourly rollups, is what the written values give:
mean, sum, min and max of numbers (and of booleans as 0/1, returned as booleans for min and max
and as an integer sum), no mean, sum, min or max of text, the count of anything, and the value
written last. The rollups' own figures are checked at their edges in tests/collector/test_retention.py.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost_iot.collector.stores import SeriesQuery, SeriesWrite, SqliteTimeSeriesStore
from tests._fuzz import budget

S = 10**9
MIN5 = 300 * S
HOUR = 3600 * S
T = 1_795_298_400 * S  # a whole hour (2026-11-21T20:00Z)
AGGREGATES = ("mean", "sum", "min", "max", "count", "last")
ROOMS = ("hall", "lab")

VALUES = {
    "int": st.integers(-(10**9), 10**9),
    "float": st.floats(-1e6, 1e6, allow_nan=False),
    "bool": st.booleans(),
    "str": st.text("abc", max_size=3),
}


@st.composite
def scenes(draw: st.DrawFn) -> dict[str, Any]:
    """A field's type, its series (each in a room), and batches of ``(series, offset_s, value)``
    written in order (an offset seen before rewrites that point)."""
    kind = draw(st.sampled_from(sorted(VALUES)))
    rooms = draw(st.lists(st.sampled_from(ROOMS), min_size=1, max_size=3))
    point = st.tuples(st.integers(0, len(rooms) - 1), st.integers(0, 3 * 3600 - 1), VALUES[kind])
    batches = draw(st.lists(st.lists(point, min_size=1, max_size=20), min_size=1, max_size=4))
    refresh_after = draw(st.sets(st.integers(0, len(batches) - 1)))  # rollups made mid-way
    return {"kind": kind, "rooms": rooms, "batches": batches, "refresh_after": refresh_after}


def write(store: SqliteTimeSeriesStore, scene: dict[str, Any], batch: list[Any]) -> None:
    store.write(
        [
            SeriesWrite(
                "m",
                {"device": f"d{i}", "room": scene["rooms"][i]},
                [(T + off * S, {"f": value}) for j, off, value in batch if j == i],
                "acme",
            )
            for i in range(len(scene["rooms"]))
            if any(j == i for j, _, _ in batch)
        ]
    )


def oracle(
    points: dict[tuple[int, int], Any],
    rooms: list[str],
    start: int,
    end: int,
    bucket: int,
    aggregate: str,
    group_by: tuple[str, ...],
) -> dict[tuple[str, ...], list[tuple[int, Any]]]:
    """What each group's buckets hold: ``points`` maps (series, ts) to the value written last.
    A last value tied between series may be either: the oracle gives every candidate."""
    groups: dict[tuple[str, ...], dict[int, list[tuple[int, Any]]]] = {}
    for (i, ts), value in points.items():
        if start <= ts < end:
            key = (rooms[i],) if group_by else ()
            b = start + (ts - start) // bucket * bucket
            groups.setdefault(key, {}).setdefault(b, []).append((ts, value))
    out: dict[tuple[str, ...], list[tuple[int, Any]]] = {}
    for key, buckets in groups.items():
        rows = []
        for b, xs in sorted(buckets.items()):
            values = [v for _, v in xs]
            text = isinstance(values[0], str)
            if aggregate == "count":
                rows.append((b, len(values)))
            elif aggregate == "last":
                newest = max(t for t, _ in xs)
                rows.append((b, [v for t, v in xs if t == newest]))
            elif text:
                continue  # no mean, sum, min or max of text
            elif aggregate == "mean":
                rows.append((b, statistics.fmean(float(v) for v in values)))
            elif aggregate == "sum":
                total = sum(values)
                rows.append((b, total if isinstance(values[0], float) else int(total)))
            else:
                rows.append((b, (min if aggregate == "min" else max)(values)))
        if rows:
            out[key] = rows
    return out


def check(
    store: SqliteTimeSeriesStore,
    scene: dict[str, Any],
    points: dict[tuple[int, int], Any],
    start: int,
    end: int,
    bucket: int,
) -> None:
    for aggregate in AGGREGATES:
        for group_by in ((), ("room",)):
            got = {
                tuple(g.tags[t] for t in group_by): g.points
                for g in store.aggregate(
                    SeriesQuery("acme", "m", "f", start, end, bucket, aggregate, group_by=group_by)
                )
                if g.points
            }
            want = oracle(points, scene["rooms"], start, end, bucket, aggregate, group_by)
            where = f"{aggregate} by {group_by or 'nothing'}, buckets of {bucket // S} s"
            assert got.keys() == want.keys(), where
            for key, rows in want.items():
                assert [b for b, _ in got[key]] == [b for b, _ in rows], where
                for (_, value), (_, expected) in zip(got[key], rows, strict=True):
                    if aggregate == "last":  # the same value, of the same type
                        assert any((type(value), value) == (type(v), v) for v in expected), where
                    elif isinstance(expected, float):
                        assert type(value) is float, where
                        assert value == pytest.approx(expected, rel=1e-9, abs=1e-6), where
                    else:  # integers, booleans and counts: exact, of the same type
                        assert (type(value), value) == (type(expected), expected), where


@pytest.fixture
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("aggregates")


_counter = iter(range(10**9))


def store(directory: Path) -> SqliteTimeSeriesStore:
    return SqliteTimeSeriesStore(
        directory / f"ts-{next(_counter)}.db", raw_retention_s=7 * 86400, clock=lambda: T + 4 * HOUR
    )


@settings(
    max_examples=budget(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scene=scenes())
def test_every_aggregate_from_raw_points_or_rollups_is_what_was_written(
    directory: Path, scene: dict[str, Any]
) -> None:
    ts = store(directory)
    try:
        points: dict[tuple[int, int], Any] = {}
        for n, batch in enumerate(scene["batches"]):
            write(ts, scene, batch)
            for i, off, value in batch:
                points[(i, T + off * S)] = value
            if n in scene["refresh_after"]:
                ts.refresh_rollups()
        check(ts, scene, points, T, T + 3 * HOUR, MIN5)  # the 5-minute rollups
        check(ts, scene, points, T, T + 3 * HOUR, HOUR)  # the hourly ones
        check(ts, scene, points, T + 7 * S, T + 3 * HOUR - 13 * S, 450 * S)  # raw points
    finally:
        ts.close()


@settings(
    max_examples=budget(40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scene=scenes(), late=st.data())
def test_rollups_keep_expired_points_and_add_late_ones(
    directory: Path, scene: dict[str, Any], late: st.DataObject
) -> None:
    """Raw points of the first hours expire; the rollups still answer for them, and readings
    that arrive late for that period (a gateway back online) are added in, not put instead."""
    ts = store(directory)
    try:
        points: dict[tuple[int, int], Any] = {}
        for batch in scene["batches"]:
            write(ts, scene, batch)
            for i, off, value in batch:
                points[(i, T + off * S)] = value
        horizon = T + late.draw(st.integers(1, 3), label="hours expired") * HOUR
        ts.expire(raw_before_ns=horizon, rollup_5m_before_ns=0, rollup_1h_before_ns=0)
        # Late readings at moments not written before (a reading at the same moment as an
        # expired one cannot be told from it: that one would be counted twice).
        used = {(i, off) for batch in scene["batches"] for i, off, _ in batch}
        fresh = late.draw(
            st.lists(
                st.tuples(
                    st.integers(0, len(scene["rooms"]) - 1),
                    st.integers(0, 3 * 3600 - 1),
                    VALUES[scene["kind"]],
                ).filter(lambda p: (p[0], p[1]) not in used),
                max_size=10,
                unique_by=lambda p: (p[0], p[1]),
            ),
            label="late readings",
        )
        if fresh:
            write(ts, scene, fresh)
            for i, off, value in fresh:
                points[(i, T + off * S)] = value
        ts.refresh_rollups(horizon)
        check(ts, scene, points, T, T + 3 * HOUR, MIN5)
        check(ts, scene, points, T, T + 3 * HOUR, HOUR)
    finally:
        ts.close()


@pytest.mark.parametrize(
    ("values", "want"),
    [
        ([2**52, 2**52 - 1], 2**53 - 1),  # a float holds it exactly: an integer again
        ([2**52, 2**52], float(2**53)),  # from here a float may have rounded: left a float
        ([-(2**52), -(2**52) + 1], -(2**53) + 1),
        ([-(2**52), -(2**52)], float(-(2**53))),
        ([True, True, False], 2),
    ],
)
def test_an_integer_sum_is_an_integer_while_a_float_holds_it_exactly(
    directory: Path, values: list[int], want: float
) -> None:
    ts = store(directory)
    try:
        write(ts, {"rooms": ["lab"]}, [(0, i, v) for i, v in enumerate(values)])
        for bucket in (MIN5, 60 * S):  # from the rollups and from the raw points
            [group] = ts.aggregate(SeriesQuery("acme", "m", "f", T, T + HOUR, bucket, "sum"))
            [(_, value)] = group.points
            assert (type(value), value) == (type(want), want)
    finally:
        ts.close()
