"""Embedded stores on SQLite (WAL): one file for time series, one for documents."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import orjson
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from outpost_iot.collector._exceptions import (
    QueryTimeout,
    QueryTooCostly,
    StoreError,
    StoreUnavailable,
    TooManyPoints,
)
from outpost_iot.collector.stores._base import (
    ALL_TENANTS,
    LatestValue,
    SeriesGroup,
    SeriesInfo,
    SeriesQuery,
    SeriesWrite,
    StoredPoint,
)
from outpost_iot.collector.stores._documents import SqlDocumentStore
from outpost_iot.collector.stores._sql import Dialect
from outpost_iot.wire import FieldValue, private_file

TS_MIGRATIONS = Migrations("outpost-collector-timeseries")
ROLLUP_5M = 300 * 10**9
ROLLUP_1H = 3600 * 10**9
DOC_MIGRATIONS = Migrations("outpost-collector-documents")

# Field types, so a bool comes back as a bool (SQLite stores it as an integer).
_T_BOOL, _T_INT, _T_FLOAT, _T_STR = "b", "i", "f", "s"


@TS_MIGRATIONS(name="0001_initial")
def _ts_initial(db: Database) -> None:
    db.execute(
        "CREATE TABLE series (id INTEGER PRIMARY KEY, measurement TEXT NOT NULL,"
        " tags TEXT NOT NULL, UNIQUE (measurement, tags))"
    )
    db.execute(
        "CREATE TABLE fields (series_id INTEGER NOT NULL, field TEXT NOT NULL,"
        " type TEXT NOT NULL, PRIMARY KEY (series_id, field)) WITHOUT ROWID"
    )
    # One row per field value; (series, field, ts) is the identity, so a rewrite overwrites.
    db.execute(
        "CREATE TABLE points (series_id INTEGER NOT NULL, field TEXT NOT NULL,"
        " ts INTEGER NOT NULL, value, PRIMARY KEY (series_id, field, ts)) WITHOUT ROWID"
    )


@TS_MIGRATIONS(name="0002_tenants")
def _ts_tenants(db: Database) -> None:
    # Every series belongs to a tenant; reads filter on it in SQL. Series written before
    # tenants existed belong to no tenant ('') and are seen by admins only.
    db.execute(
        "CREATE TABLE series_t (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL DEFAULT '',"
        " measurement TEXT NOT NULL, tags TEXT NOT NULL, UNIQUE (tenant, measurement, tags))"
    )
    db.execute(
        "INSERT INTO series_t (id, tenant, measurement, tags)"
        " SELECT id, '', measurement, tags FROM series"
    )
    db.execute("DROP TABLE series")
    db.execute("ALTER TABLE series_t RENAME TO series")
    db.execute("CREATE INDEX series_measurement ON series (measurement, tenant)")


@TS_MIGRATIONS(name="0003_rollups")
def _ts_rollups(db: Database) -> None:
    # Per series, field and bucket (res = 300 or 3600 s): count, sum, min, max, last.
    db.execute(
        "CREATE TABLE rollups (series_id INTEGER NOT NULL, field TEXT NOT NULL,"
        " res INTEGER NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL, total,"
        " lo, hi, last_ts INTEGER NOT NULL, last,"
        " PRIMARY KEY (series_id, field, res, bucket)) WITHOUT ROWID"
    )
    # 5-minute buckets that writes touched since the rollups were last brought up to date.
    db.execute(
        "CREATE TABLE rollup_dirty (series_id INTEGER NOT NULL, field TEXT NOT NULL,"
        " bucket INTEGER NOT NULL, PRIMARY KEY (series_id, field, bucket)) WITHOUT ROWID"
    )


@DOC_MIGRATIONS(name="0001_initial")
def _doc_initial(db: Database) -> None:
    db.execute(
        "CREATE TABLE gateways (id TEXT PRIMARY KEY, state TEXT NOT NULL DEFAULT 'unknown',"
        " last_seen_ns INTEGER, status TEXT NOT NULL DEFAULT '{}', clock_skew_s REAL,"
        " clock_flagged INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute(
        "CREATE TABLE stored_batches (gateway_id TEXT NOT NULL, stream_id TEXT NOT NULL,"
        " seq INTEGER NOT NULL, readings INTEGER NOT NULL, received_ns INTEGER NOT NULL,"
        " PRIMARY KEY (gateway_id, stream_id, seq)) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX stored_batches_received ON stored_batches (received_ns)")
    db.execute(
        "CREATE TABLE events (gateway_id TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,"
        " ts INTEGER NOT NULL, source TEXT NOT NULL, body TEXT NOT NULL,"
        " PRIMARY KEY (gateway_id, id))"
    )
    db.execute("CREATE INDEX events_ts ON events (gateway_id, ts)")
    db.execute(
        "CREATE TABLE quarantine (id INTEGER PRIMARY KEY, received_ns INTEGER NOT NULL,"
        " gateway_id TEXT NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL,"
        " detail TEXT NOT NULL, properties TEXT NOT NULL, raw BLOB NOT NULL)"
    )
    db.execute(
        "CREATE TABLE clock_boots (gateway_id TEXT NOT NULL, boot_id TEXT NOT NULL,"
        " offset_ns INTEGER NOT NULL, PRIMARY KEY (gateway_id, boot_id)) WITHOUT ROWID"
    )


@DOC_MIGRATIONS(name="0002_enrollment")
def _doc_enrollment(db: Database) -> None:
    # Tokens are stored as SHA-256 hashes: they are 256-bit random, so no slow hash is needed,
    # and the token itself is shown once and never stored.
    db.execute(
        "CREATE TABLE enrollment_tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE,"
        " tenant TEXT NOT NULL, site TEXT NOT NULL, created_ns INTEGER NOT NULL,"
        " expires_ns INTEGER NOT NULL, uses_total INTEGER NOT NULL, uses_left INTEGER NOT NULL,"
        " revoked INTEGER NOT NULL DEFAULT 0)"
    )
    for column in (
        "tenant TEXT NOT NULL DEFAULT ''",
        "site TEXT NOT NULL DEFAULT ''",
        "hardware TEXT NOT NULL DEFAULT '{}'",
        "enrolled_ns INTEGER",
        "cert_serial TEXT",
        "cert_not_after_ns INTEGER",
        "revoked_ns INTEGER",
    ):
        db.execute(f"ALTER TABLE gateways ADD COLUMN {column}")
    db.execute(
        "CREATE TABLE certificates (serial TEXT PRIMARY KEY, gateway_id TEXT NOT NULL,"
        " issued_ns INTEGER NOT NULL, not_after_ns INTEGER NOT NULL, revoked_ns INTEGER)"
    )
    db.execute(
        "CREATE TABLE api_tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE,"
        " tenant TEXT NOT NULL, role TEXT NOT NULL, name TEXT NOT NULL DEFAULT '',"
        " created_ns INTEGER NOT NULL, revoked_ns INTEGER)"
    )


@DOC_MIGRATIONS(name="0003_replay_and_audit")
def _doc_replay_and_audit(db: Database) -> None:
    db.execute("ALTER TABLE quarantine ADD COLUMN replayed_ns INTEGER")
    db.execute("ALTER TABLE quarantine ADD COLUMN replay_result TEXT")
    db.execute("CREATE INDEX quarantine_received ON quarantine (received_ns)")
    db.execute("CREATE INDEX events_received ON events (ts)")
    # Operator actions: who (token id, or cli:<user>), what, on what, when, from where.
    db.execute(
        "CREATE TABLE audit (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, actor TEXT NOT NULL,"
        " tenant TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,"
        " source TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '{}')"
    )
    db.execute("CREATE INDEX audit_ts ON audit (ts)")


@DOC_MIGRATIONS(name="0004_desired_configs")
def _doc_desired_configs(db: Database) -> None:
    db.execute("ALTER TABLE certificates ADD COLUMN public_key_pem TEXT NOT NULL DEFAULT ''")
    # Every version an operator set, signed and sealed as it was published: the history.
    db.execute(
        "CREATE TABLE desired_configs (gateway_id TEXT NOT NULL, version INTEGER NOT NULL,"
        " issued_ns INTEGER NOT NULL, actor TEXT NOT NULL, envelope BLOB NOT NULL,"
        " PRIMARY KEY (gateway_id, version)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE config_reports (gateway_id TEXT PRIMARY KEY, version INTEGER NOT NULL,"
        " status TEXT NOT NULL, applied_version INTEGER NOT NULL, reason TEXT NOT NULL,"
        " errors TEXT NOT NULL, ts INTEGER NOT NULL, received_ns INTEGER NOT NULL)"
    )


@DOC_MIGRATIONS(name="0005_rollouts")
def _doc_rollouts(db: Database) -> None:
    db.execute(
        "CREATE TABLE rollouts (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, actor TEXT NOT NULL,"
        " created_ns INTEGER NOT NULL, status TEXT NOT NULL, current_wave INTEGER NOT NULL,"
        " waves INTEGER NOT NULL, abort_percent REAL NOT NULL, timeout_s REAL NOT NULL,"
        " reason TEXT NOT NULL DEFAULT '')"
    )
    # One row per gateway: its wave, and its envelope, sealed and signed when the rollout was
    # made (no secret is kept in clear for later waves).
    db.execute(
        "CREATE TABLE rollout_gateways (rollout_id TEXT NOT NULL, gateway_id TEXT NOT NULL,"
        " wave INTEGER NOT NULL, version INTEGER NOT NULL, issued_ns INTEGER NOT NULL,"
        " envelope BLOB NOT NULL, started_ns INTEGER, outcome TEXT,"
        " PRIMARY KEY (rollout_id, gateway_id)) WITHOUT ROWID"
    )


@DOC_MIGRATIONS(name="0006_gateway_tags")
def _doc_gateway_tags(db: Database) -> None:
    db.execute("ALTER TABLE gateways ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'")


@DOC_MIGRATIONS(name="0007_rollout_device_errors")
def _doc_rollout_device_errors(db: Database) -> None:
    # A rollout may count "applied, but a device refuses it" (device_errors) as a failure.
    db.execute("ALTER TABLE rollouts ADD COLUMN device_errors_fail INTEGER NOT NULL DEFAULT 0")


@DOC_MIGRATIONS(name="0008_quarantine_budget")
def _doc_quarantine_budget(db: Database) -> None:
    # The size of the message as received: its raw bytes are not kept past a gateway's budget.
    db.execute("ALTER TABLE quarantine ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE quarantine SET size = length(raw)")
    db.execute("CREATE INDEX quarantine_gateway ON quarantine (gateway_id)")


@DOC_MIGRATIONS(name="0009_sessions")
def _doc_sessions(db: Database) -> None:
    # Console sign-ins: the hash of the cookie's session id, acting as an API token.
    db.execute(
        "CREATE TABLE sessions (hash TEXT PRIMARY KEY, token_id TEXT NOT NULL,"
        " created_ns INTEGER NOT NULL, expires_ns INTEGER NOT NULL, csrf TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX sessions_token ON sessions (token_id)")


@DOC_MIGRATIONS(name="0010_alarms")
def _doc_alarms(db: Database) -> None:
    for sql in _ALARM_TABLES:
        db.execute(sql)


# Alarms (collector.stores._alarm_store): one open alarm per rule and originator.
_ALARM_TABLES = (
    "CREATE TABLE alarm_rules (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL,"
    " severity TEXT NOT NULL, enabled INTEGER NOT NULL, edge INTEGER NOT NULL, notify INTEGER"
    " NOT NULL, spec TEXT NOT NULL, created_ns INTEGER NOT NULL, updated_ns INTEGER NOT NULL,"
    " actor TEXT NOT NULL)",
    "CREATE INDEX alarm_rules_tenant ON alarm_rules (tenant)",
    "CREATE TABLE alarms (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, rule_id TEXT NOT NULL,"
    " originator TEXT NOT NULL, gateway_id TEXT NOT NULL, severity TEXT NOT NULL, rank INTEGER"
    " NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, raised_ns INTEGER NOT NULL, details"
    " TEXT NOT NULL, cleared_ns INTEGER, acked_ns INTEGER, acked_by TEXT)",
    "CREATE UNIQUE INDEX alarms_open ON alarms (rule_id, originator) WHERE cleared_ns IS NULL",
    "CREATE INDEX alarms_tenant ON alarms (tenant, id)",
    "CREATE INDEX alarms_cleared ON alarms (cleared_ns)",
    "CREATE TABLE alarm_conditions (rule_id TEXT NOT NULL, originator TEXT NOT NULL, since_ns"
    " INTEGER NOT NULL, value REAL NOT NULL DEFAULT 0, PRIMARY KEY (rule_id, originator))"
    " WITHOUT ROWID",
    "CREATE TABLE notify_endpoints (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT"
    " NULL, kind TEXT NOT NULL, target TEXT NOT NULL, secret TEXT NOT NULL, min_rank INTEGER"
    " NOT NULL, enabled INTEGER NOT NULL, created_ns INTEGER NOT NULL, delivered INTEGER NOT"
    " NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',"
    " last_failure_ns INTEGER, last_success_ns INTEGER)",
    "CREATE TABLE notifications (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, endpoint_id"
    " TEXT NOT NULL, alarm_id INTEGER, event TEXT NOT NULL, key TEXT NOT NULL UNIQUE, payload"
    " TEXT NOT NULL, created_ns INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_ns"
    " INTEGER NOT NULL, lease_ns INTEGER NOT NULL DEFAULT 0, delivered_ns INTEGER, given_up"
    " INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX notifications_due ON notifications (next_ns) WHERE delivered_ns IS NULL",
    "CREATE INDEX notifications_endpoint ON notifications (endpoint_id)",
)


def _connect(path: Path, migrations: Migrations) -> sqlite3.Connection:
    try:
        private_file(path)  # 0600 whatever the umask (SQLite's -wal and -shm files follow it)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # An ack promises the data is durable: fsync the WAL on every commit.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        migrations.apply(Database(conn, execute_plugins=False))
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open store: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"{path}: cannot create store: {exc.strerror}") from exc
    return conn


class _SqliteBase:
    """One connection shared by the ingest thread and the API's threads, one user at a time."""

    def __init__(self, path: Path, migrations: Migrations) -> None:
        self.path = path
        self._conn = _connect(path, migrations)
        self._lock = threading.RLock()
        self._local = threading.local()  # a read deadline per API thread (see _deadline)

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        deadline: tuple[float, float] | None = getattr(self._local, "deadline", None)
        with self._lock:
            if deadline is None:
                return self._conn.execute(sql, args).fetchall()
            end, seconds = deadline
            if time.monotonic() > end:
                raise QueryTimeout(seconds)
            # Checked every ~20k virtual machine steps; the lock is held per statement only,
            # so ingest writes go on between the statements of a long query.
            self._conn.set_progress_handler(lambda: int(time.monotonic() > end), 20_000)
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.OperationalError as exc:
                if time.monotonic() > end:
                    raise QueryTimeout(seconds) from None
                raise StoreUnavailable(f"{self.path}: {exc}") from exc
            finally:
                self._conn.set_progress_handler(None, 0)

    @contextmanager
    def _deadline(self, seconds: float) -> Iterator[None]:
        """Stop the reads this thread makes inside after ``seconds`` (:class:`QueryTimeout`):
        a query an API caller made too broad cannot hold the store."""
        self._local.deadline = (time.monotonic() + seconds, seconds)
        try:
            yield
        finally:
            self._local.deadline = None

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        with self._lock:
            return self._conn.execute(sql, args).fetchone()

    @contextmanager
    def _tx(self, what: str) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            yield from self._tx_locked(what)

    def _tx_locked(self, what: str) -> Iterator[sqlite3.Cursor]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn.cursor()
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            # Locked, full disk, I/O error: the data is not stored; the gateway retries.
            raise StoreUnavailable(f"{self.path}: cannot {what}: {exc}") from exc
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"{self.path}: cannot {what}: {exc}") from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def ping(self) -> None:
        """Raise if the store cannot answer a query now."""
        try:
            self._one("SELECT 1")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc

    def close(self) -> None:
        self._conn.close()


