"""Agent buffer: readings/s appended and committed, batches formed, bytes on disk per reading.

.venv/bin/python -m bench.buffer [--runs 5] [--readings 200000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench._common import report
from outpost_iot import wire
from outpost_iot.agent import Outbox, SystemClock


def make_readings(n: int) -> list[wire.Reading]:
    # A realistic mix: 20 series (device × measurement), 3 fields each.
    t0 = time.time_ns()
    return [
        wire.Reading(
            measurement=("environment", "power")[i % 2],
            tags={"source": "sim", "device": f"sim-{i % 10}"},
            fields={"value": 20.0 + (i % 100) / 10, "count": i, "ok": True},
            ts=t0 + i * 1000,
        )
        for i in range(n)
    ]


def run_once(readings: list[wire.Reading], durability: str, chunk: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "buffer.db"
        with Outbox(
            path=path,
            gateway_id="gw-bench",
            clock=SystemClock(),
            max_bytes=4 << 30,
            durability=durability,
            batch_max_readings=1000,
        ) as ob:
            t = time.perf_counter()
            for i in range(0, len(readings), chunk):
                ob.append(readings[i : i + chunk])
            append_s = time.perf_counter() - t
            pending_bytes = ob.used_bytes()
            t = time.perf_counter()
            while ob.form_batch() is not None:
                pass
            batch_s = time.perf_counter() - t
            ob.conn.execute("PRAGMA incremental_vacuum")
            batched_bytes = ob.used_bytes()
        return {
            "append_per_s": len(readings) / append_s,
            "batch_per_s": len(readings) / batch_s,
            "pending_bytes_per_reading": pending_bytes / len(readings),
            "batched_bytes_per_reading": batched_bytes / len(readings),
        }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--readings", type=int, default=200_000)
    p.add_argument("--chunk", type=int, default=1000, help="readings per append (one commit)")
    args = p.parse_args()
    readings = make_readings(args.readings)
    for durability in ("full", "normal"):
        results = [run_once(readings, durability, args.chunk) for _ in range(args.runs)]
        for key, unit in (
            ("append_per_s", "readings/s"),
            ("batch_per_s", "readings/s"),
            ("pending_bytes_per_reading", "bytes"),
            ("batched_bytes_per_reading", "bytes"),
        ):
            report(
                f"buffer.{key}",
                [r[key] for r in results],
                unit,
                durability=durability,
                chunk=args.chunk,
                readings=args.readings,
            )


if __name__ == "__main__":
    main()
