"""Limits at the API's edge: request bodies, and enrollment attempts per client address.

Bodies are bounded before anything parses them: a request whose ``Content-Length`` is over the
route's limit is answered 413 at once, and a body sent in chunks is cut off (and answered 413)
as soon as it passes the limit, so an unauthenticated client cannot make the collector hold or
parse a large document.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import orjson
from fastapi import HTTPException, Request, Response, status
from fastapi.routing import APIRoute

from outpost_iot.wire import BoundedDict

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]

DEFAULT_BODY_BYTES = 1 << 20  # desired configs and rollouts are the largest bodies
ENROLL_BODY_BYTES = 64 << 10  # a CSR, a current certificate, a proof, hardware facts
BODY_LIMITS = {"/api/v1/enroll": ENROLL_BODY_BYTES, "/api/v1/enrollment-tokens": 4 << 10}


class BodyLimit:
    """ASGI middleware: 413 for a request body past its route's limit (never read past it)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default: int = DEFAULT_BODY_BYTES,
        limits: dict[str, int] | None = None,
    ) -> None:
        self._app = app
        self._default = default
        self._limits = BODY_LIMITS if limits is None else limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        limit = self._limits.get(scope.get("path", ""), self._default)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _too_large(send, limit)
            return
        seen = 0
        over = False
        started = False

        async def limited_receive() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message: Message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # The app sees an empty, finished body; its answer is replaced below.
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _too_large(send, limit)
                return  # the app's own answer to a cut-off body is not sent
            await send(message)

        await self._app(scope, limited_receive, guarded_send)


async def _too_large(send: Send, limit: int) -> None:
    body = orjson.dumps(
        {
            "error": "too_large",
            "detail": f"the request body is larger than this route's limit of {limit} bytes",
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AttemptLimiter:
    """Failed attempts per client address: ``burst`` at once, then one every ``per_s`` seconds.

    In the process (each replica counts its own); addresses are remembered up to a bound, the
    least recently seen forgotten first.
    """

    def __init__(
        self,
        *,
        burst: int = 10,
        per_s: float = 6.0,
        now: Callable[[], float] = time.monotonic,
        max_addresses: int = 100_000,
    ) -> None:
        self._burst = burst
        self._per_s = per_s
        self._now = now
        self._buckets: BoundedDict[str, tuple[float, float]] = BoundedDict(max_addresses)
        self._lock = threading.Lock()

    def wait(self, address: str) -> float:
        """0 if ``address`` may try now; else the seconds until it may."""
        with self._lock:
            tokens = self._tokens(address)
            return 0.0 if tokens >= 1 else (1 - tokens) * self._per_s

    def charge(self, address: str) -> None:
        """Count one attempt (a failed one: successes cost nothing)."""
        with self._lock:
            self._buckets[address] = (self._tokens(address) - 1, self._now())

    def _tokens(self, address: str) -> float:
        now = self._now()
        tokens, at = self._buckets.get(address, (float(self._burst), now))
        return min(float(self._burst), tokens + (now - at) / self._per_s)


_PARSE_IN_LOOP = 16 << 10  # bodies up to this size are parsed in the event loop (cheap)


class _OffLoopJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) <= _PARSE_IN_LOOP:
                self._json = json.loads(body)
            else:
                # Parsing a large body of small objects takes tens of milliseconds; in the event
                # loop that would hold every gateway's acks (the loop also runs MQTT).
                self._json = await anyio.to_thread.run_sync(json.loads, body)
        return self._json


class OffLoopJsonRoute(APIRoute):
    """A route whose JSON body, if large, is parsed in a worker thread, not the event loop.

    FastAPI parses the body before any dependency runs (authentication included), so without
    this anyone could make the loop parse a megabyte."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_OffLoopJsonRequest(request.scope, request.receive))

        return route


def limited_address(request: Request, what: str) -> tuple[str, AttemptLimiter]:
    """The caller's address and the limiter of failed attempts; a 429 with Retry-After when
    that address failed ``what`` (enrollments, sign-ins) too often lately."""
    address = request.client.host if request.client else "unknown"
    attempts: AttemptLimiter = request.app.state.enroll_attempts
    wait = attempts.wait(address)
    if wait > 0:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            {
                "error": "too_many_attempts",
                "detail": f"too many failed {what} from this address; try again in {wait:.0f} s",
            },
            headers={"Retry-After": str(max(1, round(wait)))},
        )
    return address, attempts
