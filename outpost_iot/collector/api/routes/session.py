"""Console sign-in: an API token exchanged for a session cookie (``/api/v1/session``).

The browser never keeps the API token: it sends it once, in the body of ``POST``, and gets an
``HttpOnly``, ``Secure``, ``SameSite=Strict`` cookie holding a random session id (the store
keeps its hash), valid for ``SESSION_S`` while the token is not revoked. A change made with the
session (any method but GET) must also carry ``X-CSRF-Token``, the value the sign-in returned;
``GET /api/v1/session`` gives it again after a reload. Failed sign-ins count per client address
like failed enrollments.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from outpost_iot.collector._enrollment import hash_token
from outpost_iot.collector.api._deps import (
    SESSION_COOKIE,
    Principal,
    Services,
    Viewer,
    audit,
    session_principal,
)
from outpost_iot.collector.api._limits import limited_address
from outpost_iot.collector.stores import SessionRecord

router = APIRouter(prefix="/api/v1/session", tags=["console"])

SESSION_S = 12 * 3600


class SignIn(BaseModel):
    token: Annotated[str, Field(min_length=1, max_length=256)]


class SessionOut(BaseModel):
    tenant: str
    role: str
    csrf: str  # send it in X-CSRF-Token with every change made with the session
    expires: float  # unix seconds


@router.post("", responses={401: {"description": "unknown or revoked API token"}})
def sign_in(body: SignIn, svc: Services, request: Request, response: Response) -> SessionOut:
    """Exchange an API token for a session cookie (the console's sign-in)."""
    address, attempts = limited_address(request, "sign-ins")
    record = svc.documents.api_token(hash_token(body.token))
    if record is None or record.revoked_ns is not None:
        attempts.charge(address)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "unknown or revoked API token: ask an admin for one (outpost-collector api-token create)",
        )
    now = time.time_ns()
    session_id = secrets.token_urlsafe(32)
    session = SessionRecord(
        hash=hash_token(session_id),
        token_id=record.id,
        created_ns=now,
        expires_ns=now + SESSION_S * 10**9,
        csrf=secrets.token_urlsafe(24),
    )
    svc.documents.create_session(session)
    who = Principal(record.id, record.tenant, record.role)  # type: ignore[arg-type]
    audit(svc, who, request, "session.create", record.id, record.tenant)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=SESSION_S,
        path="/",
        secure=True,
        httponly=True,
        samesite="strict",
    )
    response.headers["Cache-Control"] = "no-store"
    return SessionOut(
        tenant=record.tenant, role=record.role, csrf=session.csrf, expires=session.expires_ns / 1e9
    )


@router.get("")
def current(svc: Services, who: Viewer, request: Request, response: Response) -> SessionOut:
    """Who the session (or token) acts as; with a session, its CSRF token again."""
    response.headers["Cache-Control"] = "no-store"
    found = session_principal(svc, request)
    if found is None:  # a bearer token: no session, no CSRF token needed
        return SessionOut(tenant=who.tenant, role=who.role, csrf="", expires=0.0)
    session, _ = found
    return SessionOut(
        tenant=who.tenant, role=who.role, csrf=session.csrf, expires=session.expires_ns / 1e9
    )


@router.delete("", status_code=status.HTTP_204_NO_CONTENT)
def sign_out(svc: Services, who: Viewer, request: Request) -> Response:
    """End the session (the console's sign-out); its cookie is cleared."""
    found = session_principal(svc, request)
    if found is not None:
        svc.documents.delete_session(found[0].hash)
        audit(svc, who, request, "session.end", who.token_id, who.tenant)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response
