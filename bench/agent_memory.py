"""Agent resident memory while running the host source, connected to a collector.

.venv/bin/python -m bench.agent_memory [--seconds 30] [--runs 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench._common import report
from bench._site import site
from outpost_iot.dev._processes import spawn, stop


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_once(seconds: float) -> float:
    with site("gw-mem", sources='[[sources]]\ntype = "host"\ninterval = 1\n') as st:
        collector = spawn(
            ["outpost_iot.collector.cli", "serve", "--config", str(st.collector_config)],
            log=st.root / "c.log",
        )
        agent = spawn(
            ["outpost_iot.agent.cli", "run", "--config", str(st.agent_config)],
            log=st.root / "a.log",
        )
        peak = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            peak = max(peak, rss_kib(agent.pid))
            time.sleep(0.5)
        stop(agent)
        stop(collector)
        return peak / 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30)
    args = p.parse_args()
    report(
        "agent.peak_rss",
        [run_once(args.seconds) for _ in range(args.runs)],
        "MiB",
        seconds=args.seconds,
        sources="host every 1 s",
    )


if __name__ == "__main__":
    main()
