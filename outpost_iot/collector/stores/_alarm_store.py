"""Alarms in the SQL document store: rules, alarms, conditions, endpoints and the outbox.

One alarm per rule and originator is open at a time: a unique index over ``(rule_id,
originator)`` of the alarms not cleared makes a second raise — by another replica, or for a
batch sent again — do nothing, so it is never notified twice. The notifications of an alarm are
written in the transaction that raises or clears it (an outbox): a notification exists if and
only if the change happened, and the delivery loop sends each one at least once, leased so that
two replicas do not send it at the same time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar

from outpost_iot.collector.stores import _rows
from outpost_iot.collector.stores._base import (
    ALL_TENANTS,
    SEVERITY_RANK,
    AlarmChanges,
    AlarmClear,
    AlarmCondition,
    AlarmRecord,
    AlarmRuleRecord,
    NotificationRecord,
    NotifyEndpointRecord,
)

if TYPE_CHECKING:
    from outpost_iot.collector.stores._sql import Cursor, Dialect

_KEYS_PER_QUERY = 400  # (rule, originator) pairs in one IN list


def alarm_json(alarm: AlarmRecord) -> dict[str, Any]:
    """An alarm as the API, the live stream and notifications show it (times in unix s)."""
    return {
        "id": alarm.id,
        "tenant": alarm.tenant,
        "rule_id": alarm.rule_id,
        "name": alarm.name,
        "severity": alarm.severity,
        "kind": alarm.kind,
        "originator": alarm.originator,
        "gateway_id": alarm.gateway_id,
        "status": alarm.status,
        "raised": alarm.raised_ns / 1e9,
        "cleared": None if alarm.cleared_ns is None else alarm.cleared_ns / 1e9,
        "acknowledged": None if alarm.acked_ns is None else alarm.acked_ns / 1e9,
        "acknowledged_by": alarm.acked_by,
        "details": alarm.details,
    }


def _where(tenant: str, prefix: str = "", **equal: object) -> tuple[str, list[Any]]:
    """``true AND tenant = ? AND column = ? …`` for the filters given (None: any value); an
    admin's ``*`` reads every tenant. ``prefix`` names the table (``e.``)."""
    sql = "true"
    args: list[Any] = []
    if tenant != ALL_TENANTS:
        sql += f" AND {prefix}tenant = ?"
        args.append(tenant)
    for column, value in equal.items():
        if value is not None:
            sql += f" AND {prefix}{column} = ?"
            args.append(value)
    return sql, args


