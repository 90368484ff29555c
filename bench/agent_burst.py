"""The agent's memory while a site broker delivers a burst: 20,000 Zigbee2MQTT messages at once.

.venv/bin/python -m bench.agent_burst [--messages 20000] [--runs 3] [--qos 0]

A real site Mosquitto, a real cloud Mosquitto (mTLS) with the collector, and the agent with one
Zigbee2MQTT device. First a steady trickle (10 messages/s for 20 s, after a 10 s warm-up) gives
the steady state: the agent's largest RSS over the trickle's last 10 s. Then a publisher on the
site broker sends the burst as fast as the broker takes it, 200 sensors with a real payload
shape (``zigbee2mqtt/hassio-zigbee2mqtt#827``). The peak is the largest RSS sampled every 50 ms
from the burst's start until everything it produced is stored by the collector. Printed: steady
state, peak, their difference (the figure issue 14 bounds at 5 MB), and how long until stored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import aiomqtt
import orjson

from bench._common import report
from bench._site import site
from bench.end_to_end import LIMITS
from outpost_iot.dev._processes import LocalBroker, spawn, stop


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stored(db: Path) -> int:
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        try:
            return int(
                c.execute(
                    "SELECT count(DISTINCT p.series_id || ':' || p.ts) FROM points p JOIN series s"
                    " ON s.id = p.series_id WHERE s.measurement = 'sensor'"
                ).fetchone()[0]
            )
        except sqlite3.OperationalError:
            return 0


def payload(i: int) -> bytes:
    return orjson.dumps(
        {
            "battery": 97 - i % 5,
            "humidity": 45.07 + (i % 100) / 10,
            "linkquality": 224 - i % 50,
            "power_outage_count": 805,
            "pressure": 997.2,
            "temperature": 21.58 + (i % 40) / 10,
            "voltage": 2995,
        }
    )


async def publish(port: int, count: int, qos: int, per_second: float = 0.0) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"burst-{time.monotonic_ns()}") as c:
        for i in range(count):
            await c.publish(f"zigbee2mqtt/sensor {i % 200}", payload(i), qos=qos)
            if per_second:
                await asyncio.sleep(1 / per_second)


def run_once(messages: int, qos: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as d:
        local = LocalBroker(Path(d) / "site")
        local.start()
        device = (
            f'[[devices]]\nname = "zigbee"\nprofile = "zigbee2mqtt"\n'
            f'target = "mqtt://127.0.0.1:{local.port}"\n'
        )
        try:
            with site("gw-burst", sources=device, collector_extra=LIMITS) as st:
                collector = spawn(
                    ["outpost_iot.collector.cli", "serve", "--config", str(st.collector_config)],
                    log=st.root / "c.log",
                )
                agent = spawn(
                    ["outpost_iot.agent.cli", "run", "--config", str(st.agent_config)],
                    log=st.root / "a.log",
                )
                db = st.root / "data" / "timeseries.db"
                try:
                    time.sleep(10)  # start, connect, subscribe
                    trickle = threading.Thread(
                        target=asyncio.run, args=(publish(local.port, 200, qos, 10.0),)
                    )
                    trickle.start()
                    time.sleep(10)
                    steady = 0.0
                    while trickle.is_alive():
                        steady = max(steady, rss_mib(agent.pid))
                        time.sleep(0.05)
                    trickle.join()
                    base = stored(db)
                    started = time.monotonic()
                    burst = threading.Thread(
                        target=asyncio.run, args=(publish(local.port, messages, qos),)
                    )
                    burst.start()
                    peak = 0.0
                    deadline = started + 600
                    while time.monotonic() < deadline:
                        peak = max(peak, rss_mib(agent.pid))
                        if not burst.is_alive() and stored(db) >= base + messages:
                            break
                        time.sleep(0.05)
                    else:
                        raise RuntimeError(f"only {stored(db) - base} of {messages} stored")
                    burst.join()
                    took = time.monotonic() - started
                finally:
                    stop(agent)
                    stop(collector)
        finally:
            local.stop()
    return steady, peak, took


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--qos", type=int, default=0, choices=(0, 1))
    args = p.parse_args()
    results = [run_once(args.messages, args.qos) for _ in range(args.runs)]
    extra = {"messages": args.messages, "qos": args.qos}
    report("agent_burst.steady_rss", [r[0] for r in results], "MiB", **extra)
    report("agent_burst.peak_rss", [r[1] for r in results], "MiB", **extra)
    report("agent_burst.peak_over_steady", [r[1] - r[0] for r in results], "MiB", **extra)
    report("agent_burst.until_stored", [r[2] for r in results], "s", **extra)


if __name__ == "__main__":
    main()
