"""Alarm rules and their evaluation (docs/alarms.md).

A rule is a condition (a threshold on a field, no data, a gateway offline, a device
unavailable, a backlog, drops, a flagged clock, a certificate expiring, a config that failed)
and a scope (site, tag, gateway, device, tags). An alarm is one rule holding for one
*originator*: a series (threshold, no data), a device, or a gateway. Its lifecycle: raised
(active), acknowledged by an operator, cleared when the condition ends.

- **Thresholds** are evaluated as batches are stored, before the batch is marked stored: a
  collector that dies in between gets the batch again and evaluates it again, which raises
  nothing twice (the store keeps one open alarm per rule and originator).
- **Everything else** is evaluated on a schedule from what the gateways report.
- **Replicas** evaluate independently and agree through the store: a raise that another replica
  made first does nothing, and notifications are written with the change (see
  ``stores._alarm_store``), so each change is notified once.

A threshold rule has a clear level (hysteresis): ``above: 8, clear: 6`` raises above 8 and
clears below 6, so a value wandering around 8 does not flap. ``for_s`` asks for the condition to
hold that long (by the readings' own times) before the alarm is raised.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from outpost_iot import wire
from outpost_iot.collector._configs import ConfigService
from outpost_iot.collector._stream import Hub
from outpost_iot.collector.stores import (
    ALL_TENANTS,
    AlarmChanges,
    AlarmClear,
    AlarmCondition,
    AlarmRecord,
    AlarmRuleRecord,
    DocumentStore,
    FleetGateway,
    SeriesWrite,
    TimeSeriesStore,
    alarm_json,
)
from outpost_iot.wire import series_originator

_log = logging.getLogger("outpost.collector.alarms")
_MODEL = ConfigDict(extra="forbid", frozen=True)
_NAME = r"^[A-Za-z0-9_.\-]{1,128}$"
_TAG = r"^[A-Za-z0-9_.:-]{1,64}$"
MAX_HOLD_S = 30 * 86400
Severity = Literal["critical", "major", "minor", "warning"]
Name = Annotated[str, Field(pattern=_NAME)]
Seconds = Annotated[float, Field(ge=0, le=MAX_HOLD_S)]
Level = Annotated[float, Field(allow_inf_nan=False, ge=-1e15, le=1e15)]


class Threshold(BaseModel):
    """A field above (or below) a level, for ``for_s`` seconds; cleared past ``clear``."""

    model_config = _MODEL
    kind: Literal["threshold"]
    measurement: Name
    field: Name
    above: Level | None = None
    below: Level | None = None
    clear: Level | None = Field(None, description="the clear level (default: the threshold)")
    for_s: Seconds = 0.0

    @model_validator(mode="after")
    def _one_level(self) -> Threshold:
        if (self.above is None) == (self.below is None):
            raise ValueError("give one of above or below")
        if self.clear is not None:
            if self.above is not None and self.clear > self.above:
                raise ValueError("clear must not be above the 'above' level")
            if self.below is not None and self.clear < self.below:
                raise ValueError("clear must not be below the 'below' level")
        return self

    def level(self) -> float:
        return self.above if self.above is not None else self.below  # type: ignore[return-value]

    def clear_level(self) -> float:
        return self.clear if self.clear is not None else self.level()


class NoData(BaseModel):
    """No reading of a measurement (a field of it) from a series for ``for_s`` seconds."""

    model_config = _MODEL
    kind: Literal["no_data"]
    measurement: Name
    field: Name | None = None
    for_s: Annotated[float, Field(ge=60, le=MAX_HOLD_S)] = 900.0


class GatewayOffline(BaseModel):
    model_config = _MODEL
    kind: Literal["gateway_offline"]
    for_s: Seconds = 300.0


class DeviceUnavailable(BaseModel):
    model_config = _MODEL
    kind: Literal["device_unavailable"]
    for_s: Seconds = 300.0


class Backlog(BaseModel):
    """The gateway's oldest unsent reading older than ``older_than_s``."""

    model_config = _MODEL
    kind: Literal["backlog"]
    older_than_s: Annotated[float, Field(gt=0, le=MAX_HOLD_S)] = 3600.0


