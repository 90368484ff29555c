"""Taking readings out: any time range, streamed, as JSON Lines or CSV.

The time-series stores answer a query with a list, so a range is read in windows: each window
is one query, written out before the next is read. The window adapts to the data: it doubles
while a window holds fewer than ``target / 4`` points and halves after one that held more than
``target``, so memory stays near ``target`` points whatever the density (a quiet week or a busy
hour), with the same code over every backend. (A window grown over a quiet spell can land on a
much busier one and hold more, once; the next ones are smaller.) Windows are half-open ``[start, end)``: a point on
a boundary is written once.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TextIO

import orjson

from outpost_iot.collector._enrollment import parse_duration
from outpost_iot.collector.stores import ALL_TENANTS, StoredPoint, TimeSeriesStore

MIN_WINDOW_NS = 1_000_000  # 1 ms
FIRST_WINDOW_NS = 60 * 10**9
MAX_WINDOW_NS = 100 * 366 * 86400 * 10**9
CSV_COLUMNS = ("time", "ts_ns", "measurement", "tags", "field", "value")


def parse_time(text: str, *, now_ns: int) -> int:
    """A point in time for ``--since``/``--until``: RFC 3339 or a date (UTC unless it says
    otherwise), a duration back from now (``24h``, ``7d``), ``now``, or nanoseconds since the
    epoch. Raises :class:`ValueError` saying what is accepted."""
    t = text.strip()
    if t == "now":
        return now_ns
    if re.fullmatch(r"\d{10,19}", t):
        return int(t)
    try:
        return now_ns - int(parse_duration(t) * 1e9)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r}: give a time as 2026-12-03T08:00:00Z, a date (2026-12-03), a duration"
            " back from now (90m, 24h, 7d), 'now', or nanoseconds since the epoch"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 10**9 + moment.microsecond * 1000


def stream_points(
    ts: TimeSeriesStore,
    measurement: str,
    *,
    start_ns: int,
    end_ns: int,
    tags: dict[str, str] | None = None,
    tenant: str = ALL_TENANTS,
    target: int = 20_000,
) -> Iterator[StoredPoint]:
    """Every point of ``measurement`` in ``[start_ns, end_ns)``, oldest first, a window at a
    time."""
    window = FIRST_WINDOW_NS
    at = start_ns
    while at < end_ns:
        upto = min(end_ns, at + window)
        points = ts.query(measurement, tenant=tenant, tags=tags, start_ns=at, end_ns=upto)
        if len(points) > target and window > MIN_WINDOW_NS:
            # Shrink to what would have held about the target.
            window = max(MIN_WINDOW_NS, window * target // len(points))
        elif len(points) < target // 4:
            window = min(MAX_WINDOW_NS, window * 2)
        yield from points
        at = upto


def last_points(
    ts: TimeSeriesStore,
    measurement: str,
    count: int,
    *,
    end_ns: int,
    tags: dict[str, str] | None = None,
    tenant: str = ALL_TENANTS,
) -> list[StoredPoint]:
    """The ``count`` most recent points before ``end_ns``, oldest first: windows back from
    ``end_ns``, doubling, until enough are found or the epoch is reached."""
    found: list[list[StoredPoint]] = []
    have = 0
    window = FIRST_WINDOW_NS
    upto = end_ns
    while have < count and upto > 0:
        at = max(0, upto - window)
        points = ts.query(measurement, tenant=tenant, tags=tags, start_ns=at, end_ns=upto)
        found.append(points)
        have += len(points)
        upto = at
        window = min(MAX_WINDOW_NS, window * 2)
    ordered = [p for chunk in reversed(found) for p in chunk]
    return ordered[-count:]


def _iso(ts_ns: int) -> str:
    seconds, ns = divmod(ts_ns, 10**9)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ns:09d}Z"


def jsonl_lines(points: Iterator[StoredPoint]) -> Iterator[str]:
    """One JSON object per reading, each a line."""
    for p in points:
        line = {"measurement": p.measurement, "tags": p.tags, "fields": p.fields, "ts": p.ts}
        yield orjson.dumps(line).decode() + "\n"


# A cell a spreadsheet would take for a formula (OWASP "CSV injection"): text from a device
# that starts with one of these is written with a leading apostrophe, so it stays text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_lines(points: Iterator[StoredPoint]) -> Iterator[str]:
    """One row per field (long form, as InfluxDB's CSV): the columns stay the same whatever
    tags and fields the series have, so rows can be written as they come. Text that came from
    a device (tags, text values) is neutralised where a spreadsheet would run it as a formula;
    numbers are written as they are."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")  # RFC 4180; a lone \r in a value is quoted
    w.writerow(CSV_COLUMNS)
    yield buf.getvalue()
    for p in points:
        buf.seek(0)
        buf.truncate()
        tags = _cell(",".join(f"{k}={v}" for k, v in sorted(p.tags.items())))
        when = _iso(p.ts)
        for field, value in p.fields.items():
            if isinstance(value, bool):
                text: object = "true" if value else "false"
            elif isinstance(value, str):
                text = _cell(value)
            else:
                text = value
            w.writerow((when, p.ts, _cell(p.measurement), tags, _cell(field), text))
        yield buf.getvalue()


def _write(lines: Iterator[str], out: TextIO, header: bool) -> int:
    n = -1 if header else 0
    for line in lines:
        out.write(line)
        n += 1
    return max(n, 0)


def write_jsonl(points: Iterator[StoredPoint], out: TextIO) -> int:
    """Write readings as JSON Lines; returns how many."""
    return _write(jsonl_lines(points), out, header=False)


def write_csv(points: Iterator[StoredPoint], out: TextIO) -> int:
    """Write readings as CSV (:func:`csv_lines`); returns how many."""
    return _write(csv_lines(points), out, header=True)
