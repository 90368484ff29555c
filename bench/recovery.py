"""How soon data flows again after a fault: a real Mosquitto (mTLS), collector and agent.

.venv/bin/python -m bench.recovery [--runs 5] [--scenarios refuse,blackhole,broker]

- ``refuse``: the gateway's path to the broker rejects connections (a relay that resets and
  refuses) for 30-40 s; then it is back.
- ``blackhole``: the path drops every packet for 30-40 s (iptables, root only), so open
  connections stall and connects time out; then it is back.
- ``broker``: the broker restarts (without persistence: every session is lost); the collector
  and the agent reconnect, in either order.
- ``agent-first``: the same, with the agent certainly back first: the collector is stopped
  while the broker restarts and started again once the agent has published to the new broker,
  whose PUBACK then says "no matching subscribers".

Each run measures the time from the path's return (or from the collector's new subscription)
to the first reading stored that the agent produced during the fault. The agent runs with the
product's defaults (reconnect 0.5 s doubling to 4 s with full jitter, ack timeout 30 s).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._common import report
from outpost_iot.collector import issue_gateway_identity
from outpost_iot.dev._processes import Mosquitto, agent_config, collector_config, spawn, stop
from outpost_iot.dev.netpath import Blackhole, Relay


def stored(db: Path) -> int:
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        try:
            return int(c.execute("SELECT count(*) FROM points").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def wait(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> float:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return time.monotonic()
        time.sleep(step)
    raise RuntimeError(f"timed out waiting for {what}")


def subscribed_again(log: Path, times_before: int) -> float:
    """When the collector's log says it subscribed once more than it had."""
    return wait(
        lambda: log.read_text().count("collector subscribed") > times_before,
        60,
        "the collector to subscribe again",
        step=0.005,
    )


def run_once(scenario: str, rng: random.Random) -> float:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        broker = Mosquitto(root / "broker")
        broker.start()
        identity = issue_gateway_identity(root / "broker", "gw-r", root / "id")
        broker.register("gw-r")
        ccfg = collector_config(root / "collector.toml", broker, root / "data")
        db = root / "data" / "timeseries.db"
        clog = root / "collector.log"
        collector = spawn(["outpost_iot.collector.cli", "serve", "--config", str(ccfg)], log=clog)
        wait(lambda: "collector subscribed" in clog.read_text(), 20, "the collector")
        with contextlib.ExitStack() as stack:
            relay = stack.enter_context(Relay(broker.port))
            acfg = agent_config(
                root / "agent.toml",
                gateway_id="gw-r",
                port=relay.port,
                identity=identity,
                state_dir=root / "state",
                fast_reconnect=False,
                buffer_extra="batch_max_delay = 0.2",
            )
            agent = spawn(
                [
                    "outpost_iot.dev.producer",
                    "--config",
                    str(acfg),
                    "--journal",
                    str(root / "journal"),
                    "--per-poll",
                    "10",
                    "--interval",
                    "0.1",
                ],
                log=root / "agent.log",
            )
            try:
                wait(lambda: stored(db) > 0, 30, "the first delivery")
                outage = rng.uniform(30, 40)
                if scenario == "refuse":
                    relay.cut("refuse")
                    time.sleep(outage)
                    before = stored(db)
                    relay.restore()
                    back = time.monotonic()
                elif scenario == "blackhole":
                    hole = stack.enter_context(Blackhole(relay.port))
                    hole.cut()
                    time.sleep(outage)
                    before = stored(db)
                    hole.restore()
                    back = time.monotonic()
                elif scenario == "agent-first":
                    stop(collector)
                    alog = root / "agent.log"
                    seen = alog.read_text().count("uplink connected")
                    broker.restart()
                    wait(lambda: alog.read_text().count("uplink connected") > seen, 60, "agent")
                    time.sleep(1.0)  # it publishes to a broker with no collector subscribed
                    subscribed = clog.read_text().count("collector subscribed")
                    collector = spawn(
                        ["outpost_iot.collector.cli", "serve", "--config", str(ccfg)], log=clog
                    )
                    back = subscribed_again(clog, subscribed)
                    before = stored(db)
                else:
                    subscribed = clog.read_text().count("collector subscribed")
                    time.sleep(rng.uniform(0, 2))
                    broker.restart()
                    back = subscribed_again(clog, subscribed)
                    before = stored(db)
                first = wait(lambda: stored(db) > before, 120, "the first delivery after", 0.01)
                return first - back
            finally:
                stop(agent)
                stop(collector)
                broker.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--scenarios", default="refuse,blackhole,broker,agent-first")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    for scenario in args.scenarios.split(","):
        if scenario == "blackhole" and not Blackhole.available():
            print('{"skipped": "blackhole: needs iptables and root"}')
            continue
        runs = [run_once(scenario, rng) for _ in range(args.runs)]
        report(f"recovery.{scenario}.first_delivery", runs, "s", outage="30-40 s")


if __name__ == "__main__":
    main()
