"""PostgreSQL (psycopg 3, a connection pool, JSONB): the production document store, and a
time-series store for sites without VictoriaMetrics.

The document store's queries are :mod:`collector.stores._documents`, shared with SQLite; this
module gives it its plumbing (the pool, migrations, error translation), its column types and
its :data:`POSTGRES` dialect. One contract suite (``tests/collector/contract/``) checks both.
Several collector replicas share one database: every write is one transaction, conflicts are
settled by the database (``ON CONFLICT``, ``SELECT … FOR UPDATE``), and migrations run under an
advisory lock so replicas starting together migrate once.

Errors are translated at this boundary: a lost connection, a pool with no free connection or a
server shutting down is :class:`StoreUnavailable` (the ingest nacks ``store_unavailable``, the
gateway keeps the batch); any other database error is :class:`StoreError`. Messages name the
server's host and database, never the password in the DSN.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Self

import orjson
import psycopg
from psycopg.abc import Params
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from outpost_iot.collector._exceptions import (
    QueryTimeout,
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
from outpost_iot.wire import FieldValue

# Ordered, each run once in its own transaction and recorded in outpost_migrations.
MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0001_documents",
        [
            "CREATE TABLE gateways (id TEXT PRIMARY KEY, state TEXT NOT NULL DEFAULT 'unknown',"
            " last_seen_ns BIGINT, status JSONB NOT NULL DEFAULT '{}', clock_skew_s DOUBLE"
            " PRECISION, clock_flagged BOOLEAN NOT NULL DEFAULT false, tenant TEXT NOT NULL"
            " DEFAULT '', site TEXT NOT NULL DEFAULT '', hardware JSONB NOT NULL DEFAULT '{}',"
            " enrolled_ns BIGINT, cert_serial TEXT, cert_not_after_ns BIGINT, revoked_ns BIGINT,"
            " tags JSONB NOT NULL DEFAULT '[]')",
            "CREATE INDEX gateways_tenant ON gateways (tenant)",
            "CREATE TABLE stored_batches (gateway_id TEXT NOT NULL, stream_id TEXT NOT NULL,"
            " seq BIGINT NOT NULL, readings INTEGER NOT NULL, received_ns BIGINT NOT NULL,"
            " PRIMARY KEY (gateway_id, stream_id, seq))",
            "CREATE INDEX stored_batches_received ON stored_batches (received_ns)",
            "CREATE TABLE events (gateway_id TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,"
            " ts BIGINT NOT NULL, source TEXT NOT NULL, body JSONB NOT NULL,"
            " PRIMARY KEY (gateway_id, id))",
            "CREATE INDEX events_gateway_ts ON events (gateway_id, ts)",
            "CREATE INDEX events_ts ON events (ts)",
            "CREATE TABLE quarantine (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " received_ns BIGINT NOT NULL, gateway_id TEXT NOT NULL, topic TEXT NOT NULL,"
            " reason TEXT NOT NULL, detail TEXT NOT NULL, properties JSONB NOT NULL,"
            " raw BYTEA NOT NULL, replayed_ns BIGINT, replay_result TEXT)",
            "CREATE INDEX quarantine_received ON quarantine (received_ns)",
            "CREATE TABLE clock_boots (gateway_id TEXT NOT NULL, boot_id TEXT NOT NULL,"
            " offset_ns BIGINT NOT NULL, PRIMARY KEY (gateway_id, boot_id))",
            # Tokens are stored as SHA-256 hashes (256-bit random tokens need no slow hash).
            "CREATE TABLE enrollment_tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE,"
            " tenant TEXT NOT NULL, site TEXT NOT NULL, created_ns BIGINT NOT NULL,"
            " expires_ns BIGINT NOT NULL, uses_total INTEGER NOT NULL, uses_left INTEGER NOT"
            " NULL, revoked BOOLEAN NOT NULL DEFAULT false)",
            "CREATE TABLE certificates (serial TEXT PRIMARY KEY, gateway_id TEXT NOT NULL,"
            " issued_ns BIGINT NOT NULL, not_after_ns BIGINT NOT NULL, revoked_ns BIGINT,"
            " public_key_pem TEXT NOT NULL DEFAULT '')",
            "CREATE INDEX certificates_gateway ON certificates (gateway_id)",
            "CREATE TABLE api_tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE,"
            " tenant TEXT NOT NULL, role TEXT NOT NULL, name TEXT NOT NULL DEFAULT '',"
            " created_ns BIGINT NOT NULL, revoked_ns BIGINT)",
            "CREATE TABLE audit (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " ts BIGINT NOT NULL, actor TEXT NOT NULL, tenant TEXT NOT NULL, action TEXT NOT"
            " NULL, target TEXT NOT NULL, source TEXT NOT NULL, detail JSONB NOT NULL DEFAULT"
            " '{}')",
            "CREATE INDEX audit_ts ON audit (ts)",
            "CREATE TABLE desired_configs (gateway_id TEXT NOT NULL, version INTEGER NOT NULL,"
            " issued_ns BIGINT NOT NULL, actor TEXT NOT NULL, envelope BYTEA NOT NULL,"
            " PRIMARY KEY (gateway_id, version))",
            "CREATE TABLE config_reports (gateway_id TEXT PRIMARY KEY, version INTEGER NOT NULL,"
            " status TEXT NOT NULL, applied_version INTEGER NOT NULL, reason TEXT NOT NULL,"
            " errors JSONB NOT NULL, ts BIGINT NOT NULL, received_ns BIGINT NOT NULL)",
            "CREATE TABLE rollouts (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, actor TEXT NOT"
            " NULL, created_ns BIGINT NOT NULL, status TEXT NOT NULL, current_wave INTEGER NOT"
            " NULL, waves INTEGER NOT NULL, abort_percent DOUBLE PRECISION NOT NULL, timeout_s"
            " DOUBLE PRECISION NOT NULL, reason TEXT NOT NULL DEFAULT '', device_errors_fail"
            " BOOLEAN NOT NULL DEFAULT false)",
            "CREATE TABLE rollout_gateways (rollout_id TEXT NOT NULL, gateway_id TEXT NOT NULL,"
            " wave INTEGER NOT NULL, version INTEGER NOT NULL, issued_ns BIGINT NOT NULL,"
            " envelope BYTEA NOT NULL, started_ns BIGINT, outcome TEXT,"
            " PRIMARY KEY (rollout_id, gateway_id))",
        ],
    ),
    (
        "0002_quarantine_budget",
        [
            # The size of the message as received: its raw bytes are not kept past a budget.
            "ALTER TABLE quarantine ADD COLUMN size BIGINT NOT NULL DEFAULT 0",
            "UPDATE quarantine SET size = octet_length(raw)",
            "CREATE INDEX quarantine_gateway ON quarantine (gateway_id)",
        ],
    ),
    (
        "0003_sessions",
        [
            # Console sign-ins: the hash of the cookie's session id, acting as an API token.
            "CREATE TABLE sessions (hash TEXT PRIMARY KEY, token_id TEXT NOT NULL,"
            " created_ns BIGINT NOT NULL, expires_ns BIGINT NOT NULL, csrf TEXT NOT NULL)",
            "CREATE INDEX sessions_token ON sessions (token_id)",
        ],
    ),
    (
        "0004_alarms",
        [
            # Alarms (collector.stores._alarm_store): one open alarm per rule and originator.
            "CREATE TABLE alarm_rules (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT"
            " NULL, severity TEXT NOT NULL, enabled BOOLEAN NOT NULL, edge BOOLEAN NOT NULL,"
            " notify BOOLEAN NOT NULL, spec JSONB NOT NULL, created_ns BIGINT NOT NULL,"
            " updated_ns BIGINT NOT NULL, actor TEXT NOT NULL)",
            "CREATE INDEX alarm_rules_tenant ON alarm_rules (tenant)",
            "CREATE TABLE alarms (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tenant"
            " TEXT NOT NULL, rule_id TEXT NOT NULL, originator TEXT NOT NULL, gateway_id TEXT NOT"
            " NULL, severity TEXT NOT NULL, rank INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT"
            " NOT NULL, raised_ns BIGINT NOT NULL, details JSONB NOT NULL, cleared_ns BIGINT,"
            " acked_ns BIGINT, acked_by TEXT)",
            "CREATE UNIQUE INDEX alarms_open ON alarms (rule_id, originator)"
            " WHERE cleared_ns IS NULL",
            "CREATE INDEX alarms_tenant ON alarms (tenant, id)",
            "CREATE INDEX alarms_cleared ON alarms (cleared_ns)",
            "CREATE TABLE alarm_conditions (rule_id TEXT NOT NULL, originator TEXT NOT NULL,"
            " since_ns BIGINT NOT NULL, value DOUBLE PRECISION NOT NULL DEFAULT 0,"
            " PRIMARY KEY (rule_id, originator))",
            "CREATE TABLE notify_endpoints (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT"
            " NOT NULL, kind TEXT NOT NULL, target JSONB NOT NULL, secret TEXT NOT NULL, min_rank"
            " INTEGER NOT NULL, enabled BOOLEAN NOT NULL, created_ns BIGINT NOT NULL, delivered"
            " BIGINT NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT"
            " NULL DEFAULT '', last_failure_ns BIGINT, last_success_ns BIGINT)",
            "CREATE TABLE notifications (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " tenant TEXT NOT NULL, endpoint_id TEXT NOT NULL, alarm_id BIGINT, event TEXT NOT"
            " NULL, key TEXT NOT NULL UNIQUE, payload JSONB NOT NULL, created_ns BIGINT NOT NULL,"
            " attempts INTEGER NOT NULL DEFAULT 0, next_ns BIGINT NOT NULL, lease_ns BIGINT NOT"
            " NULL DEFAULT 0, delivered_ns BIGINT, given_up BOOLEAN NOT NULL DEFAULT false,"
            " last_error TEXT NOT NULL DEFAULT '')",
            "CREATE INDEX notifications_due ON notifications (next_ns) WHERE delivered_ns IS NULL",
            "CREATE INDEX notifications_endpoint ON notifications (endpoint_id)",
        ],
    ),
]
_LOCK_ID = 0x6F7574706F7374  # "outpost": one migrator at a time across replicas


def _where(dsn: str) -> str:
    """host/database of a DSN, for messages (no user, no password)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "PostgreSQL (unparsable DSN)"
    return f"PostgreSQL {info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def _translate(where: str, what: str, exc: Exception) -> StoreError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, PoolTimeout | psycopg.OperationalError):
        return StoreUnavailable(f"{where}: cannot {what}: {detail}")
    return StoreError(f"{where}: cannot {what}: {detail}")


