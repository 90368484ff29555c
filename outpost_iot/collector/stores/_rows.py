"""Rows of the document tables turned into records: one mapping for every SQL backend.

The SQL differs between SQLite and PostgreSQL; what a row means does not. ``json`` reads a JSON
column: SQLite keeps it as text (``orjson.loads``), PostgreSQL hands JSONB over decoded (the
identity).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from outpost_iot.collector._exceptions import TokenRefused
from outpost_iot.collector.stores._base import (
    SEVERITY_RANK,
    AlarmRecord,
    AlarmRuleRecord,
    AuditEntry,
    EnrollmentTokenRecord,
    FleetGateway,
    NotificationRecord,
    NotifyEndpointRecord,
    QuarantineEntry,
    RolloutMember,
    RolloutRecord,
)
from outpost_iot.wire import ConfigReport

Json = Callable[[Any], Any]

GATEWAY_COLUMNS = (
    "id",
    "tenant",
    "site",
    "state",
    "last_seen_ns",
    "enrolled_ns",
    "cert_not_after_ns",
    "revoked_ns",
    "hardware",
    "status",
    "clock_skew_s",
    "clock_flagged",
    "config_applied",
    "tags",
    "config_desired",
)
ROLLOUT_COLUMNS = (
    "id",
    "tenant",
    "actor",
    "created_ns",
    "status",
    "current_wave",
    "waves",
    "abort_percent",
    "timeout_s",
    "reason",
    "device_errors_fail",
)
QUARANTINE_COLUMNS = (
    "q.id, q.received_ns, q.gateway_id, q.topic, q.reason, q.detail, q.properties, q.raw,"
    " q.replayed_ns, q.replay_result, q.size"
)
CONFIG_REPORT_COLUMNS = "version, status, applied_version, reason, errors, ts"
MEMBER_COLUMNS = ("gateway_id", "wave", "version", "issued_ns", "envelope", "started_ns", "outcome")


def token(row: Sequence[Any]) -> EnrollmentTokenRecord:
    """``id, hash, tenant, site, created_ns, expires_ns, uses_total, uses_left, revoked``."""
    return EnrollmentTokenRecord(
        id=row[0],
        hash=row[1],
        tenant=row[2],
        site=row[3],
        created_ns=row[4],
        expires_ns=row[5],
        uses_total=row[6],
        uses_left=row[7],
        revoked=bool(row[8]),
    )


def usable_token(row: Sequence[Any], now_ns: int) -> EnrollmentTokenRecord:
    """The token of ``row`` if it may enroll one more gateway; else :class:`TokenRefused`."""
    record = token(row)
    who = {"tenant": record.tenant, "token_id": record.id}
    if record.revoked:
        raise TokenRefused("revoked", "this enrollment token was revoked by an operator", **who)
    if record.expires_ns <= now_ns:
        raise TokenRefused("expired", "this enrollment token has expired", **who)
    if record.uses_left <= 0:
        raise TokenRefused(
            "used_up", f"this enrollment token was already used {record.uses_total} time(s)", **who
        )
    return record


def quarantine_entry(r: Sequence[Any], json: Json) -> QuarantineEntry:
    """:data:`QUARANTINE_COLUMNS`."""
    return QuarantineEntry(
        id=r[0],
        received_ns=r[1],
        gateway_id=r[2],
        topic=r[3],
        reason=r[4],
        detail=r[5],
        properties=json(r[6]),
        raw=bytes(r[7]),
        replayed_ns=r[8],
        replay_result=r[9],
        size=r[10],
    )


def audit_entry(r: Sequence[Any], json: Json) -> AuditEntry:
    """``id, ts, actor, tenant, action, target, source, detail``."""
    return AuditEntry(
        id=r[0],
        ts=r[1],
        actor=r[2],
        tenant=r[3],
        action=r[4],
        target=r[5],
        source=r[6],
        detail=json(r[7]),
    )


def fleet_gateway(row: Sequence[Any], json: Json) -> FleetGateway:
    """A row of :data:`GATEWAY_COLUMNS`."""
    item = dict(zip(GATEWAY_COLUMNS, row, strict=True))
    for key in ("hardware", "status", "tags"):
        item[key] = json(item[key])
    item["clock_flagged"] = bool(item["clock_flagged"])
    return FleetGateway(**item)


def config_report(row: Sequence[Any], json: Json) -> ConfigReport:
    """A row of :data:`CONFIG_REPORT_COLUMNS`."""
    return ConfigReport(
        version=row[0],
        status=row[1],
        applied_version=row[2],
        reason=row[3],
        errors=json(row[4]),
        ts=row[5],
    )


def rollout(row: Sequence[Any]) -> RolloutRecord:
    """A row of :data:`ROLLOUT_COLUMNS`."""
    item = dict(zip(ROLLOUT_COLUMNS, row, strict=True))
    item["device_errors_fail"] = bool(item["device_errors_fail"])
    return RolloutRecord(**item)


def rollout_values(r: RolloutRecord) -> tuple[Any, ...]:
    """The values of :data:`ROLLOUT_COLUMNS`, in order."""
    return tuple(getattr(r, column) for column in ROLLOUT_COLUMNS)


def member(row: Sequence[Any]) -> RolloutMember:
    """A row of :data:`MEMBER_COLUMNS`."""
    item = dict(zip(MEMBER_COLUMNS, row, strict=True))
    item["envelope"] = bytes(item["envelope"])
    return RolloutMember(**item)


def member_values(m: RolloutMember) -> tuple[Any, ...]:
    """The values of :data:`MEMBER_COLUMNS`, in order."""
    return tuple(getattr(m, column) for column in MEMBER_COLUMNS)


# Alarms (collector.stores._alarm_store).
ALARM_COLUMNS = (
    "id, tenant, rule_id, originator, gateway_id, severity, kind, name, raised_ns, details,"
    " cleared_ns, acked_ns, acked_by"
)
RULE_COLUMNS = (
    "id, tenant, name, severity, enabled, edge, notify, spec, created_ns, updated_ns, actor"
)
ENDPOINT_COLUMNS = (
    "e.id, e.tenant, e.name, e.kind, e.target, e.secret, e.min_rank, e.enabled, e.created_ns,"
    " e.delivered, e.failures, e.last_error, e.last_failure_ns, e.last_success_ns,"
    " (SELECT count(*) FROM notifications n WHERE n.endpoint_id = e.id"
    " AND n.delivered_ns IS NULL AND NOT n.given_up)"
)
NOTIFICATION_COLUMNS = (
    "id, tenant, endpoint_id, alarm_id, event, key, payload, created_ns, attempts, next_ns,"
    " delivered_ns, last_error, given_up"
)
SEVERITY_NAME = {rank: name for name, rank in SEVERITY_RANK.items()}


def alarm(row: Sequence[Any], json: Json) -> AlarmRecord:
    """:data:`ALARM_COLUMNS`."""
    return AlarmRecord(
        id=int(row[0]),
        tenant=row[1],
        rule_id=row[2],
        originator=row[3],
        gateway_id=row[4],
        severity=row[5],
        kind=row[6],
        name=row[7],
        raised_ns=int(row[8]),
        details=json(row[9]),
        cleared_ns=row[10],
        acked_ns=row[11],
        acked_by=row[12],
    )


def alarm_rule(row: Sequence[Any], json: Json) -> AlarmRuleRecord:
    """:data:`RULE_COLUMNS`."""
    return AlarmRuleRecord(
        id=row[0],
        tenant=row[1],
        name=row[2],
        severity=row[3],
        enabled=bool(row[4]),
        edge=bool(row[5]),
        notify=bool(row[6]),
        spec=json(row[7]),
        created_ns=int(row[8]),
        updated_ns=int(row[9]),
        actor=row[10],
    )


def endpoint(row: Sequence[Any], json: Json) -> NotifyEndpointRecord:
    """:data:`ENDPOINT_COLUMNS`."""
    return NotifyEndpointRecord(
        id=row[0],
        tenant=row[1],
        name=row[2],
        kind=row[3],
        target=json(row[4]),
        secret=row[5],
        min_severity=SEVERITY_NAME[int(row[6])],
        enabled=bool(row[7]),
        created_ns=int(row[8]),
        delivered=int(row[9]),
        failures=int(row[10]),
        last_error=row[11],
        last_failure_ns=row[12],
        last_success_ns=row[13],
        pending=int(row[14]),
    )


def notification(row: Sequence[Any], json: Json) -> NotificationRecord:
    """:data:`NOTIFICATION_COLUMNS`."""
    return NotificationRecord(
        id=int(row[0]),
        tenant=row[1],
        endpoint_id=row[2],
        alarm_id=row[3],
        event=row[4],
        key=row[5],
        payload=json(row[6]),
        created_ns=int(row[7]),
        attempts=int(row[8]),
        next_ns=int(row[9]),
        delivered_ns=row[10],
        last_error=row[11],
        given_up=bool(row[12]),
    )
