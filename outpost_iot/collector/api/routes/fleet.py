"""The fleet: gateways (list, detail) and the devices behind each one."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from outpost_iot.collector import stores
from outpost_iot.collector.api._deps import (
    Operator,
    Services,
    Viewer,
    audit,
    find_gateway,
    gateway_or_404,
)
from outpost_iot.collector.api._limits import OffLoopJsonRoute

router = APIRouter(prefix="/api/v1/gateways", tags=["fleet"], route_class=OffLoopJsonRoute)

GatewayState = Literal["online", "offline", "unknown", "decommissioned"]


class GatewaySummary(BaseModel):
    id: str
    tenant: str
    site: str
    state: GatewayState  # from the gateway's birth and will messages
    last_seen: float | None  # unix seconds of the last message from it
    agent_version: str | None
    backlog_readings: int | None  # as last reported by the gateway
    oldest_unsent_s: float | None
    drops: dict[str, int]  # readings dropped on the gateway, by reason, as last reported
    config_version: int | None  # the desired config version the gateway reports applied
    config_desired_version: int | None  # the newest desired config set for it
    tags: list[str]  # set by operators; rollouts can target them
    clock_flagged: bool
    certificate_expires: float | None  # unix seconds; the agent renews before


class GatewayDetail(GatewaySummary):
    enrolled: float | None
    hardware: dict[str, Any]
    backlog_batches: int | None
    last_ack: float | None
    boot_id: str | None
    clock_skew_s: float | None


class Device(BaseModel):
    name: str
    availability: Literal["online", "offline", "unknown"]
    availability_changed: float | None
    last_reading: float | None
    measurements: list[str]


class Devices(BaseModel):
    gateway_id: str
    devices: list[Device]


def _s(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e9, 3)


def _summary(g: stores.FleetGateway) -> dict[str, Any]:
    status_ = g.status
    drops = {str(k): int(v) for k, v in (status_.get("drops") or {}).items()}
    state = "decommissioned" if g.revoked_ns else g.state
    return {
        "id": g.id,
        "tenant": g.tenant,
        "site": g.site,
        "state": state if state in ("online", "offline", "decommissioned") else "unknown",
        "last_seen": _s(g.last_seen_ns),
        "agent_version": status_.get("agent_version"),
        "backlog_readings": status_.get("backlog_readings"),
        "oldest_unsent_s": status_.get("oldest_unsent_s"),
        "drops": drops,
        "config_version": g.config_applied,
        "config_desired_version": g.config_desired,
        "tags": g.tags,
        "clock_flagged": g.clock_flagged,
        "certificate_expires": _s(g.cert_not_after_ns),
    }


def publish(svc: Services, tenant: str, gateway_id: str) -> None:
    """Tell the live stream's clients what the gateway's fleet row now says (after an
    enrollment, new tags, a decommission): pages show it without reloading."""
    if svc.stream is None:
        return
    g = find_gateway(svc, tenant, gateway_id)
    if g is not None:
        svc.stream.publish("gateway", g.tenant, g.id, _summary(g))


@router.get("")
def list_gateways(
    svc: Services,
    who: Viewer,
    site: Annotated[str | None, Query(max_length=128)] = None,
    state: GatewayState | None = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    tenant: Annotated[str | None, Query(max_length=128, description="admin tokens only")] = None,
) -> list[GatewaySummary]:
    """The tenant's gateways, with what each last reported (viewer)."""
    out = []
    for g in svc.documents.gateways(who.scope(tenant)):
        item = _summary(g)
        if (
            (site is None or item["site"] == site)
            and (state is None or item["state"] == state)
            and (tag is None or tag in item["tags"])
        ):
            out.append(GatewaySummary(**item))
    return out


class TagsIn(BaseModel):
    tags: Annotated[
        list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]], Field(max_length=32)
    ]


@router.put("/{gateway_id}/tags")
def set_tags(
    gateway_id: str, body: TagsIn, svc: Services, who: Operator, request: Request
) -> GatewaySummary:
    """Replace the gateway's tags (operator); rollouts can target a tag."""
    g = gateway_or_404(svc, who, gateway_id)
    svc.documents.set_gateway_tags(gateway_id, body.tags)
    audit(svc, who, request, "gateway.tags", gateway_id, g.tenant, tags=sorted(set(body.tags)))
    publish(svc, g.tenant, gateway_id)
    return GatewaySummary(**_summary(gateway_or_404(svc, who, gateway_id)))


@router.get("/{gateway_id}")
def gateway_detail(gateway_id: str, svc: Services, who: Viewer) -> GatewayDetail:
    """One gateway (viewer); another tenant's gateway is a 404."""
    g = gateway_or_404(svc, who, gateway_id)
    status_ = g.status
    return GatewayDetail(
        **_summary(g),
        enrolled=_s(g.enrolled_ns),
        hardware=g.hardware,
        backlog_batches=status_.get("backlog_batches"),
        last_ack=_s(status_.get("last_ack_ts")),
        boot_id=status_.get("boot_id"),
        clock_skew_s=g.clock_skew_s,
    )


@router.get("/{gateway_id}/devices")
def gateway_devices(gateway_id: str, svc: Services, who: Viewer) -> Devices:
    """Devices behind the gateway, from what its sources reported, with availability."""
    g = gateway_or_404(svc, who, gateway_id)
    seen = svc.timeseries.devices(g.tenant, gateway_id) if svc.timeseries else {}
    availability = svc.documents.availability(g.tenant, gateway_id)
    names = sorted(set(seen) | set(availability))
    devices = []
    for name in names:
        measurements, last = seen.get(name, ([], 0))
        state, changed = availability.get(name, ("unknown", None))
        devices.append(
            Device(
                name=name,
                availability=state if state in ("online", "offline") else "unknown",
                availability_changed=_s(changed),
                last_reading=_s(last or None),
                measurements=measurements,
            )
        )
    return Devices(gateway_id=gateway_id, devices=devices)
