from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outpost_iot import wire
from outpost_iot.collector import CollectorConfig, Incoming, Ingestor, StoreUnavailable, _clockfix
from outpost_iot.collector._ingest import Reply, batch_key
from outpost_iot.collector.stores import SeriesWrite, SqliteDocumentStore, SqliteTimeSeriesStore
from outpost_iot.wire import topics
from tests._fuzz import budget

NOW = 1_700_000_000 * 10**9  # 2023-11-14: in the past, as received batches are


def make_config(tmp_path: Path, **limits: object) -> CollectorConfig:
    return CollectorConfig.model_validate(
        {
            "broker": {"ca_file": "ca", "cert_file": "c", "key_file": "k"},
            "stores": {
                "timeseries_path": tmp_path / "ts.db",
                "documents_path": tmp_path / "docs.db",
            },
            "limits": limits,
        }
    )


class Env:
    def __init__(self, tmp_path: Path, **limits: object) -> None:
        self.cfg = make_config(tmp_path, **limits)
        self.ts = SqliteTimeSeriesStore(self.cfg.stores.timeseries_path)
        self.docs = SqliteDocumentStore(self.cfg.stores.documents_path)
        self.t = 0.0
        self.ingestor = Ingestor(
            config=self.cfg, timeseries=self.ts, documents=self.docs, monotonic=lambda: self.t
        )
        self.ingestor.handle = answered_to_the_sender(self.ingestor.handle)  # type: ignore[method-assign]

    def close(self) -> None:
        self.ts.close()
        self.docs.close()


def answered_to_the_sender(handle: Any) -> Any:
    """Every test of ingest also checks where each answer goes: an ack or nack to the ack
    topic of a gateway that sent a batch of that stream and seq in this round, a renewal
    answer to the renew topic of a gateway that asked. (An answer on another gateway's topic
    would tell it about a batch it never sent.)"""

    def checked(messages: Sequence[Incoming]) -> list[Reply]:
        replies: list[Reply] = handle(messages)
        senders: dict[tuple[str, int], set[str]] = {}
        renewing = set()
        for m in messages:
            gw, key = topics.gateway_of(m.topic), batch_key(m.properties)
            if gw and key and m.topic == topics.up_batch(gw):
                senders.setdefault(key, set()).add(gw)
            if gw and m.topic == topics.up_renew(gw):
                renewing.add(topics.down_renew(gw))
        for r in replies:
            if isinstance(r.message, wire.RenewResponse):
                assert r.topic in renewing, f"a renewal answer on {r.topic}"
            else:
                key = (r.message.stream, r.message.seq)
                expected = {topics.down_ack(gw) for gw in senders.get(key, set())}
                assert r.topic in expected, f"{r.message!r} went to {r.topic}, not {expected}"
        return replies

    return checked


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


def frame(
    seq: int,
    *,
    gw: str = "gw-1",
    n: int = 3,
    offset: int = 0,
    boot: str = "b1",
    events: Sequence[wire.Event] = (),
    synced: bool = True,
) -> bytes:
    readings = [
        wire.Reading(
            measurement="env",
            tags={"device": "d1"},
            fields={"t": float(i), "on": True},
            ts=NOW + seq * 1000 + i,
        )
        for i in range(n)
    ]
    b = wire.Batch.model_validate(
        {
            "gw": gw,
            "stream": "s1",
            "boot": boot,
            "seq": seq,
            "created": NOW,
            "clock": {"offset_ns": offset, "synced": synced},
            "series": wire.group_readings(readings),
            "events": list(events),
        }
    )
    return wire.encode_batch(b)


def msg(
    payload: bytes, seq: int, *, gw: str = "gw-1", props: dict[str, str] | None = None
) -> Incoming:
    p = {wire.PROP_STREAM: "s1", wire.PROP_SEQ: str(seq)}
    p.update(props or {})
    return Incoming(topics.up_batch(gw), payload, p, NOW)


