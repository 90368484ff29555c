"""The collector's read API on the SQLite stores: a 24 h series query, a 1,000-gateway list,
the data explorer's catalog of 10,000 series and a 24 h CSV export.

.venv/bin/python -m bench.api_queries [--runs 20]

Builds a store with one series of 1 reading/s for 24 h (86,400 points), 9,999 more series of
one reading each (``status`` of 1,000 gateways × 10 devices) and 1,000 enrolled gateways of one tenant, then
times the requests through the FastAPI app in process (ASGI, no network): GET /api/v1/series
(1-minute buckets, mean, 24 h), GET /api/v1/gateways, GET /api/v1/series/catalog and
GET /api/v1/series/export (the 86,400 readings as CSV).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import secrets
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization

from bench._common import report
from outpost_iot.collector._config import load_config
from outpost_iot.collector._enrollment import EnrollmentService, hash_token
from outpost_iot.collector._ingest import IngestMetrics
from outpost_iot.collector.api import ApiServices, create_app
from outpost_iot.collector.stores import (
    ApiTokenRecord,
    SeriesWrite,
    SqliteDocumentStore,
    SqliteTimeSeriesStore,
)
from outpost_iot.dev._processes import Mosquitto, collector_config, free_port
from outpost_iot.provisioning._ca import make_csr, new_key

TOKEN = "opa_" + secrets.token_urlsafe(24)  # a throwaway viewer token
DAY_NS = 86_400 * 10**9


def iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat()


async def main_async(runs: int, gateways: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        broker = Mosquitto(root / "broker")
        config = load_config(
            collector_config(root / "c.toml", broker, root / "data", api_port=free_port())
        )
        assert config.pki is not None
        assert config.enrollment is not None
        ts = SqliteTimeSeriesStore(config.stores.timeseries_path)
        docs = SqliteDocumentStore(config.stores.documents_path)
        enrollment = EnrollmentService(docs=docs, pki=config.pki, enrollment=config.enrollment)
        key = new_key()
        csr = make_csr(key).public_bytes(serialization.Encoding.PEM).decode()
        ids = []
        for _ in range(gateways):
            token, _ = enrollment.create_token(tenant="acme", site="hq", expires_s=600, uses=1)
            ids.append(enrollment.enroll(token=token, csr_pem=csr, hardware={}).gateway_id)
        end = (time.time_ns() // DAY_NS) * DAY_NS
        start = end - DAY_NS
        tags = {"gateway": ids[0], "device": "sensor-1"}
        for hour in range(24):
            t0 = start + hour * 3600 * 10**9
            points = [(t0 + i * 10**9, {"celsius": 20.0 + (i % 60) / 10}) for i in range(3600)]
            ts.write([SeriesWrite("climate", tags, points, "acme")])
        ts.write(
            [
                SeriesWrite(
                    "status", {"gateway": g, "device": f"d{d}"}, [(end - 1, {"up": 1})], "acme"
                )
                for g in ids
                for d in range(10)
                if (g, d) != (ids[0], 0)  # with the climate series: 10,000
            ]
        )
        docs.create_api_token(ApiTokenRecord("b", hash_token(TOKEN), "acme", "viewer", "b", 0))
        app = create_app(
            ApiServices(
                documents=docs, enrollment=enrollment, timeseries=ts, metrics=IngestMetrics()
            )
        )
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://c", headers=headers
        ) as c:

            async def timed(path: str, params: dict[str, str]) -> float:
                t = time.perf_counter()
                r = await c.get(path, params=params)
                elapsed = (time.perf_counter() - t) * 1000
                r.raise_for_status()
                return elapsed

            series = {
                "measurement": "climate",
                "field": "celsius",
                "start": iso(start),
                "end": iso(end),
                "bucket": "1m",
                "aggregate": "mean",
            }
            r = await c.get("/api/v1/series", params=series)
            assert len(r.json()["groups"][0]["points"]) == 1440
            await timed("/api/v1/gateways", {})  # warm
            query_ms = [await timed("/api/v1/series", series) for _ in range(runs)]
            fleet_ms = [await timed("/api/v1/gateways", {}) for _ in range(runs)]
            assert len((await c.get("/api/v1/gateways")).json()) == gateways
            catalog = (await c.get("/api/v1/series/catalog")).json()
            assert sum(m["series"] for m in catalog["measurements"]) == 10 * gateways
            assert not catalog["truncated"]
            catalog_ms = [await timed("/api/v1/series/catalog", {}) for _ in range(runs)]
            window = {"measurement": "climate", "tag": "device:sensor-1", "start": iso(start), "end": iso(end)}  # fmt: skip
            r = await c.get("/api/v1/series/export", params=window)
            assert r.text.count("\n") == 86_400 + 1  # the header and a row per reading (9.4 MB)
            export_ms = [
                await timed("/api/v1/series/export", window) for _ in range(max(3, runs // 4))
            ]
        ts.close()
        docs.close()
    report("api.series_24h_1m_buckets", query_ms, "ms", points=86_400, buckets=1440)
    report("api.fleet_list", fleet_ms, "ms", gateways=gateways)
    report("api.catalog", catalog_ms, "ms", series=10 * gateways)
    report("api.export_csv_24h", export_ms, "ms", readings=86_400)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--gateways", type=int, default=1000)
    args = p.parse_args()
    asyncio.run(main_async(args.runs, args.gateways))


if __name__ == "__main__":
    main()
