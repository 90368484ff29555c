"""Every store backend, against a real server, behind the same fixtures.

A test that takes ``docs`` runs once per document store (SQLite, PostgreSQL); one that takes
``ts`` once per time-series store. The servers are real: a PostgreSQL cluster made with initdb,
a VictoriaMetrics on a free port, each started by the fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.stores import DocumentStore, SqliteDocumentStore


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
