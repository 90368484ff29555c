"""End to end, against a real Mosquitto (mTLS) and real agent and collector processes."""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests._wait import wait_until
from tests.e2e._harness import AckWatcher, Harness, assert_exactly_once

pytestmark = [pytest.mark.broker]


def drain(h: Harness, config: Path, gateway_id: str, *, timeout: float = 60) -> None:
    """Run the agent without producing until the collector has acked its whole buffer."""
    proc = h.start_producer(config, gateway_id, run="drain", per_poll=0)
    wait_until(
        lambda: (
            h.status(config)["backlog_readings"] == 0 and h.status(config)["pending_events"] == 0
        ),
        timeout=timeout,
        what="the agent's backlog to drain",
        seen=lambda: {
            k: v
            for k, v in h.status(config).items()
            if k in ("backlog_readings", "pending_events", "uplink", "drops")
        },
    )
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def test_readings_arrive_with_values_tags_and_timestamps(harness: Harness, identity) -> None:
    h = harness
    h.start_collector()
    cfg = h.agent_config("gw-e2e", identity("gw-e2e"))
    proc = h.start_producer(cfg, "gw-e2e", run="a", per_poll=10, interval=0.05, limit=300)
    wait_until(lambda: len(h.read_journal("gw-e2e")) == 300, timeout=30, what="300 readings")
    wait_until(lambda: len(h.stored("gw-e2e")) == 300, timeout=30, what="300 stored readings")
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)

    stored = h.stored("gw-e2e")
    for entry in h.read_journal("gw-e2e"):
        [(ts, fields)] = stored[(entry.run, entry.n)]
        assert ts == entry.ts  # the clock was right: timestamps are kept to the nanosecond
        assert fields == {
            "n": entry.n,
            "value": entry.n * 0.5,
            "even": int(entry.n % 2 == 0),  # raw SQLite row; the store API returns a bool
            "label": f"r{entry.n}",
        }
    assert_exactly_once(h, "gw-e2e", h.read_journal("gw-e2e"))


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(harness: Harness, identity) -> None:
    h = harness
    h.start_collector()
    acks = AckWatcher(h.broker)
    cfg = h.agent_config("gw-kill", identity("gw-kill"))
    rng = random.Random(7)
    kills = 22
    for run in range(kills):
        proc = h.start_producer(cfg, "gw-kill", run=str(run), per_poll=25, interval=0.02)
        # Kill at a random moment while it produces, batches, sends and receives acks.
        wait_until(
            lambda r=str(run): any(e.run == r for e in h.read_journal("gw-kill")),
            timeout=20,
            what=f"run {run} to produce",
            interval=0.02,
        )
        time.sleep(rng.uniform(0.0, 1.0))
        proc.kill()  # SIGKILL: no cleanup, no flush, mid-write if it happens to be writing
        proc.wait()
    # And once for certain, the case the dedup exists for: batches the collector stores after
    # the agent died, so the agent never saw their acks and sends them again.
    proc = h.start_producer(cfg, "gw-kill", run="certain", per_poll=25, interval=0.02)
    before = len(acks.acks)
    wait_until(lambda: len(acks.acks) > before + 3, timeout=30, what="acks flowing")
    assert h.collector is not None
    h.collector.send_signal(signal.SIGSTOP)  # it receives, but stores and acks nothing
    produced = len(h.read_journal("gw-kill"))
    wait_until(
        lambda: len(h.read_journal("gw-kill")) > produced + 300,
        timeout=30,
        what="batches sent to a collector that does not answer",
    )
    proc.kill()
    proc.wait()
    h.collector.send_signal(signal.SIGCONT)  # it stores them now; the acks reach no one
    journal = h.read_journal("gw-kill")
    assert len({e.run for e in journal}) == kills + 1
    drain(h, cfg, "gw-kill")
    statuses = acks.statuses("gw-kill")
    assert statuses.get("duplicate", 0) > 0, f"no batch was sent again: acks {statuses}"
    assert_exactly_once(h, "gw-kill", journal, acks)
    acks.close()