class Drops(BaseModel):
    """Readings dropped on the gateway (of one reason, or any) rose by ``at_least`` within
    ``window_s``; cleared after a window without a new drop."""

    model_config = _MODEL
    kind: Literal["drops"]
    reason: Annotated[str, Field(pattern=r"^[a-z_]{1,64}$")] | None = None
    at_least: Annotated[int, Field(ge=1, le=wire.limits.INT64_MAX)] = 1
    window_s: Annotated[float, Field(ge=60, le=MAX_HOLD_S)] = 3600.0


class ClockFlagged(BaseModel):
    model_config = _MODEL
    kind: Literal["clock_flagged"]


class CertificateExpiring(BaseModel):
    model_config = _MODEL
    kind: Literal["certificate_expiring"]
    days: Annotated[float, Field(gt=0, le=3650)] = 14.0


class ConfigFailed(BaseModel):
    """A desired config rejected or rolled back by the gateway; cleared when one applies."""

    model_config = _MODEL
    kind: Literal["config_failed"]


Condition = Annotated[
    Threshold
    | NoData
    | GatewayOffline
    | DeviceUnavailable
    | Backlog
    | Drops
    | ClockFlagged
    | CertificateExpiring
    | ConfigFailed,
    Field(discriminator="kind"),
]


class Scope(BaseModel):
    """What a rule watches: every given key must match (none given: all of the tenant)."""

    model_config = _MODEL
    site: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    tag: Annotated[str, Field(pattern=_TAG)] | None = None  # a gateway tag
    gateway: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    device: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    tags: Annotated[
        dict[
            Annotated[str, Field(pattern=_NAME)],
            Annotated[str, Field(min_length=1, max_length=256)],
        ],
        Field(max_length=16),
    ] = {}


class RuleIn(BaseModel):
    """An alarm rule as an API caller or the CLI gives it."""

    model_config = _MODEL
    name: Annotated[str, Field(min_length=1, max_length=128)]
    severity: Severity = "major"
    enabled: bool = True
    notify: bool = True
    edge: bool = Field(False, description="also evaluated on the gateway (thresholds only)")
    condition: Condition
    scope: Scope = Scope()

    @model_validator(mode="after")
    def _edge_thresholds_only(self) -> RuleIn:
        if self.edge and not isinstance(self.condition, Threshold):
            raise ValueError("only threshold rules can run at the edge")
        return self

    def spec(self) -> dict[str, Any]:
        return {
            "condition": self.condition.model_dump(exclude_none=True),
            "scope": self.scope.model_dump(exclude_none=True, exclude_defaults=True),
        }


def parse_rule(record: AlarmRuleRecord) -> RuleIn:
    return RuleIn.model_validate(
        {
            "name": record.name,
            "severity": record.severity,
            "enabled": record.enabled,
            "notify": record.notify,
            "edge": record.edge,
            **record.spec,
        }
    )


# -- evaluation -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Compiled:
    """A rule ready to evaluate: its scope and threshold as plain values (read per reading)."""

    record: AlarmRuleRecord
    rule: RuleIn
    id: str = ""
    site: str | None = None
    tag: str | None = None
    gateway: str | None = None
    device: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    field: str = ""
    up: bool = True
    level: float = 0.0
    clear_at: float = 0.0
    hold_ns: int = 0

    def __post_init__(self) -> None:
        s = self.rule.scope
        self.id = self.record.id
        self.site, self.tag, self.gateway, self.device = s.site, s.tag, s.gateway, s.device
        self.tags = tuple(s.tags.items())
        cond = self.rule.condition
        if isinstance(cond, Threshold):
            self.field = cond.field
            self.up = cond.above is not None
            self.level, self.clear_at = cond.level(), cond.clear_level()
            self.hold_ns = int(cond.for_s * 1e9)

    def gateway_in_scope(self, g: _Gateway) -> bool:
        s = self.rule.scope
        return (
            g.tenant == self.record.tenant
            and (s.site is None or g.site == s.site)
            and (s.tag is None or s.tag in g.tags)
            and (s.gateway is None or g.id == s.gateway)
        )

    def series_in_scope(self, tags: dict[str, str]) -> bool:
        s = self.rule.scope
        return (s.device is None or tags.get("device") == s.device) and all(
            tags.get(k) == v for k, v in s.tags.items()
        )

    def alarm(self, originator: str, gateway: str, at_ns: int, **details: Any) -> AlarmRecord:
        r = self.record
        return AlarmRecord(
            0, r.tenant, r.id, originator, gateway, r.severity, r.kind, r.name, at_ns, details
        )


