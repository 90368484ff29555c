"""The read API over real stores and a real enrollment: shared by the API tests."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI

from outpost_iot import wire
from outpost_iot.collector._alarms import AlarmEvaluator
from outpost_iot.collector._config import CollectorConfig, load_config
from outpost_iot.collector._configs import ConfigService
from outpost_iot.collector._enrollment import EnrollmentService, hash_token
from outpost_iot.collector._ingest import Incoming, IngestMetrics, Ingestor
from outpost_iot.collector._rollouts import RolloutService
from outpost_iot.collector._stream import LocalHub
from outpost_iot.collector.api import ApiServices, create_app
from outpost_iot.collector.stores import (
    ApiTokenRecord,
    DocumentStore,
    SqliteDocumentStore,
    SqliteTimeSeriesStore,
)
from outpost_iot.dev._processes import Mosquitto, collector_config, find_mosquitto, free_port
from outpost_iot.provisioning._ca import make_csr, new_key
from outpost_iot.wire import topics
from tests.conftest import require_service

T0 = 1_795_300_000 * 10**9  # 2026-11-21T22:26:40Z
MINUTE = 60 * 10**9


@dataclass
class Api:
    client: httpx.AsyncClient
    ts: SqliteTimeSeriesStore
    docs: DocumentStore
    metrics: IngestMetrics
    broker_up: list[bool]
    gateways: dict[str, str]  # name → gateway id
    tokens: dict[str, str]  # name → bearer token
    ingestors: list[Ingestor]  # [as deployed (max 5 readings a batch), after the fix]
    keys: dict[str, Any]  # name → the gateway's private key
    published: list[tuple[str, bytes]]  # retained publishes (topic, payload)
    signing_key: Path
    dump: Callable[[], bytes]  # everything the document store holds, as bytes
    hub: LocalHub  # the live stream the ingestors publish into
    app: FastAPI
    config: CollectorConfig | None = None
    alarms: AlarmEvaluator | None = None  # the API's (rules re-read when they change)

    async def get(
        self, path: str, token: str | None = "viewer-a", **params: object
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[token]}"} if token else {}
        return await self.client.get(path, params=params, headers=headers)  # type: ignore[arg-type]


def batch_message(
    gw: str, seq: int, values: list[float], *, device: str = "plug", events: int = 0
) -> Incoming:
    """A batch as gateway ``gw`` sends it: ``power`` readings ``w`` of ``device`` (one per
    value, 1 ns apart from T0) and ``events`` door_open events."""
    readings = [
        wire.Reading(measurement="power", tags={"device": device}, fields={"w": v}, ts=T0 + i)
        for i, v in enumerate(values)
    ]
    b = wire.Batch.model_validate(
        {
            "gw": gw,
            "stream": "s1",
            "boot": "b1",
            "seq": seq,
            "created": T0,
            "clock": {"offset_ns": 0, "synced": True},
            "series": wire.group_readings(readings),
            "events": [
                {
                    "id": f"e{seq}-{i}",
                    "type": "door_open",
                    "ts": T0,
                    "source": device,
                    "body": {"a": 1},
                }
                for i in range(events)
            ],
        }
    )
    props = {wire.PROP_STREAM: "s1", wire.PROP_SEQ: str(seq)}
    return Incoming(topics.up_batch(gw), wire.encode_batch(b), props, T0)


def iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat()


@pytest.fixture(params=["sqlite", "postgres"])
async def api(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    """The API over real stores; its document store is SQLite, then PostgreSQL (the same
    tests are part of the contract every document backend passes)."""
    require_service("mosquitto", find_mosquitto() is not None, "apt-get install mosquitto")
    broker = Mosquitto(tmp_path / "broker")  # only its CA and files; not started
    config = load_config(
        collector_config(tmp_path / "c.toml", broker, tmp_path / "data", api_port=free_port())
    )
    ts = SqliteTimeSeriesStore(config.stores.timeseries_path)
    docs: DocumentStore
    if request.param == "postgres":
        from outpost_iot.collector.stores import PostgresDocumentStore

        dsn = request.getfixturevalue("postgres_dsn")
        docs = PostgresDocumentStore(dsn, pool_size=4)
        pg_dump = str(request.getfixturevalue("postgres_server").bin / "pg_dump")

        def dump() -> bytes:
            return subprocess.run([pg_dump, dsn], capture_output=True, check=True).stdout

    else:
        docs = SqliteDocumentStore(config.stores.documents_path)
        path = config.stores.documents_path

        def dump() -> bytes:
            return b"".join(f.read_bytes() for f in path.parent.glob(path.name + "*"))  # + WAL

    assert config.pki is not None
    assert config.enrollment is not None
    enrollment = EnrollmentService(docs=docs, pki=config.pki, enrollment=config.enrollment)
    gateways = {}
    keys = {}
    for name, tenant, site in (
        ("a1", "acme", "hq"),
        ("a2", "acme", "depot"),
        ("b1", "globex", "hq"),
    ):
        token, _ = enrollment.create_token(tenant=tenant, site=site, expires_s=60, uses=1)
        keys[name] = new_key()
        csr = make_csr(keys[name]).public_bytes(serialization.Encoding.PEM).decode()
        gateways[name] = enrollment.enroll(token=token, csr_pem=csr, hardware={}).gateway_id
    tokens = {}
    for name, tenant, role in (
        ("viewer-a", "acme", "viewer"),
        ("viewer-b", "globex", "viewer"),
        ("operator-a", "acme", "operator"),
        ("operator-b", "globex", "operator"),
        ("admin", "*", "admin"),
    ):
        tokens[name] = f"opa_test_{name}_0123456789abcdef"
        docs.create_api_token(
            ApiTokenRecord(name, hash_token(tokens[name]), tenant, role, name, T0)
        )
    metrics = IngestMetrics()
    broker_up = [True]
    published: list[tuple[str, bytes]] = []
    # Ingest as deployed with a too-small limit; a test swaps in the fixed one for replays.
    strict = config.model_copy(
        update={"limits": config.limits.model_copy(update={"max_readings": 5})}
    )
    hub = LocalHub()
    alarms = AlarmEvaluator(docs=docs, timeseries=ts, stream=hub)
    ingestors = [
        Ingestor(config=strict, timeseries=ts, documents=docs, enrollment=enrollment, stream=hub),
        Ingestor(config=config, timeseries=ts, documents=docs, enrollment=enrollment, stream=hub),
    ]
    configs = ConfigService(
        docs=docs,
        signing_key=config.pki.signing_key,
        publish=lambda topic, payload: published.append((topic, payload)),
    )
    services = ApiServices(
        documents=docs,
        enrollment=enrollment,
        timeseries=ts,
        metrics=metrics,
        broker_connected=lambda: broker_up[0],
        replay=lambda entry, now: ingestors[-1].replay(entry, now),
        configs=configs,
        rollouts=RolloutService(docs=docs, configs=configs),
        stream=hub,
        alarm_evaluator=alarms,
    )
    app = create_app(services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://collector") as client:
        yield Api(
            client,
            ts,
            docs,
            metrics,
            broker_up,
            gateways,
            tokens,
            ingestors,
            keys,
            published,
            config.pki.signing_key,
            dump,
            hub,
            app,
            config,
            alarms,
        )
    ts.close()
    docs.close()
