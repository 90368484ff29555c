"""Dependencies of the API routes: the services, and who is calling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from collector._enrollment import EnrollmentService, hash_token
from collector.stores import DocumentStore

Role = Literal["viewer", "operator", "admin"]
_RANK = {"viewer": 0, "operator": 1, "admin": 2}
ALL_TENANTS = "*"


@dataclass(frozen=True)
class ApiServices:
    documents: DocumentStore
    enrollment: EnrollmentService


@dataclass(frozen=True)
class Principal:
    token_id: str
    tenant: str
    role: Role

    def can_see(self, tenant: str) -> bool:
        return self.tenant in (ALL_TENANTS, tenant)


def services(request: Request) -> ApiServices:
    svc: ApiServices = request.app.state.services
    return svc


Services = Annotated[ApiServices, Depends(services)]
_bearer = HTTPBearer(auto_error=False)


def principal(
    svc: Services,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
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


Operator = Annotated[Principal, Depends(requires("operator"))]