@dataclass(slots=True)
class _Candidates:
    """The threshold rules of one tenant and measurement, indexed by the gateway or device
    their scope names: a reading is checked against its own few, not against every rule."""

    by_gateway: dict[str, list[_Compiled]] = field(default_factory=dict)
    by_device: dict[str, list[_Compiled]] = field(default_factory=dict)
    rest: list[_Compiled] = field(default_factory=list)

    def add(self, c: _Compiled) -> None:
        scope = c.rule.scope
        if scope.gateway is not None:
            self.by_gateway.setdefault(scope.gateway, []).append(c)
        elif scope.device is not None:
            self.by_device.setdefault(scope.device, []).append(c)
        else:
            self.rest.append(c)

    def of(self, gateway: str, device: str | None) -> list[_Compiled]:
        found = self.by_gateway.get(gateway, [])
        if device is not None:
            found = found + self.by_device.get(device, [])
        return found + self.rest if self.rest else found


@dataclass(frozen=True, slots=True)
class _Gateway:
    id: str
    tenant: str
    site: str
    tags: tuple[str, ...]


def _ts(point: tuple[int, Any]) -> int:
    return point[0]


@dataclass
class AlarmMetrics:
    rules: int = 0
    evaluations: int = 0  # readings checked against a rule
    raised: int = 0
    cleared: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # evaluations that failed, by where