def test_stored_then_acked_and_a_retransmit_is_acked_but_not_stored_again(env: Env) -> None:
    ev = wire.Event(id="e1", type="motion", ts=NOW, body={"zone": "door"})
    [reply] = env.ingestor.handle([msg(frame(1, events=[ev]), 1)])
    assert reply.topic == "outpost/v1/gw/gw-1/down/ack"
    assert reply.message == wire.Ack(stream="s1", seq=1, status="stored")
    points = env.ts.query("env")
    assert [(p.tags, p.fields) for p in points] == [
        ({"device": "d1", "gateway": "gw-1"}, {"t": float(i), "on": True}) for i in range(3)
    ]
    assert env.docs.events("gw-1") == [ev]
    # Retransmitted (twice in one round, and once later): acked as duplicate, stored once.
    replies = env.ingestor.handle([msg(frame(1, events=[ev]), 1), msg(frame(1), 1)])
    assert [r.message.status for r in replies] == ["duplicate", "duplicate"]  # type: ignore[union-attr]
    replies = env.ingestor.handle([msg(frame(2), 2), msg(frame(2), 2)])
    # The repeat is answered after the first copy is stored, with that outcome.
    assert [r.message.status for r in replies] == ["stored", "duplicate"]  # type: ignore[union-attr]
    assert env.ts.count_points("env") == 6
    m = env.ingestor.metrics  # what /metrics reports, counted once per stored batch
    assert (m.batches_stored, m.readings_stored, m.events_stored, m.duplicates) == (2, 6, 1, 3)
    assert m.readings_corrected == 0
    assert len(env.docs.events("gw-1")) == 1
    assert env.ingestor.metrics.duplicates == 3


def test_a_gateway_cannot_write_another_gateways_series(env: Env) -> None:
    [reply] = env.ingestor.handle([msg(frame(1, gw="gw-2"), 1, gw="gw-1")])
    assert reply.message == wire.Ack(
        stream="s1", seq=1, status="quarantined", reason="gateway_mismatch"
    )
    [q] = env.docs.quarantined()
    assert q.reason == "gateway_mismatch"
    assert q.raw == frame(1, gw="gw-2")
    assert env.ts.count_points() == 0
    # And a tag named "gateway" in the batch cannot override the topic's identity.
    r = wire.Reading(measurement="m", tags={"gateway": "gw-2"}, fields={"v": 1}, ts=NOW)
    b = wire.Batch.model_validate(
        {
            "gw": "gw-1",
            "stream": "s1",
            "boot": "b",
            "seq": 2,
            "created": NOW,
            "clock": {"offset_ns": 0, "synced": True},
            "series": wire.group_readings([r]),
        }
    )
    env.ingestor.handle([msg(wire.encode_batch(b), 2)])
    assert env.ts.query("m")[0].tags == {"gateway": "gw-1"}


def test_publish_without_stream_and_seq_is_quarantined_without_ack(env: Env) -> None:
    replies = env.ingestor.handle([Incoming(topics.up_batch("gw-1"), frame(1), {}, NOW)])
    assert replies == []
    assert env.docs.quarantined()[0].reason == "malformed"


def test_unknown_topic_shapes_are_quarantined(env: Env) -> None:
    env.ingestor.handle([Incoming("outpost/v1/gw/gw-1/sideways", b"x", {}, NOW)])
    assert env.docs.quarantined()[0].reason == "bad_topic"


def test_rate_limit_nacks_with_the_limit_and_retry_after(tmp_path: Path) -> None:
    env = Env(tmp_path, readings_per_s=10, readings_burst=10)
    try:
        r1 = env.ingestor.handle([msg(frame(1, n=8), 1)])
        r2 = env.ingestor.handle([msg(frame(2, n=8), 2)])
        assert r1[0].message.status == "stored"  # type: ignore[union-attr]
        nack = r2[0].message
        assert isinstance(nack, wire.Nack)
        assert (nack.reason, nack.limit) == ("rate_limited", "readings_per_s")
        assert nack.retry_after_ms == 600  # 6 tokens missing at 10/s
        assert env.ingestor.metrics.nacks["rate_limited"] == 1
        env.t += 0.6
        assert env.ingestor.handle([msg(frame(2, n=8), 2)])[0].message.status == "stored"  # type: ignore[union-attr]
        # The wait asked for is at least 1 ms...
        env.t += 0.9995  # 9.995 of 10 tokens back: 0.005 missing, half a millisecond
        [short] = env.ingestor.handle([msg(frame(3, n=10), 3)])
        assert short.message.retry_after_ms == 1  # type: ignore[union-attr]
        assert env.ingestor.metrics.nacks["rate_limited"] == 2
    finally:
        env.close()
    # ... and at most a day, however slow the rate.
    slow = Env(tmp_path / "slow", readings_per_s=0.00001, readings_burst=1)
    try:
        slow.ingestor.handle([msg(frame(1, n=1), 1)])
        [long] = slow.ingestor.handle([msg(frame(2, n=1), 2)])  # 100,000 s away
        assert long.message.retry_after_ms == 86_400_000  # type: ignore[union-attr]
    finally:
        slow.close()


class FailingTimeSeries(SqliteTimeSeriesStore):
    def write(self, series: Sequence[SeriesWrite]) -> None:
        raise StoreUnavailable("disk I/O error")


