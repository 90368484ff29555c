"""Dependencies of the API routes: the services, and who is calling."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from outpost_iot.collector._alarms import AlarmEvaluator
from outpost_iot.collector._config import AlarmsConfig
from outpost_iot.collector._configs import ConfigService
from outpost_iot.collector._enrollment import EnrollmentService, hash_token
from outpost_iot.collector._ingest import IngestMetrics
from outpost_iot.collector._notify import Deliveries
from outpost_iot.collector._rollouts import RolloutService
from outpost_iot.collector._stream import Hub
from outpost_iot.collector.stores import (
    ALL_TENANTS,
    ApiTokenRecord,
    AuditEntry,
    DocumentStore,
    FleetGateway,
    QuarantineEntry,
    SessionRecord,
    TimeSeriesStore,
)

Role = Literal["viewer", "operator", "admin"]
_RANK = {"viewer": 0, "operator": 1, "admin": 2}


@dataclass(frozen=True)
class ApiServices:
    documents: DocumentStore
    enrollment: EnrollmentService
    timeseries: TimeSeriesStore | None = None
    metrics: IngestMetrics | None = None
    broker_connected: Callable[[], bool] | None = None  # the collector's MQTT session is up
    # Validate and ingest a quarantined message again: (result, detail); see Ingestor.replay.
    replay: Callable[[QuarantineEntry, int], tuple[str, str]] | None = None
    configs: ConfigService | None = None  # desired configs (needs [pki])
    rollouts: RolloutService | None = None
    shared_state: Callable[[], None] | None = None  # pings Redis; raises when it is down
    # Called with a newly enrolled gateway's id (the broker's roster registers it).
    on_enrolled: Callable[[str], None] | None = None
    stream: Hub | None = None  # the live stream (GET /api/v1/stream)
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)  # rule and endpoint limits
    alarm_evaluator: AlarmEvaluator | None = None  # re-reads rules when they change
    deliveries: Deliveries | None = None  # the notification loop (its counters, wake())
    smtp_configured: bool = False  # email endpoints can be made


@dataclass(frozen=True)
class Principal:
    token_id: str
    tenant: str
    role: Role

    def can_see(self, tenant: str) -> bool:
        return self.tenant in (ALL_TENANTS, tenant)

    def scope(self, requested: str | None) -> str:
        """The tenant a read is filtered on: the token's own; an admin (``*``) may narrow it."""
        if self.tenant == ALL_TENANTS:
            return requested or ALL_TENANTS
        if requested not in (None, self.tenant):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "this token reads its own tenant only; leave out the tenant parameter",
            )
        return self.tenant


def unprocessable(
    problems: list[tuple[str, str]],
    *,
    error: str = "invalid_request",
    detail: str = "the request does not validate",
) -> HTTPException:
    """A 422 whose body names each field and its problem (never the value sent: it may hold
    a secret); every refusal of the API's input has this shape."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        {
            "error": error,
            "detail": detail,
            "problems": [{"field": f, "problem": p} for f, p in problems],
        },
    )


def find_gateway(svc: ApiServices, tenant: str, gateway_id: str) -> FleetGateway | None:
    """The gateway's fleet row if ``tenant`` (or an admin's ``*``) may see it."""
    for g in svc.documents.gateways(tenant):
        if g.id == gateway_id:
            return g
    return None


def gateway_or_404(svc: ApiServices, who: Principal, gateway_id: str) -> FleetGateway:
    """The caller's gateway; another tenant's is indistinguishable from one that does not
    exist (404)."""
    found = find_gateway(svc, who.scope(None), gateway_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no gateway {gateway_id!r}")
    return found


def services(request: Request) -> ApiServices:
    svc: ApiServices = request.app.state.services
    return svc


Services = Annotated[ApiServices, Depends(services)]
_bearer = HTTPBearer(auto_error=False)


SESSION_COOKIE = "outpost_session"
_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


def session_principal(
    svc: ApiServices, request: Request
) -> tuple[SessionRecord, ApiTokenRecord] | None:
    """The console session the request's cookie names, if it is valid."""
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id or len(session_id) > 128:
        return None
    return svc.documents.session(hash_token(session_id), time.time_ns())


def principal(
    svc: Services,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Who calls: a bearer API token, or a console session (its cookie) whose changes carry
    the session's X-CSRF-Token."""
    if credentials is None:
        found = session_principal(svc, request)
        if found is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing API token: send 'Authorization: Bearer <token>' (or sign in to the console)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        session, owner = found
        if request.method not in _SAFE_METHODS and not secrets.compare_digest(
            request.headers.get("x-csrf-token", ""), session.csrf
        ):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "a change made with a console session needs its X-CSRF-Token header",
            )
        return Principal(owner.id, owner.tenant, owner.role)  # type: ignore[arg-type]
    record = svc.documents.api_token(hash_token(credentials.credentials))
    if record is None or record.revoked_ns is not None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "unknown or revoked API token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Principal(record.id, record.tenant, record.role)  # type: ignore[arg-type]


def requires(role: Role):  # type: ignore[no-untyped-def]
    """A dependency: the caller's token has at least ``role``."""

    def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if _RANK[who.role] < _RANK[role]:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the {role} role")
        return who

    return check


Viewer = Annotated[Principal, Depends(requires("viewer"))]
Operator = Annotated[Principal, Depends(requires("operator"))]


def audit(
    svc: ApiServices,
    who: Principal,
    request: Request,
    action: str,
    target: str,
    tenant: str,
    **detail: object,
) -> None:
    """Record an operator action in the audit log: who, what, on what, when, from where."""
    source = request.client.host if request.client else "unknown"
    svc.documents.audit(
        AuditEntry(time.time_ns(), f"token:{who.token_id}", tenant, action, target, source, detail)
    )
