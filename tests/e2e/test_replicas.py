"""Collector replicas on the production backends: PostgreSQL documents, VictoriaMetrics time
series, Redis shared state, real agents, a real Mosquitto with the shared subscription."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from outpost_iot.collector.stores import InfluxTimeSeriesStore
from outpost_iot.dev._processes import collector_config, free_port, spawn, stop
from outpost_iot.dev._servers import Postgres, Redis, VictoriaMetrics, find_victoria_metrics
from tests._wait import wait_until
from tests.conftest import require_service
from tests.e2e._harness import Harness, JournalEntry, readings_dropped

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@dataclass
class Cluster:
    """N collector replicas sharing one broker, one PostgreSQL, one VictoriaMetrics, one Redis."""

    h: Harness
    dsn: str
    pg: Postgres
    vm: VictoriaMetrics
    redis: Redis
    replicas: dict[str, subprocess.Popen[bytes] | None] = field(default_factory=dict)
    api_ports: dict[str, int] = field(default_factory=dict)

    def config(self, name: str, api_port: int | None = None) -> Path:
        return collector_config(
            self.h.root / f"{name}.toml",
            self.h.broker,
            self.h.root / f"{name}-data",
            client_id=f"outpost-{name}",
            top="summary_interval_s = 1",
            api_port=api_port,
            stores='documents = "postgres"\ntimeseries = "victoriametrics"',
            extra=f"""
[stores.postgres]
dsn = "{self.dsn}"
pool_size = 4
connect_timeout_s = 2

[stores.influx]
url = "{self.vm.url}"
timeout_s = 5
retries = 1

[redis]
url = "{self.redis.url}"

[limits]
store_retry_after_ms = 500

