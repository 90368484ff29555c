"""The collector's MQTT side against a real Mosquitto, in process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from outpost_iot import wire
from outpost_iot.collector import CollectorConfig, CollectorService, Incoming, Ingestor, Reply
from outpost_iot.collector.stores import SqliteDocumentStore, SqliteTimeSeriesStore
from outpost_iot.dev._processes import Mosquitto
from outpost_iot.wire import topics
from tests._wait import wait_until
from tests.collector.test_ingest import frame
from tests.e2e.test_protection import Client

pytestmark = [pytest.mark.broker]


class SlowIngestor(Ingestor):
    """A real ingestor that takes its time, like one behind a slow store."""

    def handle(self, messages: Sequence[Incoming]) -> list[Reply]:
        time.sleep(0.3)
        return super().handle(messages)


@pytest.mark.parametrize(
    "bound",
    [
        # Many small batches past max_queued_batches.
        {"max_queued": 2, "payload": lambda seq: frame(seq)},
        # Few but large frames past max_queued_bytes: a gateway could otherwise park 2,000
        # frames of 1 MiB in the collector's memory.
        {"max_queued": 2_000, "max_queued_bytes": 1 << 20, "payload": lambda _: bytes(300_000)},
    ],
    ids=["batches", "bytes"],
)
async def test_an_overloaded_collector_nacks_instead_of_queueing_without_bound(
    broker: Mosquitto, identity, tmp_path: Path, bound: dict[str, Any]
) -> None:
    f = broker.files
    cfg = CollectorConfig.model_validate(
        {
            "broker": {
                "port": broker.port,
                "ca_file": f.ca_cert,
                "cert_file": f.collector_cert,
                "key_file": f.collector_key,
            },
            "stores": {"timeseries_path": tmp_path / "ts.db", "documents_path": tmp_path / "d.db"},
        }
    )
    ts = SqliteTimeSeriesStore(cfg.stores.timeseries_path)
    docs = SqliteDocumentStore(cfg.stores.documents_path)
    limits = {k: v for k, v in bound.items() if k != "payload"}
    service = CollectorService(
        broker=cfg.broker,
        ingestor=SlowIngestor(config=cfg, timeseries=ts, documents=docs),
        documents=docs,
        dedup_window_s=3600,
        overload_retry_after_ms=1500,
        **limits,
    )
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.subscribed.wait(), 10)
        ca, cert, key = identity("gw-1")
        gw = Client(broker, cert=cert, key=key, ca=ca, client_id="gw-1")
        gw.connect()
        gw.subscribe(topics.down_ack("gw-1"))
        for seq in range(1, 21):
            await asyncio.to_thread(gw.publish_batch, "gw-1", bound["payload"](seq), seq=seq)
        await asyncio.to_thread(
            wait_until, lambda: len(gw.received("/down/ack")) == 20, timeout=30, what="20 answers"
        )
        answers = [wire.decode_ack(p) for _, _, p in gw.received("/down/ack")]
        overloaded = [a for a in answers if isinstance(a, wire.Nack)]
        handled = {a.seq for a in answers if isinstance(a, wire.Ack)}  # stored or quarantined
        assert overloaded, "some batches were refused while the queue was full"
        assert all(a.reason == "overloaded" and a.retry_after_ms == 1500 for a in overloaded)
        assert handled | {a.seq for a in overloaded} == set(range(1, 21))
        assert not handled & {a.seq for a in overloaded}
        assert service.overloaded == len(overloaded)
        stored = {a.seq for a in answers if isinstance(a, wire.Ack) and a.status == "stored"}
        assert ts.count_points("env") == 3 * len(stored)
        gw.close()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        ts.close()
        docs.close()
