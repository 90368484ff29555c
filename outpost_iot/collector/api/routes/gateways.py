"""Gateways: decommissioning (the read side is in ``fleet``)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel

from outpost_iot.collector.api._deps import Operator, Services, audit
from outpost_iot.collector.api._limits import OffLoopJsonRoute
from outpost_iot.collector.api.routes.fleet import publish

router = APIRouter(prefix="/api/v1/gateways", tags=["gateways"], route_class=OffLoopJsonRoute)


class Decommissioned(BaseModel):
    gateway_id: str
    certificates_revoked: int


@router.post("/{gateway_id}/decommission")
def decommission(gateway_id: str, svc: Services, who: Operator, request: Request) -> Decommissioned:
    """Revoke the gateway's certificates; the collector refuses it from now on (operator)."""
    tenant = svc.documents.gateway_tenant(gateway_id)
    if tenant is None or not who.can_see(tenant):
        # Another tenant's gateway is indistinguishable from one that does not exist.
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no gateway {gateway_id!r}")
    count = svc.enrollment.decommission(gateway_id)
    audit(svc, who, request, "gateway.decommission", gateway_id, tenant, certificates=count)
    publish(svc, tenant, gateway_id)
    return Decommissioned(gateway_id=gateway_id, certificates_revoked=count)
