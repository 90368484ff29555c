"""Time series over the InfluxDB line protocol: VictoriaMetrics (reads and writes) or InfluxDB 2/3
(writes).

Writes go through influxdb-client to ``/api/v2/write`` (VictoriaMetrics accepts the same
endpoint), synchronously — an ack promises the readings are stored — gzip-compressed, in chunks
of ``batch_lines`` lines, with retries and exponential backoff on connection errors, 429 and 5xx.
Every line carries two labels the collector owns: ``outpost_tenant`` (the gateway's tenant: every
read filters on it) and ``outpost_m`` (the measurement, so a field's metric name
``<measurement>_<field>`` splits back without guessing).

Idempotence: the same series and timestamp written again is one sample. VictoriaMetrics keeps
one sample per series and millisecond when started with ``-dedup.minScrapeInterval=1ms``
(required; docs/operations.md); InfluxDB overwrites by design.

Reads (VictoriaMetrics only) use its export API for raw points and the Prometheus query API
(MetricsQL) for bucketed aggregates, evaluated so that a bucket holds ``[start, start+bucket)``
exactly as in the SQLite store. What differs from SQLite, by nature of the backend:

- timestamps are kept to the millisecond;
- every value is a number: booleans come back as 1/0, integers as floats; text fields are not
  stored (VictoriaMetrics has no text values): they are counted in :attr:`text_fields_skipped`
  and logged once per field;
- retention is VictoriaMetrics' ``-retentionPeriod`` (and its downsampling), not the collector's
  rollups: :meth:`refresh_rollups` and :meth:`expire` do nothing here;
- ``latest`` and ``devices`` look back 30 days.
"""

from __future__ import annotations

import logging
import math
import ssl
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import httpx
import orjson

from outpost_iot.collector._exceptions import StoreError, StoreUnavailable, TooManyPoints
from outpost_iot.collector.stores._base import (
    ALL_TENANTS,
    LatestValue,
    SeriesGroup,
    SeriesInfo,
    SeriesQuery,
    SeriesWrite,
    StoredPoint,
)
from outpost_iot.wire import FieldValue

if TYPE_CHECKING:
    from outpost_iot.collector.stores._registry import InfluxConfig

_CONTROL = {"\n": r"\n", "\t": r"\t", "\r": r"\r"}
_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", **_CONTROL})
_ESCAPE_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", **_CONTROL})
_ESCAPE_STRING = str.maketrans({'"': r"\"", "\\": r"\\"})

TENANT_LABEL = "outpost_tenant"
MEASUREMENT_LABEL = "outpost_m"
_OWN = (TENANT_LABEL, MEASUREMENT_LABEL, "__name__")
_LOOKBACK = "30d"
_MS = 10**6