def _in(column: str, keys: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
    """``column IN (…)`` over ``keys`` (values, or pairs for a ``(a, b)`` column), a bounded
    number at a time: ``(sql, args)`` per chunk."""
    unique = sorted(set(keys))
    for i in range(0, len(unique), _KEYS_PER_QUERY):
        chunk = unique[i : i + _KEYS_PER_QUERY]
        if chunk and isinstance(chunk[0], tuple):
            marks = ", ".join(["(?, ?)"] * len(chunk))
            yield f"{column} IN (VALUES {marks})", [x for pair in chunk for x in pair]
        else:
            yield f"{column} IN ({', '.join('?' * len(chunk))})", list(chunk)


class SqlAlarmStore:
    """The :class:`~collector.stores.Alarms` role of :class:`SqlDocumentStore`."""

    dialect: ClassVar[Dialect]

    if TYPE_CHECKING:

        def _clock(self) -> int: ...

        def _tx(self, what: str) -> AbstractContextManager[Cursor]: ...

        def _one(self, sql: str, args: Sequence[Any] = ()) -> Any: ...

        def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]: ...

    # -- rules --------------------------------------------------------------------------------

    def save_rule(self, rule: AlarmRuleRecord) -> None:
        with self._tx("save an alarm rule") as cur:
            cur.execute(
                f"INSERT INTO alarm_rules ({_rows.RULE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name, severity ="
                " excluded.severity, enabled = excluded.enabled, edge = excluded.edge, notify ="
                " excluded.notify, spec = excluded.spec, updated_ns = excluded.updated_ns,"
                " actor = excluded.actor",
                (
                    rule.id,
                    rule.tenant,
                    rule.name,
                    rule.severity,
                    rule.enabled,
                    rule.edge,
                    rule.notify,
                    self.dialect.json_value(rule.spec),
                    rule.created_ns,
                    rule.updated_ns,
                    rule.actor,
                ),
            )

    def rules(self, tenant: str, *, rule_id: str | None = None) -> list[AlarmRuleRecord]:
        where, args = _where(tenant, id=rule_id)
        sql = f"SELECT {_rows.RULE_COLUMNS} FROM alarm_rules WHERE {where} ORDER BY created_ns, id"
        return [_rows.alarm_rule(r, self.dialect.json_loads) for r in self._all(sql, args)]

    def delete_rule(self, tenant: str, rule_id: str) -> bool:
        with self._tx("delete an alarm rule") as cur:
            where, args = _where(tenant, id=rule_id)
            cur.execute(f"DELETE FROM alarm_rules WHERE {where}", args)
            if cur.rowcount == 0:
                return False
            cur.execute(
                "UPDATE alarms SET cleared_ns = ? WHERE rule_id = ? AND cleared_ns IS NULL",
                (self._clock(), rule_id),
            )
            cur.execute("DELETE FROM alarm_conditions WHERE rule_id = ?", (rule_id,))
            return True

    def rules_stamp(self) -> tuple[int, int]:
        row = self._one("SELECT count(*), coalesce(max(updated_ns), 0) FROM alarm_rules")
        return int(row[0]), int(row[1])

    # -- alarms and conditions ----------------------------------------------------------------

    def open_alarms(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], AlarmRecord]:
        found = self._open_where(_in("(rule_id, originator)", keys))
        return {(a.rule_id, a.originator): a for a in found}

    def open_alarms_of(self, rule_ids: Sequence[str]) -> list[AlarmRecord]:
        return self._open_where(_in("rule_id", rule_ids))

    def open_alarms_of_kind(self, kind: str) -> list[AlarmRecord]:
        return self._open_where([("kind = ?", [kind])])

    def _open_where(self, filters: Iterable[tuple[str, list[Any]]]) -> list[AlarmRecord]:
        return [
            _rows.alarm(r, self.dialect.json_loads)
            for where, args in filters
            for r in self._all(
                f"SELECT {_rows.ALARM_COLUMNS} FROM alarms WHERE cleared_ns IS NULL AND {where}",
                args,
            )
        ]

    def all_conditions(self) -> list[AlarmCondition]:
        return self._conditions_where([("true", [])])

    def conditions(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], AlarmCondition]:
        found = self._conditions_where(_in("(rule_id, originator)", keys))
        return {(c.rule_id, c.originator): c for c in found}

    def conditions_of(self, rule_ids: Sequence[str]) -> list[AlarmCondition]:
        return self._conditions_where(_in("rule_id", rule_ids))

    def _conditions_where(self, filters: Iterable[tuple[str, list[Any]]]) -> list[AlarmCondition]:
        sql = "SELECT rule_id, originator, since_ns, value FROM alarm_conditions WHERE "
        return [
            AlarmCondition(r[0], r[1], int(r[2]), r[3])
            for where, args in filters
            for r in self._all(sql + where, args)
        ]

    def apply_alarms(self, changes: AlarmChanges, now_ns: int) -> list[tuple[str, AlarmRecord]]:
        changed: list[tuple[str, AlarmRecord]] = []
        with self._tx("raise and clear alarms") as cur:
            for step in changes.steps:
                if isinstance(step, AlarmRecord):
                    self._raise(cur, step, now_ns, changed)
                else:
                    self._clear(cur, step, now_ns, changed)
            if changes.start:
                cur.executemany(
                    "INSERT INTO alarm_conditions (rule_id, originator, since_ns, value)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (rule_id, originator) DO UPDATE"
                    " SET since_ns = excluded.since_ns, value = excluded.value",
                    [(s.rule_id, s.originator, s.since_ns, s.value) for s in changes.start],
                )
            if changes.stop:
                cur.executemany(
                    "DELETE FROM alarm_conditions WHERE rule_id = ? AND originator = ?",
                    list(changes.stop),
                )
        return changed

    def _raise(
        self, cur: Cursor, a: AlarmRecord, now_ns: int, changed: list[tuple[str, AlarmRecord]]
    ) -> None:
        cur.execute(
            "INSERT INTO alarms (tenant, rule_id, originator, gateway_id, severity, rank,"
            " kind, name, raised_ns, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING id",
            (
                a.tenant,
                a.rule_id,
                a.originator,
                a.gateway_id,
                a.severity,
                SEVERITY_RANK[a.severity],
                a.kind,
                a.name,
                a.raised_ns,
                self.dialect.json_value(a.details),
            ),
        )
        row = cur.fetchone()
        if row is not None:
            stored = dataclasses.replace(a, id=int(row[0]))
            changed.append(("raised", stored))
            self._notify(cur, stored, "raised", now_ns)

    def _clear(
        self, cur: Cursor, c: AlarmClear, now_ns: int, changed: list[tuple[str, AlarmRecord]]
    ) -> None:
        cur.execute(
            "UPDATE alarms SET cleared_ns = ?, details = ? WHERE rule_id = ? AND"
            f" originator = ? AND cleared_ns IS NULL RETURNING {_rows.ALARM_COLUMNS}",
            (c.cleared_ns, self.dialect.json_value(c.details), c.rule_id, c.originator),
        )
        row = cur.fetchone()
        if row is not None:
            stored = _rows.alarm(row, self.dialect.json_loads)
            changed.append(("cleared", stored))
            self._notify(cur, stored, "cleared", now_ns)

    def _notify(self, cur: Cursor, alarm: AlarmRecord, event: str, now_ns: int) -> None:
        cur.execute(
            "SELECT e.id FROM notify_endpoints e WHERE e.tenant = ? AND e.enabled AND"
            " e.min_rank <= ? AND EXISTS (SELECT 1 FROM alarm_rules r WHERE r.id = ? AND"
            " r.notify) ORDER BY e.id",
            (alarm.tenant, SEVERITY_RANK[alarm.severity], alarm.rule_id),
        )
        endpoints = [r[0] for r in cur.fetchall()]
        if not endpoints:
            return
        payload = self.dialect.json_value({"event": event, "alarm": alarm_json(alarm)})
        cur.executemany(
            "INSERT INTO notifications (tenant, endpoint_id, alarm_id, event, key, payload,"
            " created_ns, next_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [
                (
                    alarm.tenant,
                    e,
                    alarm.id,
                    event,
                    f"alarm-{alarm.id}-{event}-{e}",
                    payload,
                    now_ns,
                    now_ns,
                )
                for e in endpoints
            ],
        )

    def ack_alarm(self, tenant: str, alarm_id: int, by: str, now_ns: int) -> AlarmRecord | None:
        with self._tx("acknowledge an alarm") as cur:
            where, args = _where(tenant, id=alarm_id)
            cur.execute(
                f"UPDATE alarms SET acked_ns = ?, acked_by = ? WHERE {where} AND acked_ns IS NULL"
                f" RETURNING {_rows.ALARM_COLUMNS}",
                [now_ns, by, *args],
            )
            row = cur.fetchone()
        return None if row is None else _rows.alarm(row, self.dialect.json_loads)

    def alarms(
        self,
        tenant: str,
        *,
        status: str | None = None,
        gateway_id: str | None = None,
        severity: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
        alarm_id: int | None = None,
    ) -> list[AlarmRecord]:
        where, args = _where(tenant, gateway_id=gateway_id, severity=severity)
        sql = (
            f"SELECT {_rows.ALARM_COLUMNS} FROM alarms WHERE {where}"
            + {
                None: "",
                "open": " AND cleared_ns IS NULL",
                "active": " AND cleared_ns IS NULL AND acked_ns IS NULL",
                "acknowledged": " AND cleared_ns IS NULL AND acked_ns IS NOT NULL",
                "cleared": " AND cleared_ns IS NOT NULL",
            }[status]
        )
        for op, value in ((" AND id < ?", before_id), (" AND id = ?", alarm_id)):
            if value is not None:
                sql += op
                args.append(value)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [_rows.alarm(r, self.dialect.json_loads) for r in self._all(sql, args)]

    def alarm_counts(self, tenant: str) -> dict[str, dict[str, int]]:
        where, args = _where(tenant)
        sql = (
            "SELECT severity, acked_ns IS NOT NULL, count(*) FROM alarms"
            f" WHERE cleared_ns IS NULL AND {where} GROUP BY 1, 2"
        )
        out = {s: {"active": 0, "acknowledged": 0} for s in SEVERITY_RANK}
        for severity, acked, n in self._all(sql, args):
            out[severity]["acknowledged" if acked else "active"] += int(n)
        return out

    def alarm_summary(self, tenant: str) -> dict[str, tuple[int, str]]:
        where, args = _where(tenant)
        sql = (
            "SELECT gateway_id, count(*), max(rank) FROM alarms"
            f" WHERE cleared_ns IS NULL AND {where} GROUP BY 1"
        )
        return {r[0]: (int(r[1]), _rows.SEVERITY_NAME[int(r[2])]) for r in self._all(sql, args)}

    # -- notification endpoints and the outbox -------------------------------------------------

    def save_endpoint(self, endpoint: NotifyEndpointRecord) -> None:
        with self._tx("save a notification endpoint") as cur:
            cur.execute(
                "INSERT INTO notify_endpoints (id, tenant, name, kind, target, secret, min_rank,"
                " enabled, created_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO"
                " UPDATE SET name = excluded.name, target = excluded.target, min_rank ="
                " excluded.min_rank, enabled = excluded.enabled",
                (
                    endpoint.id,
                    endpoint.tenant,
                    endpoint.name,
                    endpoint.kind,
                    self.dialect.json_value(endpoint.target),
                    endpoint.secret,
                    SEVERITY_RANK[endpoint.min_severity],
                    endpoint.enabled,
                    endpoint.created_ns,
                ),
            )

    def endpoints(
        self, tenant: str, *, endpoint_id: str | None = None
    ) -> list[NotifyEndpointRecord]:
        where, args = _where(tenant, "e.", id=endpoint_id)
        sql = f"SELECT {_rows.ENDPOINT_COLUMNS} FROM notify_endpoints e WHERE {where} ORDER BY e.created_ns, e.id"
        return [_rows.endpoint(r, self.dialect.json_loads) for r in self._all(sql, args)]

    def delete_endpoint(self, tenant: str, endpoint_id: str) -> bool:
        with self._tx("delete a notification endpoint") as cur:
            where, args = _where(tenant, id=endpoint_id)
            cur.execute(f"DELETE FROM notify_endpoints WHERE {where}", args)
            if cur.rowcount == 0:
                return False
            cur.execute(
                "UPDATE notifications SET given_up = ?, last_error = ? WHERE endpoint_id = ?"
                " AND delivered_ns IS NULL",
                (True, "the endpoint was deleted", endpoint_id),
            )
            return True

    def enqueue_notification(self, note: NotificationRecord) -> None:
        with self._tx("queue a notification") as cur:
            cur.execute(
                "INSERT INTO notifications (tenant, endpoint_id, alarm_id, event, key, payload,"
                " created_ns, next_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    note.tenant,
                    note.endpoint_id,
                    note.alarm_id,
                    note.event,
                    note.key,
                    self.dialect.json_value(note.payload),
                    note.created_ns,
                    note.next_ns,
                ),
            )

    def claim_notifications(
        self, now_ns: int, lease_ns: int, limit: int
    ) -> list[tuple[NotificationRecord, NotifyEndpointRecord]]:
        with self._tx("claim notifications") as cur:
            cur.execute(
                "SELECT id FROM notifications WHERE delivered_ns IS NULL AND NOT given_up"
                " AND next_ns <= ? AND lease_ns <= ? ORDER BY next_ns, id LIMIT ?"
                f"{self.dialect.lock_row}",
                (now_ns, now_ns, limit),
            )
            ids = [int(r[0]) for r in cur.fetchall()]
            if not ids:
                return []
            marks = ", ".join("?" * len(ids))
            cur.execute(
                f"UPDATE notifications SET lease_ns = ? WHERE id IN ({marks})",
                [now_ns + lease_ns, *ids],
            )
            cur.execute(
                f"SELECT {_rows.NOTIFICATION_COLUMNS} FROM notifications WHERE id IN ({marks})", ids
            )
            notes = [_rows.notification(r, self.dialect.json_loads) for r in cur.fetchall()]
            cur.execute(
                f"SELECT {_rows.ENDPOINT_COLUMNS} FROM notify_endpoints e WHERE e.id IN"
                f" (SELECT endpoint_id FROM notifications WHERE id IN ({marks}))",
                ids,
            )
            endpoints = {
                e.id: e
                for e in (_rows.endpoint(r, self.dialect.json_loads) for r in cur.fetchall())
            }
        return sorted(
            ((n, endpoints[n.endpoint_id]) for n in notes if n.endpoint_id in endpoints),
            key=lambda pair: (pair[0].next_ns, pair[0].id),
        )

    def notification_sent(self, note_id: int, endpoint_id: str, now_ns: int) -> None:
        with self._tx("record a delivery") as cur:
            cur.execute(
                "UPDATE notifications SET delivered_ns = ?, attempts = attempts + 1,"
                " last_error = '' WHERE id = ?",
                (now_ns, note_id),
            )
            cur.execute(
                "UPDATE notify_endpoints SET delivered = delivered + 1, failures = 0,"
                " last_success_ns = ? WHERE id = ?",
                (now_ns, endpoint_id),
            )

    def notification_failed(
        self, note_id: int, endpoint_id: str, now_ns: int, next_ns: int | None, error: str
    ) -> None:
        error = error[:500]
        with self._tx("record a failed delivery") as cur:
            cur.execute(
                "UPDATE notifications SET attempts = attempts + 1, last_error = ?, next_ns = ?,"
                " lease_ns = 0, given_up = ? WHERE id = ?",
                (error, next_ns if next_ns is not None else now_ns, next_ns is None, note_id),
            )
            cur.execute(
                "UPDATE notify_endpoints SET failures = failures + 1, last_error = ?,"
                " last_failure_ns = ? WHERE id = ?",
                (error, now_ns, endpoint_id),
            )

    def notifications(
        self, tenant: str, *, endpoint_id: str | None = None, limit: int = 100
    ) -> list[NotificationRecord]:
        where, args = _where(tenant, endpoint_id=endpoint_id)
        sql = f"SELECT {_rows.NOTIFICATION_COLUMNS} FROM notifications WHERE {where} ORDER BY id DESC LIMIT ?"
        return [
            _rows.notification(r, self.dialect.json_loads) for r in self._all(sql, [*args, limit])
        ]
