"""The long fuzzing campaign: every property-based boundary test with many more examples.

    .venv/bin/python -m bench.fuzz_campaign --factor 40

Runs the hostile-input tests (the batch codec and control messages, every ingest message kind,
every profile's mapper on mutated real payloads, the API's parameters) with ``factor`` times
their suite budget, and prints how many cases each tried and how many failed. Results go in
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = [
    "tests/wire/test_hostile_input.py",
    "tests/collector/test_hostile_ingest.py",
    "tests/agent/test_hostile_devices.py",
    "tests/collector/test_hostile_api.py",
]
_TEST = re.compile(r"^(tests/\S+)::(\S+):$")
_COUNTS = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid test cases")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--factor", type=int, default=40, help="times the suite's examples")
    args = p.parse_args()
    env = {**os.environ, "OUTPOST_FUZZ_FACTOR": str(args.factor)}
    started = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--hypothesis-show-statistics",
            "--hypothesis-seed",
            str(int(time.time())),
            *TARGETS,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - started
    test = ""
    rows: dict[str, list[int]] = {}
    for line in out.stdout.splitlines():
        line = line.strip()
        if m := _TEST.match(line):
            test = m.group(2)
        elif (m := _COUNTS.search(line)) and test:
            row = rows.setdefault(test, [0, 0, 0])
            for i in range(3):
                row[i] += int(m.group(i + 1))
    print(
        f"| property | cases tried | failing | invalid |  (factor {args.factor}, {elapsed:.0f} s)"
    )
    print("|---|---|---|---|")
    for name, (passing, failing, invalid) in sorted(rows.items()):
        print(f"| {name} | {passing + failing} | {failing} | {invalid} |")
    total = sum(r[0] + r[1] for r in rows.values())
    print(f"\n{total} cases in {elapsed:.0f} s; pytest exit code {out.returncode}")
    if out.returncode != 0:
        print(out.stdout[-5000:])
        sys.exit(1)


if __name__ == "__main__":
    main()
