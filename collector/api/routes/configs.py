"""Desired config per gateway: set (validated, signed, sealed, published), desired vs reported."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

import wire
from collector._configs import ConfigInvalid, ConfigRefused
from collector.api._deps import Operator, Principal, Services, Viewer, audit

router = APIRouter(prefix="/api/v1/gateways", tags=["config"])
SEALED = "(sealed)"


class DesiredConfigIn(BaseModel):
    """The managed part of the agent config (devices, sources, log_level, uplink, buffer).

    Give secrets (password, api_key, community, auth_key, priv_key) to set or change them; leave
    one out to keep the sealed value of the previous version for the same device.
    """

    config: dict[str, Any] = Field(description="as the [[devices]]/[[sources]] of agent.toml")


class DesiredConfigOut(BaseModel):
    gateway_id: str
    version: int
    issued: float
    actor: str
    config: dict[str, Any]  # secrets shown as "(sealed)"


class Report(BaseModel):
    version: int
    status: Literal["applied", "rejected", "rolled_back"]
    applied_version: int
    reason: str
    errors: list[str]
    ts: float


class ConfigState(BaseModel):
    gateway_id: str
    desired: DesiredConfigOut | None
    reported: Report | None  # the gateway's last report on P/up/config
    in_sync: bool  # the gateway runs the newest desired version
    history: list[DesiredConfigOut]


def _gateway(svc: Services, who: Principal, gateway_id: str) -> dict[str, Any]:
    for g in svc.documents.gateways(who.scope(None)):
        if g["id"] == gateway_id:
            return g
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"no gateway {gateway_id!r}")


def _shown(record: Any) -> DesiredConfigOut:
    envelope = wire.ConfigEnvelope.model_validate_json(record.envelope)
    config = wire.join_secrets(envelope.config, dict.fromkeys(envelope.secrets, SEALED))
    return DesiredConfigOut(
        gateway_id=record.gateway_id,
        version=record.version,
        issued=record.issued_ns / 1e9,
        actor=record.actor,
        config=config,
    )


@router.put(
    "/{gateway_id}/config", responses={422: {"description": "the config does not validate"}}
)
def set_config(
    gateway_id: str, body: DesiredConfigIn, svc: Services, who: Operator, request: Request
) -> DesiredConfigOut:
    """Set the gateway's desired config (operator): validated before anything is signed or sent,
    then versioned, signed, its secrets sealed to the gateway, and published retained."""
    g = _gateway(svc, who, gateway_id)
    if svc.configs is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this collector has no [pki]")
    if g["revoked_ns"]:
        raise HTTPException(status.HTTP_409_CONFLICT, f"gateway {gateway_id} is decommissioned")
    try:
        record = svc.configs.set_desired(gateway_id, body.config, f"token:{who.token_id}")
    except ConfigInvalid as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            {
                "error": "invalid_config",
                "detail": "the config does not validate; nothing was signed or sent",
                "problems": [{"field": f"config.{f}", "problem": p} for f, p in exc.problems],
            },
        ) from None
    except ConfigRefused as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, {"error": exc.reason, "detail": exc.detail}
        ) from None
    audit(svc, who, request, "config.set", gateway_id, g["tenant"], version=record.version)
    return _shown(record)


@router.get("/{gateway_id}/config")
def get_config(gateway_id: str, svc: Services, who: Viewer) -> ConfigState:
    """Desired versus reported: the newest desired version, what the gateway last reported
    (applied, rejected with errors, rolled back with the reason) and the history (viewer)."""
    _gateway(svc, who, gateway_id)
    records = svc.documents.desired_configs(gateway_id, limit=20)
    report = svc.documents.config_report(gateway_id)
    desired = _shown(records[0]) if records else None
    return ConfigState(
        gateway_id=gateway_id,
        desired=desired,
        reported=None
        if report is None
        else Report(**{**report.model_dump(exclude={"v"}), "ts": report.ts / 1e9}),
        in_sync=desired is not None
        and report is not None
        and report.applied_version == desired.version,
        history=[_shown(r) for r in records],
    )
