"""Every store backend, against a real server, behind the same fixtures.

A test that takes ``docs`` runs once per document-store backend of the registry
(``collector.stores._registry``: SQLite, PostgreSQL); one that takes ``ts`` once per
time-series backend. Each store is opened through its registry entry, as the collector opens
it. The servers are real: a PostgreSQL cluster made with initdb, a VictoriaMetrics on a free
port, each started by the fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from outpost_iot.collector.stores import DocumentStore, TimeSeriesStore
from outpost_iot.collector.stores._registry import (
    BACKENDS,
    InfluxConfig,
    Opening,
    PostgresConfig,
    names,
)
from tests.conftest import require_service


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[object, None]:
    return None, None


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[object, None]:
    return PostgresConfig(dsn=request.getfixturevalue("postgres_dsn"), pool_size=4), None


def _victoriametrics(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[object, Callable[[], None]]:
    from outpost_iot.dev._servers import VictoriaMetrics, find_victoria_metrics

    require_service(
        "victoria-metrics", find_victoria_metrics() is not None, "apt-get install victoria-metrics"
    )
    server = VictoriaMetrics(tmp_path / "vm")
    server.start()
    return InfluxConfig(url=server.url), server.stop


# How the contract brings up each registered backend: its [stores.<section>] settings and a
# server started for the test (stopped after it).
SERVERS: dict[
    str, Callable[[pytest.FixtureRequest, Path], tuple[object, Callable[[], None] | None]]
] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
    "victoriametrics": _victoriametrics,
}
# Registered backends the contract cannot start a server for, and why that is safe.
NOT_IN_CONTRACT = {
    "influxdb": "no InfluxDB server in Debian; the same line-protocol client as victoriametrics, "
    "whose InfluxDB requests (org, bucket, token) tests/collector/test_line_protocol.py checks",
}


def _opened(request: pytest.FixtureRequest, tmp_path: Path, role: str) -> Iterator[Any]:
    """The store of backend ``request.param`` for ``role``, opened through the registry."""
    name = request.param
    settings, stop = SERVERS[name](request, tmp_path)
    factory = BACKENDS[name].opens(role)
    assert factory is not None
    store = factory(
        Opening(
            backend=name, settings=settings, path=tmp_path / f"{role}.db", raw_retention_s=7 * 86400
        )
    )
    yield store
    store.close()
    if stop is not None:
        stop()


@pytest.fixture(params=[n for n in names("documents") if n in SERVERS])
def docs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocumentStore]:
    yield from _opened(request, tmp_path, "documents")


@pytest.fixture(params=[n for n in names("timeseries") if n in SERVERS])
def ts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TimeSeriesStore]:
    yield from _opened(request, tmp_path, "timeseries")


def visible(store: TimeSeriesStore) -> None:
    """What was written is visible to reads (VictoriaMetrics buffers about a second)."""
    flush = getattr(store, "flush", None)
    if flush is not None:
        flush()
