"""Collected data for the dashboard: series queries, latest values, events."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import threading
import time
from collections.abc import Iterator
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from outpost_iot.collector._exceptions import QueryRefused
from outpost_iot.collector._export import csv_lines, jsonl_lines, stream_points
from outpost_iot.collector.api._deps import Services, Viewer
from outpost_iot.collector.api._limits import OffLoopJsonRoute
from outpost_iot.collector.stores import SeriesQuery, TimeSeriesStore
from outpost_iot.wire import FieldValue, limits

router = APIRouter(prefix="/api/v1", tags=["data"], route_class=OffLoopJsonRoute)

Aggregate = Literal["mean", "min", "max", "sum", "count", "last"]
_DURATION = re.compile(r"^(\d{1,9})(ms|s|m|h|d)$")
_MAX_BUCKET_NS = 3660 * 86400 * 10**9  # ten years: any bucket fits int64 arithmetic
_UNIT_NS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}
_TAG = re.compile(r"^([A-Za-z0-9_.\-]{1,64}):(.{1,256})$")
_NAME = r"^[A-Za-z0-9_.\-]{1,128}$"
MAX_POINTS = 100_000
CATALOG_SERIES = 10_000  # series one catalog answer reads; narrow with tag= past that
CATALOG_VALUES = 200  # values listed per tag key
MAX_EXPORTS = 4  # exports streaming at once, per collector (each holds a worker thread)


def _bad(error: str, detail: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, {"error": error, "detail": detail})


def duration_ns(text: str, what: str) -> int:
    m = _DURATION.match(text)
    if not m or int(m.group(1)) == 0:
        raise _bad(f"bad_{what}", f"{what} {text!r} is not a duration such as 30s, 1m, 5m, 1h, 1d")
    ns = int(m.group(1)) * _UNIT_NS[m.group(2)]
    if ns > _MAX_BUCKET_NS:
        raise _bad(f"bad_{what}", f"{what} {text!r} is longer than ten years")
    return ns


_MAX_NS = limits.TIME_MAX_NS  # 2116-02-20: no stored timestamp is later (wire._limits)


def _ns(value: dt.datetime | None, default: int) -> int:
    if value is None:
        return default
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)  # a time without a zone is UTC
    ns = int(value.timestamp() * 1e9)
    if not 0 <= ns < _MAX_NS:
        raise _bad("bad_time_range", "times must be between 1970-01-01 and 2116-02-20 (UTC)")
    return ns


def time_range(start: dt.datetime | None, end: dt.datetime | None) -> tuple[int, int]:
    end_ns = _ns(end, time.time_ns())
    start_ns = _ns(start, end_ns - 3600 * 10**9)
    if start_ns >= end_ns:
        raise _bad("bad_time_range", "start must be before end")
    return start_ns, end_ns


def _tags(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        m = _TAG.match(item)
        if not m:
            raise _bad("bad_tag", f"tag filter {item!r} is not KEY:VALUE")
        out[m.group(1)] = m.group(2)
    return out


def _store(svc: Services) -> TimeSeriesStore:
    if svc.timeseries is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no time-series store")
    return svc.timeseries


class SeriesGroupOut(BaseModel):
    tags: dict[str, str]
    points: list[tuple[float, FieldValue]]  # (bucket start in unix seconds, value)


class SeriesResult(BaseModel):
    measurement: str
    field: str
    aggregate: Aggregate
    bucket_s: float
    start: float
    end: float
    groups: list[SeriesGroupOut]


Names = Annotated[str, Query(pattern=_NAME)]


@router.get("/series")
def series(
    svc: Services,
    who: Viewer,
    measurement: Names,
    field: Names,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    bucket: Annotated[str, Query(max_length=16)] = "1m",
    aggregate: Aggregate = "mean",
    tag: Annotated[list[str], Query(max_length=32)] = [],  # noqa: B006 (FastAPI query list)
    group_by: Annotated[list[str], Query(max_length=8)] = [],  # noqa: B006
    max_points: Annotated[int, Query(ge=1, le=MAX_POINTS)] = 10_000,
    tenant: Annotated[str | None, Query(max_length=128, description="admin tokens only")] = None,
) -> SeriesResult:
    """Aggregates of one field per time bucket, optionally split into groups by tag values.

    ``tag=gateway:gw-1`` (repeatable) keeps series with that tag value; ``group_by=device``
    (repeatable) gives one group per value. Start and end are RFC 3339 times (default: the last
    hour).
    """
    start_ns, end_ns = time_range(start, end)
    bucket_ns = duration_ns(bucket, "bucket")
    if (end_ns - start_ns) // bucket_ns > MAX_POINTS:
        raise _bad(
            "too_many_points",
            f"{bucket} buckets over this range are more than {MAX_POINTS} per group; "
            "use a larger bucket or a shorter range",
        )
    for name in group_by:
        if not re.match(_NAME, name):
            raise _bad("bad_group_by", f"group_by {name!r} is not a tag name")
    query = SeriesQuery(
        tenant=who.scope(tenant),
        measurement=measurement,
        field=field,
        start_ns=start_ns,
        end_ns=end_ns,
        bucket_ns=bucket_ns,
        aggregate=aggregate,
        tags=_tags(tag),
        group_by=tuple(group_by),
        max_points=max_points,
    )
    try:
        groups = _store(svc).aggregate(query)
    except QueryRefused as exc:  # too many points, too costly, too slow: narrow the query
        raise _bad(exc.code, str(exc)) from None
    return SeriesResult(
        measurement=measurement,
        field=field,
        aggregate=aggregate,
        bucket_s=bucket_ns / 1e9,
        start=start_ns / 1e9,
        end=end_ns / 1e9,
        groups=[
            SeriesGroupOut(tags=g.tags, points=[(ts / 1e9, v) for ts, v in g.points])
            for g in groups
        ],
    )


class MeasurementInfo(BaseModel):
    name: str
    fields: list[str]
    tags: dict[str, list[str]]  # tag key → values seen (at most 200 each, sorted)
    series: int


class Catalog(BaseModel):
    measurements: list[MeasurementInfo]
    truncated: bool = Field(description="more series than one answer reads: narrow with tag=")


@router.get("/series/catalog")
def catalog(
    svc: Services,
    who: Viewer,
    tag: Annotated[list[str], Query(max_length=32)] = [],  # noqa: B006
    tenant: Annotated[str | None, Query(max_length=128, description="admin tokens only")] = None,
) -> Catalog:
    """What there is to chart: each measurement with its fields and tag values (viewer).
    ``tag=gateway:gw-1`` narrows it to the series with that tag value."""
    found = _store(svc).catalog(who.scope(tenant), tags=_tags(tag), limit=CATALOG_SERIES + 1)
    by_name: dict[str, tuple[set[str], dict[str, set[str]], list[int]]] = {}
    for info in found[:CATALOG_SERIES]:
        fields, tags, count = by_name.setdefault(info.measurement, (set(), {}, [0]))
        fields.update(info.fields)
        for key, value in info.tags.items():
            values = tags.setdefault(key, set())
            if len(values) < CATALOG_VALUES:
                values.add(value)
        count[0] += 1
    return Catalog(
        measurements=[
            MeasurementInfo(
                name=name,
                fields=sorted(fields),
                tags={k: sorted(v) for k, v in sorted(tags.items())},
                series=count[0],
            )
            for name, (fields, tags, count) in sorted(by_name.items())
        ],
        truncated=len(found) > CATALOG_SERIES,
    )


def _chunks(lines: Iterator[str], size: int = 64 * 1024) -> Iterator[str]:
    """Lines joined into pieces of about ``size`` characters: each piece is one hop from the
    worker thread to the event loop and one write to the socket, not one per line."""
    buf: list[str] = []
    n = 0
    for line in lines:
        buf.append(line)
        n += len(line)
        if n >= size:
            yield "".join(buf)
            buf, n = [], 0
    if buf:
        yield "".join(buf)


class _ExportSlot:
    """One of the collector's export slots, given back once: when the body ends (or fails), or
    when the response is dropped before its body started (a client gone at once)."""

    def __init__(self, slots: threading.BoundedSemaphore) -> None:
        self._slots: threading.BoundedSemaphore | None = slots

    @classmethod
    def take(cls, slots: threading.BoundedSemaphore) -> _ExportSlot:
        if not slots.acquire(blocking=False):
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                {"error": "busy", "detail": f"{MAX_EXPORTS} exports are running; try again later"},
                headers={"Retry-After": "10"},
            )
        return cls(slots)

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release()

    __del__ = release


@router.get(
    "/series/export",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {}, "application/x-ndjson": {}}},
        503: {"description": "as many exports as the collector allows are running"},
    },
)
def export(
    request: Request,
    svc: Services,
    who: Viewer,
    measurement: Names,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    tag: Annotated[list[str], Query(max_length=32)] = [],  # noqa: B006
    format: Literal["csv", "jsonl"] = "csv",
    tenant: Annotated[str | None, Query(max_length=128, description="admin tokens only")] = None,
) -> StreamingResponse:
    """Every stored reading of a measurement in a time range (default: the last hour), raw,
    streamed as a download: CSV with one row per field, or JSON Lines (viewer). Any range
    fits; at most four exports run at once per collector (503 with Retry-After past that)."""
    start_ns, end_ns = time_range(start, end)
    tags = _tags(tag)
    scope = who.scope(tenant)
    store = _store(svc)
    slot = _ExportSlot.take(request.app.state.exports)

    def body() -> Iterator[str]:
        try:
            points = stream_points(
                store, measurement, start_ns=start_ns, end_ns=end_ns, tags=tags, tenant=scope
            )
            yield from _chunks((csv_lines if format == "csv" else jsonl_lines)(points))
        finally:
            slot.release()

    stamp = dt.datetime.fromtimestamp(start_ns // 10**9, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson",
        headers={
            "Content-Disposition": f'attachment; filename="{measurement}-{stamp}.{format}"',
            "X-Content-Type-Options": "nosniff",
        },
    )


class LatestOut(BaseModel):
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    ts: float  # the newest of the fields' times, unix seconds


@router.get("/series/latest")
def latest(
    svc: Services,
    who: Viewer,
    measurement: Names,
    tag: Annotated[list[str], Query(max_length=32)] = [],  # noqa: B006
    tenant: Annotated[str | None, Query(max_length=128, description="admin tokens only")] = None,
) -> list[LatestOut]:
    """The newest value of every field of every matching series (for dashboards' tiles)."""
    values = _store(svc).latest(who.scope(tenant), measurement, tags=_tags(tag))
    out: dict[str, LatestOut] = {}
    for v in values:
        key = orjson.dumps(v.tags, option=orjson.OPT_SORT_KEYS).decode()
        item = out.setdefault(key, LatestOut(tags=v.tags, fields={}, ts=0.0))
        item.fields[v.field] = v.value
        item.ts = max(item.ts, v.ts / 1e9)
    return list(out.values())


class EventOut(BaseModel):
    gateway_id: str
    id: str
    type: str
    ts: float
    source: str
    body: dict[str, object]


class EventPage(BaseModel):
    events: list[EventOut]
    next_cursor: str | None = Field(
        description="pass as cursor= for the next page; null at the end"
    )


def _cursor(gateway_id: str, event_id: str, ts: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([ts, gateway_id, event_id])).decode()


def _after(cursor: str | None) -> tuple[int, str, str] | None:
    if cursor is None:
        return None
    try:
        ts, gateway_id, event_id = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise _bad("bad_cursor", "cursor is not one this API gave out") from None
    if (
        type(ts) is not int
        or not 0 <= ts <= _MAX_NS
        or not isinstance(gateway_id, str)
        or not isinstance(event_id, str)
        or len(gateway_id) > 64
        or len(event_id) > 128
    ):
        raise _bad("bad_cursor", "cursor is not one this API gave out")
    return ts, gateway_id, event_id


@router.get("/events")
def events(
    svc: Services,
    who: Viewer,
    gateway: Annotated[str | None, Query(max_length=64)] = None,
    device: Annotated[str | None, Query(max_length=256, description="the event's source")] = None,
    type: Annotated[str | None, Query(max_length=64)] = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    tenant: Annotated[str | None, Query(max_length=128, description="admin tokens only")] = None,
) -> EventPage:
    """Events, oldest first, a page at a time (detections, availability changes, …)."""
    start_ns, end_ns = time_range(start, end) if start or end else (0, 2**63 - 1)
    found = svc.documents.find_events(
        who.scope(tenant),
        gateway_id=gateway,
        source=device,
        type=type,
        start_ns=start_ns,
        end_ns=end_ns,
        after=_after(cursor),
        limit=limit + 1,
    )
    page = found[:limit]
    next_cursor = None
    if len(found) > limit:
        gw, last = page[-1]
        next_cursor = _cursor(gw, last.id, last.ts)
    return EventPage(
        events=[
            EventOut(
                gateway_id=gw, id=e.id, type=e.type, ts=e.ts / 1e9, source=e.source, body=e.body
            )
            for gw, e in page
        ],
        next_cursor=next_cursor,
    )