[alarms]
interval_s = 1
allow_http = true
allow_private_targets = true
""",
        )

    def start_with_apis(self, *names: str) -> dict[str, str]:
        """Start replicas with their HTTPS API; returns name → base URL, each answering."""
        urls = {}
        for name in names:
            port = free_port()
            self.start(name, api_port=port)
            self.api_ports[name] = port
            urls[name] = f"https://localhost:{port}"
        for url in urls.values():
            wait_until(
                lambda u=url: _reachable(
                    lambda: httpx.get(f"{u}/healthz", verify=self.trust(), timeout=10)
                ),
                timeout=20,
                what="the replicas' API",
            )
        return urls

    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.h.broker.files.ca_cert))

    def api_token(self, name: str, tenant: str, role: str) -> str:
        """An API token made with the CLI against replica ``name``'s config."""
        made = subprocess.run(
            [sys.executable, "-m", "outpost_iot.collector.cli", "api-token", "create",
             "--config", str(self.config(name, self.api_ports[name])),
             "--tenant", tenant, "--role", role, "--name", f"{role}-{tenant}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return made.stdout.split()[0]

    def log(self, name: str) -> Path:
        return self.h.root / f"{name}.log"

    def start(self, name: str, api_port: int | None = None) -> None:
        log = self.log(name)
        before = log.read_text().count("collector subscribed") if log.exists() else 0
        self.replicas[name] = spawn(
            ["outpost_iot.collector.cli", "serve", "--config", str(self.config(name, api_port))],
            log=log,
        )
        wait_until(
            lambda: log.read_text().count("collector subscribed") > before,
            timeout=30,
            what=f"replica {name} to subscribe",
        )

    def kill(self, name: str) -> None:
        proc = self.replicas[name]
        assert proc is not None
        proc.kill()  # SIGKILL, mid-batch if it is in one
        proc.wait()
        self.replicas[name] = None

    def stored_batches(self, name: str) -> int:
        """The replica's own count of batches stored, from its latest summary line."""
        found = re.findall(r"stored (\d+) batches", self.log(name).read_text())
        return int(found[-1]) if found else 0

    def close(self) -> None:
        for proc in self.replicas.values():
            if proc is not None:
                stop(proc)


@pytest.fixture
def cluster(
    harness: Harness,
    postgres_server: Postgres,
    postgres_dsn: str,
    redis_server: Redis,
    tmp_path: Path,
) -> Iterator[Cluster]:
    require_service(
        "victoria-metrics", find_victoria_metrics() is not None, "apt-get install victoria-metrics"
    )
    vm = VictoriaMetrics(tmp_path / "vm")
    vm.start()
    c = Cluster(harness, postgres_dsn, postgres_server, vm, redis_server)
    yield c
    c.close()
    vm.stop()


def stored_in_vm(c: Cluster, gateway_id: str) -> dict[tuple[str, int], list[int]]:
    """(run, n) → the timestamps stored for that reading, counted in VictoriaMetrics."""
    store = InfluxTimeSeriesStore(c.vm.url)
    try:
        store.flush()
        found: dict[tuple[str, int], list[int]] = defaultdict(list)
        for p in store.query("counter", tags={"gateway": gateway_id}):
            found[(p.tags["run"], int(p.fields["n"]))].append(p.ts)
        return found
    finally:
        store.close()


def assert_stored_exactly_once(c: Cluster, gateway_id: str, journal: list[JournalEntry]) -> None:
    stored = stored_in_vm(c, gateway_id)
    missing = [(e.run, e.n) for e in journal if (e.run, e.n) not in stored]
    assert not missing, f"{len(missing)} of {len(journal)} readings lost, e.g. {missing[:5]}"
    twice = {k: v for k, v in stored.items() if len(v) > 1}
    assert not twice, f"{len(twice)} readings stored more than once, e.g. {list(twice.items())[:3]}"
    assert len(stored) == len({(e.run, e.n) for e in journal})


def batches_in_postgres(c: Cluster, gateway_id: str) -> int:
    with psycopg.connect(c.dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM stored_batches WHERE gateway_id = %s", (gateway_id,)
        ).fetchone()
    return int(row[0]) if row else 0


def drain(c: Cluster, config: Path, gateway_id: str, timeout: float = 90) -> None:
    proc = c.h.start_producer(config, gateway_id, run="drain", per_poll=0)
    wait_until(
        lambda: c.h.status(config)["backlog_readings"] == 0,
        timeout=timeout,
        what=f"{gateway_id}'s backlog to drain",
    )
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def test_two_replicas_one_killed_mid_load_store_every_reading_once(cluster: Cluster, identity) -> None:  # fmt: skip
    c = cluster
    c.start("replica-a")
    c.start("replica-b")
    gateways = [f"gw-r{i}" for i in range(4)]
    configs = {gw: c.h.agent_config(gw, identity(gw)) for gw in gateways}
    producers = [
        c.h.start_producer(configs[gw], gw, run="load", per_poll=25, interval=0.05, slots=True)
        for gw in gateways
    ]  # about 2,000 readings/s in all
    # Both replicas take a share of the stream before one of them dies.
    wait_until(
        lambda: c.stored_batches("replica-a") > 20 and c.stored_batches("replica-b") > 20,
        timeout=30,
        what="both replicas storing batches",
    )

    def each_produced_more(n: int, what: str) -> None:
        # A phase lasts until every gateway produced n more readings, however busy the machine.
        start = {gw: len(c.h.read_journal(gw)) for gw in gateways}
        wait_until(
            lambda: all(len(c.h.read_journal(gw)) >= start[gw] + n for gw in gateways),
            timeout=60,
            what=what,
        )

    c.kill("replica-a")
    # Replica b carries the stream alone; what the broker keeps for a's session waits for it.
    each_produced_more(1000, "readings while replica a is dead")
    c.start("replica-a")
    each_produced_more(500, "readings after replica a is back")
    for p in producers:
        p.send_signal(signal.SIGTERM)
        p.wait(10)
    for gw in gateways:
        drain(c, configs[gw], gw)
    total = 0
    for gw in gateways:
        journal = c.h.read_journal(gw)
        assert len(journal) > 1500
        total += len(journal)
        assert_stored_exactly_once(c, gw, journal)
        status = c.h.status(configs[gw])
        assert readings_dropped(status["drops"]) == {}
        assert batches_in_postgres(c, gw) > 0
    assert total > 8000


def test_two_replicas_and_one_killed_raise_one_alarm_and_send_one_notification(
    cluster: Cluster, identity
) -> None:  # fmt: skip
    """A gateway's readings cross a threshold while both replicas store its batches, and one
    replica is killed mid-load (its unacked batches come again, to the other): one alarm,
    one webhook delivery."""
    c = cluster
    base = c.start_with_apis("replica-a", "replica-b")["replica-b"]
    trust = c.trust()
    headers = {"Authorization": f"Bearer {c.api_token('replica-b', 'acme', 'operator')}"}
    gw = "gw-alarm"
    with psycopg.connect(c.dsn, autocommit=True) as conn:  # enrolled into tenant acme
        conn.execute("INSERT INTO gateways (id, tenant, site) VALUES (%s, 'acme', 'hq')", (gw,))
    from tests.collector.test_notify import Receiver

    receiver = Receiver()
    try:
        with httpx.Client(base_url=base, verify=trust, headers=headers, timeout=10) as api:
            r = api.post("/api/v1/notification-endpoints", json={"name": "ops", "kind": "webhook", "url": receiver.url})  # fmt: skip
            assert r.status_code == 201, r.text
            rule = api.post("/api/v1/alarm-rules", json={
                "name": "Counter high", "severity": "major",
                "condition": {"kind": "threshold", "measurement": "counter", "field": "value", "above": 100},
            }).json()  # fmt: skip
            config = c.h.agent_config(gw, identity(gw))
            producer = c.h.start_producer(config, gw, run="alarm", per_poll=20, interval=0.05)
            wait_until(
                lambda: c.stored_batches("replica-a") > 10 and c.stored_batches("replica-b") > 10,
                timeout=60,
                what="both replicas storing batches",
            )
            c.kill("replica-a")
            c.start("replica-a")
            start = len(c.h.read_journal(gw))
            wait_until(lambda: len(c.h.read_journal(gw)) > start + 400, timeout=60, what="more readings")  # fmt: skip
            producer.send_signal(signal.SIGTERM)
            producer.wait(10)
            drain(c, config, gw)
            wait_until(
                lambda: receiver.requests and api.get("/api/v1/notification-endpoints").json()[0]["pending"] == 0,
                timeout=60,
                what="the notification delivered",
            )  # fmt: skip
            alarms = [a for a in api.get("/api/v1/alarms").json() if a["rule_id"] == rule["id"]]
            assert len(alarms) == 1, alarms
            assert alarms[0]["status"] == "active"
            assert [json.loads(b)["event"] for _, b in receiver.requests] == ["raised"]
            assert c.stored_batches("replica-b") > 10  # b stored a share of them too
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


@pytest.mark.parametrize("store", ["postgres", "victoriametrics"])
def test_a_30_second_store_outage_loses_nothing(cluster: Cluster, identity, store: str) -> None:
    """A store goes away for 30 s under load (PostgreSQL crashes, VictoriaMetrics stops): the
    collector nacks "store unavailable" and keeps running, /readyz names the store, the gateways
    buffer; afterwards they drain."""
    c = cluster
    api_port = free_port()
    c.start("replica-a", api_port=api_port)
    readyz = f"https://localhost:{api_port}/readyz"
    trust = ssl.create_default_context(cafile=str(c.h.broker.files.ca_cert))

    def ready() -> httpx.Response:
        return httpx.get(readyz, verify=trust, timeout=10)

    wait_until(lambda: _reachable(ready), timeout=20, what="the API")
    gateways = ["gw-o1", "gw-o2"]
    configs = {gw: c.h.agent_config(gw, identity(gw)) for gw in gateways}
    producers = [
        c.h.start_producer(configs[gw], gw, run="o", per_poll=20, interval=0.05, slots=True)
        for gw in gateways
    ]
    wait_until(lambda: c.stored_batches("replica-a") > 10, timeout=30, what="batches stored")
    assert ready().status_code == 200
    if store == "postgres":
        c.pg.stop(mode="immediate")  # the database crashes
    else:
        c.vm.stop()
    outage_started = time.monotonic()
    wait_until(
        lambda: "store_unavailable" in c.log("replica-a").read_text(),
        timeout=30,
        what="store_unavailable nacks",
    )
    body = ready()
    assert body.status_code == 503
    named = {"postgres": ("document_store", "PostgreSQL 127.0.0.1"),
             "victoriametrics": ("timeseries_store", f"VictoriaMetrics {c.vm.url}")}[store]  # fmt: skip
    assert body.json()["failing"] == [named[0]]
    assert named[1] in c.log("replica-a").read_text()  # says which store
    assert "postgresql://" not in c.log("replica-a").read_text()  # never the DSN itself
    time.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))
    assert c.replicas["replica-a"] is not None
    assert c.replicas["replica-a"].poll() is None  # kept running through it
    backlog = sum(int(c.h.status(configs[gw])["backlog_readings"]) for gw in gateways)
    assert backlog > 1000  # the gateways kept what they read
    if store == "postgres":
        c.pg.start()
    else:
        c.vm.start()
    wait_until(lambda: ready().status_code == 200, timeout=30, what="readyz after the outage")
    for p in producers:
        p.send_signal(signal.SIGTERM)
        p.wait(10)
    for gw in gateways:
        drain(c, configs[gw], gw)
        assert_stored_exactly_once(c, gw, c.h.read_journal(gw))
        assert readings_dropped(c.h.status(configs[gw])["drops"]) == {}