def test_collector_and_broker_restarts_lose_and_duplicate_nothing(
    harness: Harness, identity
) -> None:
    h = harness
    h.start_collector()
    cfg = h.agent_config("gw-restart", identity("gw-restart"))
    proc = h.start_producer(cfg, "gw-restart", run="r", per_poll=20, interval=0.05)

    def produced_more(n: int, what: str) -> None:
        # Each phase lasts until the agent has produced n more readings: as long as a busy
        # machine needs, never a fixed time.
        start = len(h.read_journal("gw-restart"))
        wait_until(lambda: len(h.read_journal("gw-restart")) >= start + n, timeout=60, what=what)

    produced_more(300, "readings before the faults")
    wait_until(lambda: len(h.stored("gw-restart")) > 0, timeout=30, what="the first delivery")
    h.stop_collector()
    produced_more(400, "readings while the collector is away")  # into the buffer
    h.start_collector()
    produced_more(300, "readings after the collector is back")
    h.broker.restart()
    produced_more(400, "readings after the broker restart")
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    journal = h.read_journal("gw-restart")
    assert len(journal) >= 1400
    drain(h, cfg, "gw-restart")
    assert_exactly_once(h, "gw-restart", journal)


def test_clock_wrong_at_boot_is_corrected(harness: Harness, identity) -> None:
    """A gateway a year behind: first buffered while offline, then sent live."""
    h = harness
    cfg = h.agent_config("gw-clock", identity("gw-clock"))
    year = 365 * 24 * 3600.0
    # Phase 1: collector down; readings buffered under the wrong clock.
    proc = h.start_producer(cfg, "gw-clock", run="offline", per_poll=10, interval=0.05, skew=-year)
    wait_until(lambda: len(h.read_journal("gw-clock")) >= 200, timeout=20, what="readings")
    proc.kill()
    proc.wait()
    # Phase 2: the clock was fixed (no skew now), collector up: the buffered batches still
    # carry the wrong offset and must be corrected from the monotonic clock.
    h.start_collector()
    proc = h.start_producer(cfg, "gw-clock", run="synced", per_poll=10, interval=0.05, limit=100)
    # Phase 3: the clock is wrong again while live.
    wait_until(lambda: len(h.stored("gw-clock")) >= 100, timeout=30, what="stored readings")
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    proc = h.start_producer(
        cfg, "gw-clock", run="live", per_poll=10, interval=0.05, limit=100, skew=-year
    )
    journal_len = len(h.read_journal("gw-clock"))
    wait_until(
        lambda: len(h.read_journal("gw-clock")) >= journal_len + 100,
        timeout=20,
        what="live readings",
    )
    wait_until(lambda: clock_flag(h) == 1, timeout=20, what="the gateway to be flagged")
    assert clock_skew(h) < -year * 0.99
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    journal = h.read_journal("gw-clock")
    drain(h, cfg, "gw-clock")
    assert clock_flag(h) == 0, "the drain ran with a right clock: the flag is cleared"
    stored = h.stored("gw-clock")
    assert_exactly_once(h, "gw-clock", journal)
    wrong = 0
    for e in journal:
        [(ts, _)] = stored[(e.run, e.n)]
        # real_ns was read right after the buffer commit, a few ms after capture; a corrected
        # timestamp is late by the one-way delivery delay of the batch that taught the
        # collector the boot's offset (tens of ms on a loaded machine).
        if not (e.real_ns - 2_000_000_000 <= ts <= e.real_ns + 500_000_000):
            wrong += 1
    skewed = [e for e in journal if e.run in ("offline", "live")]
    assert all(abs(e.ts - e.real_ns) > year * 0.9e9 for e in skewed), "the fake clock was wrong"
    assert wrong == 0, f"{wrong} of {len(journal)} readings kept a wrong timestamp"


def _gateway_row(h: Harness) -> tuple[int, float]:
    with contextlib.closing(sqlite3.connect(h.data / "documents.db")) as docs:
        row = docs.execute(
            "SELECT clock_flagged, clock_skew_s FROM gateways WHERE id = 'gw-clock'"
        ).fetchone()
    return (int(row[0]), float(row[1])) if row and row[1] is not None else (0, 0.0)


def clock_flag(h: Harness) -> int:
    return _gateway_row(h)[0]


def clock_skew(h: Harness) -> float:
    return _gateway_row(h)[1]
