"""Enrollment of gateways, and the tokens that allow it."""

from __future__ import annotations

import base64
import binascii
import logging
import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from outpost_iot.collector._enrollment import parse_duration
from outpost_iot.collector._exceptions import EnrollmentRefused, StoreError, StoreUnavailable
from outpost_iot.collector.api._deps import ApiServices, Operator, Services, audit
from outpost_iot.collector.api._limits import OffLoopJsonRoute, limited_address
from outpost_iot.collector.api.routes import fleet
from outpost_iot.collector.stores import ALL_TENANTS, AuditEntry

router = APIRouter(prefix="/api/v1", tags=["enrollment"], route_class=OffLoopJsonRoute)
_log = logging.getLogger("outpost.collector.enrollment")

# Refusal code → HTTP status.
STATUS = {
    "unknown": status.HTTP_401_UNAUTHORIZED,
    "expired": status.HTTP_410_GONE,
    "used_up": status.HTTP_410_GONE,
    "revoked": status.HTTP_410_GONE,
    "wrong_tenant": status.HTTP_403_FORBIDDEN,
    "bad_csr": status.HTTP_400_BAD_REQUEST,
    "bad_proof": status.HTTP_400_BAD_REQUEST,
    "bad_request": status.HTTP_400_BAD_REQUEST,
    "unknown_gateway": status.HTTP_404_NOT_FOUND,
}


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: Annotated[str, Field(min_length=1, max_length=256)]
    csr: Annotated[
        str, Field(min_length=1, max_length=16_384, description="PEM certificate request")
    ]
    hardware: dict[str, StrictStr | StrictInt | StrictFloat | StrictBool] = Field(
        default_factory=dict
    )
    tenant: str | None = Field(
        None, max_length=128, description="if given, the token must belong to this tenant"
    )
    current_certificate: str | None = Field(None, max_length=16_384, description="re-enrollment")
    proof: str | None = Field(
        None, max_length=2048, description="base64 signature of the CSR by the current key"
    )


class BrokerAddress(BaseModel):
    host: str
    port: int


class EnrollResponse(BaseModel):
    gateway_id: str
    tenant: str
    site: str
    certificate: str
    ca_chain: str
    broker: BrokerAddress
    config_signing_public_key: str


class Problem(BaseModel):
    error: str
    detail: str


@router.post(
    "/enroll",
    responses={code: {"model": Problem} for code in (400, 401, 403, 410, 413, 429, 503)},
)
def enroll(body: EnrollRequest, svc: Services, request: Request) -> EnrollResponse:
    """Exchange a one-time token and a certificate request for a gateway identity.

    Failed attempts are limited per client address (429 with Retry-After past the limit), and
    every attempt is logged and audited, without the token.
    """
    address, attempts = limited_address(request, "enrollments")
    proof = None
    if body.proof is not None:
        try:
            proof = base64.b64decode(body.proof, validate=True)
        except (binascii.Error, ValueError):  # ValueError: characters outside ASCII
            attempts.charge(address)
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "proof is not base64") from None
    try:
        result = svc.enrollment.enroll(
            token=body.token,
            csr_pem=body.csr,
            hardware=dict(body.hardware),
            tenant=body.tenant,
            current_certificate_pem=body.current_certificate,
            proof=proof,
        )
    except EnrollmentRefused as exc:
        attempts.charge(address)
        _log.warning(
            "enrollment refused from %s: %s (token %s)",
            address,
            exc.code,
            exc.token_id or "unknown",
        )
        _audit(
            svc,
            AuditEntry(
                time.time_ns(),
                f"enrollment:{exc.token_id or 'unknown'}",
                exc.tenant,
                "gateway.enroll_refused",
                exc.token_id,
                address,
                {"reason": exc.code},
            ),
        )
        raise HTTPException(
            STATUS.get(exc.code, 400), {"error": exc.code, "detail": exc.message}
        ) from None
    except StoreUnavailable:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            {"error": "unavailable", "detail": "the collector's store is busy; try again"},
            headers={"Retry-After": "5"},
        ) from None
    _audit(
        svc,
        AuditEntry(
            time.time_ns(),
            f"enrollment:{result.token_id}",
            result.tenant,
            "gateway.enroll",
            result.gateway_id,
            address,
            {
                "site": result.site,
                "token": result.token_id,
                "re_enrolled": result.re_enrolled,
                **({"moved_from_another_tenant": True} if result.moved_from else {}),
            },
        ),
    )
    if svc.on_enrolled is not None:
        svc.on_enrolled(result.gateway_id)
    try:
        fleet.publish(svc, result.tenant, result.gateway_id)
    except StoreError as exc:  # the stream is a convenience: the enrollment stands
        _log.error("cannot announce gateway %s on the live stream: %s", result.gateway_id, exc)
    return EnrollResponse(
        gateway_id=result.gateway_id,
        tenant=result.tenant,
        site=result.site,
        certificate=result.certificate_pem,
        ca_chain=result.ca_chain_pem,
        broker=BrokerAddress(host=result.broker_host, port=result.broker_port),
        config_signing_public_key=result.config_signing_public_key_pem,
    )


