"""Embedded stores on SQLite (WAL): one file for time series, one for documents."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from collector._exceptions import StoreError, StoreUnavailable
from collector.stores._base import (
    BatchRecord,
    GatewayRecord,
    QuarantineEntry,
    SeriesWrite,
    StoredPoint,
)
from wire import Event, FieldValue, GatewayState

TS_MIGRATIONS = Migrations("outpost-collector-timeseries")
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


def _connect(path: Path, migrations: Migrations) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
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
    def __init__(self, path: Path, migrations: Migrations) -> None:
        self.path = path
        self._conn = _connect(path, migrations)

    @contextmanager
    def _tx(self, what: str) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
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

    def close(self) -> None:
        self._conn.close()


class SqliteTimeSeriesStore(_SqliteBase):
    """Time series in SQLite: ``series`` (measurement + tags) and ``points`` per field."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, TS_MIGRATIONS)
        self._series: dict[tuple[str, bytes], int] = {}
        self._fields: set[tuple[int, str]] = set()

    def _series_id(self, conn: sqlite3.Connection, measurement: str, tags: bytes) -> int:
        key = (measurement, tags)
        sid = self._series.get(key)
        if sid is None:
            conn.execute(
                "INSERT OR IGNORE INTO series (measurement, tags) VALUES (?, ?)",
                (measurement, tags),
            )
            sid = conn.execute(
                "SELECT id FROM series WHERE measurement = ? AND tags = ?", (measurement, tags)
            ).fetchone()[0]
            self._series[key] = sid
        return sid

    def write(self, series: Sequence[SeriesWrite]) -> None:
        try:
            with self._tx("write readings") as conn:
                rows: list[tuple[int, str, int, FieldValue]] = []
                new_fields: list[tuple[int, str, str]] = []
                for s in series:
                    tags = orjson.dumps(s.tags, option=orjson.OPT_SORT_KEYS)
                    sid = self._series_id(conn, s.measurement, tags)
                    for ts, fields in s.points:
                        for name, value in fields.items():
                            rows.append((sid, name, ts, value))
                            if (sid, name) not in self._fields:
                                new_fields.append((sid, name, _type_code(value)))
                                self._fields.add((sid, name))
                if new_fields:
                    conn.executemany(
                        "INSERT OR REPLACE INTO fields (series_id, field, type) VALUES (?, ?, ?)",
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

    def query(
        self,
        measurement: str,
        *,
        tags: dict[str, str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> list[StoredPoint]:
        """Points of ``measurement`` whose tags include ``tags``, oldest first, one per ts."""
        sql = (
            "SELECT s.id, s.tags, p.ts, p.field, p.value, f.type FROM series s"
            " JOIN points p ON p.series_id = s.id"
            " JOIN fields f ON f.series_id = s.id AND f.field = p.field"
            " WHERE s.measurement = ? AND p.ts >= ? AND p.ts < ?"
            " ORDER BY s.id, p.ts"
        )
        args: list[Any] = [measurement, start_ns or 0, end_ns or 2**63 - 1]
        want = tags or {}
        out: list[StoredPoint] = []
        current: tuple[int, int] | None = None
        for sid, tag_json, ts, field, value, type_code in self._conn.execute(sql, args):
            series_tags = orjson.loads(tag_json)
            if any(series_tags.get(k) != v for k, v in want.items()):
                continue
            if current != (sid, ts):
                out.append(StoredPoint(measurement, series_tags, ts, {}))
                current = (sid, ts)
            out[-1].fields[field] = bool(value) if type_code == _T_BOOL else value
        out.sort(key=lambda p: p.ts)
        return out

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
        return int(self._conn.execute(sql, args).fetchone()[0])


def _type_code(value: FieldValue) -> str:
    if isinstance(value, bool):
        return _T_BOOL
    if isinstance(value, int):
        return _T_INT
    if isinstance(value, float):
        return _T_FLOAT
    return _T_STR


class SqliteDocumentStore(_SqliteBase):
    """Gateways, events, stored-batch records, quarantine and clock facts in SQLite."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, DOC_MIGRATIONS)

    def seen(self, gateway_id: str, stream_id: str, seq: int) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM stored_batches WHERE gateway_id = ? AND stream_id = ? AND seq = ?",
            (gateway_id, stream_id, seq),
        ).fetchone()
        return row is not None

    def record(self, batches: Sequence[BatchRecord], events: Sequence[tuple[str, Event]]) -> None:
        with self._tx("record batches") as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO events (gateway_id, id, type, ts, source, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (gw, e.id, e.type, e.ts, e.source, orjson.dumps(e.body).decode())
                    for gw, e in events
                ],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO stored_batches"
                " (gateway_id, stream_id, seq, readings, received_ns) VALUES (?, ?, ?, ?, ?)",
                [(b.gateway_id, b.stream_id, b.seq, b.readings, b.received_ns) for b in batches],
            )
            for gw in {b.gateway_id for b in batches}:
                last = max(b.received_ns for b in batches if b.gateway_id == gw)
                self._touch(conn, gw, last)

    def quarantine(self, entry: QuarantineEntry) -> int:
        with self._tx("quarantine a message") as conn:
            cur = conn.execute(
                "INSERT INTO quarantine (received_ns, gateway_id, topic, reason, detail,"
                " properties, raw) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.received_ns,
                    entry.gateway_id,
                    entry.topic,
                    entry.reason,
                    entry.detail,
                    orjson.dumps(entry.properties).decode(),
                    entry.raw,
                ),
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def quarantined(self, *, limit: int = 100) -> list[QuarantineEntry]:
        rows = self._conn.execute(
            "SELECT id, received_ns, gateway_id, topic, reason, detail, properties, raw"
            " FROM quarantine ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            QuarantineEntry(
                id=r[0],
                received_ns=r[1],
                gateway_id=r[2],
                topic=r[3],
                reason=r[4],
                detail=r[5],
                properties=orjson.loads(r[6]),
                raw=r[7],
            )
            for r in rows
        ]

    def events(self, gateway_id: str) -> list[Event]:
        return [
            Event(id=r[0], type=r[1], ts=r[2], source=r[3], body=orjson.loads(r[4]))
            for r in self._conn.execute(
                "SELECT id, type, ts, source, body FROM events WHERE gateway_id = ? ORDER BY ts",
                (gateway_id,),
            )
        ]

    def save_state(self, gateway_id: str, state: GatewayState, seen_ns: int) -> None:
        status = state.model_dump(mode="json", exclude={"v", "state"})
        with self._tx("save gateway state") as conn:
            conn.execute(
                "INSERT INTO gateways (id, state, last_seen_ns, status) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET state = excluded.state,"
                " last_seen_ns = max(coalesce(last_seen_ns, 0), excluded.last_seen_ns),"
                " status = excluded.status",
                (gateway_id, state.state, seen_ns, orjson.dumps(status).decode()),
            )

    @staticmethod
    def _touch(conn: sqlite3.Connection, gateway_id: str, seen_ns: int) -> None:
        conn.execute(
            "INSERT INTO gateways (id, last_seen_ns) VALUES (?, ?) ON CONFLICT(id) DO UPDATE"
            " SET last_seen_ns = max(coalesce(last_seen_ns, 0), excluded.last_seen_ns)",
            (gateway_id, seen_ns),
        )

    def set_clock(self, gateway_id: str, skew_s: float, flagged: bool) -> None:
        with self._tx("record gateway clock") as conn:
            conn.execute(
                "INSERT INTO gateways (id, clock_skew_s, clock_flagged) VALUES (?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET clock_skew_s = excluded.clock_skew_s,"
                " clock_flagged = excluded.clock_flagged",
                (gateway_id, skew_s, int(flagged)),
            )

    def boot_offset(self, gateway_id: str, boot_id: str) -> int | None:
        row = self._conn.execute(
            "SELECT offset_ns FROM clock_boots WHERE gateway_id = ? AND boot_id = ?",
            (gateway_id, boot_id),
        ).fetchone()
        return None if row is None else int(row[0])

    def set_boot_offset(self, gateway_id: str, boot_id: str, offset_ns: int) -> None:
        with self._tx("record boot clock offset") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO clock_boots (gateway_id, boot_id, offset_ns)"
                " VALUES (?, ?, ?)",
                (gateway_id, boot_id, offset_ns),
            )

    def gateway(self, gateway_id: str) -> GatewayRecord | None:
        row = self._conn.execute(
            "SELECT id, state, last_seen_ns, status, clock_skew_s, clock_flagged"
            " FROM gateways WHERE id = ?",
            (gateway_id,),
        ).fetchone()
        if row is None:
            return None
        return GatewayRecord(row[0], row[1], row[2], orjson.loads(row[3]), row[4], bool(row[5]))

    def prune_seen(self, older_than_ns: int) -> int:
        with self._tx("prune dedup records") as conn:
            cur = conn.execute("DELETE FROM stored_batches WHERE received_ns < ?", (older_than_ns,))
        return cur.rowcount
