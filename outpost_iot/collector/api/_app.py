"""The collector's HTTP API (FastAPI), versioned under /api/v1."""

from __future__ import annotations

import threading
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from outpost_iot.collector._version import version
from outpost_iot.collector.api import _console
from outpost_iot.collector.api._deps import ApiServices, unprocessable
from outpost_iot.collector.api._limits import AttemptLimiter, BodyLimit
from outpost_iot.collector.api._metrics import metrics_text
from outpost_iot.collector.api.routes import (
    alarms,
    configs,
    data,
    enrollment,
    fleet,
    gateways,
    operations,
    rollouts,
    session,
    stream,
)


def create_app(services: ApiServices) -> FastAPI:
    app = FastAPI(title="Outpost collector", version=version(), docs_url="/api/docs")
    app.state.services = services
    app.state.enroll_attempts = AttemptLimiter()
    app.state.exports = threading.BoundedSemaphore(data.MAX_EXPORTS)
    app.add_middleware(BodyLimit)
    app.include_router(enrollment.router)
    app.include_router(gateways.router)
    app.include_router(fleet.router)
    app.include_router(data.router)
    app.include_router(operations.router)
    app.include_router(configs.router)
    app.include_router(rollouts.router)
    app.include_router(stream.router)
    app.include_router(alarms.router)
    app.include_router(session.router)
    app.include_router(_console.router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "a part is not ready"}})
    def readyz() -> JSONResponse:
        """Every store and the broker reachable; a 503 names the one that is not."""
        checks: dict[str, str] = {}
        for name, store in (
            ("document_store", services.documents),
            ("timeseries_store", services.timeseries),
        ):
            if store is None:
                continue
            try:
                store.ping()
                checks[name] = "ok"
            except Exception as exc:  # any failure means not ready; say which and why
                checks[name] = f"failing: {type(exc).__name__}"
        if services.shared_state is not None:
            try:
                services.shared_state()
                checks["shared_state"] = "ok"
            except Exception as exc:  # Redis down: the collector carries on, but say so
                checks["shared_state"] = f"failing: {type(exc).__name__}"
        if services.broker_connected is not None:
            checks["broker"] = "ok" if services.broker_connected() else "failing: not connected"
        failing = sorted(k for k, v in checks.items() if v != "ok")
        body = {"status": "not_ready" if failing else "ready", "failing": failing, "checks": checks}
        return JSONResponse(body, status_code=503 if failing else 200)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        """Prometheus metrics: ingest, acks, nacks by reason, quarantine, dedup, write latency."""
        text, content_type = metrics_text(
            services.metrics,
            services.timeseries,
            services.stream,
            services.alarm_evaluator.metrics if services.alarm_evaluator else None,
            services.deliveries,
        )
        return PlainTextResponse(text, media_type=content_type)

    # Starlette's own (no such route: 404, 405), which FastAPI's HTTPException subclasses: every
    # error has the same body.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body: dict[str, Any] = (
            exc.detail
            if isinstance(exc.detail, dict)
            else {"error": _code(exc.status_code), "detail": exc.detail}
        )
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the field and the problem, never echo the input: it may hold a token.
        refused = unprocessable(
            [(".".join(str(p) for p in e["loc"] if p != "body"), e["msg"]) for e in exc.errors()]
        )
        return JSONResponse(refused.detail, status_code=refused.status_code)

    return app


def _code(status_code: int) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        413: "too_large",
        429: "too_many_attempts",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        409: "conflict",
        503: "unavailable",
    }.get(status_code, "error")