def test_a_failing_store_gives_nacks_and_refunds_the_rate_limit(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, readings_per_s=10, readings_burst=10)
    ts = FailingTimeSeries(cfg.stores.timeseries_path)
    docs = SqliteDocumentStore(cfg.stores.documents_path)
    ing = Ingestor(config=cfg, timeseries=ts, documents=docs, monotonic=lambda: 0.0)
    for _ in range(3):  # refunded each time, so never rate limited
        [reply] = ing.handle([msg(frame(1, n=8), 1)])
        assert isinstance(reply.message, wire.Nack)
        assert reply.message.reason == "store_unavailable"
        assert reply.message.retry_after_ms == 5000
    assert not docs.seen("gw-1", "s1", 1)
    ts.close()
    docs.close()


def test_clock_correction_is_applied_once_and_identically_on_retransmit(env: Env) -> None:
    year = 365 * 24 * 3600 * 10**9
    mono = 500 * 10**9
    true_offset = NOW - mono
    skewed = true_offset + year  # the gateway's wall clock is a year ahead
    props = {
        wire.PROP_BOOT: "b1",
        wire.PROP_SENT_MONO: str(mono),
        wire.PROP_SENT_WALL: str(NOW + year),
    }
    door = wire.Event(id="e1", type="motion", ts=NOW + year + 5, body={})  # on the same clock
    env.ingestor.handle([msg(frame(1, offset=skewed, events=[door]), 1, props=props)])
    ts1 = [p.ts for p in env.ts.query("env")]
    assert ts1 == [NOW + 1000 + i - year for i in range(3)]
    assert [e.ts for e in env.docs.events("gw-1")] == [NOW + 5]  # events corrected too
    assert env.ingestor.metrics.readings_corrected == 3
    gw = env.docs.gateway("gw-1")
    assert gw is not None
    assert gw.clock_flagged
    assert gw.clock_skew_s == pytest.approx(year / 1e9)
    # A later batch of the same boot, after NTP fixed the clock: no correction needed.
    props_later = {
        **props,
        wire.PROP_SENT_MONO: str(mono + 10**9),
        wire.PROP_SENT_WALL: str(NOW + 10**9),
    }
    env.ingestor.handle([msg(frame(2, offset=true_offset), 2, props=props_later)])
    assert [p.ts for p in env.ts.query("env")] == ts1 + [NOW + 2000 + i for i in range(3)]
    assert not env.docs.gateway("gw-1").clock_flagged  # type: ignore[union-attr]
    assert env.ingestor.metrics.readings_corrected == 3  # the second needed none
    # A new collector process (fresh caches) corrects the old batch the same way.
    fresh = Ingestor(config=env.cfg, timeseries=env.ts, documents=env.docs)
    assert fresh._clock.delta_ns("gw-1", wire.decode_batch(frame(1, offset=skewed))) == -year


SECOND = 10**9


def stamped(seq: int, *, sent_ns: int, latency_ns: int, wall_error_ns: int = 0) -> Incoming:
    """Batch ``seq`` of an unsynchronized gateway that booted 500 s before ``NOW`` (its true
    offset is ``NOW - 500 s``, its wall clock off by ``wall_error_ns``): sent at our time
    ``sent_ns``, received ``latency_ns`` later."""
    mono = sent_ns - (NOW - 500 * SECOND)
    offset = NOW - 500 * SECOND + wall_error_ns
    props = {
        wire.PROP_BOOT: "b1",
        wire.PROP_SENT_MONO: str(mono),
        wire.PROP_SENT_WALL: str(sent_ns + wall_error_ns),
    }
    payload = frame(seq, offset=offset, synced=False)
    return Incoming(
        topics.up_batch("gw-1"),
        payload,
        {**msg(payload, seq).properties, **props},
        sent_ns + latency_ns,
    )


def stored_times(env: Env) -> list[int]:
    return sorted(p.ts for p in env.ts.query("env"))


