"""Rollouts: a config change to many gateways in waves, with an abort rule (operator)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi import Path as PathParam
from pydantic import AfterValidator, BaseModel, Field

from outpost_iot.collector._configs import ConfigInvalid
from outpost_iot.collector._rollouts import RolloutError, RolloutService, wave_progress
from outpost_iot.collector.api._deps import Operator, Services, audit
from outpost_iot.collector.api._limits import OffLoopJsonRoute
from outpost_iot.collector.api.routes.configs import invalid_config
from outpost_iot.collector.stores import RolloutRecord
from outpost_iot.wire import limits

# A desired config or patch from an API caller: nesting, size and integers bounded (wire._limits).
ConfigDocument = Annotated[dict[str, Any], AfterValidator(limits.bounded_config)]
router = APIRouter(prefix="/api/v1/rollouts", tags=["config"], route_class=OffLoopJsonRoute)
RolloutId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{8}$")]


class RolloutIn(BaseModel):
    config: ConfigDocument | None = Field(
        None,
        description="the whole managed config for every target; secrets left out are carried "
        "from each gateway's previous version",
    )
    patch: ConfigDocument | None = Field(
        None,
        description="or: a change laid over each gateway's newest desired config (JSON merge "
        'patch; devices merge by name; {"name": …, "$patch": "delete"} removes one)',
    )
    site: str | None = Field(
        None, max_length=128, description="target: the tenant's gateways at this site"
    )
    tag: str | None = Field(
        None, max_length=64, description="target: the tenant's gateways with this tag"
    )
    gateways: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=10_000, description="target: these gateways (default: all of the tenant)"
    )
    tenant: str | None = Field(None, max_length=128, description="admin tokens only")
    waves: list[Annotated[str, Field(max_length=8)]] = Field(
        default_factory=lambda: ["1", "10%", "100%"], min_length=1, max_length=20
    )
    abort_above_percent: Annotated[float, Field(ge=0, le=100)] = 0.0
    gateway_timeout_s: Annotated[float, Field(gt=0, le=86400)] = 600.0
    device_errors_fail: bool = Field(
        False,
        description="count a gateway that applied the config but whose devices refuse it "
        "(wrong credentials, say) as failed",
    )


class Wave(BaseModel):
    index: int
    gateways: int
    started: bool
    applied: int
    failed: int
    timed_out: int
    skipped: int
    pending: int


class Failure(BaseModel):
    gateway_id: str
    wave: int
    version: int
    outcome: Literal["failed", "timed_out"]
    reason: str  # the gateway's report (invalid, bad_secret, no_ack_within_grace, …)
    errors: list[str]


class RolloutOut(BaseModel):
    id: str
    tenant: str
    actor: str
    created: float
    status: Literal["running", "paused", "aborted", "completed"]
    reason: str
    current_wave: int
    abort_above_percent: float
    gateway_timeout_s: float
    device_errors_fail: bool
    waves: list[Wave]
    failures: list[Failure]  # which gateways failed or timed out, and what they said


def _service(svc: Services) -> RolloutService:
    if svc.rollouts is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this collector has no [pki]")
    return svc.rollouts


def _out(svc: Services, rollout: RolloutRecord) -> RolloutOut:
    members = svc.documents.rollout_members(rollout.id)
    waves = [Wave(**w) for w in wave_progress(rollout, members)]
    failures = []
    for m in members:
        if m.outcome not in ("failed", "timed_out"):
            continue
        report = svc.documents.config_report(m.gateway_id)
        said = report is not None and report.version == m.version
        failures.append(
            Failure(
                gateway_id=m.gateway_id,
                wave=m.wave,
                version=m.version,
                outcome=m.outcome,
                reason=report.reason
                if said and report is not None
                else f"no report within {rollout.timeout_s:g} s",
                errors=report.errors if said and report is not None else [],
            )
        )
    return RolloutOut(
        id=rollout.id,
        tenant=rollout.tenant,
        actor=rollout.actor,
        created=rollout.created_ns / 1e9,
        status=rollout.status,
        reason=rollout.reason,
        current_wave=rollout.current_wave,
        abort_above_percent=rollout.abort_percent,
        gateway_timeout_s=rollout.timeout_s,
        device_errors_fail=rollout.device_errors_fail,
        waves=waves,
        failures=failures,
    )


def _problem(exc: RolloutError) -> HTTPException:
    code = {
        "not_found": status.HTTP_404_NOT_FOUND,
        "conflict": status.HTTP_409_CONFLICT,
    }.get(exc.reason, status.HTTP_400_BAD_REQUEST)
    return HTTPException(code, {"error": exc.reason, "detail": exc.detail})


@router.post("", status_code=201)
def create_rollout(body: RolloutIn, svc: Services, who: Operator, request: Request) -> RolloutOut:
    """Roll a config, or a patch of each gateway's config, out to the tenant's gateways (all, by
    site, tag or ids) in waves (operator)."""
    tenant = who.scope(body.tenant)
    try:
        rollout_id = _service(svc).create(
            tenant=tenant,
            config=body.config,
            patch=body.patch,
            actor=f"token:{who.token_id}",
            site=body.site,
            tag=body.tag,
            gateway_ids=body.gateways,
            waves=body.waves,
            abort_percent=body.abort_above_percent,
            timeout_s=body.gateway_timeout_s,
            device_errors_fail=body.device_errors_fail,
        )
    except ConfigInvalid as exc:
        raise invalid_config(exc) from None
    except RolloutError as exc:
        raise _problem(exc) from None
    rollout = svc.documents.rollouts(tenant, rollout_id=rollout_id)[0]
    audit(svc, who, request, "rollout.create", rollout_id, rollout.tenant, waves=body.waves)
    return _out(svc, rollout)


@router.get("")
def list_rollouts(
    svc: Services,
    who: Operator,
    tenant: Annotated[str | None, Query(max_length=128, description="admin tokens only")] = None,
) -> list[RolloutOut]:
    """The tenant's rollouts, newest first (operator)."""
    return [_out(svc, r) for r in svc.documents.rollouts(who.scope(tenant))]


@router.get("/{rollout_id}")
def get_rollout(rollout_id: RolloutId, svc: Services, who: Operator) -> RolloutOut:
    """Progress per wave: applied, failed, timed out, skipped, pending (operator)."""
    found = svc.documents.rollouts(who.scope(None), rollout_id=rollout_id)
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rollout {rollout_id!r}")
    return _out(svc, found[0])


@router.post("/{rollout_id}/{action}")
def control(
    rollout_id: RolloutId,
    action: Literal["pause", "resume", "abort"],
    svc: Services,
    who: Operator,
    request: Request,
) -> RolloutOut:
    """Pause (no new wave starts), resume, or abort a rollout (operator)."""
    try:
        rollout = _service(svc).control(who.scope(None), rollout_id, action)
    except RolloutError as exc:
        raise _problem(exc) from None
    audit(svc, who, request, f"rollout.{action}", rollout_id, rollout.tenant)
    return _out(svc, rollout)