class InfluxTimeSeriesStore:
    """Readings in VictoriaMetrics (or InfluxDB 2/3, write-only) over the line protocol."""

    def __init__(
        self,
        url: str,
        *,
        kind: Literal["victoriametrics", "influxdb"] = "victoriametrics",
        org: str = "",
        bucket: str = "outpost",
        token: str = "",
        batch_lines: int = 10_000,
        timeout_s: float = 10.0,
        retries: int = 3,
        verify_tls: bool | str = True,
        logger: logging.Logger | None = None,
    ) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS
        from urllib3 import Retry

        self.url = url.rstrip("/")
        self.kind = kind
        self.where = f"{'VictoriaMetrics' if kind == 'victoriametrics' else 'InfluxDB'} {self.url}"
        self._org, self._bucket = org, bucket
        self._batch_lines = batch_lines
        self._log = logger or logging.getLogger("outpost.collector.timeseries")
        self._down_until = 0.0
        self._down_reason = ""
        self.text_fields_skipped = 0
        self.unwritable = 0  # readings whose measurement line protocol cannot carry
        self._skipped_names: set[str] = set()
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            backoff_factor=0.25,  # 0.25 s, 0.5 s, 1 s, …
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=None,  # a write is idempotent: retrying a POST is safe
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        ssl_ca = verify_tls if isinstance(verify_tls, str) else None
        self._client = InfluxDBClient(
            url=self.url,
            token=token or "none",
            org=org or "-",
            timeout=int(timeout_s * 1000),
            enable_gzip=True,
            retries=retry,
            verify_ssl=bool(verify_tls),
            ssl_ca_cert=ssl_ca,
        )
        self._write = self._client.write_api(write_options=SYNCHRONOUS)
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout_s,
            verify=ssl.create_default_context(cafile=verify_tls)
            if isinstance(verify_tls, str)
            else verify_tls,
            headers={"Authorization": f"Token {token}"} if token else {},
        )

    @classmethod
    def from_config(cls, config: InfluxConfig, *, kind: str) -> InfluxTimeSeriesStore:
        verify: bool | str = str(config.ca_file) if config.ca_file else config.verify_tls
        return cls(
            config.url,
            kind="influxdb" if kind == "influxdb" else "victoriametrics",
            org=config.org,
            bucket=config.bucket,
            token=config.token.get_secret_value(),
            batch_lines=config.batch_lines,
            timeout_s=config.timeout_s,
            retries=config.retries,
            verify_tls=verify,
        )

    # -- writing ------------------------------------------------------------------------------

    def lines(self, series: Sequence[SeriesWrite]) -> Iterator[str]:
        """Line protocol, one line per point, as influxdb-client's ``Point`` writes it (tags
        and fields sorted, the same escaping; a test holds the two equal). Written here
        because building a ``Point`` per reading cost 12 µs, most of a write's time."""
        text_ok = self.kind == "influxdb"
        for s in series:
            if s.measurement.startswith("#"):  # a line starting with # is a comment
                self.unwritable += len(s.points)
                self._log.warning(
                    "%s: measurement %r cannot be written in line protocol (it starts with #);"
                    " %d readings not stored",
                    self.where,
                    s.measurement,
                    len(s.points),
                )
                continue
            tags = {**s.tags, TENANT_LABEL: s.tenant, MEASUREMENT_LABEL: s.measurement}
            head = s.measurement.translate(_ESCAPE_MEASUREMENT) + "".join(
                f",{k.translate(_ESCAPE_KEY)}={_tag_value(v)}"
                for k, v in sorted(tags.items())
                if k and v
            )
            for ts, fields in s.points:
                parts = []
                for name, value in sorted(fields.items()):
                    key = name.translate(_ESCAPE_KEY)
                    if isinstance(value, bool):
                        parts.append(f"{key}={'true' if value else 'false'}")
                    elif isinstance(value, int):
                        parts.append(f"{key}={value}i")
                    elif isinstance(value, float):
                        if not math.isfinite(value):
                            continue  # the agent refuses these; never write what cannot be read
                        text = repr(value)
                        parts.append(f"{key}={text[:-2] if text.endswith('.0') else text}")
                    elif text_ok:
                        parts.append(f'{key}="{value.translate(_ESCAPE_STRING)}"')
                    else:
                        self._skip_text(s.measurement, name)
                if parts:
                    yield f"{head} {','.join(parts)} {ts}"

    def _skip_text(self, measurement: str, name: str) -> None:
        self.text_fields_skipped += 1
        key = f"{measurement}.{name}"
        if key not in self._skipped_names:
            self._skipped_names.add(key)
            self._log.warning(
                "%s stores numbers only: text field %s is not stored (counted in"
                " outpost_timeseries_text_fields_skipped_total)",
                self.where,
                key,
            )

    def write(self, series: Sequence[SeriesWrite]) -> None:
        from influxdb_client.domain.write_precision import WritePrecision

        chunk: list[str] = []
        for line in self.lines(series):
            chunk.append(line)
            if len(chunk) >= self._batch_lines:
                self._send(chunk, WritePrecision.NS)
                chunk = []
        if chunk:
            self._send(chunk, WritePrecision.NS)

    def _send(self, lines: list[str], precision: Any) -> None:
        # While the server is down, fail at once for a moment instead of retrying every write
        # (the ingest nacks quickly; `ping` always asks the server).
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(f"{self.where}: cannot write readings: {self._down_reason}")
        try:
            self._write.write(
                bucket=self._bucket, org=self._org or "-", record="\n".join(lines),
                write_precision=precision,
            )  # fmt: skip
        except Exception as exc:  # influxdb-client raises ApiException and urllib3 errors
            error = self._translate("write readings", exc)
            if isinstance(error, StoreUnavailable):
                self._down_until = time.monotonic() + 1.0
                self._down_reason = "unavailable a moment ago"
            raise error from exc

    def _translate(self, what: str, exc: Exception) -> StoreError:
        status = getattr(exc, "status", None)
        reason = f"HTTP {status}: {getattr(exc, 'reason', '')}".strip() if status else str(exc)
        reason = reason.splitlines()[0][:300] if reason else type(exc).__name__
        if status is None or status == 429 or status >= 500:
            return StoreUnavailable(f"{self.where}: cannot {what}: {reason}")
        return StoreError(f"{self.where}: cannot {what}: {reason}")

    # -- reading (VictoriaMetrics) ------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any] | list[tuple[str, Any]]) -> httpx.Response:
        if self.kind != "victoriametrics":
            raise StoreError(
                f"{self.where}: reading back is supported on VictoriaMetrics only; use InfluxDB's "
                "own query tools, or VictoriaMetrics for the collector's query API"
            )
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"{self.where}: cannot query: {exc}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise StoreUnavailable(
                f"{self.where}: cannot query: HTTP {response.status_code}: {response.text[:300]}"
            )
        if response.status_code != 200:
            raise StoreError(
                f"{self.where}: query refused: HTTP {response.status_code}: {response.text[:300]}"
            )
        return response

    @staticmethod
    def _selector(
        tenant: str, measurement: str | None, tags: dict[str, str] | None, name: str | None = None
    ) -> str:
        parts = []
        if name is not None:
            parts.append(f"__name__={_quote(name)}")
        if measurement is not None:
            parts.append(f"{MEASUREMENT_LABEL}={_quote(measurement)}")
        else:
            parts.append(f'{MEASUREMENT_LABEL}!=""')
        if tenant != ALL_TENANTS:
            parts.append(f"{TENANT_LABEL}={_quote(tenant)}")
        for key, value in (tags or {}).items():
            parts.append(f"{_label(key)}={_quote(value)}")
        return "{" + ", ".join(parts) + "}"

    def _export(
        self, selector: str, start_ns: int | None = None, end_ns: int | None = None
    ) -> Iterator[dict[str, Any]]:
        params: list[tuple[str, Any]] = [("match[]", selector)]
        if start_ns is not None:
            params.append(("start", f"{start_ns / 1e9:.3f}"))
        if end_ns is not None:
            params.append(("end", f"{(end_ns - 1) / 1e9:.3f}"))  # export's end is inclusive
        for line in self._get("/api/v1/export", params).iter_lines():
            if line.strip():
                yield orjson.loads(line)

    def query(
        self,
        measurement: str,
        *,
        tenant: str = ALL_TENANTS,
        tags: dict[str, str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> list[StoredPoint]:
        """Points of ``measurement`` whose tags include ``tags``, oldest first, one per ts."""
        by_point: dict[tuple[bytes, int], StoredPoint] = {}
        prefix = measurement + "_"
        for series in self._export(self._selector(tenant, measurement, tags), start_ns, end_ns):
            metric = series["metric"]
            field = str(metric.get("__name__", "")).removeprefix(prefix)
            labels = {k: v for k, v in metric.items() if k not in _OWN}
            # Series of two tenants may have the same tags: the tenant is part of the identity.
            key = orjson.dumps([metric.get(TENANT_LABEL), labels], option=orjson.OPT_SORT_KEYS)
            for ts_ms, value in zip(series["timestamps"], series["values"], strict=True):
                ts = int(ts_ms) * _MS
                # [start, end): the export API includes both ends.
                if (start_ns is not None and ts < start_ns) or (
                    end_ns is not None and ts >= end_ns
                ):
                    continue
                point = by_point.get((key, ts))
                if point is None:
                    point = by_point[(key, ts)] = StoredPoint(measurement, labels, ts, {})
                point.fields[field] = value
        return sorted(by_point.values(), key=lambda p: (p.ts, orjson.dumps(p.tags)))

    def _range(self, promql: str, start_ms: int, end_ms: int, step_ms: int) -> list[dict[str, Any]]:
        response = self._get(
            "/api/v1/query_range",
            {
                "query": promql,
                "start": f"{start_ms / 1000:.3f}",
                "end": f"{end_ms / 1000:.3f}",
                "step": f"{step_ms}ms",
                "nocache": "1",  # buckets start at `start`, not at a multiple of the step
            },
        )
        return list(response.json()["data"]["result"])

    def _instant(self, promql: str) -> list[dict[str, Any]]:
        response = self._get("/api/v1/query", {"query": promql, "nocache": "1"})
        return list(response.json()["data"]["result"])

    def aggregate(self, query: SeriesQuery) -> list[SeriesGroup]:
        """Bucketed aggregates; bucket k holds ``[start + k·bucket, start + (k+1)·bucket)`` and
        the last one stops at ``end``, as in the SQLite store."""
        start_ms = -(-query.start_ns // _MS)
        end_ms = -(-query.end_ns // _MS)
        bucket_ms = max(1, query.bucket_ns // _MS)
        if end_ms <= start_ms:
            return []
        full = (end_ms - start_ms) // bucket_ms
        if full + 1 > query.max_points:
            raise TooManyPoints(full + 1, query.max_points)
        selector = self._selector(
            query.tenant, query.measurement, query.tags, f"{query.measurement}_{query.field}"
        )
        # Whole buckets in one query; a last, shorter bucket (the range is not a multiple of
        # the bucket) in another, so no window reaches past `end`.
        windows = []
        if full:
            windows.append((start_ms, full, bucket_ms))
        rest = (end_ms - start_ms) - full * bucket_ms
        if rest:
            windows.append((start_ms + full * bucket_ms, 1, rest))
        groups: dict[tuple[str, ...], dict[int, FieldValue]] = defaultdict(dict)
        for first, count, width in windows:
            # Evaluated at a bucket's last millisecond, a window (t - width, t] is the bucket.
            t0 = first + width - 1
            t1 = t0 + (count - 1) * bucket_ms
            for key, bucket_start_ms, value in self._aggregate_range(
                query, selector, width, t0, t1, bucket_ms
            ):
                groups[key][bucket_start_ms * _MS] = value
        total = sum(len(v) for v in groups.values())
        if total > query.max_points:
            raise TooManyPoints(total, query.max_points)
        return [
            SeriesGroup(dict(zip(query.group_by, key, strict=True)), sorted(groups[key].items()))
            for key in sorted(groups)
        ]

    def _aggregate_range(
        self, query: SeriesQuery, selector: str, width: int, t0: int, t1: int, step: int
    ) -> Iterator[tuple[tuple[str, ...], int, FieldValue]]:
        by = ", ".join(_label(t) for t in query.group_by)
        window = f"{selector}[{width}ms]"
        agg = query.aggregate
        if agg == "last":  # per series, then the newest across the group's series
            values = self._range(f"last_over_time({window})", t0, t1, step)
            stamps = self._range(f"tlast_over_time({window})", t0, t1, step)
            when = {
                (_identity(s["metric"]), float(t)): float(v) for s in stamps for t, v in s["values"]
            }
            best: dict[tuple[tuple[str, ...], float], tuple[float, float]] = {}
            for s in values:
                key = tuple(str(s["metric"].get(t, "")) for t in query.group_by)
                mkey = _identity(s["metric"])
                for t, v in s["values"]:
                    seen = when.get((mkey, float(t)), 0.0)
                    if (key, float(t)) not in best or seen > best[(key, float(t))][0]:
                        best[(key, float(t))] = (seen, float(v))
            for (key, t), (_, v) in best.items():
                yield key, round(t * 1000) + 1 - width, v
            return
        promql = {
            "mean": f"sum by ({by}) (sum_over_time({window})) / sum by ({by}) (count_over_time({window}))",
            "sum": f"sum by ({by}) (sum_over_time({window}))",
            "count": f"sum by ({by}) (count_over_time({window}))",
            "min": f"min by ({by}) (min_over_time({window}))",
            "max": f"max by ({by}) (max_over_time({window}))",
        }[agg]  # fmt: skip
        for s in self._range(promql, t0, t1, step):
            key = tuple(str(s["metric"].get(t, "")) for t in query.group_by)
            for t, v in s["values"]:
                value: FieldValue = int(float(v)) if agg == "count" else float(v)
                yield key, round(float(t) * 1000) + 1 - width, value

    def _series(self, selector: str, limit: int | None = None) -> list[dict[str, str]]:
        now = time.time()
        params = [
            ("match[]", selector),
            ("start", f"{now - 30 * 86400:.0f}"),
            ("end", f"{now:.0f}"),
        ]
        if limit is not None:
            params.append(("limit", str(limit)))
        response = self._get("/api/v1/series", params)
        return list(response.json()["data"])

    def catalog(
        self, tenant: str, *, tags: dict[str, str] | None = None, limit: int = 10_000
    ) -> list[SeriesInfo]:
        """The series written in the last 30 days. A series here is a metric per field, so
        ``limit`` bounds the metrics read: fewer series may come back."""
        found: dict[tuple[str, bytes, str], tuple[dict[str, str], set[str]]] = {}
        for s in self._series(self._selector(tenant, None, tags), limit):
            measurement = s.get(MEASUREMENT_LABEL, "")
            labels = {k: v for k, v in s.items() if k not in _OWN}
            key = (
                measurement,
                orjson.dumps(labels, option=orjson.OPT_SORT_KEYS),
                s.get(TENANT_LABEL, ""),  # an admin's view: the same tags in two tenants
            )
            found.setdefault(key, (labels, set()))[1].add(
                s["__name__"].removeprefix(measurement + "_")
            )
        return [
            SeriesInfo(measurement, labels, tuple(sorted(fields)))
            for (measurement, _, _), (labels, fields) in sorted(found.items())
        ]

    def latest(
        self, tenant: str, measurement: str, *, tags: dict[str, str] | None = None
    ) -> list[LatestValue]:
        """The newest value of every field of every matching series (30 days back)."""
        prefix = measurement + "_"
        names = sorted(
            {s["__name__"] for s in self._series(self._selector(tenant, measurement, tags))}
        )
        out = []
        for name in names:
            selector = self._selector(tenant, measurement, tags, name)
            values = self._instant(f"last_over_time({selector}[{_LOOKBACK}])")
            stamps = {
                _identity(s["metric"]): float(s["value"][1])
                for s in self._instant(f"tlast_over_time({selector}[{_LOOKBACK}])")
            }
            for s in values:
                metric = s["metric"]
                ts = stamps.get(_identity(metric))
                if ts is None:
                    continue
                out.append(
                    LatestValue(
                        measurement,
                        {k: v for k, v in metric.items() if k not in _OWN},
                        name.removeprefix(prefix),
                        round(ts * 1000) * _MS,
                        float(s["value"][1]),
                    )
                )
        return out

    def devices(self, tenant: str, gateway_id: str) -> dict[str, tuple[list[str], int]]:
        """Devices seen behind a gateway (the ``device`` tag): device → (measurements, last ts),
        30 days back."""
        selector = self._selector(tenant, None, {"gateway": gateway_id})
        measurements: dict[str, set[str]] = defaultdict(set)
        for s in self._series(selector):
            if s.get("device"):
                measurements[s["device"]].add(s[MEASUREMENT_LABEL])
        last = {
            s["metric"].get("device", ""): round(float(s["value"][1]) * 1000) * _MS
            for s in self._instant(f"max by (device) (tlast_over_time({selector}[{_LOOKBACK}]))")
        }
        return {d: (sorted(m), last.get(d, 0)) for d, m in measurements.items()}

    def count_points(self, measurement: str | None = None) -> int:
        """Distinct (series, timestamp) pairs: readings stored (reads every point: for tests
        and benchmarks, not for dashboards)."""
        seen: set[tuple[bytes, int]] = set()
        for series in self._export(self._selector(ALL_TENANTS, measurement, None)):
            labels = {k: v for k, v in series["metric"].items() if k != "__name__"}
            key = orjson.dumps(labels, option=orjson.OPT_SORT_KEYS)
            seen.update((key, int(t)) for t in series["timestamps"])
        return len(seen)

    def duplicate_points(self, measurement: str | None = None) -> int:
        extra = 0
        for series in self._export(self._selector(ALL_TENANTS, measurement, None)):
            stamps = series["timestamps"]
            extra += len(stamps) - len(set(stamps))
        return extra

    # -- retention and health -----------------------------------------------------------------

    def refresh_rollups(self, raw_horizon_ns: int = 0) -> int:
        """Nothing to do: VictoriaMetrics aggregates at query time (and downsamples itself)."""
        del raw_horizon_ns
        return 0

    def expire(
        self, *, raw_before_ns: int, rollup_5m_before_ns: int, rollup_1h_before_ns: int
    ) -> dict[str, int]:
        """Nothing to do: the server's ``-retentionPeriod`` deletes old data."""
        del raw_before_ns, rollup_5m_before_ns, rollup_1h_before_ns
        return {"raw_points": 0, "rollups_5m": 0, "rollups_1h": 0}

    def not_kept(self) -> dict[str, int]:
        return {
            "text_fields_skipped": self.text_fields_skipped,
            "unwritable_readings": self.unwritable,
        }

    def ping(self) -> None:
        path = "/health"
        try:
            response = self._http.get(path)
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"{self.where}: not reachable: {exc}") from exc
        if response.status_code != 200:
            raise StoreUnavailable(f"{self.where}: {path} answered HTTP {response.status_code}")

    def flush(self) -> None:
        """Make what was just written visible to queries at once (VictoriaMetrics buffers for
        about a second). For tests and benchmarks."""
        if self.kind == "victoriametrics":
            self._get("/internal/force_flush", {})

    def close(self) -> None:
        self._client.close()
        self._http.close()


def _tag_value(value: str) -> str:
    escaped = value.translate(_ESCAPE_KEY)
    return escaped + " " if escaped.endswith("\\") else escaped  # as influxdb-client does


def _identity(metric: dict[str, str]) -> bytes:
    """A series' labels without its name (some rollup functions keep ``__name__``, some drop
    it), as a key."""
    return orjson.dumps(
        {k: v for k, v in metric.items() if k != "__name__"}, option=orjson.OPT_SORT_KEYS
    )


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(name: str) -> str:
    """A tag name as a label name in a selector (Prometheus: letters, digits, underscores)."""
    if (
        name
        and (name[0].isalpha() or name[0] == "_")
        and all(c.isalnum() or c == "_" for c in name)
    ):
        return name
    raise StoreError(
        f"tag {name!r} cannot be filtered or grouped on in VictoriaMetrics: label names are "
        "letters, digits and underscores"
    )
