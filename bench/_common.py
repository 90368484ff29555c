"""Helpers for the benchmarks: repeat, take the median, print a JSON line."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path


def machine() -> str:
    cpu = "unknown cpu"
    try:
        with Path("/proc/cpuinfo").open() as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def report(name: str, runs: list[float], unit: str, **extra: object) -> None:
    print(
        json.dumps(
            {
                "benchmark": name,
                "median": round(statistics.median(runs), 1),
                "unit": unit,
                "runs": [round(r, 1) for r in runs],
                "machine": machine(),
                **extra,
            }
        ),
        flush=True,
    )


def repeat(fn: Callable[[], float], times: int) -> list[float]:
    return [fn() for _ in range(times)]
