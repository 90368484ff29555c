"""Documents in PostgreSQL (psycopg 3, a connection pool, JSONB): the production document store.

The same interface and behaviour as :class:`~collector.stores.SqliteDocumentStore`, checked by
one contract suite (``tests/collector/contract/``). Several collector replicas share one
database: every write is one transaction, conflicts are settled by the database (``ON CONFLICT``,
``SELECT … FOR UPDATE``), and migrations run under an advisory lock so replicas starting
together migrate once.

Errors are translated at this boundary: a lost connection, a pool with no free connection or a
server shutting down is :class:`StoreUnavailable` (the ingest nacks ``store_unavailable``, the
gateway keeps the batch); any other database error is :class:`StoreError`. Messages name the
server's host and database, never the password in the DSN.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import orjson
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from collector._exceptions import (
    QueryTimeout,
    StoreError,
    StoreUnavailable,
    TokenRefused,
    TooManyPoints,
)
from collector.stores import _rows
from collector.stores._base import (
    ALL_TENANTS,
    ApiTokenRecord,
    AuditEntry,
    BatchRecord,
    CertificateRecord,
    DesiredConfigRecord,
    EnrollmentTokenRecord,
    GatewayRecord,
    GatewayRegistration,
    LatestValue,
    QuarantineEntry,
    SeriesGroup,
    SeriesQuery,
    SeriesWrite,
    StoredPoint,
)
from wire import ConfigReport, Event, FieldValue, GatewayState

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
]
_LOCK_ID = 0x6F7574706F7374  # "outpost": one migrator at a time across replicas


def _decoded(value: Any) -> Any:
    """JSONB columns arrive decoded."""
    return value


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


class PostgresDocumentStore(_PostgresBase):
    """Gateways, events, stored-batch records, quarantine, enrollment, configs, rollouts and
    the audit log in PostgreSQL."""

    _migrations: ClassVar[list[tuple[str, list[str]]]] = MIGRATIONS
    _pool_name: ClassVar[str] = "outpost-documents"

    # -- batches, events, quarantine ----------------------------------------------------------

    def seen(self, gateway_id: str, stream_id: str, seq: int) -> bool:
        row = self._one(
            "SELECT 1 FROM stored_batches WHERE gateway_id = %s AND stream_id = %s AND seq = %s",
            (gateway_id, stream_id, seq),
            "check for a duplicate batch",
        )
        return row is not None

    def record(self, batches: Sequence[BatchRecord], events: Sequence[tuple[str, Event]]) -> None:
        with self._tx("record batches") as cur:
            if events:
                cur.executemany(
                    "INSERT INTO events (gateway_id, id, type, ts, source, body)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [(gw, e.id, e.type, e.ts, e.source, Jsonb(e.body)) for gw, e in events],
                )
            if batches:
                cur.executemany(
                    "INSERT INTO stored_batches (gateway_id, stream_id, seq, readings,"
                    " received_ns) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [
                        (b.gateway_id, b.stream_id, b.seq, b.readings, b.received_ns)
                        for b in batches
                    ],
                )
            last: dict[str, int] = {}
            for b in batches:
                last[b.gateway_id] = max(last.get(b.gateway_id, 0), b.received_ns)
            for gw, seen_ns in sorted(last.items()):  # one order: no deadlock between replicas
                cur.execute(
                    "INSERT INTO gateways (id, last_seen_ns) VALUES (%s, %s) ON CONFLICT (id) DO"
                    " UPDATE SET last_seen_ns = GREATEST(coalesce(gateways.last_seen_ns, 0),"
                    " excluded.last_seen_ns)",
                    (gw, seen_ns),
                )

    def quarantine(self, entry: QuarantineEntry) -> int:
        row = self._one(
            "INSERT INTO quarantine (received_ns, gateway_id, topic, reason, detail, properties,"
            " raw, size) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                entry.received_ns,
                entry.gateway_id,
                entry.topic,
                entry.reason,
                entry.detail,
                Jsonb(entry.properties),
                entry.raw,
                entry.size or len(entry.raw),
            ),
            "quarantine a message",
        )
        return int(row[0])

    def quarantine_usage(self, gateway_id: str) -> tuple[int, int]:
        """``(entries, raw bytes kept)`` of one gateway's quarantine."""
        row = self._one(
            "SELECT count(*), coalesce(sum(octet_length(raw)), 0) FROM quarantine"
            " WHERE gateway_id = %s",
            (gateway_id,),
            "measure a gateway's quarantine",
        )
        return int(row[0]), int(row[1])

    def quarantined(
        self,
        *,
        limit: int = 100,
        tenant: str = ALL_TENANTS,
        gateway_id: str | None = None,
        reason: str | None = None,
        before_id: int | None = None,
        entry_id: int | None = None,
    ) -> list[QuarantineEntry]:
        """Newest first. Entries with no known gateway (a bad topic) are an admin's only."""
        sql = (
            f"SELECT {_rows.QUARANTINE_COLUMNS} FROM quarantine q"
            " LEFT JOIN gateways g ON g.id = q.gateway_id WHERE true"
        )
        args: list[Any] = []
        if tenant != ALL_TENANTS:
            sql += " AND g.tenant = %s"
            args.append(tenant)
        for column, value in (
            ("q.gateway_id", gateway_id),
            ("q.reason", reason),
            ("q.id", entry_id),
        ):
            if value is not None:
                sql += f" AND {column} = %s"
                args.append(value)
        if before_id is not None:
            sql += " AND q.id < %s"
            args.append(before_id)
        rows = self._all(sql + " ORDER BY q.id DESC LIMIT %s", [*args, limit])
        return [_rows.quarantine_entry(r, _decoded) for r in rows]

    def mark_replayed(self, entry_id: int, now_ns: int, result: str) -> None:
        with self._tx("mark a quarantined message replayed") as cur:
            cur.execute(
                "UPDATE quarantine SET replayed_ns = %s, replay_result = %s WHERE id = %s",
                (now_ns, result, entry_id),
            )

    def expire(
        self, *, events_before_ns: int, quarantine_before_ns: int, audit_before_ns: int
    ) -> dict[str, int]:
        """Delete events, quarantine entries and audit records older than their horizons."""
        out = {}
        with self._tx("expire old documents") as cur:
            for key, sql, horizon in (
                ("events", "DELETE FROM events WHERE ts < %s", events_before_ns),
                ("quarantined", "DELETE FROM quarantine WHERE received_ns < %s", quarantine_before_ns),
                ("audit_records", "DELETE FROM audit WHERE ts < %s", audit_before_ns),
            ):  # fmt: skip
                cur.execute(sql, (horizon,))
                out[key] = cur.rowcount
        return out

    def prune_seen(self, older_than_ns: int) -> int:
        with self._tx("prune dedup records") as cur:
            cur.execute("DELETE FROM stored_batches WHERE received_ns < %s", (older_than_ns,))
            return cur.rowcount

    # -- audit log ----------------------------------------------------------------------------

    def audit(self, entry: AuditEntry) -> None:
        with self._tx("write the audit log") as cur:
            cur.execute(
                "INSERT INTO audit (ts, actor, tenant, action, target, source, detail)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    entry.ts,
                    entry.actor,
                    entry.tenant,
                    entry.action,
                    entry.target,
                    entry.source,
                    Jsonb(entry.detail),
                ),
            )

    def audit_log(
        self, tenant: str, *, limit: int = 100, before_id: int | None = None
    ) -> list[AuditEntry]:
        sql = "SELECT id, ts, actor, tenant, action, target, source, detail FROM audit WHERE true"
        args: list[Any] = []
        if tenant != ALL_TENANTS:
            sql += " AND tenant = %s"
            args.append(tenant)
        if before_id is not None:
            sql += " AND id < %s"
            args.append(before_id)
        rows = self._all(sql + " ORDER BY id DESC LIMIT %s", [*args, limit])
        return [_rows.audit_entry(r, _decoded) for r in rows]

    # -- gateways -----------------------------------------------------------------------------

    def events(self, gateway_id: str) -> list[Event]:
        return [
            Event(id=r[0], type=r[1], ts=r[2], source=r[3], body=r[4])
            for r in self._all(
                "SELECT id, type, ts, source, body FROM events WHERE gateway_id = %s"
                " ORDER BY ts, id",
                (gateway_id,),
            )
        ]

    def save_state(self, gateway_id: str, state: GatewayState, seen_ns: int) -> None:
        status = state.model_dump(mode="json", exclude={"v", "state"})
        with self._tx("save gateway state") as cur:
            cur.execute(
                "INSERT INTO gateways (id, state, last_seen_ns, status) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET state = excluded.state,"
                " last_seen_ns = GREATEST(coalesce(gateways.last_seen_ns, 0),"
                " excluded.last_seen_ns), status = excluded.status",
                (gateway_id, state.state, seen_ns, Jsonb(status)),
            )

    def set_clock(self, gateway_id: str, skew_s: float, flagged: bool) -> None:
        with self._tx("record gateway clock") as cur:
            cur.execute(
                "INSERT INTO gateways (id, clock_skew_s, clock_flagged) VALUES (%s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET clock_skew_s = excluded.clock_skew_s,"
                " clock_flagged = excluded.clock_flagged",
                (gateway_id, skew_s, flagged),
            )

    def boot_offset(self, gateway_id: str, boot_id: str) -> int | None:
        row = self._one(
            "SELECT offset_ns FROM clock_boots WHERE gateway_id = %s AND boot_id = %s",
            (gateway_id, boot_id),
        )
        return None if row is None else int(row[0])

    def set_boot_offset(self, gateway_id: str, boot_id: str, offset_ns: int) -> None:
        with self._tx("record boot clock offset") as cur:
            cur.execute(
                "INSERT INTO clock_boots (gateway_id, boot_id, offset_ns) VALUES (%s, %s, %s)"
                " ON CONFLICT (gateway_id, boot_id) DO UPDATE SET offset_ns = excluded.offset_ns",
                (gateway_id, boot_id, offset_ns),
            )

    def gateway(self, gateway_id: str) -> GatewayRecord | None:
        row = self._one(
            "SELECT id, state, last_seen_ns, status, clock_skew_s, clock_flagged"
            " FROM gateways WHERE id = %s",
            (gateway_id,),
        )
        if row is None:
            return None
        return GatewayRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]))

    def gateway_exists(self, gateway_id: str) -> bool:
        return self._one("SELECT 1 FROM gateways WHERE id = %s", (gateway_id,)) is not None

    def gateway_tenant(self, gateway_id: str) -> str | None:
        row = self._one("SELECT tenant FROM gateways WHERE id = %s", (gateway_id,))
        return None if row is None else str(row[0])

    def gateways(self, tenant: str | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT g.id, g.tenant, g.site, g.state, g.last_seen_ns, g.enrolled_ns,"
            " g.cert_not_after_ns, g.revoked_ns, g.hardware, g.status, g.clock_skew_s,"
            " g.clock_flagged, r.applied_version, g.tags,"
            " (SELECT max(version) FROM desired_configs d WHERE d.gateway_id = g.id)"
            " FROM gateways g LEFT JOIN config_reports r ON r.gateway_id = g.id"
        )
        args: list[Any] = []
        if tenant is not None and tenant != ALL_TENANTS:
            sql += " WHERE g.tenant = %s"
            args.append(tenant)
        return [
            _rows.gateway_item(row, _decoded)
            for row in self._all(sql + ' ORDER BY g.id COLLATE "C"', args)
        ]

    def set_gateway_tags(self, gateway_id: str, tags: list[str]) -> None:
        with self._tx("tag a gateway") as cur:
            cur.execute(
                "UPDATE gateways SET tags = %s WHERE id = %s",
                (Jsonb(sorted(set(tags))), gateway_id),
            )

    def find_events(
        self,
        tenant: str,
        *,
        gateway_id: str | None = None,
        source: str | None = None,
        type: str | None = None,
        start_ns: int = 0,
        end_ns: int = 2**63 - 1,
        after: tuple[int, str, str] | None = None,
        limit: int = 100,
    ) -> list[tuple[str, Event]]:
        """Events of the tenant's gateways, oldest first; ``after`` is the last (ts, gateway, id)
        of the previous page."""
        sql = (
            "SELECT e.gateway_id, e.id, e.type, e.ts, e.source, e.body FROM events e"
            " JOIN gateways g ON g.id = e.gateway_id WHERE e.ts >= %s AND e.ts < %s"
        )
        args: list[Any] = [start_ns, end_ns]
        if tenant != ALL_TENANTS:
            sql += " AND g.tenant = %s"
            args.append(tenant)
        for column, value in (("e.gateway_id", gateway_id), ("e.source", source), ("e.type", type)):
            if value is not None:
                sql += f" AND {column} = %s"
                args.append(value)
        if after is not None:
            # COLLATE "C": the same byte order as SQLite, so cursors page the same everywhere.
            sql += ' AND (e.ts, e.gateway_id COLLATE "C", e.id COLLATE "C") > (%s, %s, %s)'
            args += list(after)
        sql += ' ORDER BY e.ts, e.gateway_id COLLATE "C", e.id COLLATE "C" LIMIT %s'
        args.append(limit)
        return [
            (r[0], Event(id=r[1], type=r[2], ts=r[3], source=r[4], body=r[5]))
            for r in self._all(sql, args)
        ]

    def availability(self, tenant: str, gateway_id: str) -> dict[str, tuple[str, int]]:
        """The last reported availability of each device behind a gateway: source → (state, ts)."""
        sql = (
            "SELECT DISTINCT ON (e.source) e.source, e.body->>'state', e.ts FROM events e"
            " JOIN gateways g ON g.id = e.gateway_id"
            " WHERE e.gateway_id = %s AND e.type = 'availability'"
        )
        args: list[Any] = [gateway_id]
        if tenant != ALL_TENANTS:
            sql += " AND g.tenant = %s"
            args.append(tenant)
        rows = self._all(sql + " ORDER BY e.source, e.ts DESC", args)
        return {r[0]: (str(r[1]), int(r[2])) for r in rows}

    # -- enrollment and certificates ----------------------------------------------------------

    def create_enrollment_token(self, token: EnrollmentTokenRecord) -> None:
        with self._tx("create an enrollment token") as cur:
            cur.execute(
                "INSERT INTO enrollment_tokens (id, hash, tenant, site, created_ns, expires_ns,"
                " uses_total, uses_left) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    token.id,
                    token.hash,
                    token.tenant,
                    token.site,
                    token.created_ns,
                    token.expires_ns,
                    token.uses_total,
                    token.uses_left,
                ),
            )

    def enrollment_tokens(self, tenant: str | None = None) -> list[EnrollmentTokenRecord]:
        sql = (
            "SELECT id, hash, tenant, site, created_ns, expires_ns, uses_total, uses_left, revoked"
            " FROM enrollment_tokens"
        )
        args: list[Any] = []
        if tenant is not None:
            sql += " WHERE tenant = %s"
            args.append(tenant)
        return [_rows.token(r) for r in self._all(sql + " ORDER BY created_ns, id", args)]

    def revoke_enrollment_token(self, token_id: str, tenant: str | None = None) -> bool:
        with self._tx("revoke an enrollment token") as cur:
            cur.execute(
                "UPDATE enrollment_tokens SET revoked = true WHERE id = %s"
                + (" AND tenant = %s" if tenant is not None else ""),
                (token_id, tenant) if tenant is not None else (token_id,),
            )
            return cur.rowcount == 1

    def redeem_enrollment_token(
        self,
        token_hash: str,
        now_ns: int,
        register: Callable[[EnrollmentTokenRecord], GatewayRegistration],
    ) -> GatewayRegistration:
        """Check and use one use of a token, and register what ``register`` returns, atomically
        (the token's row is locked: two replicas cannot both spend its last use).

        Raises :class:`TokenRefused` (unknown, expired, used_up, revoked) and uses nothing then.
        """
        with self._tx("enroll a gateway") as cur:
            cur.execute(
                "SELECT id, hash, tenant, site, created_ns, expires_ns, uses_total, uses_left,"
                " revoked FROM enrollment_tokens WHERE hash = %s FOR UPDATE",
                (token_hash,),
            )
            row = cur.fetchone()
            if row is None:
                raise TokenRefused("unknown", "this enrollment token does not exist")
            token = _rows.usable_token(row, now_ns)
            reg = register(token)
            cur.execute(
                "UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = %s",
                (token.id,),
            )
            cur.execute(
                "INSERT INTO gateways (id, tenant, site, hardware, enrolled_ns, cert_serial,"
                " cert_not_after_ns) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO"
                " UPDATE SET tenant = excluded.tenant, site = excluded.site, hardware ="
                " excluded.hardware, enrolled_ns = excluded.enrolled_ns, cert_serial ="
                " excluded.cert_serial, cert_not_after_ns = excluded.cert_not_after_ns",
                (
                    reg.gateway_id,
                    token.tenant,
                    token.site,
                    Jsonb(reg.hardware),
                    now_ns,
                    reg.certificate.serial,
                    reg.certificate.not_after_ns,
                ),
            )
            _insert_certificate(cur, reg.certificate)
        return reg

    def record_certificate(self, cert: CertificateRecord) -> None:
        """A renewed certificate for an enrolled gateway."""
        with self._tx("record a certificate") as cur:
            _insert_certificate(cur, cert)
            cur.execute(
                "UPDATE gateways SET cert_serial = %s, cert_not_after_ns = %s WHERE id = %s",
                (cert.serial, cert.not_after_ns, cert.gateway_id),
            )

    def certificate(self, serial: str) -> CertificateRecord | None:
        row = self._one(
            "SELECT serial, gateway_id, issued_ns, not_after_ns, revoked_ns FROM certificates"
            " WHERE serial = %s",
            (serial,),
        )
        return None if row is None else CertificateRecord(*row)

    def revoke_gateway(self, gateway_id: str, now_ns: int) -> int:
        """Decommission: mark the gateway and all its certificates revoked; count certificates."""
        with self._tx("revoke a gateway") as cur:
            cur.execute(
                "UPDATE gateways SET revoked_ns = coalesce(revoked_ns, %s) WHERE id = %s",
                (now_ns, gateway_id),
            )
            cur.execute(
                "UPDATE certificates SET revoked_ns = %s WHERE gateway_id = %s"
                " AND revoked_ns IS NULL",
                (now_ns, gateway_id),
            )
            return cur.rowcount

    def revoked_certificates(self) -> list[tuple[str, int]]:
        return [
            (r[0], r[1])
            for r in self._all(
                "SELECT serial, revoked_ns FROM certificates WHERE revoked_ns IS NOT NULL"
                " ORDER BY revoked_ns, serial"
            )
        ]

    def revoked_gateways(self) -> set[str]:
        return {r[0] for r in self._all("SELECT id FROM gateways WHERE revoked_ns IS NOT NULL")}

    def gateway_public_key(self, gateway_id: str) -> str | None:
        row = self._one(
            "SELECT public_key_pem FROM certificates WHERE gateway_id = %s AND revoked_ns IS NULL"
            " AND public_key_pem != '' ORDER BY issued_ns DESC LIMIT 1",
            (gateway_id,),
        )
        return None if row is None else str(row[0])

    # -- desired configs ----------------------------------------------------------------------

    def add_desired_config(self, record: DesiredConfigRecord) -> None:
        with self._tx("store a desired config") as cur:
            cur.execute(
                "INSERT INTO desired_configs (gateway_id, version, issued_ns, actor, envelope)"
                " VALUES (%s, %s, %s, %s, %s)",
                (
                    record.gateway_id,
                    record.version,
                    record.issued_ns,
                    record.actor,
                    record.envelope,
                ),
            )

    def desired_configs(self, gateway_id: str, *, limit: int = 20) -> list[DesiredConfigRecord]:
        rows = self._all(
            "SELECT gateway_id, version, issued_ns, actor, envelope FROM desired_configs"
            " WHERE gateway_id = %s ORDER BY version DESC LIMIT %s",
            (gateway_id, limit),
        )
        return [DesiredConfigRecord(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

    def save_config_report(self, gateway_id: str, report: ConfigReport) -> None:
        with self._tx("store a config report") as cur:
            cur.execute(
                "INSERT INTO config_reports (gateway_id, version, status, applied_version,"
                " reason, errors, ts, received_ns) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (gateway_id) DO UPDATE SET version = excluded.version,"
                " status = excluded.status, applied_version = excluded.applied_version,"
                " reason = excluded.reason, errors = excluded.errors, ts = excluded.ts,"
                " received_ns = excluded.received_ns",
                (
                    gateway_id,
                    report.version,
                    report.status,
                    report.applied_version,
                    report.reason,
                    Jsonb(report.errors),
                    report.ts,
                    self._clock(),
                ),
            )

    def config_report(self, gateway_id: str) -> ConfigReport | None:
        row = self._one(
            f"SELECT {_rows.CONFIG_REPORT_COLUMNS} FROM config_reports WHERE gateway_id = %s",
            (gateway_id,),
        )
        return None if row is None else _rows.config_report(row, _decoded)

    # -- rollouts -----------------------------------------------------------------------------

    def create_rollout(self, rollout: dict[str, Any], members: list[dict[str, Any]]) -> None:
        with self._tx("create a rollout") as cur:
            cur.execute(
                "INSERT INTO rollouts (id, tenant, actor, created_ns, status, current_wave,"
                " waves, abort_percent, timeout_s, device_errors_fail) VALUES (%(id)s,"
                " %(tenant)s, %(actor)s, %(created_ns)s, %(status)s, 0, %(waves)s,"
                " %(abort_percent)s, %(timeout_s)s, %(device_errors_fail)s)",
                {"device_errors_fail": False, **rollout},
            )
            cur.executemany(
                "INSERT INTO rollout_gateways (rollout_id, gateway_id, wave, version, issued_ns,"
                " envelope) VALUES (%(rollout_id)s, %(gateway_id)s, %(wave)s, %(version)s,"
                " %(issued_ns)s, %(envelope)s)",
                members,
            )

    def rollouts(
        self, tenant: str, *, rollout_id: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        sql = (
            "SELECT id, tenant, actor, created_ns, status, current_wave, waves, abort_percent,"
            " timeout_s, reason, device_errors_fail FROM rollouts WHERE true"
        )
        args: list[Any] = []
        for column, value in (
            ("tenant", None if tenant == ALL_TENANTS else tenant),
            ("id", rollout_id),
            ("status", status),
        ):
            if value is not None:
                sql += f" AND {column} = %s"
                args.append(value)
        return [
            _rows.rollout_item(r) for r in self._all(sql + " ORDER BY created_ns DESC, id", args)
        ]

    def rollout_members(self, rollout_id: str) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT gateway_id, wave, version, issued_ns, envelope, started_ns, outcome"
            ' FROM rollout_gateways WHERE rollout_id = %s ORDER BY wave, gateway_id COLLATE "C"',
            (rollout_id,),
        )
        return [_rows.member_item(r) for r in rows]

    def update_rollout(self, rollout_id: str, **changes: Any) -> None:
        allowed = ("status", "current_wave", "reason")
        assignments = ", ".join(f"{k} = %({k})s" for k in allowed if k in changes)
        if not assignments:
            return
        with self._tx("update a rollout") as cur:
            cur.execute(
                f"UPDATE rollouts SET {assignments} WHERE id = %(id)s",
                {**changes, "id": rollout_id},
            )

    def update_rollout_member(
        self,
        rollout_id: str,
        gateway_id: str,
        *,
        started_ns: int | None = None,
        outcome: str | None = None,
    ) -> None:
        with self._tx("update a rollout member") as cur:
            cur.execute(
                "UPDATE rollout_gateways SET started_ns = coalesce(%s, started_ns),"
                " outcome = coalesce(%s, outcome) WHERE rollout_id = %s AND gateway_id = %s",
                (started_ns, outcome, rollout_id, gateway_id),
            )

    # -- API tokens ---------------------------------------------------------------------------

    def create_api_token(self, token: ApiTokenRecord) -> None:
        with self._tx("create an API token") as cur:
            cur.execute(
                "INSERT INTO api_tokens (id, hash, tenant, role, name, created_ns)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (token.id, token.hash, token.tenant, token.role, token.name, token.created_ns),
            )

    def api_token(self, token_hash: str) -> ApiTokenRecord | None:
        row = self._one(
            "SELECT id, hash, tenant, role, name, created_ns, revoked_ns FROM api_tokens"
            " WHERE hash = %s",
            (token_hash,),
        )
        return None if row is None else ApiTokenRecord(*row)

    def revoke_api_token(self, token_id: str, now_ns: int) -> bool:
        with self._tx("revoke an API token") as cur:
            cur.execute(
                "UPDATE api_tokens SET revoked_ns = %s WHERE id = %s AND revoked_ns IS NULL",
                (now_ns, token_id),
            )
            return cur.rowcount == 1


def _insert_certificate(cur: psycopg.Cursor[Any], cert: CertificateRecord) -> None:
    cur.execute(
        "INSERT INTO certificates (serial, gateway_id, issued_ns, not_after_ns, public_key_pem)"
        " VALUES (%s, %s, %s, %s, %s)",
        (cert.serial, cert.gateway_id, cert.issued_ns, cert.not_after_ns, cert.public_key_pem),
    )


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
