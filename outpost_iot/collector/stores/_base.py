"""The store interfaces. The embedded SQLite stores implement them; later backends will too."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from outpost_iot.wire import ConfigReport, Event, FieldValue, GatewayState


@dataclass(frozen=True, slots=True)
class SeriesWrite:
    """Points of one series to write: ``(ts, fields)`` pairs."""

    measurement: str
    tags: dict[str, str]
    points: list[tuple[int, dict[str, FieldValue]]]
    tenant: str = ""  # the tenant of the gateway that sent it


@dataclass(frozen=True, slots=True)
class StoredPoint:
    measurement: str
    tags: dict[str, str]
    ts: int
    fields: dict[str, FieldValue]


ALL_TENANTS = "*"  # an admin's view: every tenant
AGGREGATES = ("mean", "min", "max", "sum", "count", "last")


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """Bucketed aggregates of one field of one measurement, for one tenant (or ``*``)."""

    tenant: str
    measurement: str
    field: str
    start_ns: int
    end_ns: int
    bucket_ns: int
    aggregate: str = "mean"
    tags: dict[str, str] = dataclasses.field(default_factory=dict)  # these tag values only
    group_by: tuple[str, ...] = ()  # tags whose values split the result into groups
    max_points: int = 10_000
    # Work limits: series × buckets aggregated (where a backend works that way), and seconds.
    max_cost: int = 5_000_000
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class SeriesGroup:
    """One group of a query's result: its tag values and ``(bucket_start_ns, value)`` points."""

    tags: dict[str, str]
    points: list[tuple[int, FieldValue]]


@dataclass(frozen=True, slots=True)
class LatestValue:
    measurement: str
    tags: dict[str, str]
    field: str
    ts: int
    value: FieldValue


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """One stored series, for pickers: its measurement, tags and field names."""

    measurement: str
    tags: dict[str, str]
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A stored batch, for deduplication: retransmits of it are acked but not stored again."""

    gateway_id: str
    stream_id: str
    seq: int
    readings: int
    received_ns: int


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    received_ns: int
    topic: str
    reason: str
    detail: str
    raw: bytes
    gateway_id: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    id: int | None = None
    replayed_ns: int | None = None  # when an operator replayed it
    replay_result: str | None = None  # stored, duplicate, or why it still fails
    # The message's size as received; ``raw`` is empty when the gateway's quarantine budget
    # was used up (the entry still says what arrived and why it was refused).
    size: int = 0


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An operator action: who (API token id, or ``cli:<user>``), what, on what, from where."""

    ts: int
    actor: str
    tenant: str
    action: str
    target: str
    source: str  # the client's address, or "cli"
    detail: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


@dataclass(frozen=True, slots=True)
class GatewayRecord:
    id: str
    state: str
    last_seen_ns: int | None
    status: dict[str, Any]
    clock_skew_s: float | None
    clock_flagged: bool


@dataclass(frozen=True, slots=True)
class EnrollmentTokenRecord:
    """An enrollment token as stored: only the hash of the token itself."""

    id: str
    hash: str
    tenant: str
    site: str
    created_ns: int
    expires_ns: int
    uses_total: int
    uses_left: int
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    serial: str  # hex
    gateway_id: str
    issued_ns: int
    not_after_ns: int
    revoked_ns: int | None = None
    public_key_pem: str = ""  # the gateway's key: desired-config secrets are sealed to it


@dataclass(frozen=True, slots=True)
class DesiredConfigRecord:
    """One version of a gateway's desired config, as signed and sealed (no secret in clear)."""

    gateway_id: str
    version: int
    issued_ns: int
    actor: str
    envelope: bytes


@dataclass(frozen=True, slots=True)
class GatewayRegistration:
    """What enrollment registers: the gateway and its first certificate."""

    gateway_id: str
    hardware: dict[str, Any]
    certificate: CertificateRecord
    certificate_pem: bytes


