"""Alarms: rules (operator), alarms and their acknowledgement, notification endpoints."""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from outpost_iot.collector._alarms import RuleIn, Severity, parse_rule, publish
from outpost_iot.collector._notify import check_webhook_url
from outpost_iot.collector.api._deps import (
    ApiServices,
    Operator,
    Principal,
    Services,
    Viewer,
    audit,
    unprocessable,
)
from outpost_iot.collector.api._limits import OffLoopJsonRoute
from outpost_iot.collector.stores import (
    ALL_TENANTS,
    AlarmRecord,
    AlarmRuleRecord,
    NotificationRecord,
    NotifyEndpointRecord,
    alarm_json,
)

router = APIRouter(prefix="/api/v1", tags=["alarms"], route_class=OffLoopJsonRoute)
Tenant = Annotated[
    str | None, Query(max_length=128, description="admin tokens: the tenant to act for")
]


def _tenant(who: Principal, tenant: str | None) -> str:
    """The tenant a change is made for: the token's own; an admin names one."""
    scope = who.scope(tenant)
    if scope == ALL_TENANTS:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            {"error": "tenant_required", "detail": "an admin token must say tenant=<tenant>"},
        )
    return scope


# -- rules --------------------------------------------------------------------------------------


class RuleOut(RuleIn):
    id: str
    tenant: str
    created: float
    updated: float
    actor: str


def _rule_out(record: AlarmRuleRecord) -> RuleOut:
    rule = parse_rule(record)
    return RuleOut(
        **rule.model_dump(),
        id=record.id,
        tenant=record.tenant,
        created=record.created_ns / 1e9,
        updated=record.updated_ns / 1e9,
        actor=record.actor,
    )


def _find_rule(svc: ApiServices, who: Principal, rule_id: str) -> AlarmRuleRecord:
    found = svc.documents.rules(who.scope(None), rule_id=rule_id)
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alarm rule {rule_id!r}")
    return found[0]


def _rules_changed(svc: ApiServices) -> None:
    if svc.alarm_evaluator is not None:
        svc.alarm_evaluator.refresh(force=True)  # this replica at once; the others within 2 s


@router.get("/alarm-rules")
def list_rules(svc: Services, who: Viewer, tenant: Tenant = None) -> list[RuleOut]:
    """The tenant's alarm rules (viewer)."""
    return [_rule_out(r) for r in svc.documents.rules(who.scope(tenant))]


@router.post(
    "/alarm-rules",
    status_code=201,
    responses={409: {"description": "the tenant has as many rules as it may"}},
)
def create_rule(
    body: RuleIn, svc: Services, who: Operator, request: Request, tenant: Tenant = None
) -> RuleOut:
    """Add an alarm rule (operator); a rule that does not validate is a 422 naming the field."""
    owner = _tenant(who, tenant)
    if len(svc.documents.rules(owner)) >= svc.alarms.max_rules:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            {
                "error": "too_many_rules",
                "detail": f"tenant {owner} has {svc.alarms.max_rules} rules, as many as it may"
                " ([alarms] max_rules); delete one first",
            },
        )
    now = time.time_ns()
    record = _record(f"rule-{secrets.token_hex(6)}", owner, body, now, now, who)
    svc.documents.save_rule(record)
    audit(svc, who, request, "alarm_rule.create", record.id, owner, name=body.name, **body.spec())
    _rules_changed(svc)
    return _rule_out(record)


def _record(
    rule_id: str, tenant: str, body: RuleIn, created: int, now: int, who: Principal
) -> AlarmRuleRecord:
    return AlarmRuleRecord(
        rule_id,
        tenant,
        body.name,
        body.severity,
        body.enabled,
        body.edge,
        body.notify,
        body.spec(),
        created,
        now,
        f"token:{who.token_id}",
    )


@router.get("/alarm-rules/{rule_id}")
def get_rule(rule_id: str, svc: Services, who: Viewer) -> RuleOut:
    return _rule_out(_find_rule(svc, who, rule_id))


@router.put("/alarm-rules/{rule_id}")
def replace_rule(
    rule_id: str, body: RuleIn, svc: Services, who: Operator, request: Request
) -> RuleOut:
    """Replace a rule (operator). Its open alarms stay; they clear by the new condition."""
    old = _find_rule(svc, who, rule_id)
    record = _record(rule_id, old.tenant, body, old.created_ns, time.time_ns(), who)
    svc.documents.save_rule(record)
    audit(
        svc, who, request, "alarm_rule.update", rule_id, old.tenant, name=body.name, **body.spec()
    )
    _rules_changed(svc)
    return _rule_out(record)


@router.delete("/alarm-rules/{rule_id}", status_code=204)
def delete_rule(rule_id: str, svc: Services, who: Operator, request: Request) -> Response:
    """Delete a rule (operator); its open alarms are cleared, without notifications."""
    old = _find_rule(svc, who, rule_id)
    svc.documents.delete_rule(old.tenant, rule_id)
    audit(svc, who, request, "alarm_rule.delete", rule_id, old.tenant, name=old.name)
    _rules_changed(svc)
    return Response(status_code=204)