def test_a_batch_delivered_late_is_not_taken_for_a_wrong_clock(env: Env) -> None:
    """Delivery time is not clock error: a correct gateway's batches keep their timestamps
    when one arrives seconds late, and the gateway is not flagged."""
    env.ingestor.handle([stamped(1, sent_ns=NOW, latency_ns=SECOND // 20)])
    env.ingestor.handle([stamped(2, sent_ns=NOW + SECOND, latency_ns=8 * SECOND)])  # held up
    env.ingestor.handle([stamped(3, sent_ns=NOW + 2 * SECOND, latency_ns=SECOND // 10)])
    expected = sorted(NOW + seq * 1000 + i for seq in (1, 2, 3) for i in range(3))
    assert stored_times(env) == expected
    assert env.ingestor.metrics.readings_corrected == 0
    assert not env.docs.gateway("gw-1").clock_flagged  # type: ignore[union-attr]


def test_a_late_first_estimate_gives_way_to_a_prompt_one(env: Env) -> None:
    """The first publish of a boot arrived late (a collector catching up): the next prompt one
    lowers the stored offset, and from then on nothing is corrected; a wrong clock still is."""
    env.ingestor.handle([stamped(1, sent_ns=NOW, latency_ns=6 * SECOND)])
    env.ingestor.handle([stamped(2, sent_ns=NOW + SECOND, latency_ns=SECOND // 20)])
    corrected = env.ingestor.metrics.readings_corrected
    env.ingestor.handle([stamped(3, sent_ns=NOW + 2 * SECOND, latency_ns=3 * SECOND)])
    assert env.ingestor.metrics.readings_corrected == corrected  # batch 3 kept its times
    assert not env.docs.gateway("gw-1").clock_flagged  # type: ignore[union-attr]
    # Its clock then steps an hour back (a new epoch): that is corrected, to the second.
    hour = 3600 * SECOND
    env.ingestor.handle([stamped(4, sent_ns=NOW + 3 * SECOND, latency_ns=0, wall_error_ns=-hour)])
    assert env.ingestor.metrics.readings_corrected == corrected + 3
    batch4 = [t for t in stored_times(env) if t > NOW + 4000 - 1 + hour - SECOND]
    assert batch4 == [NOW + 4000 + i + hour + SECOND // 20 for i in range(3)]
    assert env.docs.gateway("gw-1").clock_flagged  # type: ignore[union-attr]


def test_a_monotonic_clock_that_drifts_is_followed_after_the_window(env: Env) -> None:
    """Estimates that stay high with no prompt publish among them are drift, not delivery
    time, once they have lasted the window; a single prompt publish restarts the wait."""
    drift = 3 * SECOND  # the gateway's monotonic clock fell 3 s behind ours
    window = _clockfix.DRIFT_WINDOW_NS
    env.ingestor.handle([stamped(1, sent_ns=NOW, latency_ns=0)])
    seq = 2
    for at in (SECOND, window // 2):
        env.ingestor.handle([stamped(seq, sent_ns=NOW + at, latency_ns=drift)])
        seq += 1
    env.ingestor.handle([stamped(seq, sent_ns=NOW + window // 2 + SECOND, latency_ns=0)])
    seq += 1
    for at in (window // 2 + 2 * SECOND, window + SECOND, window + window // 2 + SECOND):
        env.ingestor.handle([stamped(seq, sent_ns=NOW + at, latency_ns=drift + SECOND // 10)])
        seq += 1
    assert env.docs.boot_offset("gw-1", "b1") == NOW - 500 * SECOND  # 1 s short of the window
    env.ingestor.handle([stamped(seq, sent_ns=NOW + 2 * window, latency_ns=drift + SECOND)])
    # Moved up to the lowest estimate of the window, not to the latest.
    assert env.docs.boot_offset("gw-1", "b1") == NOW - 500 * SECOND + drift + SECOND // 10


def test_clock_estimates_at_the_edges_of_the_tolerance_and_the_window(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """The rules of the corrector at their boundaries: exactly the tolerance below or above the
    stored offset changes nothing; drift is followed at exactly the window; the flag and its
    log lines change only on a transition."""
    tol = 2 * SECOND
    clock = _clockfix.ClockCorrector(docs=env.docs, tolerance_ns=tol)
    base = 1_000 * SECOND

    def see(mono: int, estimate: int, wall_error: int = 0) -> int | None:
        clock.observe(
            "gw-1", _clockfix.SendStamp("b1", mono, base + mono + wall_error), estimate + mono
        )
        return env.docs.boot_offset("gw-1", "b1")

    assert see(SECOND, base) == base
    assert see(2 * SECOND, base - tol) == base  # exactly the tolerance lower: kept
    assert see(3 * SECOND, base - tol - 1) == base - tol - 1  # lower than that: replaced
    base -= tol + 1
    # Exactly the tolerance higher is a prompt publish: it ends a window of high estimates.
    assert see(4 * SECOND, base + tol + 1) == base
    assert see(5 * SECOND, base + tol) == base
    window = _clockfix.DRIFT_WINDOW_NS
    assert see(4 * SECOND + window, base + tol + 1) == base  # the window restarted at 5 s
    assert see(6 * SECOND, base + tol + 5) == base
    assert see(6 * SECOND + window, base + tol + 9) == base + tol + 5  # exactly the window
    base += tol + 5
    # A replacement ends a window too: what came before it is no evidence.
    assert see(7 * SECOND + window, base + tol + 1) == base
    assert see(8 * SECOND + window, base - tol - 1) == base - tol - 1
    base -= tol + 1
    assert see(7 * SECOND + 2 * window, base + tol + 1) == base
    # The flag: exactly the tolerance off is not flagged; one more is; the transitions log.
    caplog.set_level(logging.INFO, logger="outpost.collector.clock")
    mono = 10 * SECOND + 2 * window
    see(mono, base, wall_error=tol)
    gw = env.docs.gateway("gw-1")
    assert gw is not None
    assert not gw.clock_flagged
    caplog.clear()
    see(mono + SECOND, base, wall_error=-3 * SECOND // 2 - tol)
    gw = env.docs.gateway("gw-1")
    assert gw is not None
    assert gw.clock_flagged
    assert gw.clock_skew_s == -3.5  # to the nanosecond, delivery time left out
    see(mono + 2 * SECOND, base, wall_error=0)
    see(mono + 3 * SECOND, base, wall_error=0)
    logged = [r.getMessage() for r in caplog.records]
    assert logged == [
        "gateway gw-1: wall clock is off by -3.5 s; correcting its timestamps",
        "gateway gw-1: wall clock is in sync again",
    ]
    # A batch off by exactly the tolerance is not corrected; a nanosecond more is.
    exact = wire.decode_batch(frame(9, offset=base - tol, synced=False))
    assert clock.delta_ns("gw-1", exact) == 0
    beyond = wire.decode_batch(frame(9, offset=base - tol - 1, synced=False))
    assert clock.delta_ns("gw-1", beyond) == tol + 1


def test_a_synchronized_clock_is_trusted_unless_it_is_ahead_of_ours(env: Env) -> None:
    """A batch marked synced is not moved by the delivery time of the first publish; one
    stamped ahead of the moment we received it is provably wrong and corrected."""
    mono = 500 * SECOND
    props = {wire.PROP_BOOT: "b1", wire.PROP_SENT_MONO: str(mono), wire.PROP_SENT_WALL: str(NOW)}
    late = Incoming(
        topics.up_batch("gw-1"),
        frame(1, offset=NOW - mono),
        {**msg(b"", 1).properties, **props},
        NOW + 6 * SECOND,
    )
    env.ingestor.handle([late])
    assert stored_times(env) == [NOW + 1000 + i for i in range(3)]
    ahead = frame(2, offset=NOW - mono + 60 * SECOND)  # synced, yet a minute ahead
    env.ingestor.handle([msg(ahead, 2, props=props)])
    corrected = [NOW + 2000 + i - 60 * SECOND for i in range(3)]  # against the prompt one
    assert stored_times(env) == sorted(corrected + [NOW + 1000 + i for i in range(3)])


def test_state_messages_update_the_gateway(env: Env) -> None:
    state = wire.GatewayState(
        state="online",
        ts=NOW,
        boot_id="b1",
        agent_version="0.1.0",
        backlog_readings=12,
        drops={"disk_full": 3},
    )
    env.ingestor.handle(
        [Incoming(topics.up_state("gw-1"), wire.encode_message(state), {}, NOW + 7)]
    )
    gw = env.docs.gateway("gw-1")
    assert gw is not None
    assert gw.state == "online"
    assert gw.last_seen_ns == NOW + 7  # when the collector received it
    assert gw.status["backlog_readings"] == 12
    assert gw.status["drops"] == {"disk_full": 3}
    env.ingestor.handle([Incoming(topics.up_state("gw-1"), b"{}", {}, NOW)])
    [entry] = env.docs.quarantined()
    assert entry.reason == "invalid_schema"
    assert "state" in entry.detail  # names what is missing


def test_a_new_buffer_is_logged_once_per_reset_and_drops_once_a_minute(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="outpost.collector.ingest")

    def state(reset: str) -> Incoming:
        s = wire.GatewayState(
            state="online", ts=NOW, boot_id="b1", drops={"disk_full": 3}, buffer_reset=reset
        )
        return Incoming(topics.up_state("gw-1"), wire.encode_message(s), {}, NOW)

    env.ingestor.handle([state("corrupt: moved aside"), state("corrupt: moved aside")])
    env.t += 3600  # long after: still once for this reset
    env.ingestor.handle([state("corrupt: moved aside"), state("another gateway's buffer")])
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "gateway gw-1 reports drops: {'disk_full': 3}",
        "gateway gw-1 started a new buffer: corrupt: moved aside",
        "gateway gw-1 reports drops: {'disk_full': 3}",
        "gateway gw-1 started a new buffer: another gateway's buffer",
    ]


@pytest.mark.parametrize(
    ("status", "reason", "level", "line"),
    [
        ("applied", "", logging.INFO, "gateway gw-1: config 3 applied"),
        (
            "rejected",
            "invalid",
            logging.WARNING,
            "gateway gw-1: config 3 rejected (invalid: a; b\\nforged)",
        ),
    ],
)
def test_config_reports_are_kept_per_gateway_and_logged_by_outcome(
    env: Env, caplog: pytest.LogCaptureFixture, status: str, reason: str, level: int, line: str
) -> None:
    caplog.set_level(logging.INFO, logger="outpost.collector.ingest")
    report = wire.ConfigReport(
        version=3,
        status=status,  # type: ignore[arg-type]
        applied_version=3 if status == "applied" else 2,
        reason=reason,
        errors=["a", "b\nforged"] if reason else [],
        ts=NOW,
    )
    message = Incoming(topics.up_config("gw-1"), wire.encode_message(report), {}, NOW)
    assert env.ingestor.handle([message]) == []
    assert env.docs.config_report("gw-1") == report
    assert env.docs.config_report("gw-2") is None
    [record] = [r for r in caplog.records if r.getMessage().startswith("gateway gw-1: config")]
    assert (record.levelno, record.getMessage()) == (level, line)


def test_dedup_records_older_than_the_window_are_pruned(env: Env) -> None:
    env.ingestor.handle([msg(frame(1), 1)])  # received at NOW
    assert env.docs.prune_seen(NOW) == 0
    assert env.docs.seen("gw-1", "s1", 1)
    assert env.docs.prune_seen(NOW + 1) == 1
    assert not env.docs.seen("gw-1", "s1", 1)


class LockedDocuments(SqliteDocumentStore):
    def seen(self, gateway_id: str, stream_id: str, seq: int) -> bool:
        raise StoreUnavailable("database is locked")


class FailingRecords(SqliteDocumentStore):
    def record(self, batches: Any, events: Any) -> None:
        raise StoreUnavailable("disk I/O error")


def test_a_batch_twice_in_one_group_is_nacked_twice_when_the_store_fails(tmp_path: Path) -> None:
    """Never a "duplicate" ack for a copy of a batch whose store failed: the gateway would
    drop it."""
    cfg = make_config(tmp_path)
    ts = SqliteTimeSeriesStore(cfg.stores.timeseries_path)
    docs = FailingRecords(cfg.stores.documents_path)
    ing = Ingestor(config=cfg, timeseries=ts, documents=docs)
    replies = ing.handle([msg(frame(1), 1), msg(frame(1), 1)])
    assert [type(r.message).__name__ for r in replies] == ["Nack", "Nack"]
    assert {r.message.reason for r in replies} == {"store_unavailable"}  # type: ignore[union-attr]
    ts.close()
    docs.close()


def test_a_failing_document_store_gives_nacks_not_a_crash(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    ts = SqliteTimeSeriesStore(cfg.stores.timeseries_path)
    docs = LockedDocuments(cfg.stores.documents_path)
    ing = Ingestor(config=cfg, timeseries=ts, documents=docs)
    [reply] = ing.handle([msg(frame(1), 1)])
    assert isinstance(reply.message, wire.Nack)
    assert reply.message.reason == "store_unavailable"
    assert ts.count_points() == 0
    ts.close()
    docs.close()


def test_an_outage_is_logged_once_then_every_10_s_not_per_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(tmp_path)
    ts = SqliteTimeSeriesStore(cfg.stores.timeseries_path)
    docs = FailingRecords(cfg.stores.documents_path)
    clock = [100.0]
    ing = Ingestor(config=cfg, timeseries=ts, documents=docs, monotonic=lambda: clock[0])
    with caplog.at_level(logging.ERROR, logger="outpost.collector.ingest"):
        for seq in range(1, 6):
            ing.handle([msg(frame(seq), seq)])
            clock[0] += 1
        assert len(caplog.records) == 1  # five nacked batches, one line
        clock[0] += 10
        ing.handle([msg(frame(6), 6)])
    assert len(caplog.records) == 2
    assert "(4 more failures since the last line)" in caplog.records[-1].getMessage()
    assert ing.metrics.nacks["store_unavailable"] == 6
    ts.close()
    docs.close()


# -- the small pieces mutation testing showed untested (scripts/mutation) ---------------------


def _stamp_props(boot: str = "b1", mono: str = "5", wall: str = "7") -> dict[str, str]:
    return {wire.PROP_BOOT: boot, wire.PROP_SENT_MONO: mono, wire.PROP_SENT_WALL: wall}


@pytest.mark.parametrize(
    ("props", "usable"),
    [
        (_stamp_props(), True),
        (_stamp_props(boot="b"), True),
        (_stamp_props(boot="b" * 64), True),
        (_stamp_props(mono="0" * 19 + "5"), False),  # 20 digits, whatever their value
        (_stamp_props(boot="b" * 65), False),
        (_stamp_props(boot=""), False),
        ({wire.PROP_BOOT: "b1", wire.PROP_SENT_WALL: "7"}, False),  # no monotonic stamp
        ({wire.PROP_BOOT: "b1", wire.PROP_SENT_MONO: "5"}, False),  # no wall stamp
        (_stamp_props(mono="9" * 19, wall="1"), False),  # 19 digits, past the time range
        (_stamp_props(mono=str(wire.limits.TIME_MAX_NS)), True),
        (_stamp_props(mono=str(wire.limits.TIME_MAX_NS + 1)), False),
        (_stamp_props(wall=str(wire.limits.TIME_MAX_NS)), True),
        (_stamp_props(wall=str(wire.limits.TIME_MAX_NS + 1)), False),
        (_stamp_props(mono="1" * 20), False),
        (_stamp_props(wall="-5"), False),
        (_stamp_props(mono="١٢٣"), False),  # digits, but not ASCII ones
        (_stamp_props(wall="7.5"), False),
    ],
)
def test_send_stamps_are_used_only_when_sane(props: dict[str, str], usable: bool) -> None:
    from outpost_iot.collector._ingest import _send_stamp

    stamp = _send_stamp(props)
    assert (stamp is not None) is usable
    if stamp is not None:
        assert (stamp.boot_id, stamp.mono_ns, stamp.wall_ns) == (
            props[wire.PROP_BOOT],
            int(props[wire.PROP_SENT_MONO]),
            int(props[wire.PROP_SENT_WALL]),
        )


def test_the_write_latency_histogram_is_cumulative_with_bounds_inclusive() -> None:
    from outpost_iot.collector._ingest import WRITE_BUCKETS_S, LatencyHistogram

    h = LatencyHistogram()
    for seconds in (0.001, 0.003, 0.003, 7.0):
        h.observe(seconds)
    assert h.count == 4
    assert h.total_s == pytest.approx(7.007)
    by_bound = dict(zip(WRITE_BUCKETS_S, h.counts, strict=True))
    assert by_bound[0.001] == 1  # a value on a bound counts in it
    assert by_bound[0.0025] == 1
    assert by_bound[0.005] == 3
    assert by_bound[5.0] == 3  # 7 s is past every bucket: only in count and total


@pytest.mark.parametrize(("fields", "units"), [(1, 1), (8, 1), (9, 2), (16, 2), (17, 3)])
def test_a_reading_with_many_fields_costs_more_of_the_rate_limit(fields: int, units: int) -> None:
    from outpost_iot.collector._ingest import batch_units

    reading = wire.Reading(
        measurement="m", tags={}, fields={f"f{i}": i for i in range(fields)}, ts=NOW
    )
    batch = wire.Batch.model_validate(
        {
            "gw": "gw-1",
            "stream": "s1",
            "boot": "b1",
            "seq": 1,
            "created": NOW,
            "clock": {"offset_ns": 0, "synced": True},
            "series": wire.group_readings([reading, reading.model_copy(update={"ts": NOW + 1})]),
            "events": [wire.Event(id="e", type="t", ts=NOW, body={})],
        }
    )
    assert batch_units(batch) == 2 * units + 1  # two such readings and one event


def test_replaying_the_quarantine_after_a_fix(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an operator's replay answers for each kind of entry, and that a message that
    still fails is not quarantined a second time."""
    original = env.ingestor._batch

    def broken(m: Incoming, gateway_id: str, *rest: Any) -> int:
        raise RuntimeError("a bug, fixed since")

    monkeypatch.setattr(env.ingestor, "_batch", broken)
    env.ingestor.handle([msg(frame(1), 1)])
    monkeypatch.setattr(env.ingestor, "_batch", original)
    env.ingestor.handle([msg(frame(2)[:-2] + b"!!", 2)])  # malformed: stays so
    state = wire.GatewayState(state="online", ts=NOW, boot_id="b1")
    monkeypatch.setattr(env.ingestor, "_state", broken)
    env.ingestor.handle([Incoming(topics.up_state("gw-1"), wire.encode_message(state), {}, NOW)])
    monkeypatch.undo()
    entries = {(q.reason, q.topic.rsplit("/", 1)[1]): q for q in env.docs.quarantined()}
    bug, bad = entries["internal_error", "batch"], entries["malformed", "batch"]
    bug_state = entries["internal_error", "state"]
    quarantined = env.ingestor.metrics.quarantined
    assert env.ingestor.replay(bug, NOW) == ("stored", "")
    assert sorted(p.ts for p in env.ts.query("env")) == [NOW + 1000 + i for i in range(3)]
    assert env.ingestor.replay(bug, NOW) == ("duplicate", "")
    result, detail = env.ingestor.replay(bad, NOW)
    assert result == "still_invalid"
    assert detail.startswith("malformed: ")
    assert env.ingestor.replay(bug_state, NOW) == ("stored", "")
    assert env.docs.gateway("gw-1").state == "online"  # type: ignore[union-attr]
    assert env.ingestor.metrics.quarantined == quarantined  # nothing quarantined twice
    assert len(env.docs.quarantined()) == 3
    # An entry whose bytes were not kept, and one on a topic outside the layout.
    assert env.ingestor.replay(replace(bad, raw=b"", size=40), NOW) == (
        "still_invalid",
        "its raw bytes were not kept (the quarantine budget was used)",
    )
    elsewhere = replace(bug_state, topic="outpost/v1/gw/gw-1/up/nothing")
    assert env.ingestor.replay(elsewhere, NOW) == (
        "still_invalid",
        "bad_topic: no message kind 'nothing' in up/",
    )


def test_a_replay_over_the_rate_limit_is_to_be_retried(tmp_path: Path) -> None:
    env = Env(tmp_path, readings_per_s=0.001, readings_burst=5)
    try:
        env.ingestor.handle([msg(frame(1, n=6)[:-2] + b"!!", 1)])  # quarantined: costs 1
        [bad] = env.docs.quarantined()
        good = frame(9, n=5)  # the same message, fixed: 5 readings, over what is left
        properties = {**bad.properties, wire.PROP_SEQ: "9"}
        entry = replace(bad, raw=good, size=len(good), properties=properties)
        result, detail = env.ingestor.replay(entry, NOW)
        assert result == "retry"
        assert detail.startswith("rate_limited: ")
    finally:
        env.close()


class _Offsets:
    """The part of the document store the clock corrector uses, in memory (logic only)."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, str], int] = {}

    def boot_offset(self, gateway_id: str, boot_id: str) -> int | None:
        return self.offsets.get((gateway_id, boot_id))

    def set_boot_offset(self, gateway_id: str, boot_id: str, offset_ns: int) -> None:
        self.offsets[gateway_id, boot_id] = offset_ns

    def set_clock(self, gateway_id: str, skew_s: float, flagged: bool) -> None:
        pass


@settings(max_examples=budget(200), deadline=None)
@given(
    # Seconds of delivery time (up to a minute), of gaps between publishes (up to ten minutes,
    # longer than the drift window), and the delivery time of the prompt publishes.
    latencies=st.lists(st.integers(0, 60).map(lambda s: s * SECOND), min_size=20, max_size=40),
    gaps=st.lists(st.integers(1, 600).map(lambda s: s * SECOND), min_size=40, max_size=40),
    prompt=st.integers(0, 2 * SECOND),
)
def test_delivery_time_alone_never_corrects_a_right_clock(
    latencies: list[int], gaps: list[int], prompt: int
) -> None:
    """Whatever the delays and the gaps, a gateway whose clock is right is never corrected or
    flagged while every other publish of it arrives promptly (within the tolerance)."""
    tol = 2 * SECOND
    docs = _Offsets()
    clock = _clockfix.ClockCorrector(docs=docs, tolerance_ns=tol)  # type: ignore[arg-type]
    true_offset = NOW - 500 * SECOND
    mono = 1
    for i, latency in enumerate([prompt, *latencies]):
        mono += gaps[i % len(gaps)] if i else 0
        if i % 2 == 0:
            latency = prompt  # every other publish is prompt
        clock.observe(
            "gw-1",
            _clockfix.SendStamp("b1", mono, true_offset + mono),
            true_offset + mono + latency,
        )
        batch = wire.decode_batch(frame(i + 1, offset=true_offset, synced=False))
        assert clock.delta_ns("gw-1", batch) == 0
        assert clock._flagged.get("gw-1") is False
