"""The agent with 20 devices configured (a mix of profiles, against simulators): RSS and CPU.

.venv/bin/python -m bench.agent_devices [--devices 20] [--interval 10] [--seconds 60] [--runs 3]
                                        [--no-snmp]

Devices cycle through pfSense REST, pfSense SNMP (snmpsim), UniFi OS (HTTPS), Frigate HTTP and
the MQTT families on a local broker, plus the host source. After a warm-up (first polls, SNMP
engine start), it samples the agent's resident memory and CPU time from /proc.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench._common import report
from bench._site import site
from outpost_iot.dev._processes import spawn, stop
from outpost_iot.dev.site import SimulatedSite

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def memory_mib(pid: int) -> tuple[float, float]:
    """Resident memory: all of it (VmRSS), and the private part (RssAnon: heap, not the mapped
    shared libraries that the kernel can drop and read again)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("RssAnon", 0.0)


def run_once(
    devices: int, interval: float, seconds: float, warmup: float, snmp: bool
) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as d:
        sim = SimulatedSite(Path(d), interval=interval, snmp=snmp).start()
        try:
            sources = f'[[sources]]\ntype = "host"\ninterval = {interval:g}\n\n'
            sources += sim.devices_toml(count=devices, interval=interval)
            with site("gw-devices", sources=sources) as st:
                collector = spawn(
                    ["outpost_iot.collector.cli", "serve", "--config", str(st.collector_config)],
                    log=st.root / "c.log",
                )
                agent = spawn(
                    ["outpost_iot.agent.cli", "run", "--config", str(st.agent_config)],
                    log=st.root / "a.log",
                )
                try:
                    time.sleep(warmup)
                    cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
                    peak = peak_anon = 0.0
                    while time.monotonic() - t0 < seconds:
                        rss, anon = memory_mib(agent.pid)
                        peak, peak_anon = max(peak, rss), max(peak_anon, anon)
                        time.sleep(0.5)
                    cpu = (cpu_seconds(agent.pid) - cpu0) / (time.monotonic() - t0) * 100
                    log = (st.root / "a.log").read_text()
                    if "is not answering" in log or "Traceback" in log:
                        raise RuntimeError(f"a device failed during the benchmark:\n{log[-3000:]}")
                finally:
                    stop(agent)
                    stop(collector)
                return peak, peak_anon, cpu
        finally:
            sim.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=20.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--no-snmp", action="store_true", help="leave the pfSense SNMP devices out of the mix"
    )
    args = p.parse_args()
    results = [
        run_once(args.devices, args.interval, args.seconds, args.warmup, not args.no_snmp)
        for _ in range(args.runs)
    ]
    extra = {
        "devices": args.devices,
        "interval_s": args.interval,
        "seconds": args.seconds,
        "snmp": not args.no_snmp,
    }
    report("agent.devices.peak_rss", [r[0] for r in results], "MiB", **extra)
    report("agent.devices.peak_rss_anon", [r[1] for r in results], "MiB", **extra)
    report("agent.devices.cpu", [r[2] for r in results], "% of one core", **extra)


if __name__ == "__main__":
    main()