# -- alarms -------------------------------------------------------------------------------------


class AlarmOut(BaseModel):
    id: int
    tenant: str
    rule_id: str
    name: str
    severity: str
    kind: str
    originator: str
    gateway_id: str
    status: Literal["active", "acknowledged", "cleared"]
    raised: float
    cleared: float | None
    acknowledged: float | None
    acknowledged_by: str | None
    details: dict[str, Any]


class AlarmCounts(BaseModel):
    severity: dict[str, dict[str, int]]  # severity → {"active": n, "acknowledged": n}
    gateways: dict[str, dict[str, Any]]  # gateway → {"open": n, "severity": the highest}


@router.get("/alarms")
def list_alarms(
    svc: Services,
    who: Viewer,
    status_: Annotated[
        Literal["open", "active", "acknowledged", "cleared"] | None, Query(alias="status")
    ] = None,
    gateway: Annotated[str | None, Query(max_length=64)] = None,
    severity: Literal["critical", "major", "minor", "warning"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    tenant: Tenant = None,
) -> list[AlarmOut]:
    """Alarms newest first (viewer): ``status=open`` for those not cleared; ``before=<id>``
    for the next page."""
    found = svc.documents.alarms(
        who.scope(tenant),
        status=status_,
        gateway_id=gateway,
        severity=severity,
        limit=limit,
        before_id=before,
    )
    return [AlarmOut(**alarm_json(a)) for a in found]


@router.get("/alarms/counts")
def alarm_counts(svc: Services, who: Viewer, tenant: Tenant = None) -> AlarmCounts:
    """Open alarms by severity, and per gateway (for the fleet's badges) (viewer)."""
    scope = who.scope(tenant)
    return AlarmCounts(
        severity=svc.documents.alarm_counts(scope),
        gateways={
            gw: {"open": n, "severity": sev}
            for gw, (n, sev) in svc.documents.alarm_summary(scope).items()
        },
    )


AlarmId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _alarm_or_404(svc: ApiServices, who: Principal, alarm_id: int) -> AlarmRecord:
    found = svc.documents.alarms(who.scope(None), alarm_id=alarm_id, limit=1)
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alarm {alarm_id}")
    return found[0]


@router.get("/alarms/{alarm_id}")
def get_alarm(alarm_id: AlarmId, svc: Services, who: Viewer) -> AlarmOut:
    """One alarm (viewer), as the list shows it."""
    return AlarmOut(**alarm_json(_alarm_or_404(svc, who, alarm_id)))


@router.post("/alarms/{alarm_id}/acknowledge")
def acknowledge(
    alarm_id: AlarmId,
    svc: Services,
    who: Operator,
    request: Request,
) -> AlarmOut:
    """Acknowledge an alarm (operator): someone is on it. It stays open until it clears."""
    acked = svc.documents.ack_alarm(who.scope(None), alarm_id, f"token:{who.token_id}", time.time_ns())  # fmt: skip
    if acked is None:  # acknowledged before (the same answer), or not there
        return AlarmOut(**alarm_json(_alarm_or_404(svc, who, alarm_id)))
    audit(svc, who, request, "alarm.acknowledge", str(alarm_id), acked.tenant, rule=acked.rule_id)
    publish(svc.stream, acked)
    return AlarmOut(**alarm_json(acked))


# -- notification endpoints ---------------------------------------------------------------------


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=128)]
    kind: Literal["webhook", "email"]
    url: Annotated[str, Field(max_length=2048)] | None = None
    to: Annotated[
        list[Annotated[str, Field(pattern=r"^[^@\s,<>]{1,64}@[^@\s,<>]{1,253}$")]],
        Field(max_length=20),
    ] = []
    min_severity: Severity = "warning"
    enabled: bool = True

    @model_validator(mode="after")
    def _target(self) -> EndpointIn:
        if self.kind == "webhook" and not self.url:
            raise ValueError("a webhook needs its url")
        if self.kind == "email" and not self.to:
            raise ValueError("an email endpoint needs at least one address in to")
        return self


class EndpointOut(BaseModel):
    id: str
    tenant: str
    name: str
    kind: str
    url: str | None
    to: list[str]
    min_severity: str
    enabled: bool
    created: float
    delivered: int
    failures: int  # failed attempts in a row
    last_error: str
    last_failure: float | None
    last_success: float | None
    pending: int


class EndpointCreated(EndpointOut):
    secret: str = Field(description="the webhook's HMAC-SHA256 key, shown only now")


class DeliveryOut(BaseModel):
    key: str
    event: str
    alarm_id: int | None
    created: float
    attempts: int
    delivered: float | None
    given_up: bool
    next_attempt: float | None  # None once delivered or given up
    last_error: str


def shown_url(url: str | None) -> str | None:
    """A webhook URL without its path and query: a Slack or Teams URL holds its token there,
    and the API never gives a secret back."""
    if url is None:
        return None
    parts = urlsplit(url)
    hidden = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{parts.netloc}{hidden}"


