"""Desired config per gateway: set (validated, signed, sealed, published), desired vs reported."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import AfterValidator, BaseModel, Field

from outpost_iot import wire
from outpost_iot.collector._configs import ConfigInvalid, ConfigRefused, ConfigService
from outpost_iot.collector.api._deps import (
    Operator,
    Principal,
    Services,
    Viewer,
    audit,
    gateway_or_404,
    unprocessable,
)
from outpost_iot.collector.api._limits import OffLoopJsonRoute
from outpost_iot.collector.stores import DesiredConfigRecord

# A desired config or patch from an API caller: nesting, size and integers bounded (wire._limits).
ConfigDocument = Annotated[dict[str, Any], AfterValidator(wire.limits.bounded_config)]
router = APIRouter(prefix="/api/v1/gateways", tags=["config"], route_class=OffLoopJsonRoute)
SEALED = "(sealed)"


class DesiredConfigIn(BaseModel):
    """The managed part of the agent config (devices, sources, log_level, uplink, buffer).

    Give secrets (password, api_key, community, auth_key, priv_key) to set or change them; leave
    one out to keep the sealed value of the previous version for the same device.
    """

    config: ConfigDocument = Field(description="as the [[devices]]/[[sources]] of agent.toml")


class ConfigPatchIn(BaseModel):
    """A change to the gateway's newest desired config: a JSON merge patch (RFC 7396) in which
    lists of named items (``devices``) merge by ``name``; ``{"name": "fw-1", "$patch":
    "delete"}`` removes one; ``null`` removes a key. Secrets it does not give are kept sealed."""

    patch: ConfigDocument = Field(
        description='e.g. {"devices": [{"name": "fw-1", "interval": 30}]}'
    )


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


def invalid_config(exc: ConfigInvalid, prefix: str = "config") -> HTTPException:
    """A desired config (or a rollout's) that does not validate: each problem by its field."""
    return unprocessable(
        [(f"{prefix}.{f}", p) for f, p in exc.problems],
        error="invalid_config",
        detail="the config does not validate; nothing was signed or sent",
    )


def _change(
    gateway_id: str,
    svc: Services,
    who: Principal,
    request: Request,
    change: Callable[[ConfigService, str], DesiredConfigRecord],
    *,
    action: str,
    prefix: str,
) -> DesiredConfigOut:
    g = gateway_or_404(svc, who, gateway_id)
    if svc.configs is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this collector has no [pki]")
    if g.revoked_ns:
        raise HTTPException(status.HTTP_409_CONFLICT, f"gateway {gateway_id} is decommissioned")
    try:
        record = change(svc.configs, f"token:{who.token_id}")
    except ConfigInvalid as exc:
        raise invalid_config(exc, prefix) from None
    except ConfigRefused as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, {"error": exc.reason, "detail": exc.detail}
        ) from None
    audit(svc, who, request, action, gateway_id, g.tenant, version=record.version)
    return _shown(record)


@router.put(
    "/{gateway_id}/config", responses={422: {"description": "the config does not validate"}}
)
def set_config(
    gateway_id: str, body: DesiredConfigIn, svc: Services, who: Operator, request: Request
) -> DesiredConfigOut:
    """Set the gateway's desired config (operator): validated before anything is signed or sent,
    then versioned, signed, its secrets sealed to the gateway, and published retained."""
    return _change(
        gateway_id,
        svc,
        who,
        request,
        lambda configs, actor: configs.set_desired(gateway_id, body.config, actor),
        action="config.set",
        prefix="config",
    )


@router.patch(
    "/{gateway_id}/config",
    responses={422: {"description": "the patch or the config it makes does not validate"}},
)
def patch_config(
    gateway_id: str, body: ConfigPatchIn, svc: Services, who: Operator, request: Request
) -> DesiredConfigOut:
    """Change one part of the gateway's desired config (operator): the newest version with the
    patch laid over it becomes the next version, validated, sealed, signed and published."""
    return _change(
        gateway_id,
        svc,
        who,
        request,
        lambda configs, actor: configs.patch_desired(gateway_id, body.patch, actor),
        action="config.patch",
        prefix="config",
    )


@router.get("/{gateway_id}/config")
def get_config(gateway_id: str, svc: Services, who: Viewer) -> ConfigState:
    """Desired versus reported: the newest desired version, what the gateway last reported
    (applied, rejected with errors, rolled back with the reason) and the history (viewer)."""
    gateway_or_404(svc, who, gateway_id)
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
