"""The Debian packages: how long building them takes, how big they are, what they take on disk.

.venv/bin/python -m bench.packages [--runs 3]

Builds both packages ``--runs`` times (as scripts/build-deb does: the project's wheel, then both
environments side by side; pip's cache warm after the first run), and reports the median build
time, each package's size, its installed size (the files as dpkg unpacks them, and what they take
on disk in 4 KiB blocks), its file count and the largest parts of its environment.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from outpost_iot.dev import debian


def _du(path: Path, *flags: str) -> int:
    out = subprocess.run(["du", "-s", "-B1", *flags, str(path)], capture_output=True, text=True, check=True)  # fmt: skip
    return int(out.stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        for _ in range(args.runs):
            start = time.perf_counter()
            debs = debian.build(list(debian.PACKAGES), out)
            times.append(time.perf_counter() - start)
        print(f"build of both packages: median {statistics.median(times):.1f} s"
              f" ({', '.join(f'{t:.1f}' for t in times)})")  # fmt: skip
        for deb in debs:
            tree = Path(tmp) / deb.stem
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
            files = sum(1 for p in tree.rglob("*") if p.is_file())
            prefix = next((tree / "opt").iterdir())
            site = next(prefix.glob("lib/python*/site-packages"))
            parts = sorted(((_du(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True)
            print(
                f"{deb.name}: {deb.stat().st_size / 2**20:.1f} MiB;"
                f" installed {_du(tree, '--apparent-size') / 2**20:.1f} MiB of files,"
                f" {_du(tree) / 2**20:.1f} MiB on disk, {files} files;"
                f" largest: {', '.join(f'{name} {size / 2**20:.1f}' for size, name in parts[:5])}"
            )


if __name__ == "__main__":
    main()
