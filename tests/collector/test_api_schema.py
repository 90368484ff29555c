"""The whole API under generated input (schemathesis): no 500s, and every route checks auth."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import schemathesis
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from outpost_iot.collector._config import load_config
from outpost_iot.collector._configs import ConfigService
from outpost_iot.collector._enrollment import EnrollmentService, hash_token
from outpost_iot.collector._ingest import IngestMetrics, Ingestor
from outpost_iot.collector._rollouts import RolloutService
from outpost_iot.collector._stream import Filter, LocalHub, Subscription
from outpost_iot.collector.api import ApiServices, create_app
from outpost_iot.collector.stores import (
    ApiTokenRecord,
    QuarantineEntry,
    SeriesWrite,
    SqliteDocumentStore,
    SqliteTimeSeriesStore,
)
from outpost_iot.dev._processes import Mosquitto, collector_config, find_mosquitto, free_port
from outpost_iot.provisioning._ca import make_csr, new_key
from outpost_iot.wire import Event
from tests.conftest import require_service

ADMIN = "opa_schema_admin_0123456789abcdef"
VIEWER = "opa_schema_viewer_0123456789abcdef"
T0 = 1_795_300_000 * 10**9


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    require_service("mosquitto", find_mosquitto() is not None, "apt-get install mosquitto")
    root = tmp_path_factory.mktemp("schema")
    broker = Mosquitto(root / "broker")
    config = load_config(
        collector_config(root / "c.toml", broker, root / "data", api_port=free_port())
    )
    assert config.pki is not None
    assert config.enrollment is not None
    ts = SqliteTimeSeriesStore(config.stores.timeseries_path)
    docs = SqliteDocumentStore(config.stores.documents_path)
    enrollment = EnrollmentService(docs=docs, pki=config.pki, enrollment=config.enrollment)
    token, _ = enrollment.create_token(tenant="acme", site="hq", expires_s=600, uses=1)
    csr = make_csr(new_key()).public_bytes(serialization.Encoding.PEM).decode()
    gw = enrollment.enroll(token=token, csr_pem=csr, hardware={}).gateway_id
    ts.write(
        [SeriesWrite("climate", {"gateway": gw, "device": "d1"}, [(T0, {"celsius": 21.5})], "acme")]
    )
    docs.record([], [(gw, Event(id="e1", type="motion", ts=T0, source="d1", body={}))])
    docs.quarantine(
        QuarantineEntry(T0, f"outpost/v1/gw/{gw}/up/batch", "malformed", "x", b"junk", gw)
    )
    docs.create_api_token(ApiTokenRecord("adm", hash_token(ADMIN), "*", "admin", "schema", T0))
    docs.create_api_token(ApiTokenRecord("vw", hash_token(VIEWER), "acme", "viewer", "schema", T0))
    configs = ConfigService(docs=docs, signing_key=config.pki.signing_key)
    services = ApiServices(
        documents=docs,
        enrollment=enrollment,
        timeseries=ts,
        metrics=IngestMetrics(),
        broker_connected=lambda: True,
        replay=Ingestor(config=config, timeseries=ts, documents=docs, enrollment=enrollment).replay,
        configs=configs,
        rollouts=RolloutService(docs=docs, configs=configs),
        stream=_EndingHub(),
    )
    yield create_app(services)
    ts.close()
    docs.close()


class _EndingHub(LocalHub):
    """Ends each stream once it is opened, so that a generated request to /api/v1/stream is
    answered and read to its end like any other (its filters and Last-Event-ID still parsed)."""

    @contextlib.asynccontextmanager
    async def subscribe(self, flt: Filter, last_id: str | None) -> AsyncIterator[Subscription]:
        async with super().subscribe(flt, last_id) as sub:
            sub.close("shutdown")
            yield sub


def test_no_generated_request_makes_a_server_error(app: FastAPI) -> None:
    """Every operation of the OpenAPI document, fuzzed with valid and invalid input, as an admin
    and as a tenant's viewer: never a 5xx."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            for token in (ADMIN, VIEWER):
                case.call_and_validate(
                    headers={"Authorization": f"Bearer {token}"}, checks=[not_a_server_error]
                )

        check()


# Routes that authenticate another way: enrollment carries its one-time token in the body.
# Signing in to the console carries the API token in the body.
PUBLIC = {
    ("POST", "/api/v1/enroll"),
    ("POST", "/api/v1/session"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
}
BODIES = {"/api/v1/enrollment-tokens": {"site": "hq"}}


async def test_every_route_checks_its_token(app: FastAPI) -> None:
    routes = [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in sorted(operations)
        if (method.upper(), path) not in PUBLIC and path.startswith("/api/")
    ]
    assert len(routes) >= 9
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://collector") as client:
        for method, path in routes:
            url = path.replace("{gateway_id}", "gw-x").replace("{token_id}", "tok-x")
            query = {"measurement": "m", "field": "f"} if path.startswith("/api/v1/series") else {}
            for token in (None, "opa_wrong_token_0123456789"):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                r = await client.request(
                    method, url, params=query, json=BODIES.get(path), headers=headers
                )
                assert r.status_code == 401, (method, path, token, r.text)
                assert r.json()["error"] == "unauthorized"
                assert r.headers["www-authenticate"] == "Bearer"