def _reachable(get: object) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        get()  # type: ignore[operator]
        return True
    return False


class StreamReader:
    """Follows GET /api/v1/stream of one replica in a thread, keeping every event's id."""

    def __init__(self, url: str, token: str, trust: ssl.SSLContext, **params: object) -> None:
        self.ids: list[str] = []
        self.kinds: list[str] = []
        self.status: int | None = None
        self.error = ""
        self._stop = threading.Event()
        self._client = httpx.Client(
            base_url=url,
            verify=trust,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(10, read=30),
        )
        self._thread = threading.Thread(target=self._run, args=(params,), daemon=True)
        self._thread.start()

    def _run(self, params: dict[str, object]) -> None:
        try:
            with self._client.stream("GET", "/api/v1/stream", params=params) as r:  # type: ignore[arg-type]
                self.status = r.status_code
                for line in r.iter_lines():
                    if line.startswith("id: "):
                        self.ids.append(line[4:])
                    elif line.startswith("event: "):
                        self.kinds.append(line[7:])
        except (httpx.HTTPError, RuntimeError) as exc:
            if not self._stop.is_set():  # not our own close: the test says so
                self.error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        self._stop.set()
        self._client.close()
        self._thread.join(timeout=40)


def test_a_stream_client_of_either_replica_sees_what_both_stored(cluster: Cluster, identity) -> None:  # fmt: skip
    """Each replica stores part of a gateway's batches (the shared subscription); a live
    stream client of either replica is sent the latest values of all of them, in the same
    order, and may resume on the other replica with the id one of them gave."""
    c = cluster
    urls = c.start_with_apis("replica-a", "replica-b")
    trust = c.trust()
    token = c.api_token("replica-a", "*", "admin")
    gw = "gw-s1"
    readers = {
        name: StreamReader(url, token, trust, kind="latest", gateway=gw)
        for name, url in urls.items()
    }
    try:
        config = c.h.agent_config(gw, identity(gw))
        producer = c.h.start_producer(config, gw, run="s", per_poll=20, interval=0.05)
        wait_until(
            lambda: c.stored_batches("replica-a") > 10 and c.stored_batches("replica-b") > 10,
            timeout=60,
            what="both replicas storing batches",
        )
        producer.send_signal(signal.SIGTERM)
        producer.wait(10)
        drain(c, config, gw)
        a, b = readers["replica-a"], readers["replica-b"]
        assert (a.status, b.status) == (200, 200)
        assert (a.error, b.error) == ("", "")
        wait_until(
            lambda: len(a.ids) > 20 and a.ids == b.ids,
            timeout=30,
            what=f"the same events on both replicas ({len(a.ids)} and {len(b.ids)} so far)",
        )
        assert set(a.kinds) == {"latest"}
    finally:
        for reader in readers.values():
            reader.close()
    # A client of replica a that went away reconnects to replica b with the id it had.
    seen = a.ids[: len(a.ids) // 2]
    with (
        httpx.Client(verify=trust, timeout=httpx.Timeout(10, read=30)) as client,
        client.stream(
            "GET",
            f"{urls['replica-b']}/api/v1/stream",
            params={"kind": "latest", "gateway": gw},
            headers={"Authorization": f"Bearer {token}", "Last-Event-ID": seen[-1]},
        ) as r,
    ):
        resumed = []
        for line in r.iter_lines():
            if line.startswith("id: "):
                resumed.append(line[4:])
                if len(resumed) == len(a.ids) - len(seen):
                    break
    assert resumed == a.ids[len(seen) :]
