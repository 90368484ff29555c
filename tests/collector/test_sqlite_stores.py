"""What the embedded SQLite stores do beyond the contract every backend shares: their query
limits at the exact boundary, the time limit of a read, what a write that cannot happen says,
the type a field keeps, and hourly rollups expiring. Written from the survivors of mutation
testing (scripts/mutation, docs/reliability.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from outpost_iot.collector._exceptions import (
    QueryTimeout,
    QueryTooCostly,
    StoreError,
    StoreUnavailable,
    TooManyPoints,
)
from outpost_iot.collector.stores import (
    ApiTokenRecord,
    AuditEntry,
    BatchRecord,
    CertificateRecord,
    DesiredConfigRecord,
    EnrollmentTokenRecord,
    QuarantineEntry,
    RolloutRecord,
    SeriesQuery,
    SeriesWrite,
    SqliteDocumentStore,
    SqliteTimeSeriesStore,
)
from outpost_iot.wire import ConfigReport, GatewayState

S = 10**9
HOUR = 3600 * S
T = 1_795_298_400 * S  # a whole hour


@pytest.fixture
def ts(tmp_path: Path) -> Iterator[SqliteTimeSeriesStore]:
    store = SqliteTimeSeriesStore(tmp_path / "ts.db", clock=lambda: T + 4 * HOUR)
    yield store
    store.close()


@pytest.fixture
def docs(tmp_path: Path) -> Iterator[SqliteDocumentStore]:
    store = SqliteDocumentStore(tmp_path / "docs.db")
    yield store
    store.close()


def write(
    ts: SqliteTimeSeriesStore, device: str, points: list[tuple[int, Any]], **tags: str
) -> None:
    ts.write(
        [SeriesWrite("m", {"device": device, **tags}, [(t, {"x": v}) for t, v in points], "acme")]
    )


# -- query limits ------------------------------------------------------------------------------


def test_a_query_of_exactly_its_cost_runs_and_one_more_is_refused_with_the_figures(
    ts: SqliteTimeSeriesStore,
) -> None:
    write(ts, "d1", [(T, 1.0)])
    write(ts, "d2", [(T, 2.0)])
    # 2 series × 10 buckets (the last one short) = 20.
    ok = SeriesQuery("acme", "m", "x", T, T + 10 * S - 1, S, "mean", max_cost=20)
    assert ts.aggregate(ok)
    with pytest.raises(QueryTooCostly) as caught:
        ts.aggregate(SeriesQuery("acme", "m", "x", T, T + 10 * S - 1, S, "mean", max_cost=19))
    assert str(caught.value) == (
        "the query would aggregate 2 series × 10 buckets, more than the limit of 19; filter"
        " with tag=, use a larger bucket or a shorter time range"
    )


def test_points_are_counted_once_per_bucket_of_a_group(ts: SqliteTimeSeriesStore) -> None:
    """Two series merged into one group: a bucket both fill is one point of the answer."""
    write(ts, "d1", [(T + i * S, float(i)) for i in range(5)])
    write(ts, "d2", [(T, 9.0)])
    query = SeriesQuery("acme", "m", "x", T, T + 5 * S, S, "max", max_points=5)
    [group] = ts.aggregate(query)
    assert [b for b, _ in group.points] == [T + i * S for i in range(5)]
    with pytest.raises(TooManyPoints) as caught:
        ts.aggregate(SeriesQuery("acme", "m", "x", T, T + 5 * S, S, "max", max_points=4))
    assert (caught.value.points, caught.value.limit) == (5, 4)


def test_a_read_past_its_time_limit_is_stopped(ts: SqliteTimeSeriesStore) -> None:
    """A million one-nanosecond buckets take seconds to aggregate; the query is stopped at its
    limit (an API caller's broad query cannot hold the store), and so is one whose time was
    up before it started."""
    write(ts, "d1", [(T, 1.0)])
    broad = SeriesQuery("acme", "m", "x", T, T + 1_000_000, 1, "mean", timeout_s=0.2)
    with pytest.raises(QueryTimeout, match=r"ran for more than 0\.2 s and was stopped"):
        ts.aggregate(broad)
    narrow = SeriesQuery("acme", "m", "x", T, T + 10 * S, S, "mean", timeout_s=1e-9)
    with pytest.raises(QueryTimeout, match=r"more than 1e-09 s"):
        ts.aggregate(narrow)
    # The limit was this read's only: the next one, without it, runs to its end.
    assert ts.aggregate(SeriesQuery("acme", "m", "x", T, T + 10 * S, S, "mean"))


def test_a_series_without_the_grouping_tag_is_grouped_under_an_empty_value(
    ts: SqliteTimeSeriesStore,
) -> None:
    write(ts, "d1", [(T, 1.0)], room="lab")
    write(ts, "d2", [(T, 3.0)])
    write(ts, "d3", [(T, 5.0)], room="None")  # a name, not a missing tag
    groups = ts.aggregate(SeriesQuery("acme", "m", "x", T, T + S, S, "mean", group_by=("room",)))
    assert [(g.tags, g.points) for g in groups] == [
        ({"room": ""}, [(T, 3.0)]),
        ({"room": "None"}, [(T, 5.0)]),
        ({"room": "lab"}, [(T, 1.0)]),
    ]


# -- types, retention ----------------------------------------------------------------------------


def test_a_field_keeps_the_type_of_its_first_value_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "ts.db"
    first = SqliteTimeSeriesStore(path)
    write(first, "d1", [(T, True)])
    first.close()
    again = SqliteTimeSeriesStore(path)  # a restarted collector
    try:
        write(again, "d1", [(T + S, 0)])  # a device that now sends 0/1
        # (Typed, as True == 1 and False == 0 in Python.)
        assert [(type(p.fields["x"]), p.fields["x"]) for p in again.query("m")] == [
            (bool, True),
            (bool, False),
        ]
        assert [(type(v.value), v.value) for v in again.latest("acme", "m")] == [(bool, False)]
    finally:
        again.close()


def test_hourly_and_five_minute_rollups_expire_at_their_own_horizons(
    ts: SqliteTimeSeriesStore,
) -> None:
    write(ts, "d1", [(T + i * 60 * S, float(i)) for i in range(120)])  # two hours
    ts.refresh_rollups()
    gone = ts.expire(
        raw_before_ns=T + 2 * HOUR, rollup_5m_before_ns=T + HOUR, rollup_1h_before_ns=T + HOUR
    )
    assert gone == {"raw_points": 120, "rollups_5m": 12, "rollups_1h": 1}
    [group] = ts.aggregate(SeriesQuery("acme", "m", "x", T, T + 2 * HOUR, HOUR, "count"))
    assert group.points == [(T + HOUR, 60)]


def test_a_late_reading_in_the_last_bucket_before_the_horizon_is_added_in(
    ts: SqliteTimeSeriesStore,
) -> None:
    """The bucket that ends exactly at the raw horizon lost its raw points to expiry too: a
    reading that arrives late for it is added into its rollup, not put instead of it."""
    horizon = T + HOUR
    write(ts, "d1", [(horizon - 60 * S, 2.0), (horizon - 30 * S, 4.0)])
    ts.expire(raw_before_ns=horizon, rollup_5m_before_ns=0, rollup_1h_before_ns=0)
    write(ts, "d1", [(horizon - 10 * S, 9.0)])
    ts.refresh_rollups(horizon)
    [group] = ts.aggregate(SeriesQuery("acme", "m", "x", T, horizon, 5 * 60 * S, "count"))
    assert group.points == [(horizon - 5 * 60 * S, 3)]
    bucket = horizon - 5 * 60 * S
    for aggregate, want in (("max", 9.0), ("min", 2.0), ("sum", 15.0), ("last", 9.0)):
        [group] = ts.aggregate(SeriesQuery("acme", "m", "x", T, horizon, 5 * 60 * S, aggregate))
        assert group.points == [(bucket, want)], aggregate


def test_raw_points_are_kept_for_exactly_the_retention(tmp_path: Path) -> None:
    store = SqliteTimeSeriesStore(tmp_path / "ts.db", raw_retention_s=7.5, clock=lambda: T)
    try:
        assert store.raw_horizon_ns() == T - 7_500_000_000
    finally:
        store.close()


# -- what a write that cannot happen says ------------------------------------------------------


def _docs_writes(docs: SqliteDocumentStore) -> dict[str, Callable[[], object]]:
    token = EnrollmentTokenRecord("t", "h", "acme", "hq", T, T + HOUR, 1, 1)
    cert = CertificateRecord("01", "gw-1", T, T + HOUR)
    report = ConfigReport(version=1, status="applied", applied_version=1, ts=T)
    state = GatewayState(state="online", ts=T, boot_id="b")
    rollout = RolloutRecord(id="r", tenant="acme", actor="ops", created_ns=T, status="running",
                            waves=1, abort_percent=1.0, timeout_s=1.0, device_errors_fail=False)  # fmt: skip
    return {
        "record batches": lambda: docs.record([BatchRecord("gw-1", "s", 1, 1, T)], []),
        "quarantine a message": lambda: docs.quarantine(QuarantineEntry(T, "t", "r", "d", b"")),
        "expire old documents": lambda: docs.expire(
            events_before_ns=T, quarantine_before_ns=T, audit_before_ns=T
        ),
        "mark a quarantined message replayed": lambda: docs.mark_replayed(1, T, "stored"),
        "write the audit log": lambda: docs.audit(AuditEntry(T, "a", "acme", "x", "y", "cli")),
        "save gateway state": lambda: docs.save_state("gw-1", state, T),
        "record gateway clock": lambda: docs.set_clock("gw-1", 1.0, True),
        "record boot clock offset": lambda: docs.set_boot_offset("gw-1", "b", 1),
        "prune dedup records": lambda: docs.prune_seen(T),
        "create an enrollment token": lambda: docs.create_enrollment_token(token),
        "revoke an enrollment token": lambda: docs.revoke_enrollment_token("t"),
        "enroll a gateway": lambda: docs.redeem_enrollment_token("h", T, lambda _t: None),  # type: ignore[arg-type,return-value]
        "record a certificate": lambda: docs.record_certificate(cert),
        "revoke a gateway": lambda: docs.revoke_gateway("gw-1", T),
        "tag a gateway": lambda: docs.set_gateway_tags("gw-1", ["a"]),
        "store a desired config": lambda: docs.add_desired_config(
            DesiredConfigRecord("gw-1", 1, T, "ops", b"x")
        ),
        "store a config report": lambda: docs.save_config_report("gw-1", report),
        "create a rollout": lambda: docs.create_rollout(rollout, []),
        "update a rollout": lambda: docs.update_rollout("r", status="paused"),
        "update a rollout member": lambda: docs.update_rollout_member("r", "gw-1", outcome="x"),
        "create an API token": lambda: docs.create_api_token(
            ApiTokenRecord("a", "h", "acme", "viewer", "n", T)
        ),
        "revoke an API token": lambda: docs.revoke_api_token("a", T),
    }


def test_every_write_that_cannot_happen_says_which_and_is_unavailable_not_a_crash(
    ts: SqliteTimeSeriesStore, docs: SqliteDocumentStore
) -> None:
    """A store that cannot write now (here: read-only, as a full or failing disk makes it)
    answers every write with :class:`StoreUnavailable` naming the file and the operation, so
    ingest nacks (the gateway keeps the data) and an operator knows what failed."""
    writes: dict[str, Callable[[], object]] = {
        "write readings": lambda: write(ts, "d1", [(T, 1.0)]),
        "update rollups": lambda: ts.refresh_rollups(),
    }
    write(ts, "d1", [(T - HOUR, 1.0)])  # a rollup to bring up to date
    ts._conn.execute("PRAGMA query_only=1")
    docs._conn.execute("PRAGMA query_only=1")
    writes |= _docs_writes(docs)
    for what, call in writes.items():
        store = ts if what in ("write readings", "update rollups") else docs
        with pytest.raises(StoreUnavailable) as caught:
            call()
        assert str(caught.value) == (
            f"{store.path}: cannot {what}: attempt to write a readonly database"
        ), what
        assert not store._conn.in_transaction, f"{what} left its transaction open"


def test_an_expiry_that_fails_says_so_and_deletes_nothing(ts: SqliteTimeSeriesStore) -> None:
    write(ts, "d1", [(T - HOUR, 1.0)])
    ts.refresh_rollups()
    ts._conn.execute("ALTER TABLE rollups RENAME TO gone")  # what an unreadable page does
    with pytest.raises(StoreUnavailable) as caught:
        ts.expire(raw_before_ns=T, rollup_5m_before_ns=T, rollup_1h_before_ns=T)
    assert str(caught.value) == f"{ts.path}: cannot expire old readings: no such table: rollups"
    assert ts.count_points() == 1  # the raw points' deletion was rolled back with it


def test_a_read_that_fails_says_which_file(ts: SqliteTimeSeriesStore) -> None:
    write(ts, "d1", [(T, 1.0)])
    ts._conn.execute("ALTER TABLE points RENAME TO gone")
    with pytest.raises(StoreUnavailable) as caught:
        ts.aggregate(SeriesQuery("acme", "m", "x", T, T + S, S, "mean"))
    assert str(caught.value) == f"{ts.path}: no such table: points"


def test_a_write_the_store_refuses_says_which_and_why(docs: SqliteDocumentStore) -> None:
    docs.add_desired_config(DesiredConfigRecord("gw-1", 2, T, "ops", b"x"))
    with pytest.raises(StoreError) as caught:
        docs.add_desired_config(DesiredConfigRecord("gw-1", 2, T, "other", b"y"))
    assert not isinstance(caught.value, StoreUnavailable)  # not worth retrying
    assert str(caught.value) == (
        f"{docs.path}: cannot store a desired config: UNIQUE constraint failed:"
        " desired_configs.gateway_id, desired_configs.version"
    )


def test_a_device_whose_last_reading_is_at_the_epoch_says_so(ts: SqliteTimeSeriesStore) -> None:
    ts.write([SeriesWrite("m", {"gateway": "gw-1", "device": "d0"}, [(0, {"x": 1.0})], "acme")])
    assert ts.devices("acme", "gw-1") == {"d0": (["m"], 0)}


def test_a_store_that_cannot_be_opened_or_asked_says_which_file_and_why(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match=r"garbage\.db: cannot open store: file is not a database"):
        SqliteDocumentStore(garbage)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"file/ts\.db: cannot create store: \w"):
        SqliteTimeSeriesStore(blocker / "ts.db")
    store = SqliteDocumentStore(tmp_path / "docs.db")
    store.close()  # as good as a file that went away
    with pytest.raises(StoreUnavailable, match=r"docs\.db: Cannot operate on a closed database"):
        store.ping()