def _endpoint_out(e: NotifyEndpointRecord) -> dict[str, Any]:
    return {
        "id": e.id,
        "tenant": e.tenant,
        "name": e.name,
        "kind": e.kind,
        "url": shown_url(e.target.get("url")),
        "to": list(e.target.get("to", [])),
        "min_severity": e.min_severity,
        "enabled": e.enabled,
        "created": e.created_ns / 1e9,
        "delivered": e.delivered,
        "failures": e.failures,
        "last_error": e.last_error,
        "last_failure": None if e.last_failure_ns is None else e.last_failure_ns / 1e9,
        "last_success": None if e.last_success_ns is None else e.last_success_ns / 1e9,
        "pending": e.pending,
    }


def _find_endpoint(svc: ApiServices, who: Principal, endpoint_id: str) -> NotifyEndpointRecord:
    found = svc.documents.endpoints(who.scope(None), endpoint_id=endpoint_id)
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no notification endpoint {endpoint_id!r}")
    return found[0]


@router.get("/notification-endpoints")
def list_endpoints(svc: Services, who: Operator, tenant: Tenant = None) -> list[EndpointOut]:
    """Where the tenant's alarms go, with each one's deliveries and failures (operator)."""
    return [EndpointOut(**_endpoint_out(e)) for e in svc.documents.endpoints(who.scope(tenant))]


@router.post("/notification-endpoints", status_code=201)
def create_endpoint(
    body: EndpointIn, svc: Services, who: Operator, request: Request, tenant: Tenant = None
) -> EndpointCreated:
    """Add a webhook or an email endpoint (operator). A webhook's signing secret is in this
    answer only."""
    owner = _tenant(who, tenant)
    if body.kind == "webhook":
        problem = check_webhook_url(body.url or "", svc.alarms)
        if problem:
            raise unprocessable([("url", problem)])
        target: dict[str, Any] = {"url": body.url}
    else:
        if not svc.smtp_configured:
            raise unprocessable(
                [("kind", "this collector has no [smtp] server: email cannot be sent")]
            )
        target = {"to": body.to}
    if len(svc.documents.endpoints(owner)) >= svc.alarms.max_endpoints:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            {
                "error": "too_many_endpoints",
                "detail": f"tenant {owner} has {svc.alarms.max_endpoints} endpoints, as many as it may",
            },
        )
    record = NotifyEndpointRecord(
        id=f"ep-{secrets.token_hex(6)}",
        tenant=owner,
        name=body.name,
        kind=body.kind,
        target=target,
        secret="whsec_" + secrets.token_urlsafe(32),
        min_severity=body.min_severity,
        enabled=body.enabled,
        created_ns=time.time_ns(),
    )
    svc.documents.save_endpoint(record)
    audit(svc, who, request, "notification_endpoint.create", record.id, owner, name=body.name, kind=body.kind)  # fmt: skip
    return EndpointCreated(**_endpoint_out(record), secret=record.secret)


@router.delete("/notification-endpoints/{endpoint_id}", status_code=204)
def delete_endpoint(endpoint_id: str, svc: Services, who: Operator, request: Request) -> Response:
    e = _find_endpoint(svc, who, endpoint_id)
    svc.documents.delete_endpoint(e.tenant, endpoint_id)
    audit(svc, who, request, "notification_endpoint.delete", endpoint_id, e.tenant, name=e.name)
    return Response(status_code=204)


@router.post("/notification-endpoints/{endpoint_id}/test", status_code=202)
def test_endpoint(endpoint_id: str, svc: Services, who: Operator, request: Request) -> DeliveryOut:
    """Queue a test notification to the endpoint (operator); its delivery shows in
    ``GET .../deliveries`` like any other."""
    e = _find_endpoint(svc, who, endpoint_id)
    now = time.time_ns()
    key = f"test-{secrets.token_hex(8)}"
    svc.documents.enqueue_notification(
        NotificationRecord(
            0,
            e.tenant,
            e.id,
            None,
            "test",
            key,
            {"event": "test", "endpoint": e.name, "sent": now / 1e9},
            now,
            next_ns=now,
        )
    )
    audit(svc, who, request, "notification_endpoint.test", endpoint_id, e.tenant)
    if svc.deliveries is not None:
        svc.deliveries.wake()
    return DeliveryOut(key=key, event="test", alarm_id=None, created=now / 1e9, attempts=0, delivered=None, given_up=False, next_attempt=now / 1e9, last_error="")  # fmt: skip


@router.get("/notification-endpoints/{endpoint_id}/deliveries")
def deliveries(
    endpoint_id: str,
    svc: Services,
    who: Operator,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[DeliveryOut]:
    """The endpoint's latest notifications, newest first, with attempts and errors."""
    e = _find_endpoint(svc, who, endpoint_id)
    return [
        DeliveryOut(
            key=n.key,
            event=n.event,
            alarm_id=n.alarm_id,
            created=n.created_ns / 1e9,
            attempts=n.attempts,
            delivered=None if n.delivered_ns is None else n.delivered_ns / 1e9,
            given_up=n.given_up,
            next_attempt=None if n.delivered_ns is not None or n.given_up else n.next_ns / 1e9,
            last_error=n.last_error,
        )
        for n in svc.documents.notifications(e.tenant, endpoint_id=e.id, limit=limit)
    ]
