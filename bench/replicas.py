"""Readings/s end to end with 1 and 2 collector replicas on the production backends, and the
stores' write latency.

End to end: G gateways each buffer N/G readings while no collector runs; then R replicas start
(one ``$share`` subscription; PostgreSQL documents, Redis shared state, and VictoriaMetrics or
PostgreSQL time series) and the agents drain their backlogs. The rate is N / (time from the
agents' start until every buffer is empty).

Write latency: one store write of a typical group commit (8 batches of 1,000 readings, 20
series, 3 fields), timed directly against each time-series backend; p50 and p99 of many.

    .venv/bin/python -m bench.replicas [--runs 3] [--readings 200000] [--gateways 4]
    .venv/bin/python -m bench.replicas --latency-only
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from bench._common import machine, report
from outpost_iot.collector import issue_gateway_identity
from outpost_iot.collector.stores import SeriesWrite, TimeSeriesStore
from outpost_iot.dev._processes import Mosquitto, agent_config, collector_config, spawn, stop
from outpost_iot.dev._servers import Postgres, Redis, VictoriaMetrics

LIMITS = (
    "[limits]\nreadings_per_s = 10000000\nreadings_burst = 10000000\n"
    "bytes_per_s = 1e9\nbytes_burst = 1e9\n"
)


@dataclass
class Backends:
    root: Path
    pg: Postgres
    vm: VictoriaMetrics
    redis: Redis


@contextmanager
def backends() -> Iterator[Backends]:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        pg, vm, redis = Postgres(), VictoriaMetrics(root / "vm"), Redis(root / "redis")
        pg.start()
        vm.start()
        redis.start()
        try:
            yield Backends(root, pg, vm, redis)
        finally:
            redis.stop()
            vm.stop()
            pg.close()


def fresh_database(b: Backends, name: str) -> str:
    with psycopg.connect(b.pg.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return b.pg.dsn.rsplit("/", 1)[0] + f"/{name}"


def status(cfg: Path) -> int:
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "outpost_iot.agent.cli",
                "status",
                "--config",
                str(cfg),
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(json.loads(out.stdout)["backlog_readings"])
    except (subprocess.CalledProcessError, json.JSONDecodeError, KeyError):
        return -1


def producer(cfg: Path, root: Path, name: str, **kw: object) -> subprocess.Popen[bytes]:
    args = ["outpost_iot.dev.producer", "--config", str(cfg), "--journal", str(root / f"{name}.j")]
    for k, v in kw.items():
        flag = f"--{k.replace('_', '-')}"
        if v is True:
            args.append(flag)
        elif v is not False:
            args += [flag, str(v)]
    return spawn(args, log=root / f"{name}.log")


def run_once(b: Backends, backend: str, replicas: int, n: int, gateways: int, run: int) -> float:
    root = b.root / f"{backend}-{replicas}-{run}"
    root.mkdir()
    dsn = fresh_database(b, f"bench_{backend}_{replicas}_{run}")
    b.redis.stop()  # nothing left from the last run
    b.redis.start()
    broker = Mosquitto(root / "broker")
    broker.start()
    try:
        configs = []
        for g in range(gateways):
            gw = f"gw-bench-{g}"
            identity = issue_gateway_identity(root / "broker", gw, root / gw / "id")
            broker.register(gw)
            configs.append(
                agent_config(
                    root / f"{gw}.toml",
                    gateway_id=gw,
                    port=broker.port,
                    identity=identity,
                    state_dir=root / gw / "state",
                    buffer_extra="batch_max_readings = 1000\nbatch_max_delay = 0.2",
                    uplink_extra="max_inflight = 8",
                )
            )
        fills = [
            producer(
                cfg, root, f"fill{g}", per_poll=100, interval=0.01, limit=n // gateways, slots=True
            )
            for g, cfg in enumerate(configs)
        ]
        while any(status(cfg) < n // gateways for cfg in configs):
            if any(f.poll() is not None for f in fills):
                raise RuntimeError(f"a producer exited; see {root}/fill*.log")
            time.sleep(0.3)
        for f in fills:
            f.send_signal(signal.SIGTERM)
            f.wait(30)
        ts = "victoriametrics" if backend == "victoriametrics" else "postgres"
        collectors = []
        for r in range(replicas):
            cfg = collector_config(
                root / f"c{r}.toml",
                broker,
                root / f"c{r}-data",
                client_id=f"outpost-bench-{r}",
                stores=f'documents = "postgres"\ntimeseries = "{ts}"',
                extra=f'{LIMITS}\n[stores.postgres]\ndsn = "{dsn}"\npool_size = 8\n'
                f'[stores.influx]\nurl = "{b.vm.url}"\n[redis]\nurl = "{b.redis.url}"\n',
            )
            log = root / f"c{r}.log"
            collectors.append(
                spawn(["outpost_iot.collector.cli", "serve", "--config", str(cfg)], log=log)
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            (root / f"c{r}.log").exists() and "collector subscribed" in (root / f"c{r}.log").read_text()
            for r in range(replicas)
        ):  # fmt: skip
            time.sleep(0.1)
        t0 = time.perf_counter()
        drains = [producer(cfg, root, f"drain{g}", per_poll=0) for g, cfg in enumerate(configs)]
        while any(status(cfg) != 0 for cfg in configs):
            time.sleep(0.1)
        elapsed = time.perf_counter() - t0
        for p in drains + collectors:
            stop(p)
        return n / elapsed
    finally:
        broker.stop()


def group_commit(start_ns: int, k: int) -> list[SeriesWrite]:
    """8 batches × 1,000 readings: 20 series (device tag), 3 fields, 1 s apart per series, with
    values that vary as sensors' do (a random walk, 2 decimals), so compression is not flattered."""
    rng = random.Random(k)
    out = []
    for batch in range(8):
        for series in range(20):
            level = 20 + series * 0.5
            points = []
            for i in range(50):
                level += rng.gauss(0, 0.05)
                points.append(
                    (
                        start_ns + ((k * 8 + batch) * 50 + i) * 10**9,
                        {
                            "celsius": round(level, 2),
                            "rh": rng.randint(30, 70),
                            "on": rng.random() < 0.9,
                        },
                    )
                )
            out.append(
                SeriesWrite(
                    "climate", {"gateway": f"gw-{batch}", "device": f"d{series}"}, points, "acme"
                )
            )
    return out


