"""``GET /api/v1/stream``: what changes, as Server-Sent Events (see ``collector._stream``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, status
from fastapi.responses import StreamingResponse

from outpost_iot.collector._stream import (
    DEFAULT_KINDS,
    KINDS,
    MAX_FILTER_VALUES,
    Filter,
    Hub,
    Message,
    StreamClosed,
    TooManyClients,
)
from outpost_iot.collector.api._deps import Services, Viewer

router = APIRouter(prefix="/api/v1", tags=["stream"])

KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
RETRY_MS = 2000  # how soon a browser's EventSource reconnects

_Names = Annotated[
    list[Annotated[str, Query(min_length=1, max_length=256)]],
    Query(max_length=MAX_FILTER_VALUES),
]


def frame(m: Message) -> bytes:
    """One SSE event. ``data`` is one line of JSON (orjson escapes newlines in strings)."""
    head = f"id: {m.id}\nevent: {m.kind}\n" if m.id else f"event: {m.kind}\n"
    return head.encode() + b"data: " + m.data + b"\n\n"


async def _events(hub: Hub, flt: Filter, last_id: str | None) -> AsyncIterator[bytes]:
    try:
        async with hub.subscribe(flt, last_id) as sub:
            yield f"retry: {RETRY_MS}\n: outpost live stream\n\n".encode()
            while True:
                m = await sub.next(KEEPALIVE_S)
                yield b": keepalive\n\n" if m is None else frame(m)
    except StreamClosed as exc:
        # Too slow to keep up, or the collector stops: the client reconnects with its
        # Last-Event-ID and is given what it missed.
        yield f": closed ({exc.why}); reconnect with Last-Event-ID\n\n".encode()
    except TooManyClients:
        # Full between the check and the subscription (clients arriving together): the 200 is
        # sent, so say it in the stream and ask the client to come back later.
        yield b"retry: 30000\n: too many stream clients; reconnect later\n\n"


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
        503: {"description": "the collector serves as many stream clients as it may"},
    },
)
async def stream(
    svc: Services,
    who: Viewer,
    kind: Annotated[
        list[Annotated[str, Query(pattern="^(" + "|".join(KINDS) + ")$")]],
        Query(max_length=len(KINDS), description="event, gateway, config, rollout, alarm, latest"),
    ] = [],  # noqa: B006
    gateway: _Names = [],  # noqa: B006
    measurement: _Names = [],  # noqa: B006
    tenant: Annotated[str | None, Query(max_length=128, description="admin tokens only")] = None,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> StreamingResponse:
    """Changes as they are stored, as Server-Sent Events (viewer): ``latest`` values of the
    series of the gateways named (``gateway=``, ``measurement=``), ``event``, ``gateway``
    (state, backlog, drops), ``config`` (a gateway's report on its config) and ``rollout``
    (progress). Each event has an id: reconnect with ``Last-Event-ID`` to be sent what was
    missed; ``reset`` means reload from the API and go on. See docs/api.md."""
    hub = svc.stream
    if hub is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "this collector has no live stream")
    if hub.clients >= hub.max_clients:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"this collector serves {hub.max_clients} stream clients; try another replica or later",
            headers={"Retry-After": "10"},
        )
    flt = Filter(
        tenant=who.scope(tenant),
        kinds=frozenset(kind) if kind else DEFAULT_KINDS,
        gateways=frozenset(gateway),
        measurements=frozenset(measurement),
    )
    return StreamingResponse(
        _events(hub, flt, last_event_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
