"""A chaos campaign: random faults against a real broker, collector and agent, with exact
accounting of every reading.

    sudo .venv/bin/python -m bench.chaos [--faults 1000] [--seed 1] [--out chaos.json]
    sudo .venv/bin/python -m bench.chaos --faults 40 --only disk_full_offline

Not part of the test suite (it takes about an hour for 1,000 faults). The agent (the journaling
producer of the end-to-end tests: 400 readings/s) keeps its buffer on a real 24 MiB tmpfs, the
"small SD card"; the collector keeps SQLite stores. Faults, drawn at random:

- ``kill_agent``, ``kill_collector``, ``kill_broker``: ``kill -9``; started again at once.
- ``restart_broker``, ``restart_collector``: SIGTERM and start again.
- ``store_outage``: another process holds the time-series database locked for 2-8 s (the
  collector's writes fail and it nacks ``store_unavailable``).
- ``disk_full``: a file fills the agent's filesystem for 2-8 s; then it is removed. With the
  uplink up, SQLite reuses the pages and journal space that acked batches freed, so its writes
  rarely fail.
- ``disk_full_offline`` (only with ``--only``): the broker is killed and the filesystem filled
  for 10-20 s, so the backlog must grow and the buffer's writes do fail (counted as
  ``buffer_unwritable``); then the broker comes back and the file is removed.

After each fault the campaign waits for the system to recover: the first reading produced after
the fault ended is stored (the time it took is the fault's recovery time). At the end the agent
drains its backlog and every reading is accounted for: produced (the journal: what the buffer
took, committed) = stored once + dropped and counted by reason (the agent's buffer), with the
duplicates (a reading stored twice) and anything unaccounted for reported. Needs root (tmpfs).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import machine
from outpost_iot.collector import issue_gateway_identity
from outpost_iot.dev._processes import Mosquitto, agent_config, collector_config, spawn, stop

FAULTS = (
    "kill_agent",
    "kill_collector",
    "kill_broker",
    "restart_broker",
    "restart_collector",
    "store_outage",
    "disk_full",
)
# Drawn only when asked for (--only): the default draw stays that of the campaign in
# docs/reliability.md, so its seed reproduces it.
EXTRA_FAULTS = ("disk_full_offline",)
DISK_MIB = 24


class Campaign:
    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.disk = root / "disk"
        self.disk.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(self.disk)],
            check=True,
        )
        self.broker = Mosquitto(root / "broker")
        self.broker.start()
        identity = issue_gateway_identity(root / "broker", "gw-chaos", root / "id")
        self.broker.register("gw-chaos")
        self.ccfg = collector_config(root / "collector.toml", self.broker, root / "data")
        self.acfg = agent_config(
            root / "agent.toml",
            gateway_id="gw-chaos",
            port=self.broker.port,
            identity=identity,
            state_dir=self.disk / "state",
            fast_reconnect=False,  # the product's policy
            uplink_extra="ack_timeout = 10",
            buffer_extra=f'batch_max_delay = 0.2\nmax_bytes = "{DISK_MIB * 4}MiB"',
        )
        self.journal = root / "journal"
        self.db = root / "data" / "timeseries.db"
        self.collector: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.start_collector()
        self.start_agent()

    # -- processes ----------------------------------------------------------------------------

    def start_collector(self) -> None:
        self.collector = spawn(
            ["outpost_iot.collector.cli", "serve", "--config", str(self.ccfg)],
            log=self.root / "collector.log",
        )

    def start_agent(self, *, per_poll: int = 20) -> None:
        self.runs += 1
        self.agent = spawn(
            [
                "outpost_iot.dev.producer",
                "--config",
                str(self.acfg),
                "--journal",
                str(self.journal),
                "--run",
                str(self.runs),
                "--per-poll",
                str(per_poll),
                "--interval",
                "0.05",
            ],
            log=self.root / "agent.log",
        )

    def revive(self) -> None:
        if self.collector is None or self.collector.poll() is not None:
            self.start_collector()
        if self.agent is None or self.agent.poll() is not None:
            self.start_agent()

    # -- faults -------------------------------------------------------------------------------

    def fault(self, kind: str) -> None:
        rng = self.rng
        if kind == "kill_agent" and self.agent is not None:
            self.agent.kill()
            self.agent.wait()
        elif kind == "kill_collector" and self.collector is not None:
            self.collector.kill()
            self.collector.wait()
        elif kind == "kill_broker":
            self.broker.kill()
            self.broker.start()
        elif kind == "restart_broker":
            self.broker.restart()
        elif kind == "restart_collector" and self.collector is not None:
            stop(self.collector)
            self.start_collector()
        elif kind == "store_outage":
            self._hold_lock(rng.uniform(2, 8))
        elif kind == "disk_full":
            self._fill_disk(rng.uniform(2, 8))
        elif kind == "disk_full_offline":
            # Full while the broker is away: the backlog must grow, so SQLite runs out of the
            # free pages and journal space it reuses and the buffer's writes fail.
            self.broker.kill()
            self._fill_disk(rng.uniform(10, 20))
            self.broker.start()
        self.revive()

    def _hold_lock(self, seconds: float) -> None:
        if not self.db.exists():
            return
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as conn:
            conn.execute("BEGIN EXCLUSIVE")
            time.sleep(seconds)
            conn.rollback()

    def _fill_disk(self, seconds: float) -> None:
        filler = self.disk / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as f:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        time.sleep(seconds)
        filler.unlink(missing_ok=True)

    # -- observation --------------------------------------------------------------------------

    def journal_len(self) -> int:
        try:
            with self.journal.open("rb") as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0

    def newest_journaled(self) -> tuple[str, int] | None:
        try:
            lines = self.journal.read_bytes().splitlines()
        except FileNotFoundError:
            return None
        for line in reversed(lines):
            parts = line.split()
            if len(parts) == 4:
                return parts[0].decode(), int(parts[1])
        return None

    def is_stored(self, run: str, n: int) -> bool:
        if not self.db.exists():
            return False
        uri = f"file:{self.db}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as c:
            try:
                series = [
                    sid
                    for sid, tags in c.execute(
                        "SELECT id, tags FROM series WHERE measurement = 'counter'"
                    )
                    if json.loads(tags).get("run") == run
                ]
                return any(
                    c.execute(
                        "SELECT 1 FROM points WHERE series_id = ? AND field = 'n' AND value = ?"
                        " LIMIT 1",
                        (sid, n),
                    ).fetchone()
                    for sid in series
                )
            except sqlite3.Error:
                return False

    def recover(self, timeout: float = 120) -> float | None:
        """Seconds until a reading journaled after now is stored; None if it never was."""
        began = time.monotonic()
        before = self.journal_len()
        while time.monotonic() - began < timeout:
            self.revive()
            if self.journal_len() > before:
                newest = self.newest_journaled()
                if newest is not None and self.is_stored(*newest):
                    return time.monotonic() - began
            time.sleep(0.1)
        return None

    def drain(self, timeout: float = 600) -> None:
        if self.agent is not None:
            stop(self.agent)
        self.start_agent(per_poll=0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st and st.get("backlog_readings") == 0 and st.get("pending_events") == 0:
                break
            time.sleep(1)
        assert self.agent is not None
        stop(self.agent)

    def status(self) -> dict[str, object]:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "outpost_iot.agent.cli",
                "status",
                "--config",
                str(self.acfg),
                "--json",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return json.loads(r.stdout) if r.returncode == 0 else {}

    def account(self) -> dict[str, object]:
        produced: set[tuple[str, int]] = set()
        for line in self.journal.read_bytes().splitlines():
            parts = line.split()
            if len(parts) == 4:
                produced.add((parts[0].decode(), int(parts[1])))
        rows: collections.Counter[tuple[str, int]] = collections.Counter()
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as c:
            for tags, value in c.execute(
                "SELECT s.tags, p.value FROM series s JOIN points p ON p.series_id = s.id"
                " WHERE s.measurement = 'counter' AND p.field = 'n'"
            ):
                rows[(json.loads(tags)["run"], int(value))] += 1
        stored = produced & set(rows)
        duplicates = sum(1 for k, v in rows.items() if v > 1)
        status = self.status()
        if not status:
            raise RuntimeError("outpost-agent status failed: the drops cannot be accounted for")
        drops = {k: int(v) for k, v in dict(status.get("drops") or {}).items()}
        dropped = sum(drops.values())
        missing = len(produced) - len(stored)
        return {
            "produced": len(produced),
            "stored": len(stored),
            "stored_not_produced": len(set(rows) - produced),
            "duplicates": duplicates,
            "dropped": drops,
            "unaccounted": missing - dropped,
        }

    def close(self) -> None:
        for p in (self.agent, self.collector):
            if p is not None:
                stop(p)
        self.broker.stop()
        subprocess.run(["umount", "-l", str(self.disk)], check=False)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--faults", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--only", choices=FAULTS + EXTRA_FAULTS, action="append", help="draw only these faults"
    )
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.chaos needs root: the agent's disk is a size-limited tmpfs")
    rng = random.Random(args.seed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory() as d:
        c = Campaign(Path(d), rng)
        try:
            first = c.recover()
            assert first is not None, "the system never came up"
            counts: collections.Counter[str] = collections.Counter()
            recovery: dict[str, list[float]] = collections.defaultdict(list)
            failed: list[tuple[int, str]] = []
            started = time.monotonic()
            for i in range(args.faults):
                kind = rng.choice(args.only or FAULTS)
                counts[kind] += 1
                time.sleep(rng.uniform(0, 2))  # faults at random moments of the flow
                c.fault(kind)
                took = c.recover()
                if took is None:
                    failed.append((i, kind))
                else:
                    recovery[kind].append(took)
                if (i + 1) % 50 == 0:
                    print(f"{i + 1} faults, {c.journal_len()} readings produced", flush=True)
            c.drain()
            result = {
                "faults": dict(counts),
                "minutes": round((time.monotonic() - started) / 60, 1),
                "worst_recovery_s": {k: round(max(v), 1) for k, v in recovery.items()},
                "median_recovery_s": {
                    k: round(sorted(v)[len(v) // 2], 1) for k, v in recovery.items()
                },
                "not_recovered": failed,
                **c.account(),
                "machine": machine(),
            }
        finally:
            c.close()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
