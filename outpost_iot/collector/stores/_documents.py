"""The document store, written once in SQL over a small dialect seam.

SQLite (the embedded default) and PostgreSQL (production) run the same queries: the SQL here is
written with ``?`` placeholders and the standard upsert (``ON CONFLICT``), and the few things
that truly differ go through :class:`Dialect`:

- how a JSON column is written and read (SQLite keeps text, PostgreSQL JSONB);
- a handful of spellings: ``max``/``GREATEST`` of two values, the byte length of a blob, the
  text of one JSON key, the collation that orders text by bytes, and the row lock that a
  read-then-write takes (SQLite's ``BEGIN IMMEDIATE`` already locks the whole database).

Each backend supplies its plumbing — ``_tx`` (one transaction, a cursor; errors translated into
:class:`~collector._exceptions.StoreError`), ``_one`` and ``_all`` — and its migrations, whose
column types differ (``INTEGER`` and ``BLOB`` against ``BIGINT`` and ``BYTEA``). PostgreSQL's
cursors take the ``?`` placeholders (see ``collector.stores._postgres``). No SQL here may hold a
``?`` other than a placeholder, nor a ``%``.

Both pass one contract suite (``tests/collector/contract/``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from outpost_iot.collector._exceptions import TokenRefused
from outpost_iot.collector.stores import _rows
from outpost_iot.collector.stores._alarm_store import SqlAlarmStore
from outpost_iot.collector.stores._base import (
    ALL_TENANTS,
    ApiTokenRecord,
    AuditEntry,
    BatchRecord,
    CertificateRecord,
    DesiredConfigRecord,
    EnrollmentTokenRecord,
    FleetGateway,
    GatewayRecord,
    GatewayRegistration,
    QuarantineEntry,
    RolloutMember,
    RolloutRecord,
    SessionRecord,
)
from outpost_iot.collector.stores._sql import Cursor, Dialect
from outpost_iot.wire import ConfigReport, Event, GatewayState


class SqlDocumentStore(SqlAlarmStore, abc.ABC):
    """Gateways, events, stored-batch records, quarantine, enrollment, certificates, API
    tokens, desired configs, rollouts and the audit log: :class:`~collector.stores.DocumentStore`
    over any :class:`Dialect`."""

    dialect: ClassVar[Dialect]
    _clock: Callable[[], int]

    # -- the backend's plumbing -----------------------------------------------------------------

    @abc.abstractmethod
    def _tx(self, what: str) -> AbstractContextManager[Cursor]:
        """One transaction; errors become :class:`StoreUnavailable` or :class:`StoreError`
        saying it could not do ``what``."""

    @abc.abstractmethod
    def _one(self, sql: str, args: Sequence[Any] = ()) -> Any: ...

    @abc.abstractmethod
    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]: ...

    # -- ingest: batches, events, gateway state, clock facts ----------------------------------

    def seen(self, gateway_id: str, stream_id: str, seq: int) -> bool:
        row = self._one(
            "SELECT 1 FROM stored_batches WHERE gateway_id = ? AND stream_id = ? AND seq = ?",
            (gateway_id, stream_id, seq),
        )
        return row is not None

    def record(self, batches: Sequence[BatchRecord], events: Sequence[tuple[str, Event]]) -> None:
        """Store events and mark batches as stored, in one transaction."""
        json = self.dialect.json_value
        with self._tx("record batches") as cur:
            if events:
                cur.executemany(
                    "INSERT INTO events (gateway_id, id, type, ts, source, body)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [(gw, e.id, e.type, e.ts, e.source, json(e.body)) for gw, e in events],
                )
            if batches:
                cur.executemany(
                    "INSERT INTO stored_batches (gateway_id, stream_id, seq, readings,"
                    " received_ns) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
                    "INSERT INTO gateways (id, last_seen_ns) VALUES (?, ?) ON CONFLICT (id) DO"
                    f" UPDATE SET last_seen_ns = {self.dialect.greatest}("
                    "coalesce(gateways.last_seen_ns, 0), excluded.last_seen_ns)",
                    (gw, seen_ns),
                )

    def prune_seen(self, older_than_ns: int) -> int:
        with self._tx("prune dedup records") as cur:
            cur.execute("DELETE FROM stored_batches WHERE received_ns < ?", (older_than_ns,))
            return cur.rowcount

    def events(self, gateway_id: str) -> list[Event]:
        loads = self.dialect.json_loads
        return [
            Event(id=r[0], type=r[1], ts=r[2], source=r[3], body=loads(r[4]))
            for r in self._all(
                "SELECT id, type, ts, source, body FROM events WHERE gateway_id = ?"
                f" ORDER BY ts, id{self.dialect.binary_order}",
                (gateway_id,),
            )
        ]

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
            " JOIN gateways g ON g.id = e.gateway_id WHERE e.ts >= ? AND e.ts < ?"
        )
        args: list[Any] = [start_ns, end_ns]
        if tenant != ALL_TENANTS:
            sql += " AND g.tenant = ?"
            args.append(tenant)
        for column, value in (("e.gateway_id", gateway_id), ("e.source", source), ("e.type", type)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        # Byte order: cursors page the same on every backend.
        order = f"e.ts, e.gateway_id{self.dialect.binary_order}, e.id{self.dialect.binary_order}"
        if after is not None:
            sql += f" AND ({order}) > (?, ?, ?)"
            args += list(after)
        sql += f" ORDER BY {order} LIMIT ?"
        args.append(limit)
        loads = self.dialect.json_loads
        return [
            (r[0], Event(id=r[1], type=r[2], ts=r[3], source=r[4], body=loads(r[5])))
            for r in self._all(sql, args)
        ]

    def availability(self, tenant: str, gateway_id: str) -> dict[str, tuple[str, int]]:
        """The last reported availability of each device behind a gateway: source → (state, ts)."""
        sql = (
            f"SELECT e.source, {self.dialect.json_text('e.body', 'state')}, e.ts FROM events e"
            " JOIN gateways g ON g.id = e.gateway_id"
            " WHERE e.gateway_id = ? AND e.type = 'availability' AND e.ts = (SELECT max(x.ts)"
            " FROM events x WHERE x.gateway_id = e.gateway_id AND x.type = 'availability'"
            " AND x.source = e.source)"
        )
        args: list[Any] = [gateway_id]
        if tenant != ALL_TENANTS:
            sql += " AND g.tenant = ?"
            args.append(tenant)
        rows = self._all(sql + f" ORDER BY e.id{self.dialect.binary_order}", args)
        return {r[0]: (str(r[1]), int(r[2])) for r in rows}

    def save_state(self, gateway_id: str, state: GatewayState, seen_ns: int) -> None:
        status = state.model_dump(mode="json", exclude={"v", "state"})
        with self._tx("save gateway state") as cur:
            cur.execute(
                "INSERT INTO gateways (id, state, last_seen_ns, status) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET state = excluded.state,"
                f" last_seen_ns = {self.dialect.greatest}(coalesce(gateways.last_seen_ns, 0),"
                " excluded.last_seen_ns), status = excluded.status",
                (gateway_id, state.state, seen_ns, self.dialect.json_value(status)),
            )

    def set_clock(self, gateway_id: str, skew_s: float, flagged: bool) -> None:
        with self._tx("record gateway clock") as cur:
            cur.execute(
                "INSERT INTO gateways (id, clock_skew_s, clock_flagged) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET clock_skew_s = excluded.clock_skew_s,"
                " clock_flagged = excluded.clock_flagged",
                (gateway_id, skew_s, flagged),
            )

    def boot_offset(self, gateway_id: str, boot_id: str) -> int | None:
        row = self._one(
            "SELECT offset_ns FROM clock_boots WHERE gateway_id = ? AND boot_id = ?",
            (gateway_id, boot_id),
        )
        return None if row is None else int(row[0])

    def set_boot_offset(self, gateway_id: str, boot_id: str, offset_ns: int) -> None:
        with self._tx("record boot clock offset") as cur:
            cur.execute(
                "INSERT INTO clock_boots (gateway_id, boot_id, offset_ns) VALUES (?, ?, ?)"
                " ON CONFLICT (gateway_id, boot_id) DO UPDATE SET offset_ns = excluded.offset_ns",
                (gateway_id, boot_id, offset_ns),
            )

    def gateway(self, gateway_id: str) -> GatewayRecord | None:
        row = self._one(
            "SELECT id, state, last_seen_ns, status, clock_skew_s, clock_flagged"
            " FROM gateways WHERE id = ?",
            (gateway_id,),
        )
        if row is None:
            return None
        status = self.dialect.json_loads(row[3])
        return GatewayRecord(row[0], row[1], row[2], status, row[4], bool(row[5]))

    # -- quarantine ---------------------------------------------------------------------------

    def quarantine(self, entry: QuarantineEntry) -> int:
        with self._tx("quarantine a message") as cur:
            cur.execute(
                "INSERT INTO quarantine (received_ns, gateway_id, topic, reason, detail,"
                " properties, raw, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    entry.received_ns,
                    entry.gateway_id,
                    entry.topic,
                    entry.reason,
                    entry.detail,
                    self.dialect.json_value(entry.properties),
                    entry.raw,
                    entry.size or len(entry.raw),
                ),
            )
            return int(cur.fetchone()[0])

    def quarantine_usage(self, gateway_id: str) -> tuple[int, int]:
        """``(entries, raw bytes kept)`` of one gateway's quarantine."""
        row = self._one(
            f"SELECT count(*), coalesce(sum({self.dialect.byte_length}(raw)), 0) FROM quarantine"
            " WHERE gateway_id = ?",
            (gateway_id,),
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
            sql += " AND g.tenant = ?"
            args.append(tenant)
        for column, value in (
            ("q.gateway_id", gateway_id),
            ("q.reason", reason),
            ("q.id", entry_id),
        ):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        if before_id is not None:
            sql += " AND q.id < ?"
            args.append(before_id)
        rows = self._all(sql + " ORDER BY q.id DESC LIMIT ?", [*args, limit])
        return [_rows.quarantine_entry(r, self.dialect.json_loads) for r in rows]

    def mark_replayed(self, entry_id: int, now_ns: int, result: str) -> None:
        with self._tx("mark a quarantined message replayed") as cur:
            cur.execute(
                "UPDATE quarantine SET replayed_ns = ?, replay_result = ? WHERE id = ?",
                (now_ns, result, entry_id),
            )

    def expire(
        self, *, events_before_ns: int, quarantine_before_ns: int, audit_before_ns: int
    ) -> dict[str, int]:
        """Delete events, quarantine entries and audit records older than their horizons."""
        out = {}
        with self._tx("expire old documents") as cur:
            for key, sql, horizon in (
                ("events", "DELETE FROM events WHERE ts < ?", events_before_ns),
                ("quarantined", "DELETE FROM quarantine WHERE received_ns < ?", quarantine_before_ns),
                ("audit_records", "DELETE FROM audit WHERE ts < ?", audit_before_ns),
                # Alarms are kept as long as events once cleared; so are their notifications
                # once delivered or given up.
                ("alarms", "DELETE FROM alarms WHERE cleared_ns < ?", events_before_ns),
                ("notifications", "DELETE FROM notifications WHERE created_ns < ? AND"
                 " (delivered_ns IS NOT NULL OR given_up)", events_before_ns),
            ):  # fmt: skip
                cur.execute(sql, (horizon,))
                out[key] = cur.rowcount
        return out

    # -- audit log ----------------------------------------------------------------------------

    def audit(self, entry: AuditEntry) -> None:
        with self._tx("write the audit log") as cur:
            cur.execute(
                "INSERT INTO audit (ts, actor, tenant, action, target, source, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.ts,
                    entry.actor,
                    entry.tenant,
                    entry.action,
                    entry.target,
                    entry.source,
                    self.dialect.json_value(entry.detail),
                ),
            )

    def audit_log(
        self, tenant: str, *, limit: int = 100, before_id: int | None = None
    ) -> list[AuditEntry]:
        sql = "SELECT id, ts, actor, tenant, action, target, source, detail FROM audit WHERE true"
        args: list[Any] = []
        if tenant != ALL_TENANTS:
            sql += " AND tenant = ?"
            args.append(tenant)
        if before_id is not None:
            sql += " AND id < ?"
            args.append(before_id)
        rows = self._all(sql + " ORDER BY id DESC LIMIT ?", [*args, limit])
        return [_rows.audit_entry(r, self.dialect.json_loads) for r in rows]

    # -- identity: gateways, enrollment, certificates, API tokens -----------------------------

    def gateway_exists(self, gateway_id: str) -> bool:
        return self._one("SELECT 1 FROM gateways WHERE id = ?", (gateway_id,)) is not None

    def gateway_tenant(self, gateway_id: str) -> str | None:
        row = self._one("SELECT tenant FROM gateways WHERE id = ?", (gateway_id,))
        return None if row is None else str(row[0])

    def gateways(self, tenant: str | None = None) -> list[FleetGateway]:
        sql = (
            "SELECT g.id, g.tenant, g.site, g.state, g.last_seen_ns, g.enrolled_ns,"
            " g.cert_not_after_ns, g.revoked_ns, g.hardware, g.status, g.clock_skew_s,"
            " g.clock_flagged, r.applied_version, g.tags,"
            " (SELECT max(version) FROM desired_configs d WHERE d.gateway_id = g.id)"
            " FROM gateways g LEFT JOIN config_reports r ON r.gateway_id = g.id"
        )
        args: list[Any] = []
        if tenant is not None and tenant != ALL_TENANTS:
            sql += " WHERE g.tenant = ?"
            args.append(tenant)
        rows = self._all(sql + f" ORDER BY g.id{self.dialect.binary_order}", args)
        return [_rows.fleet_gateway(row, self.dialect.json_loads) for row in rows]

    def set_gateway_tags(self, gateway_id: str, tags: list[str]) -> None:
        with self._tx("tag a gateway") as cur:
            cur.execute(
                "UPDATE gateways SET tags = ? WHERE id = ?",
                (self.dialect.json_value(sorted(set(tags))), gateway_id),
            )

    def create_enrollment_token(self, token: EnrollmentTokenRecord) -> None:
        with self._tx("create an enrollment token") as cur:
            cur.execute(
                "INSERT INTO enrollment_tokens (id, hash, tenant, site, created_ns, expires_ns,"
                " uses_total, uses_left) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
            sql += " WHERE tenant = ?"
            args.append(tenant)
        return [_rows.token(r) for r in self._all(sql + " ORDER BY created_ns, id", args)]

    def revoke_enrollment_token(self, token_id: str, tenant: str | None = None) -> bool:
        with self._tx("revoke an enrollment token") as cur:
            cur.execute(
                "UPDATE enrollment_tokens SET revoked = ? WHERE id = ?"
                + (" AND tenant = ?" if tenant is not None else ""),
                (True, token_id, tenant) if tenant is not None else (True, token_id),
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
                f" revoked FROM enrollment_tokens WHERE hash = ?{self.dialect.lock_row}",
                (token_hash,),
            )
            row = cur.fetchone()
            if row is None:
                raise TokenRefused("unknown", "this enrollment token does not exist")
            token = _rows.usable_token(row, now_ns)
            reg = register(token)
            cur.execute(
                "UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = ?", (token.id,)
            )
            cur.execute(
                "INSERT INTO gateways (id, tenant, site, hardware, enrolled_ns, cert_serial,"
                " cert_not_after_ns) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " tenant = excluded.tenant, site = excluded.site, hardware = excluded.hardware,"
                " enrolled_ns = excluded.enrolled_ns, cert_serial = excluded.cert_serial,"
                " cert_not_after_ns = excluded.cert_not_after_ns",
                (
                    reg.gateway_id,
                    token.tenant,
                    token.site,
                    self.dialect.json_value(reg.hardware),
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
                "UPDATE gateways SET cert_serial = ?, cert_not_after_ns = ? WHERE id = ?",
                (cert.serial, cert.not_after_ns, cert.gateway_id),
            )

    def certificate(self, serial: str) -> CertificateRecord | None:
        row = self._one(
            "SELECT serial, gateway_id, issued_ns, not_after_ns, revoked_ns FROM certificates"
            " WHERE serial = ?",
            (serial,),
        )
        return None if row is None else CertificateRecord(*row)

    def revoke_gateway(self, gateway_id: str, now_ns: int) -> int:
        """Decommission: mark the gateway and all its certificates revoked; count certificates."""
        with self._tx("revoke a gateway") as cur:
            cur.execute(
                "UPDATE gateways SET revoked_ns = coalesce(revoked_ns, ?) WHERE id = ?",
                (now_ns, gateway_id),
            )
            cur.execute(
                "UPDATE certificates SET revoked_ns = ? WHERE gateway_id = ? AND revoked_ns IS NULL",
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
            "SELECT public_key_pem FROM certificates WHERE gateway_id = ? AND revoked_ns IS NULL"
            " AND public_key_pem != '' ORDER BY issued_ns DESC LIMIT 1",
            (gateway_id,),
        )
        return None if row is None else str(row[0])

    def create_api_token(self, token: ApiTokenRecord) -> None:
        with self._tx("create an API token") as cur:
            cur.execute(
                "INSERT INTO api_tokens (id, hash, tenant, role, name, created_ns)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (token.id, token.hash, token.tenant, token.role, token.name, token.created_ns),
            )

    def api_token(self, token_hash: str) -> ApiTokenRecord | None:
        row = self._one(
            "SELECT id, hash, tenant, role, name, created_ns, revoked_ns FROM api_tokens"
            " WHERE hash = ?",
            (token_hash,),
        )
        return None if row is None else ApiTokenRecord(*row)

    def revoke_api_token(self, token_id: str, now_ns: int) -> bool:
        with self._tx("revoke an API token") as cur:
            cur.execute(
                "UPDATE api_tokens SET revoked_ns = ? WHERE id = ? AND revoked_ns IS NULL",
                (now_ns, token_id),
            )
            return cur.rowcount == 1

    def create_session(self, session: SessionRecord) -> None:
        with self._tx("create a console session") as cur:
            cur.execute(
                "INSERT INTO sessions (hash, token_id, created_ns, expires_ns, csrf)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    session.hash,
                    session.token_id,
                    session.created_ns,
                    session.expires_ns,
                    session.csrf,
                ),
            )

    def session(
        self, session_hash: str, now_ns: int
    ) -> tuple[SessionRecord, ApiTokenRecord] | None:
        row = self._one(
            "SELECT s.hash, s.token_id, s.created_ns, s.expires_ns, s.csrf,"
            " t.id, t.hash, t.tenant, t.role, t.name, t.created_ns, t.revoked_ns"
            " FROM sessions s JOIN api_tokens t ON t.id = s.token_id"
            " WHERE s.hash = ? AND s.expires_ns > ? AND t.revoked_ns IS NULL",
            (session_hash, now_ns),
        )
        if row is None:
            return None
        return (
            SessionRecord(
                hash=row[0], token_id=row[1], created_ns=row[2], expires_ns=row[3], csrf=row[4]
            ),
            ApiTokenRecord(*row[5:]),
        )

    def delete_session(self, session_hash: str) -> bool:
        with self._tx("end a console session") as cur:
            cur.execute("DELETE FROM sessions WHERE hash = ?", (session_hash,))
            return cur.rowcount == 1

    def expire_sessions(self, now_ns: int) -> int:
        with self._tx("expire console sessions") as cur:
            cur.execute(
                "DELETE FROM sessions WHERE expires_ns <= ? OR token_id IN"
                " (SELECT id FROM api_tokens WHERE revoked_ns IS NOT NULL)",
                (now_ns,),
            )
            return int(cur.rowcount)

    # -- desired configs and reports ----------------------------------------------------------

    def add_desired_config(self, record: DesiredConfigRecord) -> None:
        with self._tx("store a desired config") as cur:
            cur.execute(
                "INSERT INTO desired_configs (gateway_id, version, issued_ns, actor, envelope)"
                " VALUES (?, ?, ?, ?, ?)",
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
            " WHERE gateway_id = ? ORDER BY version DESC LIMIT ?",
            (gateway_id, limit),
        )
        return [DesiredConfigRecord(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

    def save_config_report(self, gateway_id: str, report: ConfigReport) -> None:
        with self._tx("store a config report") as cur:
            cur.execute(
                "INSERT INTO config_reports (gateway_id, version, status, applied_version,"
                " reason, errors, ts, received_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
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
                    self.dialect.json_value(report.errors),
                    report.ts,
                    self._clock(),
                ),
            )

    def config_report(self, gateway_id: str) -> ConfigReport | None:
        row = self._one(
            f"SELECT {_rows.CONFIG_REPORT_COLUMNS} FROM config_reports WHERE gateway_id = ?",
            (gateway_id,),
        )
        return None if row is None else _rows.config_report(row, self.dialect.json_loads)

    # -- rollouts -----------------------------------------------------------------------------

    def create_rollout(self, rollout: RolloutRecord, members: Sequence[RolloutMember]) -> None:
        with self._tx("create a rollout") as cur:
            cur.execute(
                "INSERT INTO rollouts (id, tenant, actor, created_ns, status, current_wave,"
                " waves, abort_percent, timeout_s, reason, device_errors_fail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _rows.rollout_values(rollout),
            )
            cur.executemany(
                "INSERT INTO rollout_gateways (rollout_id, gateway_id, wave, version, issued_ns,"
                " envelope, started_ns, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(rollout.id, *_rows.member_values(m)) for m in members],
            )

    def rollouts(
        self, tenant: str, *, rollout_id: str | None = None, status: str | None = None
    ) -> list[RolloutRecord]:
        sql = f"SELECT {', '.join(_rows.ROLLOUT_COLUMNS)} FROM rollouts WHERE true"
        args: list[Any] = []
        for column, value in (
            ("tenant", None if tenant == ALL_TENANTS else tenant),
            ("id", rollout_id),
            ("status", status),
        ):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        rows = self._all(sql + f" ORDER BY created_ns DESC, id{self.dialect.binary_order}", args)
        return [_rows.rollout(r) for r in rows]

    def rollout_members(self, rollout_id: str) -> list[RolloutMember]:
        rows = self._all(
            f"SELECT {', '.join(_rows.MEMBER_COLUMNS)} FROM rollout_gateways WHERE rollout_id = ?"
            f" ORDER BY wave, gateway_id{self.dialect.binary_order}",
            (rollout_id,),
        )
        return [_rows.member(r) for r in rows]

    def update_rollout(
        self,
        rollout_id: str,
        *,
        status: str | None = None,
        current_wave: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Set what is given; leave the rest."""
        changes = {"status": status, "current_wave": current_wave, "reason": reason}
        given = {k: v for k, v in changes.items() if v is not None}
        if not given:
            return
        with self._tx("update a rollout") as cur:
            cur.execute(
                f"UPDATE rollouts SET {', '.join(f'{k} = ?' for k in given)} WHERE id = ?",
                (*given.values(), rollout_id),
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
                "UPDATE rollout_gateways SET started_ns = coalesce(?, started_ns),"
                " outcome = coalesce(?, outcome) WHERE rollout_id = ? AND gateway_id = ?",
                (started_ns, outcome, rollout_id, gateway_id),
            )


def _insert_certificate(cur: Cursor, cert: CertificateRecord) -> None:
    cur.execute(
        "INSERT INTO certificates (serial, gateway_id, issued_ns, not_after_ns, public_key_pem)"
        " VALUES (?, ?, ?, ?, ?)",
        (cert.serial, cert.gateway_id, cert.issued_ns, cert.not_after_ns, cert.public_key_pem),
    )