class _PostgresBase:
    """A connection pool, migrations and error translation shared by the PostgreSQL stores."""

    _migrations: ClassVar[list[tuple[str, list[str]]]] = []
    _pool_name: ClassVar[str] = "outpost"

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        connect_timeout_s: float = 5.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.where = _where(dsn)
        self._clock = clock
        self._fail_fast_s = 1.0
        self._timeout_s = 0.0  # the time limit of the last read that had one (for messages)
        self._down_until = 0.0
        self._down_reason = ""
        self._pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            timeout=connect_timeout_s,
            kwargs={"connect_timeout": max(1, int(connect_timeout_s))},
            # A connection broken by a server restart is found and replaced, not handed out.
            check=ConnectionPool.check_connection,
            configure=self._configure_connection,
            open=False,
            name=self._pool_name,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreUnavailable(
                f"{self.where}: cannot connect within {connect_timeout_s:g} s; check that the "
                "server runs, the DSN's host and port, and its user's access (pg_hba.conf)"
            ) from exc
        try:
            self._migrate()
        except BaseException:
            self._pool.close()
            raise

    # -- plumbing -----------------------------------------------------------------------------

    def _configure_connection(self, conn: psycopg.Connection[Any]) -> None:
        """Run once on each new pooled connection (a store may prepare its session here)."""

    def _migrate(self) -> None:
        with self._tx("apply migrations") as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS outpost_migrations (name TEXT PRIMARY KEY,"
                " applied_ns BIGINT NOT NULL)"
            )
            cur.execute("SELECT name FROM outpost_migrations")
            done = {r[0] for r in cur.fetchall()}
            for name, statements in self._migrations:
                if name in done:
                    continue
                for sql in statements:
                    cur.execute(sql)
                cur.execute(
                    "INSERT INTO outpost_migrations (name, applied_ns) VALUES (%s, %s)",
                    (name, time.time_ns()),
                )

    def migrations(self) -> list[str]:
        return [r[0] for r in self._all("SELECT name FROM outpost_migrations ORDER BY name")]

    @contextmanager
    def _tx(self, what: str, *, probe: bool = False) -> Iterator[psycopg.Cursor[Any]]:
        # While the server is down, fail at once for a moment instead of waiting out the pool's
        # timeout on every call: the ingest answers its nacks quickly and keeps its queue short.
        if not probe and time.monotonic() < self._down_until:
            raise StoreUnavailable(f"{self.where}: cannot {what}: {self._down_reason}")
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield cur
        except psycopg.errors.QueryCanceled as exc:
            # statement_timeout of a read with a time limit (see _all): the caller's query,
            # not the server, is the problem.
            raise QueryTimeout(self._timeout_s) from exc
        except (psycopg.Error, PoolTimeout) as exc:
            error = _translate(self.where, what, exc)
            if isinstance(error, StoreUnavailable):
                self._down_until = time.monotonic() + self._fail_fast_s
                self._down_reason = f"unavailable since a moment ago ({exc})".splitlines()[0]
            raise error from exc
        self._down_until = 0.0

    def _all(
        self,
        sql: str,
        args: Sequence[Any] = (),
        what: str = "read",
        *,
        timeout_s: float | None = None,
    ) -> list[Any]:
        with self._tx(what) as cur:
            if timeout_s is not None:
                self._timeout_s = timeout_s
                cur.execute(
                    "SELECT set_config('statement_timeout', %s, true)",
                    (f"{max(1, int(timeout_s * 1000))}ms",),
                )
            cur.execute(sql, args)
            return cur.fetchall()

    def _one(self, sql: str, args: Sequence[Any] = (), what: str = "read") -> Any:
        with self._tx(what) as cur:
            cur.execute(sql, args)
            return cur.fetchone()

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` if the database cannot answer a query now (always
        asks the server: this is how a recovery is noticed)."""
        with self._tx("answer a ping", probe=True) as cur:
            cur.execute("SELECT 1")

    def close(self) -> None:
        self._pool.close()


@functools.lru_cache(maxsize=512)
def _format_style(sql: str) -> str:
    """The shared SQL's ``?`` placeholders as psycopg's ``%s`` (the SQL holds no other ``?``)."""
    return sql.replace("?", "%s")


class _QmarkCursor(psycopg.Cursor[Any]):
    """A cursor that takes the ``?`` placeholders of :mod:`collector.stores._documents`."""

    def execute(
        self,
        query: Any,  # psycopg's Query
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        if isinstance(query, str):
            query = _format_style(query)
        return super().execute(query, params, prepare=prepare, binary=binary)

    def executemany(
        self, query: Any, params_seq: Iterable[Params], *, returning: bool = False
    ) -> None:
        if isinstance(query, str):
            query = _format_style(query)
        super().executemany(query, params_seq, returning=returning)


POSTGRES = Dialect(
    name="postgres",
    json_value=Jsonb,
    json_loads=lambda value: value,  # JSONB columns arrive decoded
    json_text=lambda column, key: f"{column}->>'{key}'",
    greatest="GREATEST",
    byte_length="octet_length",
    binary_order=' COLLATE "C"',  # the database's collation may follow a locale
    lock_row=" FOR UPDATE",  # two replicas cannot both spend a token's last use
)


class PostgresDocumentStore(_PostgresBase, SqlDocumentStore):
    """The document store in PostgreSQL: several collector replicas share it."""

    _migrations: ClassVar[list[tuple[str, list[str]]]] = MIGRATIONS
    _pool_name: ClassVar[str] = "outpost-documents"
    dialect = POSTGRES

    def _configure_connection(self, conn: psycopg.Connection[Any]) -> None:
        conn.cursor_factory = _QmarkCursor


TS_MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "ts_0001_points",
        [
            "CREATE TABLE ts_series (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " tenant TEXT NOT NULL, measurement TEXT NOT NULL, tags JSONB NOT NULL,"
            " UNIQUE (tenant, measurement, tags))",
            "CREATE INDEX ts_series_measurement ON ts_series (measurement, tenant)",
            "CREATE INDEX ts_series_tags ON ts_series USING GIN (tags jsonb_path_ops)",
            # One row per reading: (series, ts) is the identity, so a rewrite overwrites.
            "CREATE TABLE ts_points (series_id BIGINT NOT NULL, ts BIGINT NOT NULL,"
            " fields JSONB NOT NULL, PRIMARY KEY (series_id, ts))",
            "CREATE INDEX ts_points_ts ON ts_points USING BRIN (ts)",  # cheap; for expiry
            "CREATE TABLE ts_latest (series_id BIGINT NOT NULL, field TEXT NOT NULL,"
            " ts BIGINT NOT NULL, value JSONB NOT NULL, PRIMARY KEY (series_id, field))",
        ],
    ),
]

# A field's value as a number: booleans count as 1/0 (as in SQLite), text as nothing.
_NUMERIC = (
    "CASE jsonb_typeof(p.fields->%(field)s) WHEN 'number' THEN (p.fields->>%(field)s)::float8"
    " WHEN 'boolean' THEN CASE WHEN (p.fields->%(field)s)::boolean THEN 1.0 ELSE 0.0 END END"
)
_AGGREGATES = {
    "mean": f"avg({_NUMERIC})",
    "sum": f"sum({_NUMERIC})",
    "min": f"min({_NUMERIC})",
    "max": f"max({_NUMERIC})",
    "count": "count(*)",
    "last": "(array_agg(p.fields->%(field)s ORDER BY p.ts DESC))[1]",
}


class PostgresTimeSeriesStore(_PostgresBase):
    """Readings in PostgreSQL, for fleets that would rather run one database: one row per
    reading (fields as JSONB, types kept), a table of latest values, aggregates computed from
    the raw rows at query time (no rollups: raw readings are kept ``[retention] raw_days``)."""

    _migrations: ClassVar[list[tuple[str, list[str]]]] = TS_MIGRATIONS
    _pool_name: ClassVar[str] = "outpost-timeseries"

    def __init__(self, dsn: str, **kwargs: Any) -> None:
        self._series: dict[tuple[str, str, bytes], int] = {}
        super().__init__(dsn, **kwargs)

    def _configure_connection(self, conn: psycopg.Connection[Any]) -> None:
        # The table readings are copied into before one upsert; emptied at every commit.
        conn.execute(
            "CREATE TEMP TABLE ts_incoming (series_id BIGINT, ts BIGINT, fields JSONB)"
            " ON COMMIT DELETE ROWS"
        )
        conn.commit()

    def _series_ids(self, cur: psycopg.Cursor[Any], keys: set[tuple[str, str, bytes]]) -> None:
        """Ids of series not seen by this process yet, made where missing: one statement that
        finds them by the unique index (a series another replica made is found, not made twice;
        sorted, so two replicas lock in the same order)."""
        missing = sorted(keys - self._series.keys())
        if not missing:
            return
        cur.execute(
            "INSERT INTO ts_series (tenant, measurement, tags) SELECT * FROM"
            " unnest(%s::text[], %s::text[], %s::jsonb[]) ON CONFLICT (tenant, measurement, tags)"
            " DO UPDATE SET tags = excluded.tags RETURNING id, tenant, measurement, tags",
            (
                [k[0] for k in missing],
                [k[1] for k in missing],
                [k[2].decode() for k in missing],
            ),
        )
        for sid, tenant, measurement, tags in cur.fetchall():
            key = (tenant, measurement, orjson.dumps(tags, option=orjson.OPT_SORT_KEYS))
            self._series[key] = int(sid)

    def write(self, series: Sequence[SeriesWrite]) -> None:
        keyed = [
            ((s.tenant, s.measurement, orjson.dumps(s.tags, option=orjson.OPT_SORT_KEYS)), s)
            for s in series
        ]
        try:
            with self._tx("write readings") as cur:
                self._series_ids(cur, {k for k, _ in keyed})
                points: dict[tuple[int, int], dict[str, Any]] = {}
                latest: dict[tuple[int, str], tuple[int, Any]] = {}
                for key, s in keyed:
                    sid = self._series[key]
                    for ts, fields in s.points:
                        points.setdefault((sid, ts), {}).update(fields)
                        for name, value in fields.items():
                            seen = latest.get((sid, name))
                            if seen is None or ts >= seen[0]:
                                latest[(sid, name)] = (ts, value)
                # COPY into the session table, then one upsert: 3x faster than a row per INSERT.
                with cur.copy("COPY ts_incoming (series_id, ts, fields) FROM STDIN") as copy:
                    for (sid, ts), f in points.items():
                        copy.write_row((sid, ts, orjson.dumps(f).decode()))
                cur.execute(
                    "INSERT INTO ts_points (series_id, ts, fields) SELECT series_id, ts, fields"
                    " FROM ts_incoming ORDER BY series_id, ts ON CONFLICT (series_id, ts) DO"
                    " UPDATE SET fields = ts_points.fields || excluded.fields"
                )
                cur.executemany(
                    "INSERT INTO ts_latest (series_id, field, ts, value) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (series_id, field) DO UPDATE SET ts = excluded.ts,"
                    " value = excluded.value WHERE excluded.ts >= ts_latest.ts",
                    [(sid, f, ts, Jsonb(v)) for (sid, f), (ts, v) in sorted(latest.items())],
                )
        except StoreError:
            self._series.clear()  # ids made in a rolled-back transaction do not exist
            raise

    @staticmethod
    def _filter(
        tenant: str, measurement: str | None, tags: dict[str, str] | None
    ) -> tuple[str, dict[str, Any]]:
        sql = "true"
        args: dict[str, Any] = {}
        if measurement is not None:
            sql += " AND s.measurement = %(measurement)s"
            args["measurement"] = measurement
        if tenant != ALL_TENANTS:
            sql += " AND s.tenant = %(tenant)s"
            args["tenant"] = tenant
        if tags:
            sql += " AND s.tags @> %(tags)s"
            args["tags"] = Jsonb(tags)
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
        where, args = self._filter(tenant, measurement, tags)
        args |= {"start": start_ns or 0, "end": end_ns or 2**63 - 1}
        rows = self._all(
            "SELECT s.tags, p.ts, p.fields FROM ts_series s JOIN ts_points p ON p.series_id = s.id"
            f" WHERE {where} AND p.ts >= %(start)s AND p.ts < %(end)s ORDER BY p.ts, s.id",
            args,  # type: ignore[arg-type]
            "query readings",
        )
        return [StoredPoint(measurement, r[0], r[1], r[2]) for r in rows]

    def aggregate(self, query: SeriesQuery) -> list[SeriesGroup]:
        """Bucketed aggregates over the raw rows; bucket k holds ``[start + k·bucket, …)``."""
        where, args = self._filter(query.tenant, query.measurement, query.tags)
        groups = [f"coalesce(s.tags->>%(g{i})s, '')" for i in range(len(query.group_by))]
        args |= {f"g{i}": name for i, name in enumerate(query.group_by)}
        args |= {
            "field": query.field,
            "start": query.start_ns,
            "end": query.end_ns,
            "bucket": query.bucket_ns,
            "limit": query.max_points + 1,
        }
        key_sql = ", ".join([*groups, "(p.ts - %(start)s) / %(bucket)s"])
        rows = self._all(
            f"SELECT {key_sql}, {_AGGREGATES[query.aggregate]} FROM ts_series s"
            " JOIN ts_points p ON p.series_id = s.id"
            f" WHERE {where} AND p.ts >= %(start)s AND p.ts < %(end)s AND p.fields ? %(field)s"
            f" GROUP BY {key_sql} ORDER BY {key_sql} LIMIT %(limit)s",
            args,  # type: ignore[arg-type]
            "aggregate readings",
            timeout_s=query.timeout_s,
        )
        if len(rows) > query.max_points:
            raise TooManyPoints(len(rows), query.max_points)
        out: dict[tuple[str, ...], list[tuple[int, FieldValue]]] = {}
        n = len(query.group_by)
        for row in rows:
            key, k, value = tuple(row[:n]), int(row[n]), row[n + 1]
            if value is None:
                continue  # mean, min, max, sum of text make no sense
            if query.aggregate == "count":
                value = int(value)
            elif query.aggregate != "last":
                value = float(value)
            out.setdefault(key, []).append((query.start_ns + k * query.bucket_ns, value))
        return [
            SeriesGroup(dict(zip(query.group_by, key, strict=True)), points)
            for key, points in sorted(out.items())
        ]

    def catalog(
        self, tenant: str, *, tags: dict[str, str] | None = None, limit: int = 10_000
    ) -> list[SeriesInfo]:
        where, args = self._filter(tenant, None, tags)
        rows = self._all(
            "SELECT s.measurement, s.tags, ARRAY(SELECT l.field FROM ts_latest l"
            f" WHERE l.series_id = s.id ORDER BY l.field) FROM ts_series s WHERE {where}"
            " ORDER BY s.measurement, s.id LIMIT %(limit)s",
            {**args, "limit": limit},  # type: ignore[arg-type]
            "list series",
        )
        return [SeriesInfo(r[0], r[1], tuple(r[2])) for r in rows]

    def latest(
        self, tenant: str, measurement: str, *, tags: dict[str, str] | None = None
    ) -> list[LatestValue]:
        where, args = self._filter(tenant, measurement, tags)
        rows = self._all(
            "SELECT s.tags, l.field, l.ts, l.value FROM ts_series s JOIN ts_latest l"
            f" ON l.series_id = s.id WHERE {where} ORDER BY s.id, l.field",
            args,  # type: ignore[arg-type]
            "read latest values",
        )
        return [LatestValue(measurement, r[0], r[1], r[2], r[3]) for r in rows]

    def devices(self, tenant: str, gateway_id: str) -> dict[str, tuple[list[str], int]]:
        where, args = self._filter(tenant, None, {"gateway": gateway_id})
        rows = self._all(
            "SELECT s.tags->>'device', s.measurement, max(l.ts) FROM ts_series s"
            f" JOIN ts_latest l ON l.series_id = s.id WHERE {where} AND s.tags ? 'device'"
            " GROUP BY 1, 2",
            args,  # type: ignore[arg-type]
            "list devices",
        )
        out: dict[str, tuple[list[str], int]] = {}
        for device, measurement, last in rows:
            names, seen = out.get(device, ([], 0))
            out[device] = (sorted({*names, measurement}), max(seen, int(last)))
        return out

    def count_points(self, measurement: str | None = None) -> int:
        """Rows of ``ts_points``: readings stored (each (series, ts) once)."""
        if measurement is None:
            row = self._one("SELECT count(*) FROM ts_points")
        else:
            row = self._one(
                "SELECT count(*) FROM ts_points p JOIN ts_series s ON s.id = p.series_id"
                " WHERE s.measurement = %s",
                (measurement,),
            )
        return int(row[0])

    def not_kept(self) -> dict[str, int]:
        return {}  # every field type is kept

    def duplicate_points(self, measurement: str | None = None) -> int:
        where, args = (
            ("", ()) if measurement is None else (" WHERE s.measurement = %s", (measurement,))
        )
        row = self._one(
            "SELECT coalesce(sum(c - 1), 0) FROM (SELECT count(*) AS c FROM ts_points p"
            f" JOIN ts_series s ON s.id = p.series_id{where}"
            " GROUP BY p.series_id, p.ts HAVING count(*) > 1) d",
            args,
        )
        return int(row[0])

    def refresh_rollups(self, raw_horizon_ns: int = 0) -> int:
        """Nothing to do: aggregates are computed from the raw rows."""
        del raw_horizon_ns
        return 0

    def expire(
        self, *, raw_before_ns: int, rollup_5m_before_ns: int, rollup_1h_before_ns: int
    ) -> dict[str, int]:
        del rollup_5m_before_ns, rollup_1h_before_ns  # no rollups here
        with self._tx("expire old readings") as cur:
            cur.execute("DELETE FROM ts_points WHERE ts < %s", (raw_before_ns,))
            return {"raw_points": cur.rowcount, "rollups_5m": 0, "rollups_1h": 0}
