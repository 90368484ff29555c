"""The API against hostile callers, past what schemathesis generates from the schema: values at
and beyond every range (buckets, times, cursors, ids), bodies past their limits, queries too
costly or too slow. Never a 5xx; every refusal names what to change."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost_iot.collector._exceptions import QueryTimeout, QueryTooCostly
from outpost_iot.collector.api._limits import ENROLL_BODY_BYTES, AttemptLimiter
from outpost_iot.collector.stores import SeriesQuery, SeriesWrite, SqliteTimeSeriesStore
from tests._fuzz import budget
from tests.collector.test_api_schema import ADMIN, VIEWER, app  # noqa: F401 (the fixture)

FUZZ = settings(
    max_examples=budget(150),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Client:
    """Requests to the app in memory (the ASGI app itself, its middleware included)."""

    def __init__(self, asgi: FastAPI) -> None:
        self._app = asgi

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self._app)
            async with httpx.AsyncClient(transport=transport, base_url="http://c") as c:
                return await c.request(method, url, **kwargs)

        return asyncio.run(call())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Client:  # noqa: F811 (the fixture above)
    return Client(app)


def ok_or_refused(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        body = r.json()
        assert body.get("error")
        assert body.get("detail") or body.get("problems")


numbers = st.one_of(
    st.integers(min_value=0, max_value=10**40).map(str),
    st.sampled_from(["0", "1", str(2**63), str(2**64), "9" * 30, "-1", "١"]),
)
durations = st.tuples(numbers, st.sampled_from(["ms", "s", "m", "h", "d", "y", ""])).map("".join)
times = st.one_of(
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(["1969-12-31T23:59:59Z", "2116-02-21T00:00:00Z", "9999-12-31T23:59:59Z"]),
    st.text(max_size=30),
)


@FUZZ
@given(
    bucket=durations,
    start=times,
    end=times,
    tags=st.lists(st.text(max_size=300), max_size=3),
    group=st.lists(st.text(max_size=20), max_size=3),
    max_points=numbers,
    aggregate=st.sampled_from(["mean", "sum", "last", "median"]),
)
def test_series_parameters_out_of_every_range(
    client: Client,
    bucket: str,
    start: str,
    end: str,
    tags: list[str],
    group: list[str],
    max_points: str,
    aggregate: str,
) -> None:
    r = client.get(
        "/api/v1/series",
        params={
            "measurement": "climate",
            "field": "celsius",
            "bucket": bucket,
            "start": start,
            "end": end,
            "tag": tags,
            "group_by": group,
            "max_points": max_points,
            "aggregate": aggregate,
        },
        headers={"Authorization": f"Bearer {VIEWER}"},
    )
    ok_or_refused(r)


cursors = st.one_of(
    st.text(max_size=100),
    st.lists(
        st.one_of(
            st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=200), st.none()
        ),
        max_size=4,
    ).map(lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).decode()),
)


@FUZZ
@given(cursor=cursors, gateway=st.text(max_size=80), before=numbers, entry=numbers)
def test_cursors_ids_and_paths_out_of_range(
    client: Client, cursor: str, gateway: str, before: str, entry: str
) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    ok_or_refused(client.get("/api/v1/events", params={"cursor": cursor}, headers=auth))
    ok_or_refused(client.get("/api/v1/quarantine", params={"before": before}, headers=auth))
    ok_or_refused(client.post(f"/api/v1/quarantine/{entry}/replay", headers=auth))
    ok_or_refused(client.get(f"/api/v1/gateways/{quote(gateway, safe='') or 'x'}", headers=auth))


def test_a_body_past_the_limit_is_refused_before_it_is_read(client: Client) -> None:
    huge = b"{" + b" " * (ENROLL_BODY_BYTES + 1) + b"}"
    r = client.post("/api/v1/enroll", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == "too_large"

    async def chunks() -> Any:  # no Content-Length: counted as it comes
        for _ in range(40):
            yield b" " * 4096

    r = client.post(
        "/api/v1/enroll", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    r = client.post(
        "/api/v1/enroll",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": "99999999999999999999"},
    )
    assert r.status_code == 413
    # Under the limit, the route answers as usual (a refusal of its own, not a 413).
    r = client.post("/api/v1/enroll", json={"token": "opt_x", "csr": "x"})
    assert r.status_code in (400, 401, 429)


def test_failed_enrollments_are_limited_per_address() -> None:
    now = [0.0]
    limiter = AttemptLimiter(burst=3, per_s=10.0, now=lambda: now[0])
    for _ in range(3):
        assert limiter.wait("10.0.0.1") == 0
        limiter.charge("10.0.0.1")
    assert limiter.wait("10.0.0.1") == pytest.approx(10.0)
    assert limiter.wait("10.0.0.2") == 0, "another address has its own limit"
    now[0] = 10.0
    assert limiter.wait("10.0.0.1") == 0, "one more attempt after the refill time"
    bounded = AttemptLimiter(max_addresses=100)
    for i in range(1000):
        bounded.charge(f"10.1.{i // 256}.{i % 256}")
    assert len(bounded._buckets) == 100


@pytest.fixture
def many_series(tmp_path: Path) -> Iterator[SqliteTimeSeriesStore]:
    ts = SqliteTimeSeriesStore(tmp_path / "ts.db")
    t0 = 1_700_000_000 * 10**9
    ts.write(
        [
            SeriesWrite(
                "m", {"device": f"d{i}"}, [(t0 + k * 10**9, {"v": k}) for k in range(600)], "t"
            )
            for i in range(200)
        ]
    )
    yield ts
    ts.close()


def query(**overrides: object) -> SeriesQuery:
    t0 = 1_700_000_000 * 10**9
    q = {
        "tenant": "t",
        "measurement": "m",
        "field": "v",
        "start_ns": t0,
        "end_ns": t0 + 600 * 10**9,
        "bucket_ns": 10**9,
        "aggregate": "mean",
    }
    q.update(overrides)
    return SeriesQuery(**q)  # type: ignore[arg-type]


def test_a_query_too_costly_is_refused_before_it_runs(many_series: SqliteTimeSeriesStore) -> None:
    with pytest.raises(QueryTooCostly, match="200 series × 600 buckets"):
        many_series.aggregate(query(max_cost=100_000))
    assert many_series.aggregate(query(max_cost=120_000))  # at the limit: answered


def test_a_query_too_slow_is_stopped_and_the_store_answers_again(
    many_series: SqliteTimeSeriesStore,
) -> None:
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"more than 0\.05 s"):
        many_series.aggregate(query(timeout_s=0.05))
    assert time.monotonic() - started < 5
    assert len(many_series.aggregate(query(bucket_ns=60 * 10**9))) == 1  # no deadline left over


def test_a_desired_config_past_its_limits_is_a_422_not_a_crash(client: Client) -> None:
    """Found by schemathesis: an integer past int64 in a config reached the envelope's encoder."""
    auth = {"Authorization": f"Bearer {ADMIN}"}
    deep: Any = 1
    for _ in range(40):
        deep = {"d": deep}
    for config in ({"x": -(2**63) - 1}, {"devices": [deep]}, {"k": [0] * 110_000}):
        r = client.post("/api/v1/rollouts", json={"config": config, "tenant": "acme"}, headers=auth)
        assert r.status_code == 422, r.text
        assert r.json()["problems"]


def test_a_large_body_is_parsed_off_the_event_loop(client: Client) -> None:
    """FastAPI parses a body before authentication: a megabyte of small objects from anyone
    would otherwise hold the event loop (and with it every gateway's acks)."""
    import threading

    import outpost_iot.collector.api._limits as api_limits

    threads: list[str] = []
    original = api_limits.json.loads

    def recording(data: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(data)

    api_limits.json.loads = recording  # type: ignore[assignment]
    try:
        big = {"site": "hq", "padding": [0] * 100_000}  # ~300 kB: past the in-loop threshold
        r = client.post("/api/v1/enrollment-tokens", json={"site": "hq"})
        assert r.status_code == 401
        r = client.post("/api/v1/rollouts", json=big)
        assert r.status_code == 401  # parsed (off the loop), then refused: no token
    finally:
        api_limits.json.loads = original  # type: ignore[assignment]
    assert threads[0] == threading.main_thread().name  # a small body: parsed in place
    assert threads[-1] != threading.main_thread().name, "a large body was parsed in the loop"
