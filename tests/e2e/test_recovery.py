"""Back to normal within seconds: a real broker, collector and agent around a fault.

The agents here keep the product's reconnect policy and wait 60 s for an ack, so a delivery
that waited for a backoff ceiling of old (60 s) or for the ack timeout would show.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from outpost_iot.dev.netpath import Relay
from tests._wait import wait_until
from tests.e2e._harness import Harness, assert_exactly_once
from tests.e2e.test_pipeline import drain

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SLOW_ACKS = "ack_timeout = 60"


def _stored(h: Harness, gateway_id: str) -> int:
    return len(h.stored(gateway_id))


def _all_stored(h: Harness, gateway_id: str) -> bool:
    stored = h.stored(gateway_id)
    return all((e.run, e.n) in stored for e in h.read_journal(gateway_id))


def _catch_up_then_check(h: Harness, gw: str, proc: subprocess.Popen[bytes], cfg: Path) -> float:
    """Seconds until everything journaled so far is stored (the collector has just come back);
    then the producer stops, the agent drains, and every reading is stored exactly once."""
    back = time.monotonic()
    wait_until(
        lambda: _all_stored(h, gw),
        timeout=40,
        what="everything journaled so far to be stored",
        seen=lambda: f"{len(h.stored(gw))} of {len(h.read_journal(gw))} stored",
    )
    caught_up = time.monotonic() - back
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    drain(h, cfg, gw)
    assert_exactly_once(h, gw, h.read_journal(gw))
    return caught_up


def test_delivery_resumes_within_seconds_of_the_path_returning(harness: Harness, identity) -> None:
    h = harness
    h.start_collector()
    gw = "gw-path"
    with Relay(h.broker.port) as path:
        cfg = h.agent_config(
            gw, identity(gw), port=path.port, fast_reconnect=False, uplink_extra=SLOW_ACKS
        )
        proc = h.start_producer(cfg, gw, run="p", per_poll=10, interval=0.1)
        wait_until(lambda: _stored(h, gw) > 0, timeout=30, what="the first delivery")
        gaps = []
        for _ in range(2):
            path.cut("refuse")
            time.sleep(8)  # the outage itself: the agent keeps producing into its buffer
            before = _stored(h, gw)
            path.restore()
            restored = time.monotonic()
            wait_until(
                lambda b=before: _stored(h, gw) > b,
                timeout=30,
                what="the first delivery after the path returned",
                interval=0.05,
            )
            gaps.append(time.monotonic() - restored)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        log = (h.root / f"{gw}.log").read_text()
        drain(h, cfg, gw)
    delays = [float(d) for d in re.findall(r"reconnecting in ([0-9.]+) s", log)]
    assert delays, "the agent never reconnected"
    # The product's policy: full jitter under a 4 s ceiling (the old one grew to 60 s).
    assert max(delays) <= 4.0, f"reconnect delays {delays}"
    assert max(gaps) < 12, f"first delivery {gaps} s after the path returned"
    assert_exactly_once(h, gw, h.read_journal(gw))


def test_after_a_broker_restart_batches_go_again_as_soon_as_a_collector_subscribes(
    harness: Harness, identity
) -> None:
    """The broker restarts (no persistence) and the agent is back before any collector: the
    broker takes its batches and gives them to nobody ("no matching subscribers"). The agent
    sends them again within seconds of a collector subscribing, not after its 60 s ack timeout."""
    h = harness
    gw = "gw-nosub"
    h.start_collector()
    cfg = h.agent_config(gw, identity(gw), uplink_extra=SLOW_ACKS)
    proc = h.start_producer(cfg, gw, run="b", per_poll=10, interval=0.1)
    wait_until(lambda: _stored(h, gw) > 0, timeout=30, what="the first delivery")
    h.stop_collector()
    h.broker.restart()
    log = h.root / f"{gw}.log"
    wait_until(
        lambda: "no collector is subscribed" in log.read_text(),
        timeout=30,
        what="the agent to publish to a broker with no collector subscribed",
    )
    h.start_collector()  # returns once it has subscribed
    caught_up = _catch_up_then_check(h, gw, proc, cfg)
    assert caught_up < 30, f"{caught_up:.1f} s after the collector subscribed"
    assert "no ack within" not in log.read_text(), "a batch waited for the ack timeout"


def test_a_collector_killed_keeps_its_session_and_gets_what_arrived_meanwhile(
    harness: Harness, identity
) -> None:
    """kill -9 of the only collector: the broker keeps its session, so the agent's batches are
    taken (no "no matching subscribers") and wait there; the restarted collector stores them."""
    h = harness
    gw = "gw-session"
    h.start_collector()
    cfg = h.agent_config(gw, identity(gw), uplink_extra=SLOW_ACKS)
    proc = h.start_producer(cfg, gw, run="s", per_poll=10, interval=0.1)
    wait_until(lambda: _stored(h, gw) > 0, timeout=30, what="the first delivery")
    assert h.collector is not None
    h.collector.kill()
    h.collector.wait()
    h.collector = None
    produced = len(h.read_journal(gw))
    wait_until(
        lambda: len(h.read_journal(gw)) > produced + 100,
        timeout=30,
        what="the agent to produce while the collector is away",
    )
    log = h.root / f"{gw}.log"
    h.start_collector()
    caught_up = _catch_up_then_check(h, gw, proc, cfg)
    assert "no collector is subscribed" not in log.read_text(), (
        "the broker dropped the collector's session"
    )
    assert caught_up < 30, f"{caught_up:.1f} s after the collector came back"
