"""The console and the live stream, measured with a real collector, agent and browser.

.venv/bin/python -m bench.console [--runs 5] [--gateways 1000] [--clients 100] [--seconds 20]

- fleet: the fleet page with ``--gateways`` gateways, from navigation to every row in the
  table, in Debian's Chromium (Playwright);
- latency: a reading's time on the gateway to the moment the gateway page's live stream hands
  it to the page (an upper bound of store to browser: it includes the agent's batching);
- clients: the collector's CPU and memory with ``--clients`` stream clients following the
  gateway, against none, while an agent sends readings.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import ssl
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench._common import report
from bench._site import site
from outpost_iot.collector._config import load_config
from outpost_iot.collector._enrollment import hash_token
from outpost_iot.collector.stores import ApiTokenRecord, SqliteDocumentStore
from outpost_iot.dev._processes import collector_config, free_port, spawn, stop
from outpost_iot.wire import GatewayState

ADMIN = "opa_bench_admin_0123456789abcdef0123"
GW = "gw-bench"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _seed(config: Path, gateways: int) -> None:
    docs = SqliteDocumentStore(load_config(config).stores.documents_path)
    try:
        docs.create_api_token(
            ApiTokenRecord("bench", hash_token(ADMIN), "*", "admin", "bench", time.time_ns())
        )
        now = time.time_ns()
        for i in range(gateways):
            state = GatewayState(
                state="online" if i % 7 else "offline",
                ts=now,
                boot_id="b",
                agent_version="0.1.0",
                backlog_readings=i % 13,
            )
            docs.save_state(f"gw-{i:05d}", state, now)
    finally:
        docs.close()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 10 ms


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _browser(p: Any) -> Any:
    return p.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )  # fmt: skip


def _signed_in(browser: Any, base: str) -> Any:
    context = browser.new_context(
        ignore_https_errors=True, viewport={"width": 1440, "height": 900}, bypass_csp=True
    )
    context.set_default_timeout(60_000)
    page = context.new_page()
    page.goto(f"{base}/console/")
    page.get_by_label("API token").fill(ADMIN)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Fleet").wait_for()
    return page


def main() -> None:
    a = argparse.ArgumentParser()
    a.add_argument("--runs", type=int, default=5)
    a.add_argument("--gateways", type=int, default=1000)
    a.add_argument("--clients", type=int, default=100)
    a.add_argument("--seconds", type=float, default=20)
    args = a.parse_args()
    from playwright.sync_api import sync_playwright

    sources = '[[sources]]\ntype = "simulated"\ninterval = 0.5\ndevices = 20\n'
    with site(GW, sources=sources) as st:
        api_port = free_port()
        ccfg = collector_config(
            st.root / "collector-api.toml", st.broker, st.root / "data", api_port=api_port
        )
        _seed(ccfg, args.gateways)
        base = f"https://localhost:{api_port}"
        collector = spawn(
            ["outpost_iot.collector.cli", "serve", "--config", str(ccfg)], log=st.root / "c.log"
        )
        trust = ssl.create_default_context(cafile=str(st.broker.files.ca_cert))
        _wait(lambda: httpx.get(f"{base}/healthz", verify=trust, timeout=5).status_code == 200)
        agent = spawn(
            ["outpost_iot.agent.cli", "run", "--config", str(st.agent_config)],
            log=st.root / "a.log",
        )
        try:
            with sync_playwright() as p:
                browser = _browser(p)
                page = _signed_in(browser, base)
                fleet = []
                for _ in range(args.runs):
                    page.goto(f"{base}/console/#/tokens")
                    page.get_by_role("heading", name="Enrollment tokens").wait_for()
                    started = time.perf_counter()
                    page.goto(f"{base}/console/#/fleet")
                    page.wait_for_function(
                        "n => document.querySelectorAll('tbody tr[data-gateway]').length >= n",
                        arg=args.gateways,
                    )
                    fleet.append((time.perf_counter() - started) * 1000)
                report(
                    "console.fleet_ready",
                    fleet,
                    "ms",
                    gateways=args.gateways + 1,
                    note="navigation to every row shown, Chromium headless",
                )
                latency = _latency(page, base)
                report(
                    "stream.reading_to_browser",
                    latency,
                    "ms",
                    p95=round(statistics.quantiles(latency, n=20)[-1], 1),
                    note="a reading's time on the gateway to its latest value reaching the "
                    "page; includes the agent's batching (an upper bound of store to browser)",
                )
                browser.close()
            idle = _cost(collector.pid, args.seconds, 0, base, trust)
            loaded = _cost(collector.pid, args.seconds, args.clients, base, trust)
            report(
                "stream.clients_cost_cpu",
                [loaded[0] - idle[0]],
                "% of one core",
                clients=args.clients,
                without=round(idle[0], 1),
                with_clients=round(loaded[0], 1),
                readings_per_s=80,
            )
            report(
                "stream.clients_cost_rss",
                [loaded[1] - idle[1]],
                "MiB",
                clients=args.clients,
                without=round(idle[1], 1),
                with_clients=round(loaded[1], 1),
            )
        finally:
            stop(agent)
            stop(collector)


def _wait(ok: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ok():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the collector's API did not come up")


def _latency(page: Any, base: str, samples: int = 60) -> list[float]:
    page.goto(f"{base}/console/#/gateway/{GW}")
    page.get_by_role("heading", name=f"Gateway {GW}").wait_for()
    page.evaluate(
        """() => {
            window.__lat = [];
            const s = new EventSource('/api/v1/stream?kind=latest&gateway=gw-bench');
            s.addEventListener('latest', (e) => {
                const m = JSON.parse(e.data);
                const newest = Math.max(...m.series.map((x) => x.ts));
                window.__lat.push(Date.now() - newest * 1000);
            });
        }"""
    )
    page.wait_for_function(f"window.__lat.length >= {samples}", timeout=120_000)
    values: list[float] = page.evaluate("window.__lat")
    return values[:samples]


def _cost(
    pid: int, seconds: float, clients: int, base: str, trust: ssl.SSLContext
) -> tuple[float, float]:
    """The collector's CPU (% of one core) and RSS with ``clients`` stream clients."""

    async def run() -> tuple[float, float]:
        received = [0]

        async def follow(client: httpx.AsyncClient) -> None:
            async with client.stream(
                "GET",
                f"{base}/api/v1/stream",
                params={"kind": "latest", "gateway": GW},
                headers={"Authorization": f"Bearer {ADMIN}"},
            ) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        received[0] += 1

        async with httpx.AsyncClient(
            verify=trust,
            timeout=httpx.Timeout(10, read=60),
            limits=httpx.Limits(max_connections=None),
        ) as client:
            tasks = [asyncio.create_task(follow(client)) for _ in range(clients)]
            await asyncio.sleep(5)  # connected and past the handshakes
            cpu0, t0 = _cpu_s(pid), time.monotonic()
            rss = []
            while time.monotonic() - t0 < seconds:
                await asyncio.sleep(1)
                rss.append(_rss_mib(pid))
            cpu = (_cpu_s(pid) - cpu0) / (time.monotonic() - t0) * 100
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if clients:
                assert received[0] > 0, "the stream clients received nothing"
            return cpu, statistics.median(rss)

    return asyncio.run(run())


if __name__ == "__main__":
    main()
