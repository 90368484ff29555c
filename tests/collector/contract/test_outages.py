"""A server backend that goes away mid-run: the store says "unavailable" (so the ingest nacks
and the gateway keeps its data), names the server but never the password, and works again, with
its data, once the server is back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from outpost_iot.collector._exceptions import StoreUnavailable
from outpost_iot.collector.stores import BatchRecord, SeriesWrite
from outpost_iot.dev._servers import (
    Postgres,
    VictoriaMetrics,
    find_postgres_bin,
    find_victoria_metrics,
)
from tests.conftest import require_service

S = 10**9


def eventually(action: Callable[[], object], timeout: float = 20) -> None:
    """Retry ``action`` until the store answers again (the pool reconnects in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            action()
            return
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_postgres_lost_and_back() -> None:
    require_service("postgresql", find_postgres_bin() is not None, "apt-get install postgresql")
    from outpost_iot.collector.stores import PostgresDocumentStore

    server = Postgres()
    server.start()
    # trust authentication accepts any password: this one must never show in a message
    dsn = server.dsn.replace("outpost@", "outpost:pw-never-shown@")
    store = PostgresDocumentStore(dsn, pool_size=2, connect_timeout_s=1)
    try:
        store.record([BatchRecord("gw-1", "s", 1, 10, 1)], [])
        server.stop(mode="immediate")
        for attempt in (
            store.ping,
            lambda: store.record([BatchRecord("gw-1", "s", 2, 10, 2)], []),
            lambda: store.seen("gw-1", "s", 1),
        ):
            with pytest.raises(StoreUnavailable) as caught:
                attempt()
            assert f"PostgreSQL 127.0.0.1:{server.port}/outpost" in str(caught.value)
            assert "pw-never-shown" not in str(caught.value)
        server.start()
        eventually(store.ping)
        eventually(lambda: store.record([BatchRecord("gw-1", "s", 2, 10, 2)], []))
        assert store.seen("gw-1", "s", 1)  # what was stored before the outage is there
        assert store.seen("gw-1", "s", 2)
    finally:
        store.close()
        server.close()


def test_an_unreachable_postgres_at_start_says_what_to_check() -> None:
    from outpost_iot.collector.stores import PostgresDocumentStore
    from outpost_iot.dev._processes import free_port

    with pytest.raises(StoreUnavailable) as caught:
        PostgresDocumentStore(
            f"postgresql://outpost:secret-pw@127.0.0.1:{free_port()}/outpost", connect_timeout_s=1
        )
    message = str(caught.value)
    assert "cannot connect within 1 s" in message
    assert "pg_hba.conf" in message
    assert "secret-pw" not in message


def test_victoria_metrics_lost_and_back(tmp_path: Path) -> None:
    require_service(
        "victoria-metrics", find_victoria_metrics() is not None, "apt-get install victoria-metrics"
    )
    from outpost_iot.collector.stores import InfluxTimeSeriesStore

    server = VictoriaMetrics(tmp_path / "vm")
    server.start()
    store = InfluxTimeSeriesStore(server.url, timeout_s=1, retries=0)
    now = time.time_ns() // 10**6 * 10**6
    try:
        store.write([SeriesWrite("m", {"device": "d"}, [(now, {"v": 1.0})], "acme")])
        server.stop()
        with pytest.raises(StoreUnavailable, match=f"VictoriaMetrics {server.url}"):
            store.write([SeriesWrite("m", {"device": "d"}, [(now + S, {"v": 2.0})], "acme")])
        with pytest.raises(StoreUnavailable):
            store.ping()
        with pytest.raises(StoreUnavailable):
            store.query("m", tenant="acme")
        server.start()
        eventually(lambda: store.write([SeriesWrite("m", {"device": "d"}, [(now + S, {"v": 2.0})], "acme")]))  # fmt: skip
        # Just after a restart VictoriaMetrics takes a moment before reads see everything.
        deadline = time.monotonic() + 15
        while True:
            store.flush()
            values = [float(p.fields["v"]) for p in store.query("m", tenant="acme")]
            if values == [1.0, 2.0] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert values == [1.0, 2.0]
    finally:
        store.close()
        server.stop()
