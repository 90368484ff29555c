"""Readings/s delivered end to end: agent buffer → Mosquitto (mTLS) → collector → SQLite → ack.

The agent's buffer is filled with N readings while the collector is down; then the collector
starts and the agent drains the backlog. The rate is N / (time from the agent's start until its
buffer is empty), so it includes the agent's start-up and is conservative.

    .venv/bin/python -m bench.end_to_end [--runs 3] [--readings 200000]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench._common import report
from bench._site import site
from outpost_iot.dev._processes import spawn, stop

LIMITS = "[limits]\nreadings_per_s = 10000000\nreadings_burst = 10000000\nbytes_per_s = 1e9\nbytes_burst = 1e9\n"


def status(cfg: Path) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "outpost_iot.agent.cli", "status", "--config", str(cfg), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def producer(cfg: Path, journal: Path, log: Path, **kw: object) -> subprocess.Popen[bytes]:
    args = ["outpost_iot.dev.producer", "--config", str(cfg), "--journal", str(journal)]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return spawn(args, log=log)


def run_once(n: int, batch: int, inflight: int) -> float:
    with site(
        "gw-bench",
        collector_extra=LIMITS,
        buffer_extra=f"batch_max_readings = {batch}\nbatch_max_delay = 0.2",
        uplink_extra=f"max_inflight = {inflight}",
    ) as st:
        acfg, journal = st.agent_config, st.root / "journal"
        fill = producer(acfg, journal, st.root / "fill.log", per_poll=5000, interval=0.01, limit=n)
        while status_safe(acfg) < n:
            time.sleep(0.2)
        fill.send_signal(signal.SIGTERM)
        fill.wait(30)
        collector = spawn(
            ["outpost_iot.collector.cli", "serve", "--config", str(st.collector_config)],
            log=st.root / "c.log",
        )
        time.sleep(1.5)  # let it subscribe
        t0 = time.perf_counter()
        drain = producer(acfg, journal, st.root / "drain.log", per_poll=0)
        while status(acfg)["backlog_readings"] > 0:
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        stop(drain)
        stop(collector)
        return n / elapsed


def status_safe(cfg: Path) -> int:
    try:
        return int(status(cfg)["backlog_readings"])
    except (subprocess.CalledProcessError, json.JSONDecodeError, KeyError):
        return 0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--readings", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=1000, help="batch_max_readings")
    p.add_argument("--inflight", type=int, default=8, help="uplink max_inflight")
    args = p.parse_args()
    runs = [run_once(args.readings, args.batch, args.inflight) for _ in range(args.runs)]
    report(
        "end_to_end.readings_per_s",
        runs,
        "readings/s",
        readings=args.readings,
        batch=args.batch,
        inflight=args.inflight,
    )


if __name__ == "__main__":
    main()