def _audit(svc: ApiServices, entry: AuditEntry) -> None:
    """Audit an enrollment attempt; a store failure is logged, never turned into a refusal."""
    try:
        svc.documents.audit(entry)
    except StoreError as exc:
        _log.error("cannot audit %s from %s: %s", entry.action, entry.source, exc)


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(None, description="defaults to the caller's tenant")
    site: Annotated[str, Field(min_length=1, max_length=128)]
    expires: Annotated[str, Field(description="lifetime: 30m, 24h, 7d")] = "24h"
    uses: Annotated[int, Field(ge=1, le=10_000)] = 1


class TokenCreated(BaseModel):
    id: str
    token: str = Field(description="shown once; only its hash is stored")
    tenant: str
    site: str
    expires_at_ns: int
    uses: int


class TokenInfo(BaseModel):
    id: str
    tenant: str
    site: str
    expires_at_ns: int
    uses_total: int
    uses_left: int
    revoked: bool


@router.post("/enrollment-tokens", status_code=201, responses={400: {"model": Problem}})
def create_token(
    body: TokenRequest, svc: Services, who: Operator, request: Request
) -> TokenCreated:
    """Create an enrollment token for a site (operator)."""
    tenant = body.tenant or who.tenant
    if tenant == ALL_TENANTS or not who.can_see(tenant):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "name a tenant your token may act for")
    try:
        expires_s = parse_duration(body.expires)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    token, rec = svc.enrollment.create_token(
        tenant=tenant, site=body.site, expires_s=expires_s, uses=body.uses
    )
    audit(
        svc,
        who,
        request,
        "enrollment_token.create",
        rec.id,
        tenant,
        site=rec.site,
        uses=rec.uses_total,
    )
    return TokenCreated(
        id=rec.id,
        token=token,
        tenant=tenant,
        site=rec.site,
        expires_at_ns=rec.expires_ns,
        uses=rec.uses_total,
    )


@router.get("/enrollment-tokens")
def list_tokens(svc: Services, who: Operator) -> list[TokenInfo]:
    """Enrollment tokens of the caller's tenant (never the tokens themselves)."""
    tenant = None if who.tenant == ALL_TENANTS else who.tenant
    return [
        TokenInfo(
            id=t.id,
            tenant=t.tenant,
            site=t.site,
            expires_at_ns=t.expires_ns,
            uses_total=t.uses_total,
            uses_left=t.uses_left,
            revoked=t.revoked,
        )
        for t in svc.documents.enrollment_tokens(tenant)
    ]


@router.delete(
    "/enrollment-tokens/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "no such token for this tenant"}},
)
def revoke_token(token_id: str, svc: Services, who: Operator, request: Request) -> Response:
    """Revoke an enrollment token (operator): it enrolls no more gateways."""
    tenant = None if who.tenant == ALL_TENANTS else who.tenant
    found = next((t for t in svc.documents.enrollment_tokens(tenant) if t.id == token_id), None)
    # Another tenant's token is indistinguishable from one that does not exist.
    if found is None or not svc.documents.revoke_enrollment_token(token_id, tenant):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no enrollment token {token_id[:64]!r}")
    audit(svc, who, request, "enrollment_token.revoke", token_id, found.tenant)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