@dataclass(frozen=True, slots=True)
class ApiTokenRecord:
    id: str
    hash: str
    tenant: str  # "*" for an admin token that works across tenants
    role: str  # viewer, operator, admin
    name: str
    created_ns: int
    revoked_ns: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRecord:
    """A console sign-in: the browser holds the session id in a cookie, the store its hash.
    It acts with its API token's tenant and role while both are valid."""

    hash: str
    token_id: str
    created_ns: int
    expires_ns: int
    csrf: str  # sent back in X-CSRF-Token with every change made with the session


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetGateway:
    """A gateway as the fleet sees it: identity, state, certificate and config versions."""

    id: str
    tenant: str
    site: str
    state: str
    last_seen_ns: int | None
    enrolled_ns: int | None
    cert_not_after_ns: int | None
    revoked_ns: int | None  # decommissioned then
    hardware: dict[str, Any]
    status: dict[str, Any]  # the gateway's last state report, less its state
    clock_skew_s: float | None
    clock_flagged: bool
    config_applied: int | None  # the version the gateway last reported applied
    tags: list[str]
    config_desired: int | None  # the newest desired version


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutRecord:
    """A rollout: a config change to a tenant's gateways in waves."""

    id: str
    tenant: str
    actor: str
    created_ns: int
    waves: int
    abort_percent: float  # abort when more of a wave failed or timed out than this
    timeout_s: float  # a gateway's time to report on its config
    device_errors_fail: bool = False  # "applied, but a device refuses it" counts as failed
    status: str = "running"  # running, paused, aborted, completed
    current_wave: int = 0
    reason: str = ""  # why it was aborted


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutMember:
    """One gateway of a rollout: its wave and its envelope, sealed when the rollout was made."""

    gateway_id: str
    wave: int
    version: int
    issued_ns: int
    envelope: bytes
    started_ns: int | None = None
    outcome: str | None = None  # applied, failed, timed_out, skipped


SEVERITIES = ("critical", "major", "minor", "warning")  # highest first
SEVERITY_RANK = {"warning": 1, "minor": 2, "major": 3, "critical": 4}


@dataclass(frozen=True, slots=True)
class AlarmRuleRecord:
    """A tenant's alarm rule; ``spec`` is its condition and scope as the API validated them."""

    id: str
    tenant: str
    name: str
    severity: str
    enabled: bool
    edge: bool  # evaluated on the gateway too (it travels in the signed config)
    notify: bool  # its alarms go to the tenant's notification endpoints
    spec: dict[str, Any]
    created_ns: int
    updated_ns: int
    actor: str

    @property
    def kind(self) -> str:
        return str(self.spec["condition"]["kind"])


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    """One alarm: a rule's condition holding for one originator (a gateway, a device, a series).
    At most one alarm per rule and originator is open (not cleared) at a time."""

    id: int  # 0 until stored
    tenant: str
    rule_id: str
    originator: str
    gateway_id: str
    severity: str
    kind: str
    name: str  # the rule's name when it was raised
    raised_ns: int
    details: dict[str, Any]
    cleared_ns: int | None = None
    acked_ns: int | None = None
    acked_by: str | None = None

    @property
    def status(self) -> str:
        if self.cleared_ns is not None:
            return "cleared"
        return "acknowledged" if self.acked_ns is not None else "active"


@dataclass(frozen=True, slots=True)
class AlarmClear:
    rule_id: str
    originator: str
    cleared_ns: int
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AlarmCondition:
    """A condition that holds but has not held long enough yet (or a drop counter's snapshot)."""

    rule_id: str
    originator: str
    since_ns: int
    value: float = 0.0


@dataclass(frozen=True, slots=True)
class AlarmChanges:
    """What one evaluation decided, applied in one transaction."""

    steps: Sequence[AlarmRecord | AlarmClear] = ()  # raises and clears, applied in order
    start: Sequence[AlarmCondition] = ()  # conditions now holding (or snapshots to keep)
    stop: Sequence[tuple[str, str]] = ()  # (rule, originator) whose condition ended


@dataclass(frozen=True, slots=True)
class NotifyEndpointRecord:
    """Where a tenant's alarms are sent: a webhook (``target = {"url": ...}``) or email
    (``target = {"to": [...]}``)."""

    id: str
    tenant: str
    name: str
    kind: str  # webhook, email
    target: dict[str, Any]
    secret: str  # the webhook's HMAC key (never shown again after it is made)
    min_severity: str
    enabled: bool
    created_ns: int
    delivered: int = 0
    failures: int = 0  # failed attempts in a row (0 after a delivery)
    last_error: str = ""
    last_failure_ns: int | None = None
    last_success_ns: int | None = None
    pending: int = 0  # notifications not delivered yet