class AlarmEvaluator:
    """Holds the enabled rules (re-read when any changes, on any replica) and evaluates them."""

    RULES_CHECK_S = 2.0
    GATEWAYS_TTL_S = 10.0
    STATE_TTL_S = 2.0

    def __init__(
        self,
        *,
        docs: DocumentStore,
        timeseries: TimeSeriesStore | None = None,
        stream: Hub | None = None,
        clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """``on_change``: called after alarms were raised or cleared (wakes the deliveries)."""
        self._docs = docs
        self._on_change = on_change
        self._ts = timeseries
        self._stream = stream
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked = -math.inf
        self._thresholds: dict[tuple[str, str], _Candidates] = {}
        self._config_rules: list[_Compiled] = []
        self._scheduled: list[_Compiled] = []
        self._gateways: dict[str, _Gateway] = {}
        self._gateways_read = -math.inf
        self._gateways_stale = True
        self._open: set[tuple[str, str]] = set()
        self._held: dict[tuple[str, str], int] = {}
        self._edge: dict[str, _Compiled] = {}
        self._synced: dict[str, bytes] = {}  # gateway → the edge rules its config carries
        self._state_read = -math.inf
        self.metrics = AlarmMetrics()

    # -- rules ----------------------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the rules if any changed (checked at most every ``RULES_CHECK_S``)."""
        now = self._monotonic()
        if not force and now - self._checked < self.RULES_CHECK_S:
            return
        self._checked = now
        stamp = self._docs.rules_stamp()
        if stamp == self._stamp and not force:
            return
        thresholds: dict[tuple[str, str], _Candidates] = {}
        edge: dict[str, _Compiled] = {}
        config_rules, scheduled = [], []
        count = 0
        for record in self._docs.rules(ALL_TENANTS):
            if not record.enabled:
                continue
            try:
                rule = parse_rule(record)
            except ValueError as exc:  # a row no longer valid (edited by hand): skipped, said
                _log.error("alarm rule %s cannot be read, skipped: %s", record.id, exc)
                continue
            count += 1
            c = _Compiled(record, rule)
            cond = rule.condition
            if isinstance(cond, Threshold):
                if rule.edge:
                    edge[record.id] = c
                # An edge rule too: the gateway's own raise and the collector's are the same
                # alarm (one per rule and originator), whichever comes first.
                thresholds.setdefault((record.tenant, cond.measurement), _Candidates()).add(c)
            elif isinstance(cond, ConfigFailed):
                config_rules.append(c)
            else:
                scheduled.append(c)
        with self._lock:
            self._thresholds, self._config_rules, self._scheduled = (
                thresholds,
                config_rules,
                scheduled,
            )
            self._stamp = stamp
            self._edge = edge
        self.metrics.rules = count

    def _gateway(self, gateway_id: str) -> _Gateway | None:
        """A gateway's tenant, site and tags: read again every ``GATEWAYS_TTL_S`` (tags or
        site may change), and at once (at most every second) for one not known yet."""
        g = self._gateways.get(gateway_id)
        if g is None or self._gateways_stale:
            age = self._monotonic() - self._gateways_read
            self._gateways_stale = age > self.GATEWAYS_TTL_S
            if self._gateways_stale or (g is None and age > 1.0):
                self._read_gateways(self._docs.gateways(None))
                g = self._gateways.get(gateway_id)
        return g

    def _read_gateways(self, gateways: Iterable[FleetGateway]) -> None:
        self._gateways = {g.id: _Gateway(g.id, g.tenant, g.site, tuple(g.tags)) for g in gateways}
        self._gateways_read = self._monotonic()
        self._gateways_stale = False

    # -- as batches are stored --------------------------------------------------------------------

    def on_stored(self, writes: Sequence[SeriesWrite]) -> None:
        """Evaluate threshold rules over readings just written (before the batch is marked
        stored). Raises :class:`StoreError` if the store fails (the batch is then nacked)."""
        self.refresh()
        index = self._thresholds
        if not index:
            return
        open_, held = self._threshold_state()
        # Checked once per batch, not per reading: known gateways are looked up in memory.
        self._gateways_stale = self._monotonic() - self._gateways_read > self.GATEWAYS_TTL_S
        steps: list[AlarmRecord | AlarmClear] = []
        is_open: dict[tuple[str, str], bool] = {}
        since: dict[tuple[str, str], int | None] = {}
        checked = 0
        for w in writes:
            candidates = index.get((w.tenant, w.measurement))
            if candidates is None:
                continue
            tags = w.tags
            gateway_id = tags.get("gateway", "")
            device = tags.get("device")
            rules = candidates.of(gateway_id, device)
            if not rules:
                continue
            g = self._gateway(gateway_id)
            if g is None or g.tenant != w.tenant:
                continue
            points = w.points if len(w.points) < 2 else sorted(w.points, key=_ts)
            originator = ""
            for c in rules:
                if (
                    (c.site is not None and c.site != g.site)
                    or (c.tag is not None and c.tag not in g.tags)
                    or (c.gateway is not None and c.gateway != gateway_id)
                    or (c.device is not None and c.device != device)
                    or (c.tags and any(tags.get(k) != v for k, v in c.tags))
                ):
                    continue
                if not originator:
                    originator = series_originator(gateway_id, tags)
                key = (c.id, originator)
                opened = is_open.get(key, key in open_)
                pending = since[key] if key in since else held.get(key)
                name, up, level, clear_at = c.field, c.up, c.level, c.clear_at
                for ts, fields in points:
                    v = fields.get(name)
                    if v is None or isinstance(v, bool | str):
                        continue
                    checked += 1
                    if opened:
                        if (v < clear_at) if up else (v > clear_at):
                            steps.append(AlarmClear(c.id, originator, ts, {"value": v}))
                            opened, pending = False, None
                    elif (v > level) if up else (v < level):
                        if pending is None:
                            pending = ts
                        if ts - pending >= c.hold_ns:
                            steps.append(c.alarm(originator, gateway_id, ts, value=v, level=level, since=pending / 1e9))  # fmt: skip
                            opened, pending = True, None
                    else:
                        pending = None
                is_open[key], since[key] = opened, pending
        self.metrics.evaluations += checked
        if not since:
            return
        start: dict[tuple[str, str], AlarmCondition] = {}
        stop: set[tuple[str, str]] = set()
        for key, pending in since.items():
            before = held.get(key)
            if pending is None and before is not None:
                stop.add(key)
            elif pending is not None and before != pending:
                start[key] = AlarmCondition(key[0], key[1], pending)
        self._apply(AlarmChanges(steps, list(start.values()), sorted(stop)))
        # What this replica now knows (the store's answer may differ: another replica raised
        # first, or cleared it; then the next read says so).
        for step in steps:
            if isinstance(step, AlarmRecord):
                open_.add((step.rule_id, step.originator))
            else:
                open_.discard((step.rule_id, step.originator))
        for key in stop:
            held.pop(key, None)
        for held_cond in start.values():
            held[(held_cond.rule_id, held_cond.originator)] = held_cond.since_ns

    def _threshold_state(self) -> tuple[set[tuple[str, str]], dict[tuple[str, str], int]]:
        """Open threshold alarms and held conditions, read at most every ``STATE_TTL_S``: a
        reading is evaluated in memory, and only a change goes to the store. Another replica's
        raise or clear is seen at the next read (a raise it made first is not made twice: the
        store keeps one open alarm per rule and originator)."""
        now = self._monotonic()
        if now - self._state_read > self.STATE_TTL_S:
            self._open = {(a.rule_id, a.originator) for a in self._docs.open_alarms_of_kind("threshold")}  # fmt: skip
            self._held = {(c.rule_id, c.originator): c.since_ns for c in self._docs.all_conditions()}  # fmt: skip
            self._state_read = now
        return self._open, self._held

    def on_edge_events(self, events: Sequence[tuple[str, str, wire.Event]]) -> None:
        """Alarms a gateway raised or cleared itself (``alarm`` events of its edge rules), at
        their own time. A gateway speaks only for itself: an event for another gateway's
        originator, a rule of another tenant, a rule not for the edge or out of its scope is
        ignored and counted (``outpost_alarm_errors_total{where="edge"}``); the event itself is
        kept with the others."""
        found = [(t, gw, e) for t, gw, e in events if e.type == wire.ALARM_EVENT]
        if not found:
            return
        self.refresh()
        open_, _ = self._threshold_state()
        steps: list[AlarmRecord | AlarmClear] = []
        for tenant, gateway_id, e in found:
            body = e.body
            c = self._edge.get(str(body.get("rule")))
            originator = body.get("originator")
            g = self._gateway(gateway_id)
            state = body.get("state")
            if (
                c is None
                or g is None
                or c.record.tenant != tenant
                or not c.gateway_in_scope(g)
                or not isinstance(originator, str)
                or len(originator) > wire.MAX_ORIGINATOR_CHARS
                or not (originator == gateway_id or originator.startswith(gateway_id + "/"))
                or state not in ("raised", "cleared")
            ):
                self.metrics.errors["edge"] = self.metrics.errors.get("edge", 0) + 1
                continue
            details: dict[str, Any] = {
                k: body[k]
                for k in ("value", "level", "since")
                if isinstance(body.get(k), int | float) and not isinstance(body.get(k), bool)
            }
            details["at_edge"] = True
            if state == "raised":
                steps.append(c.alarm(originator, gateway_id, e.ts, **details))
                open_.add((c.id, originator))
            else:
                steps.append(AlarmClear(c.id, originator, e.ts, details))
                open_.discard((c.id, originator))
        self._apply(AlarmChanges(steps))

    def sync_edge_rules(self, configs: ConfigService) -> int:
        """Give each gateway the edge rules whose scope includes it, in its desired config
        (``alarms.rules``): a new signed version when they change. Returns how many gateways
        were given a new version."""
        self.refresh()
        rules = sorted(self._edge.values(), key=lambda c: c.id)
        changed = 0
        for g in self._docs.gateways(None):
            if g.revoked_ns:
                continue
            gw = _Gateway(g.id, g.tenant, g.site, tuple(g.tags))
            wanted = [_edge_rule(c) for c in rules if c.gateway_in_scope(gw)]
            key = orjson.dumps(wanted, option=orjson.OPT_SORT_KEYS)
            if self._synced.get(g.id) == key:
                continue
            try:
                current = configs.current(g.id)
                have = (current.get("alarms") or {}).get("rules") or []
                if orjson.dumps(have, option=orjson.OPT_SORT_KEYS) != key and (current or wanted):
                    alarms = {**(current.get("alarms") or {}), "rules": wanted}
                    configs.set_desired(g.id, {**current, "alarms": alarms}, "alarms")
                    changed += 1
            except Exception as exc:  # one gateway's config must not stop the others
                self.metrics.errors["edge_sync"] = self.metrics.errors.get("edge_sync", 0) + 1
                _log.error("cannot give gateway %s its edge alarm rules: %s", g.id, exc)
                continue
            self._synced[g.id] = key
        return changed

    def on_config_report(self, tenant: str, gateway_id: str, report: wire.ConfigReport) -> None:
        """A config rejected or rolled back raises ``config_failed``; one applied clears it."""
        self.refresh()
        rules = self._config_rules
        if not rules:
            return
        g = self._gateway(gateway_id)
        if g is None:
            return
        steps: list[AlarmRecord | AlarmClear] = []
        now = self._clock()
        for c in rules:
            if not c.gateway_in_scope(g):
                continue
            if report.status == "applied":
                steps.append(AlarmClear(c.id, gateway_id, now, {"version": report.applied_version}))  # fmt: skip
            else:
                steps.append(
                    c.alarm(
                        gateway_id,
                        gateway_id,
                        report.ts or now,
                        version=report.version,
                        status=report.status,
                        reason=report.reason,
                        errors=report.errors[:10],
                    )
                )
        self._apply(AlarmChanges(steps))

    # -- on a schedule ------------------------------------------------------------------------------

    def evaluate_scheduled(self) -> None:
        """Every rule not evaluated at ingest, over every gateway (and series) in its scope."""
        self.refresh(force=False)
        rules = self._scheduled
        gateways = self._docs.gateways(None)
        self._read_gateways(gateways)
        if not rules:
            return
        now = self._clock()
        open_ = {(a.rule_id, a.originator): a for a in self._docs.open_alarms_of([c.id for c in rules])}  # fmt: skip
        held = {
            (x.rule_id, x.originator): x
            for x in self._docs.conditions_of([c.id for c in rules if c.record.kind == "drops"])
        }
        # Each rule looks at its own tenant's gateways only, and at its own open alarms.
        by_tenant: dict[str, list[tuple[FleetGateway, _Gateway]]] = {}
        for g in gateways:
            if not g.revoked_ns:
                by_tenant.setdefault(g.tenant, []).append((g, self._gateways[g.id]))
        open_of: dict[str, list[AlarmRecord]] = {}
        for alarm in open_.values():
            open_of.setdefault(alarm.rule_id, []).append(alarm)
        changes = _Changes()
        for c in rules:
            facts = by_tenant.get(c.record.tenant, [])
            in_scope = [g for g, gw in facts if c.gateway_in_scope(gw)]
            cond = c.rule.condition
            try:
                if isinstance(cond, NoData):
                    self._no_data(c, cond, in_scope, now, open_, changes)
                elif isinstance(cond, DeviceUnavailable):
                    self._devices(c, cond, in_scope, now, open_, changes)
                elif isinstance(cond, Drops):
                    for g in in_scope:
                        self._drops(c, cond, g, now, open_, held, changes)
                else:
                    for g in in_scope:
                        holds, details = _gateway_condition(cond, g, now)
                        changes.decide(c, g.id, g.id, holds, open_, now, details)
            except Exception as exc:  # one rule's failure must not stop the others
                self.metrics.errors["scheduled"] = self.metrics.errors.get("scheduled", 0) + 1
                _log.exception("alarm rule %s could not be evaluated: %s", c.id, exc)
            # A gateway that left the scope (decommissioned, retagged): its alarm clears.
            scoped = {g.id for g in in_scope}
            for alarm in open_of.get(c.id, []):
                if alarm.gateway_id not in scoped:
                    changes.steps.append(AlarmClear(c.id, alarm.originator, now, {"reason": "out of scope"}))  # fmt: skip
        self._apply(AlarmChanges(changes.steps, changes.start, changes.stop))

    def _no_data(
        self,
        c: _Compiled,
        cond: NoData,
        gateways: list[FleetGateway],
        now: int,
        open_: dict[tuple[str, str], AlarmRecord],
        changes: _Changes,
    ) -> None:
        if self._ts is None:
            return
        ids = {g.id for g in gateways}
        newest: dict[tuple[str, str], tuple[str, int]] = {}  # key → (gateway, ts)
        for v in self._ts.latest(c.record.tenant, cond.measurement, tags=dict(c.rule.scope.tags) or None):  # fmt: skip
            gw = v.tags.get("gateway", "")
            if gw not in ids or not c.series_in_scope(v.tags):
                continue
            if cond.field is not None and v.field != cond.field:
                continue
            key = (c.id, series_originator(gw, v.tags))
            newest[key] = (gw, max(v.ts, newest.get(key, (gw, 0))[1]))
        limit = int(cond.for_s * 1e9)
        for (_rule_id, originator), (gw, ts) in newest.items():
            holds = now - ts >= limit
            changes.decide(c, originator, gw, holds, open_, now, {"last_reading": ts / 1e9})

    def _devices(
        self,
        c: _Compiled,
        cond: DeviceUnavailable,
        gateways: list[FleetGateway],
        now: int,
        open_: dict[tuple[str, str], AlarmRecord],
        changes: _Changes,
    ) -> None:
        limit = int(cond.for_s * 1e9)
        for g in gateways:
            for device, (state, since) in self._docs.availability(g.tenant, g.id).items():
                if c.rule.scope.device is not None and device != c.rule.scope.device:
                    continue
                holds = state == "offline" and now - since >= limit
                details = {"device": device, "state": state, "since": since / 1e9}
                changes.decide(c, f"{g.id}/device={device}", g.id, holds, open_, now, details)

    def _drops(
        self,
        c: _Compiled,
        cond: Drops,
        g: FleetGateway,
        now: int,
        open_: dict[tuple[str, str], AlarmRecord],
        held: dict[tuple[str, str], AlarmCondition],
        changes: _Changes,
    ) -> None:
        drops = g.status.get("drops") or {}
        if not isinstance(drops, dict):
            return
        counted = [v for k, v in drops.items() if cond.reason in (None, k) and isinstance(v, int)]
        total = float(sum(counted))
        key = (c.id, g.id)
        snap = held.get(key)
        window = int(cond.window_s * 1e9)
        if snap is None or total < snap.value:  # first look, or the agent restarted
            changes.start.append(AlarmCondition(c.id, g.id, now, total))
            return
        rose = total - snap.value
        if rose >= cond.at_least:
            changes.decide(c, g.id, g.id, True, open_, now, {"dropped": int(rose), "reason": cond.reason or "any"})  # fmt: skip
            changes.start.append(AlarmCondition(c.id, g.id, now, total))
        elif now - snap.since_ns >= window:
            changes.decide(c, g.id, g.id, False, open_, now, {"dropped": int(rose)})
            changes.start.append(AlarmCondition(c.id, g.id, now, total))

    # -- applying -----------------------------------------------------------------------------------

    def _apply(self, changes: AlarmChanges) -> None:
        if not (changes.steps or changes.start or changes.stop):
            return
        done = self._docs.apply_alarms(changes, self._clock())
        for what, alarm in done:
            if what == "raised":
                self.metrics.raised += 1
            else:
                self.metrics.cleared += 1
            _log.info(
                "alarm %s %s: %s (%s) on %s",
                alarm.id,
                what,
                wire.printable(alarm.name),
                alarm.severity,
                wire.printable(alarm.originator),
            )
            publish(self._stream, alarm)
        if done and self._on_change is not None:
            self._on_change()


def _edge_rule(c: _Compiled) -> dict[str, Any]:
    """A collector rule as the gateway evaluates it (``wire.EdgeRule``)."""
    cond: Threshold = c.rule.condition  # type: ignore[assignment]
    out: dict[str, Any] = {
        "id": c.id,
        "name": c.record.name,
        "severity": c.record.severity,
        "measurement": cond.measurement,
        "field": cond.field,
        "for_s": cond.for_s,
    }
    for k in ("above", "below", "clear"):
        if getattr(cond, k) is not None:
            out[k] = getattr(cond, k)
    if c.device is not None:
        out["device"] = c.device
    if c.tags:
        out["tags"] = dict(c.tags)
    return out


async def run_schedule(
    evaluator: AlarmEvaluator, interval_s: float, configs: ConfigService | None = None
) -> None:
    """The scheduled rules, every ``interval_s``, until cancelled; with ``configs``, the
    edge rules given to the gateways too."""
    while True:
        try:
            await asyncio.to_thread(evaluator.evaluate_scheduled)
            if configs is not None:
                await asyncio.to_thread(evaluator.sync_edge_rules, configs)
        except Exception as exc:  # a store outage must not stop the loop
            evaluator.metrics.errors["scheduled"] = evaluator.metrics.errors.get("scheduled", 0) + 1
            _log.error("scheduled alarm rules could not be evaluated: %s", exc)
        await asyncio.sleep(interval_s)


def publish(hub: Hub | None, alarm: AlarmRecord) -> None:
    """An alarm raised, acknowledged or cleared, to the live stream."""
    if hub is not None:
        hub.publish("alarm", alarm.tenant, alarm.gateway_id, alarm_json(alarm))


@dataclass
class _Changes:
    steps: list[AlarmRecord | AlarmClear] = field(default_factory=list)
    start: list[AlarmCondition] = field(default_factory=list)
    stop: list[tuple[str, str]] = field(default_factory=list)

    def decide(
        self,
        c: _Compiled,
        originator: str,
        gateway_id: str,
        holds: bool,
        open_: dict[tuple[str, str], AlarmRecord],
        now: int,
        details: dict[str, Any],
    ) -> None:
        key = (c.id, originator)
        if holds and key not in open_:
            self.steps.append(c.alarm(originator, gateway_id, now, **details))
        elif not holds and key in open_:
            self.steps.append(AlarmClear(c.id, originator, now, details))


def _gateway_condition(cond: Any, g: FleetGateway, now: int) -> tuple[bool, dict[str, Any]]:
    """Whether a gateway-wide condition holds for ``g``, and what to say about it."""
    if isinstance(cond, GatewayOffline):
        seen = g.last_seen_ns or g.enrolled_ns or now
        silent = (now - seen) / 1e9
        # Offline by its will, or silent for longer than the rule allows plus its state
        # period (a will can be lost with the broker).
        holds = (g.state == "offline" and silent >= cond.for_s) or silent >= cond.for_s + 120
        return holds, {"last_seen": seen / 1e9, "state": g.state}
    if isinstance(cond, Backlog):
        oldest = g.status.get("oldest_unsent_s")
        holds = isinstance(oldest, int | float) and oldest >= cond.older_than_s
        return holds, {"oldest_unsent_s": oldest, "backlog_readings": g.status.get("backlog_readings")}  # fmt: skip
    if isinstance(cond, ClockFlagged):
        return g.clock_flagged, {"clock_skew_s": g.clock_skew_s}
    if isinstance(cond, CertificateExpiring):
        if g.cert_not_after_ns is None:
            return False, {}
        left = (g.cert_not_after_ns - now) / 86400e9
        return left <= cond.days, {"expires": g.cert_not_after_ns / 1e9, "days_left": round(left, 1)}  # fmt: skip
    raise TypeError(f"not a gateway condition: {cond!r}")
