"""Operations: the quarantine (list, replay) and the audit log."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi import Path as PathParam
from pydantic import BaseModel

from outpost_iot.collector.api._deps import Operator, Services, audit
from outpost_iot.collector.api._limits import OffLoopJsonRoute

router = APIRouter(prefix="/api/v1", tags=["operations"], route_class=OffLoopJsonRoute)


class QuarantinedOut(BaseModel):
    id: int
    received: float
    gateway_id: str
    topic: str
    reason: str  # malformed, invalid_schema, oversized, gateway_mismatch, …
    detail: str
    bytes: int
    replayed: float | None
    replay_result: str | None


class QuarantinePage(BaseModel):
    entries: list[QuarantinedOut]
    next_before: int | None  # pass as before= for the next (older) page; null at the end


@router.get("/quarantine")
def quarantine(
    svc: Services,
    who: Operator,
    gateway: Annotated[str | None, Query(max_length=64)] = None,
    reason: Annotated[str | None, Query(max_length=64)] = None,
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    tenant: Annotated[str | None, Query(max_length=128, description="admin tokens only")] = None,
) -> QuarantinePage:
    """Messages that failed validation, newest first, with the reason (operator)."""
    found = svc.documents.quarantined(
        tenant=who.scope(tenant),
        gateway_id=gateway,
        reason=reason,
        before_id=before,
        limit=limit + 1,
    )
    page = found[:limit]
    return QuarantinePage(
        entries=[
            QuarantinedOut(
                id=e.id or 0,
                received=e.received_ns / 1e9,
                gateway_id=e.gateway_id,
                topic=e.topic,
                reason=e.reason,
                detail=e.detail,
                bytes=e.size or len(e.raw),
                replayed=None if e.replayed_ns is None else e.replayed_ns / 1e9,
                replay_result=e.replay_result,
            )
            for e in page
        ],
        next_before=page[-1].id if len(found) > limit and page else None,
    )


class ReplayOut(BaseModel):
    id: int
    result: Literal["stored", "duplicate", "still_invalid", "retry"]
    detail: str


@router.post("/quarantine/{entry_id}/replay")
def replay(
    entry_id: Annotated[int, PathParam(ge=1, le=2**62)],
    svc: Services,
    who: Operator,
    request: Request,
) -> ReplayOut:
    """Validate and ingest a quarantined message again, after a fix (operator).

    ``stored``: it is in the stores now; ``duplicate``: it had arrived since; ``still_invalid``:
    why it fails now (it stays quarantined); ``retry``: rate limit or store unavailable.
    """
    found = svc.documents.quarantined(tenant=who.scope(None), entry_id=entry_id, limit=1)
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no quarantined message {entry_id}")
    if svc.replay is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this collector cannot replay")
    entry = found[0]
    result, detail = svc.replay(entry, time.time_ns())
    if result in ("stored", "duplicate", "still_invalid"):
        svc.documents.mark_replayed(entry_id, time.time_ns(), f"{result} {detail}".strip())
    tenant = svc.documents.gateway_tenant(entry.gateway_id) or ""
    audit(svc, who, request, "quarantine.replay", str(entry_id), tenant, result=result)
    return ReplayOut(id=entry_id, result=result, detail=detail)


class AuditOut(BaseModel):
    id: int
    ts: float
    actor: str
    tenant: str
    action: str
    target: str
    source: str
    detail: dict[str, object]


@router.get("/audit")
def audit_log(
    svc: Services,
    who: Operator,
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    tenant: Annotated[str | None, Query(max_length=128, description="admin tokens only")] = None,
) -> list[AuditOut]:
    """Operator actions on the tenant, newest first: who, what, when, from where (operator)."""
    return [
        AuditOut(
            id=e.id or 0,
            ts=e.ts / 1e9,
            actor=e.actor,
            tenant=e.tenant,
            action=e.action,
            target=e.target,
            source=e.source,
            detail=e.detail,
        )
        for e in svc.documents.audit_log(who.scope(tenant), limit=limit, before_id=before)
    ]