@dataclass(frozen=True, slots=True)
class NotificationRecord:
    """One message to one endpoint, delivered at least once; ``key`` identifies it to the
    receiver (repeats carry the same key)."""

    id: int
    tenant: str
    endpoint_id: str
    alarm_id: int | None
    event: str  # raised, cleared, test
    key: str
    payload: dict[str, Any]
    created_ns: int
    attempts: int = 0
    next_ns: int = 0
    delivered_ns: int | None = None
    last_error: str = ""
    given_up: bool = False


class TimeSeriesStore(Protocol):
    """Readings. Writes are idempotent: the same series, field and timestamp overwrite.

    Every read takes the tenant: a store never answers across tenants unless asked for
    :data:`ALL_TENANTS` (an admin's token, the operator's CLI).
    """

    def write(self, series: Sequence[SeriesWrite]) -> None: ...

    def query(
        self,
        measurement: str,
        *,
        tenant: str = ALL_TENANTS,
        tags: dict[str, str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> list[StoredPoint]:
        """Points in ``[start_ns, end_ns)``, oldest first."""
        ...

    def aggregate(self, query: SeriesQuery) -> list[SeriesGroup]:
        """Raises :class:`~collector._exceptions.TooManyPoints` past ``query.max_points``,
        :class:`~collector._exceptions.QueryTooCostly` past ``query.max_cost`` and
        :class:`~collector._exceptions.QueryTimeout` past ``query.timeout_s``."""
        ...

    def latest(
        self, tenant: str, measurement: str, *, tags: dict[str, str] | None = None
    ) -> list[LatestValue]: ...

    def devices(self, tenant: str, gateway_id: str) -> dict[str, tuple[list[str], int]]: ...

    def catalog(
        self, tenant: str, *, tags: dict[str, str] | None = None, limit: int = 10_000
    ) -> list[SeriesInfo]:
        """The tenant's series whose tags include ``tags``, at most ``limit`` of them, ordered
        by measurement (what a data explorer offers to pick from)."""
        ...

    def refresh_rollups(self, raw_horizon_ns: int = 0) -> int: ...

    def expire(
        self, *, raw_before_ns: int, rollup_5m_before_ns: int, rollup_1h_before_ns: int
    ) -> dict[str, int]: ...

    def count_points(self, measurement: str | None = None) -> int: ...

    def duplicate_points(self, measurement: str | None = None) -> int:
        """Copies kept beyond the first of one series' field at one timestamp: 0 for a store
        whose writes are idempotent (row level, which ``count_points`` and ``query`` cannot
        show: they merge by timestamp). For tests and benchmarks: it reads every point."""
        ...

    def not_kept(self) -> dict[str, int]:
        """What this backend could not keep since it was opened, by reason (counted, never
        silent; the collector's metrics show it): empty for a backend that keeps everything."""
        ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


class IngestRecords(Protocol):
    """What the ingest keeps besides readings: stored batches (for deduplication), events,
    gateway state and clock facts, quarantined messages."""

    def seen(self, gateway_id: str, stream_id: str, seq: int) -> bool: ...

    def record(self, batches: Sequence[BatchRecord], events: Sequence[tuple[str, Event]]) -> None:
        """Store events and mark batches as stored, in one transaction."""
        ...

    def prune_seen(self, older_than_ns: int) -> int: ...

    def events(self, gateway_id: str) -> list[Event]: ...

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
    ) -> list[tuple[str, Event]]: ...

    def availability(self, tenant: str, gateway_id: str) -> dict[str, tuple[str, int]]: ...

    def save_state(self, gateway_id: str, state: GatewayState, seen_ns: int) -> None: ...

    def set_clock(self, gateway_id: str, skew_s: float, flagged: bool) -> None: ...

    def boot_offset(self, gateway_id: str, boot_id: str) -> int | None: ...

    def set_boot_offset(self, gateway_id: str, boot_id: str, offset_ns: int) -> None: ...

    def gateway(self, gateway_id: str) -> GatewayRecord | None: ...

    def quarantine(self, entry: QuarantineEntry) -> int: ...

    def quarantine_usage(self, gateway_id: str) -> tuple[int, int]:
        """``(entries, raw bytes kept)`` in one gateway's quarantine."""
        ...

    def quarantined(
        self,
        *,
        limit: int = 100,
        tenant: str = ALL_TENANTS,
        gateway_id: str | None = None,
        reason: str | None = None,
        before_id: int | None = None,
        entry_id: int | None = None,
    ) -> list[QuarantineEntry]: ...

    def mark_replayed(self, entry_id: int, now_ns: int, result: str) -> None: ...

    def expire(
        self, *, events_before_ns: int, quarantine_before_ns: int, audit_before_ns: int
    ) -> dict[str, int]: ...


class Identities(Protocol):
    """Who may speak: gateways and their tenants, enrollment tokens, certificates, API tokens."""

    def gateway_exists(self, gateway_id: str) -> bool: ...

    def gateway_tenant(self, gateway_id: str) -> str | None: ...

    def gateways(self, tenant: str | None = None) -> list[FleetGateway]: ...

    def set_gateway_tags(self, gateway_id: str, tags: list[str]) -> None: ...

    def create_enrollment_token(self, token: EnrollmentTokenRecord) -> None: ...

    def enrollment_tokens(self, tenant: str | None = None) -> list[EnrollmentTokenRecord]: ...

    def revoke_enrollment_token(self, token_id: str, tenant: str | None = None) -> bool: ...

    def redeem_enrollment_token(
        self,
        token_hash: str,
        now_ns: int,
        register: Callable[[EnrollmentTokenRecord], GatewayRegistration],
    ) -> GatewayRegistration: ...

    def record_certificate(self, cert: CertificateRecord) -> None: ...

    def certificate(self, serial: str) -> CertificateRecord | None: ...

    def revoke_gateway(self, gateway_id: str, now_ns: int) -> int: ...

    def revoked_certificates(self) -> list[tuple[str, int]]: ...

    def revoked_gateways(self) -> set[str]: ...

    def gateway_public_key(self, gateway_id: str) -> str | None: ...

    def create_api_token(self, token: ApiTokenRecord) -> None: ...

    def api_token(self, token_hash: str) -> ApiTokenRecord | None: ...

    def revoke_api_token(self, token_id: str, now_ns: int) -> bool: ...

    def create_session(self, session: SessionRecord) -> None: ...

    def session(
        self, session_hash: str, now_ns: int
    ) -> tuple[SessionRecord, ApiTokenRecord] | None:
        """The session if it has not expired, with its API token if that is not revoked."""
        ...

    def delete_session(self, session_hash: str) -> bool: ...

    def expire_sessions(self, now_ns: int) -> int: ...


class ConfigsAndRollouts(Protocol):
    """Desired configs (signed and sealed, with their history), reports, rollouts."""

    def add_desired_config(self, record: DesiredConfigRecord) -> None:
        """Raises :class:`~collector._exceptions.StoreError` if that version exists already."""
        ...

    def desired_configs(self, gateway_id: str, *, limit: int = 20) -> list[DesiredConfigRecord]:
        """Newest first."""
        ...

    def save_config_report(self, gateway_id: str, report: ConfigReport) -> None: ...

    def config_report(self, gateway_id: str) -> ConfigReport | None: ...

    def create_rollout(self, rollout: RolloutRecord, members: Sequence[RolloutMember]) -> None: ...

    def rollouts(
        self, tenant: str, *, rollout_id: str | None = None, status: str | None = None
    ) -> list[RolloutRecord]:
        """Newest first."""
        ...

    def rollout_members(self, rollout_id: str) -> list[RolloutMember]: ...

    def update_rollout(
        self,
        rollout_id: str,
        *,
        status: str | None = None,
        current_wave: int | None = None,
        reason: str | None = None,
    ) -> None: ...

    def update_rollout_member(
        self,
        rollout_id: str,
        gateway_id: str,
        *,
        started_ns: int | None = None,
        outcome: str | None = None,
    ) -> None: ...


class AuditLog(Protocol):
    """Operator actions: who, what, on what, when, from where."""

    def audit(self, entry: AuditEntry) -> None: ...

    def audit_log(
        self, tenant: str, *, limit: int = 100, before_id: int | None = None
    ) -> list[AuditEntry]: ...


class Alarms(Protocol):
    """Alarm rules, alarms and their conditions, notification endpoints and the outbox of
    notifications (written in the same transaction as the alarm they tell of)."""

    def save_rule(self, rule: AlarmRuleRecord) -> None: ...

    def rules(self, tenant: str, *, rule_id: str | None = None) -> list[AlarmRuleRecord]: ...

    def delete_rule(self, tenant: str, rule_id: str) -> bool:
        """Also clears its open alarms (without notifications) and forgets its conditions."""
        ...

    def rules_stamp(self) -> tuple[int, int]:
        """(count, newest change): changes when any rule is saved or deleted."""
        ...

    def open_alarms(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], AlarmRecord]: ...

    def open_alarms_of(self, rule_ids: Sequence[str]) -> list[AlarmRecord]: ...

    def open_alarms_of_kind(self, kind: str) -> list[AlarmRecord]:
        """Every open alarm of rules of this kind (``threshold``), all tenants."""
        ...

    def all_conditions(self) -> list[AlarmCondition]: ...

    def conditions(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], AlarmCondition]: ...

    def conditions_of(self, rule_ids: Sequence[str]) -> list[AlarmCondition]: ...

    def apply_alarms(self, changes: AlarmChanges, now_ns: int) -> list[tuple[str, AlarmRecord]]:
        """Raise and clear (in the order given), start and stop, in one transaction; each alarm raised or cleared that
        notifies gets one notification per endpoint of its tenant whose minimum severity it
        meets. A raise for a rule and originator already open, or a clear of one not open, does
        nothing. Returns what changed: ("raised" | "cleared", the alarm as stored)."""
        ...

    def ack_alarm(self, tenant: str, alarm_id: int, by: str, now_ns: int) -> AlarmRecord | None: ...

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
        """Newest first; ``status`` is open (active or acknowledged), active, acknowledged or
        cleared; ``alarm_id``: that one alarm, if it is the tenant's."""
        ...

    def alarm_counts(self, tenant: str) -> dict[str, dict[str, int]]:
        """Open alarms: severity → {"active": n, "acknowledged": n}."""
        ...

    def alarm_summary(self, tenant: str) -> dict[str, tuple[int, str]]:
        """Per gateway with open alarms: (how many, the highest severity)."""
        ...

    def save_endpoint(self, endpoint: NotifyEndpointRecord) -> None: ...

    def endpoints(
        self, tenant: str, *, endpoint_id: str | None = None
    ) -> list[NotifyEndpointRecord]: ...

    def delete_endpoint(self, tenant: str, endpoint_id: str) -> bool: ...

    def enqueue_notification(self, note: NotificationRecord) -> None: ...

    def claim_notifications(
        self, now_ns: int, lease_ns: int, limit: int
    ) -> list[tuple[NotificationRecord, NotifyEndpointRecord]]:
        """Notifications due, leased to the caller until ``now + lease`` so that another
        replica does not send them meanwhile."""
        ...

    def notification_sent(self, note_id: int, endpoint_id: str, now_ns: int) -> None: ...

    def notification_failed(
        self, note_id: int, endpoint_id: str, now_ns: int, next_ns: int | None, error: str
    ) -> None:
        """Another attempt at ``next_ns``; ``None``: given up (kept, with the error)."""
        ...

    def notifications(
        self, tenant: str, *, endpoint_id: str | None = None, limit: int = 100
    ) -> list[NotificationRecord]:
        """Newest first."""
        ...


class DocumentStore(IngestRecords, Identities, ConfigsAndRollouts, AuditLog, Alarms, Protocol):
    """Everything but readings, by role; one backend serves every role."""

    def ping(self) -> None: ...

    def close(self) -> None: ...
