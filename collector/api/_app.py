"""The collector's HTTP API (FastAPI), versioned under /api/v1."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from collector._version import version
from collector.api._deps import ApiServices
from collector.api.routes import enrollment, gateways


def create_app(services: ApiServices) -> FastAPI:
    app = FastAPI(title="Outpost collector", version=version(), docs_url="/api/docs")
    app.state.services = services
    app.include_router(enrollment.router)
    app.include_router(gateways.router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        body: dict[str, Any] = (
            exc.detail
            if isinstance(exc.detail, dict)
            else {"error": _code(exc.status_code), "detail": exc.detail}
        )
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the field and the problem, never echo the input: it may hold a token.
        problems = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "problem": e["msg"]}
            for e in exc.errors()
        ]
        return JSONResponse(
            {
                "error": "invalid_request",
                "detail": "the request does not validate",
                "problems": problems,
            },
            status_code=422,
        )

    return app


def _code(status_code: int) -> str:
    return {401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(status_code, "error")
