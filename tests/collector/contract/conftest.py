"""Every store backend, against a real server, behind the same fixtures.

A test that takes ``docs`` runs once per document store (SQLite, PostgreSQL); one that takes
``ts`` once per time-series store. The servers are real: a PostgreSQL cluster made with initdb,
a VictoriaMetrics on a free port, each started by the fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.stores import (
    DocumentStore,
    SqliteDocumentStore,
    SqliteTimeSeriesStore,
    TimeSeriesStore,
)
from tests.conftest import require_service


@pytest.fixture(params=["sqlite", "postgres"])
def docs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocumentStore]:
    store: DocumentStore
    if request.param == "sqlite":
        store = SqliteDocumentStore(tmp_path / "documents.db")
    else:
        from collector.stores import PostgresDocumentStore

        store = PostgresDocumentStore(request.getfixturevalue("postgres_dsn"), pool_size=4)
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "victoriametrics", "postgres"])
def ts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TimeSeriesStore]:
    store: TimeSeriesStore
    server = None
    if request.param == "sqlite":
        store = SqliteTimeSeriesStore(tmp_path / "timeseries.db")
    elif request.param == "postgres":
        from collector.stores import PostgresTimeSeriesStore

        store = PostgresTimeSeriesStore(request.getfixturevalue("postgres_dsn"), pool_size=4)
    else:
        from collector.stores import InfluxTimeSeriesStore
        from outpost_dev._servers import VictoriaMetrics, find_victoria_metrics

        require_service(
            "victoria-metrics",
            find_victoria_metrics() is not None,
            "apt-get install victoria-metrics",
        )
        server = VictoriaMetrics(tmp_path / "vm")
        server.start()
        store = InfluxTimeSeriesStore(server.url)
    yield store
    store.close()
    if server is not None:
        server.stop()


def visible(store: TimeSeriesStore) -> None:
    """What was written is visible to reads (VictoriaMetrics buffers about a second)."""
    flush = getattr(store, "flush", None)
    if flush is not None:
        flush()