def write_latency(store: TimeSeriesStore, writes: int) -> list[float]:
    start = (time.time_ns() // 10**9 - 7 * 86400) * 10**9  # a week back, within retention
    times = []
    for k in range(writes):
        group = group_commit(start, k)
        t = time.perf_counter()
        store.write(group)
        times.append((time.perf_counter() - t) * 1000)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency(b: Backends, writes: int) -> None:
    from outpost_iot.collector.stores import InfluxTimeSeriesStore, PostgresTimeSeriesStore

    stores: dict[str, TimeSeriesStore] = {
        "victoriametrics": InfluxTimeSeriesStore(b.vm.url),
        "postgres": PostgresTimeSeriesStore(fresh_database(b, "bench_latency"), pool_size=2),
    }
    for name, store in stores.items():
        write_latency(store, 5)  # warm up: series ids, connections
        times = write_latency(store, writes)
        print(
            json.dumps(
                {
                    "benchmark": f"store_write_latency.{name}",
                    "unit": "ms per write of 8,000 readings",
                    "p50": round(percentile(times, 0.5), 1),
                    "p99": round(percentile(times, 0.99), 1),
                    "mean": round(statistics.fmean(times), 1),
                    "writes": writes,
                    "machine": machine(),
                }
            ),
            flush=True,
        )
        store.close()


def disk(b: Backends, readings: int) -> None:
    """Bytes on disk per reading (3 fields, 20 series, 1 s apart) after compaction."""
    from outpost_iot.collector.stores import InfluxTimeSeriesStore, PostgresTimeSeriesStore

    groups = readings // 8000
    vm = InfluxTimeSeriesStore(b.vm.url)
    dsn = fresh_database(b, "bench_disk")
    pg = PostgresTimeSeriesStore(dsn, pool_size=2)
    start = (time.time_ns() // 10**9 - 14 * 86400) * 10**9
    for k in range(groups):
        group = group_commit(start, k)
        vm.write(group)
        pg.write(group)
    vm.flush()
    httpx.get(f"{b.vm.url}/internal/force_merge", timeout=600)
    time.sleep(5)  # the merge runs in the background
    b.vm.stop()  # everything on disk
    vm_bytes = sum(f.stat().st_size for f in (b.root / "vm" / "data").rglob("*") if f.is_file())
    b.vm.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        row = conn.execute(
            "SELECT pg_total_relation_size('ts_points') + pg_total_relation_size('ts_series')"
            " + pg_total_relation_size('ts_latest')"
        ).fetchone()
    pg_bytes = int(row[0]) if row else 0
    for name, size in (("victoriametrics", vm_bytes), ("postgres", pg_bytes)):
        print(
            json.dumps(
                {
                    "benchmark": f"disk_per_reading.{name}",
                    "bytes_per_reading": round(size / (groups * 8000), 1),
                    "readings": groups * 8000,
                    "fields_per_reading": 3,
                    "machine": machine(),
                }
            ),
            flush=True,
        )
    vm.close()
    pg.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--readings", type=int, default=200_000)
    p.add_argument("--gateways", type=int, default=4)
    p.add_argument("--writes", type=int, default=200, help="timed writes per store")
    p.add_argument("--latency-only", action="store_true")
    p.add_argument("--disk", type=int, default=0, help="measure disk per reading over N readings")
    p.add_argument("--backend", choices=["victoriametrics", "postgres"], action="append")
    p.add_argument("--replicas", type=int, action="append")
    args = p.parse_args()
    with backends() as b:
        if args.disk:
            disk(b, args.disk)
            return
        latency(b, args.writes)
        if args.latency_only:
            return
        for backend in args.backend or ["victoriametrics", "postgres"]:
            for replicas in args.replicas or [1, 2]:
                runs = [
                    run_once(b, backend, replicas, args.readings, args.gateways, i)
                    for i in range(args.runs)
                ]
                report(
                    f"replicas.{backend}.{replicas}",
                    runs,
                    "readings/s",
                    readings=args.readings,
                    gateways=args.gateways,
                    replicas=replicas,
                )


if __name__ == "__main__":
    main()