class SqliteTimeSeriesStore(_SqliteBase):
    """Time series in SQLite: ``series`` (tenant + measurement + tags) and ``points`` per field."""

    def __init__(
        self,
        path: Path,
        *,
        raw_retention_s: float = 7 * 86400,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(path, TS_MIGRATIONS)
        self._series: dict[tuple[str, str, bytes], int] = {}
        self._fields: set[tuple[int, str]] = set()
        self.raw_retention_s = raw_retention_s
        self._clock = clock

    def raw_horizon_ns(self) -> int:
        """Raw points before this are expired (or about to be)."""
        return self._clock() - int(self.raw_retention_s * 1e9)

    def _series_id(self, conn: sqlite3.Cursor, tenant: str, measurement: str, tags: bytes) -> int:
        key = (tenant, measurement, tags)
        sid = self._series.get(key)
        if sid is None:
            conn.execute(
                "INSERT OR IGNORE INTO series (tenant, measurement, tags) VALUES (?, ?, ?)",
                (tenant, measurement, tags),
            )
            sid = conn.execute(
                "SELECT id FROM series WHERE tenant = ? AND measurement = ? AND tags = ?",
                (tenant, measurement, tags),
            ).fetchone()[0]
            self._series[key] = sid
        return sid

    def write(self, series: Sequence[SeriesWrite]) -> None:
        try:
            with self._tx("write readings") as conn:
                rows: list[tuple[int, str, int, FieldValue]] = []
                new_fields: list[tuple[int, str, str]] = []
                dirty: set[tuple[int, str, int]] = set()
                for s in series:
                    tags = orjson.dumps(s.tags, option=orjson.OPT_SORT_KEYS)
                    sid = self._series_id(conn, s.tenant, s.measurement, tags)
                    for ts, fields in s.points:
                        bucket = ts - ts % ROLLUP_5M
                        for name, value in fields.items():
                            rows.append((sid, name, ts, value))
                            dirty.add((sid, name, bucket))
                            if (sid, name) not in self._fields:
                                new_fields.append((sid, name, _type_code(value)))
                                self._fields.add((sid, name))
                conn.executemany(
                    "INSERT OR IGNORE INTO rollup_dirty (series_id, field, bucket) VALUES (?, ?, ?)",
                    dirty,
                )
                if new_fields:
                    # A field's type is that of its first value, for good: what reads make of
                    # the stored values (a boolean, an integer sum) must not change with a
                    # restart of the collector (this cache is per process).
                    conn.executemany(
                        "INSERT OR IGNORE INTO fields (series_id, field, type) VALUES (?, ?, ?)",
                        new_fields,
                    )
                conn.executemany(
                    "INSERT OR REPLACE INTO points (series_id, field, ts, value) VALUES (?, ?, ?, ?)",
                    rows,
                )
        except BaseException:
            # Ids cached during a rolled-back transaction may not exist: forget them.
            self._series.clear()
            self._fields.clear()
            raise

    @staticmethod
    def _series_filter(
        tenant: str, measurement: str | None, tags: dict[str, str] | None
    ) -> tuple[str, list[Any]]:
        """SQL that selects the tenant's series of ``measurement`` (any when None) with
        ``tags`` (alias ``s``)."""
        sql = "s.measurement = ?" if measurement is not None else "1"
        args: list[Any] = [] if measurement is None else [measurement]
        if tenant != ALL_TENANTS:
            sql += " AND s.tenant = ?"
            args.append(tenant)
        for key, value in (tags or {}).items():
            sql += " AND json_extract(s.tags, ?) = ?"
            args += [_json_path(key), value]
        return sql, args

    def query(
        self,
        measurement: str,
        *,
        tenant: str = ALL_TENANTS,
        tags: dict[str, str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> list[StoredPoint]:
        """Points of ``measurement`` whose tags include ``tags``, oldest first, one per ts."""
        where, args = self._series_filter(tenant, measurement, tags)
        sql = (
            "SELECT s.id, s.tags, p.ts, p.field, p.value, f.type FROM series s"
            " JOIN points p ON p.series_id = s.id"
            " JOIN fields f ON f.series_id = s.id AND f.field = p.field"
            f" WHERE {where} AND p.ts >= ? AND p.ts < ?"
            " ORDER BY s.id, p.ts"
        )
        args += [start_ns or 0, end_ns or 2**63 - 1]
        out: list[StoredPoint] = []
        current: tuple[int, int] | None = None
        for sid, tag_json, ts, field, value, type_code in self._all(sql, args):
            if current != (sid, ts):
                out.append(StoredPoint(measurement, orjson.loads(tag_json), ts, {}))
                current = (sid, ts)
            out[-1].fields[field] = bool(value) if type_code == _T_BOOL else value
        out.sort(key=lambda p: p.ts)
        return out

    def aggregate(self, query: SeriesQuery) -> list[SeriesGroup]:
        """Bucketed aggregates: per series, one index range scan per bucket (no sorting), then
        series merged into groups by their tag values."""
        where, args = self._series_filter(query.tenant, query.measurement, query.tags)
        matching = self._all(
            "SELECT s.id, s.tags, f.type FROM series s"
            f" JOIN fields f ON f.series_id = s.id AND f.field = ? WHERE {where} ORDER BY s.id",
            [query.field, *args],
        )
        buckets_n = -(-(query.end_ns - query.start_ns) // query.bucket_ns)
        if len(matching) * buckets_n > query.max_cost:
            raise QueryTooCostly(len(matching), buckets_n, query.max_cost)
        with self._deadline(query.timeout_s):
            return self._aggregate(query, matching)

    def _aggregate(self, query: SeriesQuery, matching: list[Any]) -> list[SeriesGroup]:
        bucket = query.bucket_ns
        # The buckets as rows; for each, one aggregate over the primary key's (series, field,
        # ts) range. Only what the aggregate needs is computed.
        parts = {
            "mean": f"count(value), {_exact('total(value)')}",  # total(): see refresh_rollups
            "sum": f"count(value), {_exact('total(value)')}",
            "count": "count(value)",
            "min": f"count(value), {_exact('min(value)')}",
            "max": f"count(value), {_exact('max(value)')}",
        }
        range_sql = (
            "FROM points WHERE series_id = ? AND field = ? AND ts >= b.s AND ts < b.s + ?"
            " AND ts < ?"  # the last bucket stops at the end of the range
        )
        if query.aggregate == "last":
            measure = (
                f"(SELECT json_array(ts, {_exact('value')}) {range_sql} ORDER BY ts DESC LIMIT 1)"
            )
        else:
            measure = f"(SELECT json_array({parts[query.aggregate]}) {range_sql})"
        sql = (
            "WITH RECURSIVE b(s) AS (SELECT ? UNION ALL SELECT s + ? FROM b WHERE s + ? < ?)"
            f" SELECT b.s, {measure} AS m FROM b"
        )
        # The coarsest resolution that serves the buckets: hourly or 5-minute rollups when the
        # buckets are whole multiples of them and aligned to them, else the raw points.
        res = next(
            (
                r
                for r in (ROLLUP_1H, ROLLUP_5M)
                if bucket % r == 0 and query.start_ns % r == 0 and query.end_ns % r == 0
            ),
            None,
        )
        if res is not None:
            self.refresh_rollups(self.raw_horizon_ns())
        groups: dict[tuple[str, ...], dict[int, list[Any]]] = {}
        group_tags: dict[tuple[str, ...], dict[str, str]] = {}
        points_total = 0
        for sid, tag_json, type_code in matching:
            tags = orjson.loads(tag_json)
            key = tuple(str(tags.get(t, "")) for t in query.group_by)
            group_tags.setdefault(key, {t: str(tags.get(t, "")) for t in query.group_by})
            buckets = groups.setdefault(key, {})
            if res is None:
                rows = self._all(
                    sql,
                    [
                        query.start_ns,
                        bucket,
                        bucket,
                        query.end_ns,
                        sid,
                        query.field,
                        bucket,
                        query.end_ns,
                    ],
                )
            else:
                rows = [
                    (b, _rollup_measure(query.aggregate, acc))
                    for b, acc in self._aggregate_rollups(query, sid, res)
                ]
            for b, m in rows:
                if m is None:
                    continue
                got = orjson.loads(m) if isinstance(m, str) else m
                if query.aggregate != "last" and not got[0]:
                    continue  # an empty bucket
                if b not in buckets:
                    points_total += 1
                    if points_total > query.max_points:
                        raise TooManyPoints(points_total, query.max_points)
                buckets[b] = _merge(query.aggregate, buckets.get(b), got, type_code)
        out = []
        for key in sorted(groups):
            points: list[tuple[int, FieldValue]] = []
            for b in sorted(groups[key]):
                value = _finish(query.aggregate, groups[key][b])
                if value is not None:
                    points.append((b, value))
            out.append(SeriesGroup(group_tags[key], points))
        return out

    # -- rollups and retention -----------------------------------------------------------------

    def refresh_rollups(self, raw_horizon_ns: int = 0) -> int:
        """Bring the 5-minute and hourly rollups up to date with what was written since.

        A touched 5-minute bucket is computed again from the raw points. A bucket older than
        ``raw_horizon_ns`` (raw data there was expired) only holds points that arrived late:
        they are added into the existing rollup and then dropped, so the rollup keeps what the
        expired points contributed. Returns the number of 5-minute buckets updated.
        """
        with self._tx("update rollups") as conn:
            dirty = conn.execute("SELECT series_id, field, bucket FROM rollup_dirty").fetchall()
            hours: set[tuple[int, str, int]] = set()
            for sid, field, bucket in dirty:
                end = bucket + ROLLUP_5M
                where = "series_id = ? AND field = ? AND ts >= ? AND ts < ?"
                args = (sid, field, bucket, end)
                n, total, lo, hi = conn.execute(
                    # total(), not sum(): a float that cannot overflow. sum() of large integers
                    # fails with "integer overflow", and one such bucket would stop every
                    # rollup at every run.
                    f"SELECT count(value), total(value), min(value), max(value) FROM points WHERE {where}",
                    args,
                ).fetchone()
                # (With several min/max aggregates SQLite's bare columns are from any row.)
                newest = conn.execute(
                    f"SELECT ts, value FROM points WHERE {where} ORDER BY ts DESC LIMIT 1", args
                ).fetchone()
                last_ts, last = newest if newest else (0, None)
                if bucket + ROLLUP_5M <= raw_horizon_ns:
                    old = conn.execute(
                        "SELECT n, total, lo, hi, last_ts, last FROM rollups WHERE series_id = ?"
                        " AND field = ? AND res = ? AND bucket = ?",
                        (sid, field, ROLLUP_5M // 10**9, bucket),
                    ).fetchone()
                    if old is not None and n:
                        n, total = n + old[0], _add(total, old[1])
                        lo, hi = min(lo, old[2]), max(hi, old[3])
                        if old[4] > last_ts:
                            last_ts, last = old[4], old[5]
                    elif old is not None:
                        n, total, lo, hi, last_ts, last = old
                    conn.execute(f"DELETE FROM points WHERE {where}", args)
                if n:
                    conn.execute(
                        "INSERT OR REPLACE INTO rollups (series_id, field, res, bucket, n, total,"
                        " lo, hi, last_ts, last) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (sid, field, ROLLUP_5M // 10**9, bucket, n, total, lo, hi, last_ts, last),
                    )
                hours.add((sid, field, bucket - bucket % ROLLUP_1H))
            for sid, field, hour in hours:
                parts = conn.execute(
                    "SELECT n, total, lo, hi, last_ts, last FROM rollups"
                    " WHERE series_id = ? AND field = ? AND res = ? AND bucket >= ? AND bucket < ?",
                    (sid, field, ROLLUP_5M // 10**9, hour, hour + ROLLUP_1H),
                ).fetchall()
                if parts:
                    conn.execute(
                        "INSERT OR REPLACE INTO rollups (series_id, field, res, bucket, n, total,"
                        " lo, hi, last_ts, last) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (sid, field, ROLLUP_1H // 10**9, hour, *_combine(parts)),
                    )
            conn.execute("DELETE FROM rollup_dirty")
        return len(dirty)

    def expire(
        self, *, raw_before_ns: int, rollup_5m_before_ns: int, rollup_1h_before_ns: int
    ) -> dict[str, int]:
        """Delete raw points and rollups older than their horizons (rollups first made current)."""
        self.refresh_rollups(raw_before_ns)
        with self._tx("expire old readings") as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM series").fetchall()]
            raw = 0
            for sid in ids:
                raw += conn.execute(
                    "DELETE FROM points WHERE series_id = ? AND ts < ?", (sid, raw_before_ns)
                ).rowcount
            r5 = conn.execute(
                "DELETE FROM rollups WHERE res = ? AND bucket < ?",
                (ROLLUP_5M // 10**9, rollup_5m_before_ns),
            ).rowcount
            r1 = conn.execute(
                "DELETE FROM rollups WHERE res = ? AND bucket < ?",
                (ROLLUP_1H // 10**9, rollup_1h_before_ns),
            ).rowcount
        return {"raw_points": raw, "rollups_5m": r5, "rollups_1h": r1}

    def _aggregate_rollups(
        self, query: SeriesQuery, sid: int, res_ns: int
    ) -> list[tuple[int, list[Any]]]:
        """Per-bucket ``[count, sum, min, max, last_ts, last]`` from the rollups at ``res_ns``."""
        rows = self._all(
            "SELECT bucket, n, total, lo, hi, last_ts, last FROM rollups WHERE series_id = ?"
            " AND field = ? AND res = ? AND bucket >= ? AND bucket < ? ORDER BY bucket",
            [sid, query.field, res_ns // 10**9, query.start_ns, query.end_ns],
        )
        by_bucket: dict[int, list[tuple[Any, ...]]] = {}
        for bucket, *parts in rows:
            b = query.start_ns + (bucket - query.start_ns) // query.bucket_ns * query.bucket_ns
            by_bucket.setdefault(b, []).append(tuple(parts))
        return [(b, _combine(parts)) for b, parts in by_bucket.items()]

    def devices(self, tenant: str, gateway_id: str) -> dict[str, tuple[list[str], int]]:
        """Devices seen behind a gateway (the ``device`` tag): device → (measurements, last ts)."""
        sql = (
            "SELECT json_extract(s.tags, '$.device') AS d, s.measurement,"
            " (SELECT max(p.ts) FROM points p WHERE p.series_id = s.id)"
            " FROM series s WHERE json_extract(s.tags, '$.gateway') = ? AND d IS NOT NULL"
        )
        args: list[Any] = [gateway_id]
        if tenant != ALL_TENANTS:
            sql += " AND s.tenant = ?"
            args.append(tenant)
        out: dict[str, tuple[list[str], int]] = {}
        for device, measurement, last in self._all(sql, args):
            names, seen = out.get(device, ([], 0))
            if measurement not in names:
                names.append(measurement)
            out[device] = (sorted(names), max(seen, last or 0))
        return out

    def catalog(
        self, tenant: str, *, tags: dict[str, str] | None = None, limit: int = 10_000
    ) -> list[SeriesInfo]:
        where, args = self._series_filter(tenant, None, tags)
        sql = (
            "SELECT s.measurement, s.tags, (SELECT json_group_array(f.field) FROM fields f"
            f" WHERE f.series_id = s.id) FROM series s WHERE {where}"
            " ORDER BY s.measurement, s.id LIMIT ?"
        )
        return [
            SeriesInfo(m, orjson.loads(tag_json), tuple(sorted(orjson.loads(fields))))
            for m, tag_json, fields in self._all(sql, [*args, limit])
        ]

    def latest(
        self, tenant: str, measurement: str, *, tags: dict[str, str] | None = None
    ) -> list[LatestValue]:
        """The newest value of every field of every matching series."""
        where, args = self._series_filter(tenant, measurement, tags)
        sql = (
            "SELECT s.tags, f.field, f.type,"
            " (SELECT p.ts FROM points p WHERE p.series_id = s.id AND p.field = f.field"
            "  ORDER BY p.ts DESC LIMIT 1) AS ts,"
            " (SELECT p.value FROM points p WHERE p.series_id = s.id AND p.field = f.field"
            "  ORDER BY p.ts DESC LIMIT 1) AS value"
            f" FROM series s JOIN fields f ON f.series_id = s.id WHERE {where}"
            " ORDER BY s.id, f.field"
        )
        return [
            LatestValue(
                measurement,
                orjson.loads(tag_json),
                field,
                ts,
                bool(value) if type_code == _T_BOOL else value,
            )
            for tag_json, field, type_code, ts, value in self._all(sql, args)
            if ts is not None
        ]

    def count_points(self, measurement: str | None = None) -> int:
        """Distinct (series, timestamp) pairs: readings stored."""
        if measurement is None:
            sql, args = "SELECT count(*) FROM (SELECT DISTINCT series_id, ts FROM points)", []
        else:
            sql = (
                "SELECT count(*) FROM (SELECT DISTINCT p.series_id, p.ts FROM points p"
                " JOIN series s ON s.id = p.series_id WHERE s.measurement = ?)"
            )
            args = [measurement]
        return int(self._one(sql, args)[0])

    def not_kept(self) -> dict[str, int]:
        return {}  # every field type is kept

    def duplicate_points(self, measurement: str | None = None) -> int:
        where, args = (
            ("", []) if measurement is None else (" WHERE s.measurement = ?", [measurement])
        )
        return int(
            self._one(
                "SELECT coalesce(sum(c - 1), 0) FROM (SELECT count(*) AS c FROM points p"
                f" JOIN series s ON s.id = p.series_id{where}"
                " GROUP BY p.series_id, p.field, p.ts HAVING count(*) > 1)",
                args,
            )[0]
        )


def _json_path(key: str) -> str:
    """A JSON path naming one top-level member, quoted so any tag name is taken literally."""
    return '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _exact(value_sql: str) -> str:
    """``value_sql`` as a member of a JSON array that reads back as the same value. SQLite
    writes a float in JSON with 15 significant digits, which is not always the same double
    (a sum of 2^53 - 1 came back as 2^53 - 2, a reading of 0.1234567890123456 rounded); 17
    digits always are."""
    return (
        f"CASE WHEN typeof({value_sql}) = 'real' THEN json(printf('%!.17g', {value_sql}))"
        f" ELSE {value_sql} END"
    )


def _add(a: Any, b: Any) -> Any:
    return None if a is None or b is None else a + b


def _combine(parts: Sequence[Sequence[Any]]) -> list[Any]:
    """Rollup rows ``(n, total, lo, hi, last_ts, last)`` combined into one."""
    n, total, lo, hi, last_ts, last = parts[0]
    for pn, ptotal, plo, phi, pts, plast in parts[1:]:
        n, total = n + pn, _add(total, ptotal)
        lo, hi = min(lo, plo), max(hi, phi)
        if pts > last_ts:
            last_ts, last = pts, plast
    return [n, total, lo, hi, last_ts, last]


def _rollup_measure(aggregate: str, acc: list[Any]) -> list[Any]:
    """A rollup row ``[count, sum, min, max, last_ts, last]`` as the raw query's measure."""
    n, total, lo, hi, last_ts, last = acc
    if aggregate == "last":
        return [last_ts, last]
    if aggregate in ("mean", "sum"):
        return [n, total]
    if aggregate == "count":
        return [n]
    return [n, lo if aggregate == "min" else hi]


def _merge(aggregate: str, acc: list[Any] | None, got: list[Any], type_code: str) -> list[Any]:
    """Combine one series' bucket (``got``, as the SQL gave it) into the group's bucket."""
    if aggregate == "last":  # got = [ts, value]
        if acc is None or got[0] > acc[0]:
            return [got[0], got[1], type_code]
        return acc
    if aggregate in ("mean", "sum"):  # got = [count, sum]
        if acc is None:
            return [got[0], got[1], type_code]
        numeric = got[1] is not None and acc[1] is not None
        return [acc[0] + got[0], acc[1] + got[1] if numeric else None, type_code]
    if aggregate == "count":
        return [(acc[0] if acc else 0) + got[0], None, type_code]
    # min, max: got = [count, extreme]
    if acc is None:
        return [got[0], got[1], type_code]
    pick = min if aggregate == "min" else max
    return [acc[0] + got[0], pick(acc[1], got[1]), type_code]


def _finish(aggregate: str, acc: list[Any]) -> FieldValue | None:
    first, second, type_code = acc
    if aggregate == "last":
        return bool(second) if type_code == _T_BOOL else cast(FieldValue, second)
    if aggregate == "count":
        return int(first)
    if type_code == _T_STR or second is None:
        return None  # mean, min, max, sum of text make no sense
    if aggregate in ("min", "max"):
        return bool(second) if type_code == _T_BOOL else cast(FieldValue, second)
    if aggregate == "sum":
        # Sums are added as floats (they cannot overflow); an integer field's sum is an
        # integer again wherever the float holds it exactly.
        if type_code in (_T_INT, _T_BOOL) and float(second).is_integer() and abs(second) < 2**53:
            return int(second)
        return cast(FieldValue, second)
    return float(second) / first if first else None


def _type_code(value: FieldValue) -> str:
    if isinstance(value, bool):
        return _T_BOOL
    if isinstance(value, int):
        return _T_INT
    if isinstance(value, float):
        return _T_FLOAT
    return _T_STR


SQLITE = Dialect(
    name="sqlite",
    json_value=lambda value: orjson.dumps(value).decode(),
    json_loads=orjson.loads,
    json_text=lambda column, key: f"json_extract({column}, '$.{key}')",
    greatest="max",
    byte_length="length",
    binary_order="",  # SQLite's default collation (BINARY) orders by bytes
    lock_row="",  # BEGIN IMMEDIATE has locked the database for writing
)


class SqliteDocumentStore(_SqliteBase, SqlDocumentStore):
    """The document store in one SQLite file (the embedded default)."""

    dialect = SQLITE

    def __init__(self, path: Path, *, clock: Callable[[], int] = time.time_ns) -> None:
        super().__init__(path, DOC_MIGRATIONS)
        self._clock = clock
