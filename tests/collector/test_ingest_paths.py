"""Ingest's less travelled paths, each rule at its boundary: the shared duplicate window of
collector replicas (a claim is always released or remembered, never left to expire, and a batch
whose store failed is never taken for stored), the memory bound of a group (what counts toward
it and what does not), the publish's (stream, seq), store failures and how they are logged, the
replay of every kind of message, and what the quarantine keeps and costs.

Written from the survivors of mutation testing (scripts/mutation, docs/reliability.md): each test
fails on a change to ingest that the other tests let through. The shared window of a real Redis
is tested in tests/collector/test_shared.py; here its contract is held in memory so that every
answer it can give is reached."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest

from outpost_iot import wire
from outpost_iot.collector import Incoming, Ingestor, StoreUnavailable
from outpost_iot.collector import _ingest as ingest_module
from outpost_iot.collector._exceptions import StoreError
from outpost_iot.collector._limits import Verdict
from outpost_iot.collector.stores import (
    QuarantineEntry,
    SeriesWrite,
    SqliteDocumentStore,
    SqliteTimeSeriesStore,
)
from outpost_iot.wire import topics
from tests.collector.test_ingest import NOW, answered_to_the_sender, frame, make_config, msg

Key = tuple[str, str, int]


class MemoryDedup:
    """The shared duplicate window (``collector._shared.RedisDedupWindow``) in memory: what a
    replica claims, what was stored, and every call."""

    def __init__(self) -> None:
        self.stored: set[Key] = set()
        self.claims: set[Key] = set()
        self.down = False  # Redis unreachable: every answer is "unknown"
        self.released: list[Key] = []

    def take(self, key: Key) -> Literal["stored", "busy", "claimed", "unknown"]:
        if self.down:
            return "unknown"
        if key in self.stored:
            return "stored"
        if key in self.claims:
            return "busy"
        self.claims.add(key)
        return "claimed"

    def done(self, keys: Sequence[Key], *, stored: bool) -> None:
        for key in keys:
            if stored:
                self.stored.add(key)
            else:
                self.released.append(key)
            self.claims.discard(key)


class Documents(SqliteDocumentStore):
    """A real document store that fails where a test says."""

    seen_fails: frozenset[int] = frozenset()  # seq whose duplicate check fails
    offset_fails: frozenset[str] = frozenset()  # boot ids whose clock cannot be recorded
    quarantine_fails = False
    state_fails = False

    def seen(self, gateway_id: str, stream_id: str, seq: int) -> bool:
        if seq in self.seen_fails:
            raise StoreUnavailable("database is locked")
        return super().seen(gateway_id, stream_id, seq)

    def set_boot_offset(self, gateway_id: str, boot_id: str, offset_ns: int) -> None:
        if boot_id in self.offset_fails:
            raise StoreUnavailable("disk I/O error")
        super().set_boot_offset(gateway_id, boot_id, offset_ns)

    def quarantine(self, entry: QuarantineEntry) -> None:
        if self.quarantine_fails:
            raise StoreUnavailable("disk full")
        super().quarantine(entry)

    def save_state(self, gateway_id: str, state: wire.GatewayState, received_ns: int) -> None:
        if self.state_fails:
            raise StoreUnavailable("disk full")
        super().save_state(gateway_id, state, received_ns)

    def save_config_report(self, gateway_id: str, report: wire.ConfigReport) -> None:
        if self.state_fails:
            raise StoreUnavailable("disk full")
        super().save_config_report(gateway_id, report)


class TimeSeries(SqliteTimeSeriesStore):
    """A real time-series store that records how many points each write carried, and fails
    with ``failure`` when one is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes: list[int] = []
        self.failure: Exception | None = None

    def write(self, series: Sequence[SeriesWrite]) -> None:
        if self.failure is not None:
            raise self.failure
        self.writes.append(sum(len(s.points) for s in series))
        super().write(series)


class Revoked:
    """The part of the enrollment service ingest asks: is this gateway decommissioned?"""

    def is_revoked(self, gateway_id: str) -> bool:
        return gateway_id == "gw-gone"

    def refresh_revoked(self) -> None:
        pass


class Rig:
    def __init__(self, tmp_path: Path, *, enrollment: object = None, **limits: object) -> None:
        self.cfg = make_config(tmp_path, **limits)
        self.ts = TimeSeries(self.cfg.stores.timeseries_path)
        self.docs = Documents(self.cfg.stores.documents_path)
        self.dedup = MemoryDedup()
        self.t = 0.0
        self.log = logging.getLogger("test.ingest.paths")
        self.ingestor = Ingestor(
            config=self.cfg,
            timeseries=self.ts,
            documents=self.docs,
            monotonic=lambda: self.t,
            dedup=self.dedup,
            enrollment=enrollment,  # type: ignore[arg-type]
            logger=self.log,
        )
        self.handle = answered_to_the_sender(self.ingestor.handle)

    def one(self, message: Incoming) -> wire.Ack | wire.Nack:
        [reply] = self.handle([message])
        assert not isinstance(reply.message, wire.RenewResponse)
        return reply.message

    def close(self) -> None:
        self.ts.close()
        self.docs.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def _status(message: wire.Ack | wire.Nack) -> str:
    return message.status if isinstance(message, wire.Ack) else f"nack:{message.reason}"


# -- the shared duplicate window ----------------------------------------------------------------


def test_a_stored_batch_is_remembered_and_every_refusal_releases_its_claim(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever happens to a claimed batch, its claim ends at once: remembered as stored, or
    released. A claim left behind would make every replica answer ``in_progress`` to the
    gateway's retransmits until it expired."""
    r = Rig(tmp_path, readings_per_s=0.001, readings_burst=10, max_future_s=100)
    try:
        r.docs.seen_fails = frozenset({2})
        r.docs.offset_fails = frozenset({"bad-clock"})
        assert _status(r.one(msg(frame(1), 1))) == "stored"
        assert r.dedup.stored == {("gw-1", "s1", 1)}
        # The duplicate check fails: a store nack, the claim released, the failure logged.
        with caplog.at_level(logging.ERROR, logger="test.ingest.paths"):
            nack = r.one(msg(frame(2), 2))
        assert caplog.messages == [
            "cannot check batch ('gw-1', 's1', 2) for duplicates: database is locked"
        ]
        assert isinstance(nack, wire.Nack)
        assert (nack.reason, nack.detail) == (
            "store_unavailable",
            "the collector's store is unavailable; keep the batch",
        )
        # The clock cannot be recorded: nacked, refunded to this gateway, released.
        stamp = {wire.PROP_BOOT: "bad-clock", wire.PROP_SENT_MONO: "5", wire.PROP_SENT_WALL: "7"}
        assert _status(r.one(msg(frame(3, n=6), 3, props=stamp))) == "nack:store_unavailable"
        # In the future: quarantined, refunded, released.
        assert _status(r.one(_at(4, NOW + 101 * 10**9))) == "quarantined"
        # Over the rate limit: nacked, released (3 stored + 1 quarantine entry of 10 used).
        assert _status(r.one(msg(frame(5, n=7), 5))) == "nack:rate_limited"
        assert r.dedup.released == [("gw-1", "s1", s) for s in (2, 3, 4, 5)]
        assert r.dedup.claims == set()
        # The refunds went to gw-1's own bucket: 6 readings still fit (10 − 3 − 1).
        assert _status(r.one(msg(frame(6, n=6), 6))) == "stored"
        assert r.dedup.stored == {("gw-1", "s1", 1), ("gw-1", "s1", 6)}
    finally:
        r.close()


def _at(seq: int, ts: int) -> Incoming:
    """Batch ``seq`` of one reading at ``ts``, received at ``NOW``."""
    reading = wire.Reading(measurement="env", tags={"device": "d1"}, fields={"t": 1.0}, ts=ts)
    batch = wire.decode_batch(frame(seq, n=1)).model_copy(
        update={"series": wire.group_readings([reading])}
    )
    return msg(wire.encode_batch(batch), seq)


def test_a_batch_whose_store_failed_is_released_not_remembered_so_its_retransmit_is_stored(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.ts.failure = StoreUnavailable("disk I/O error")
    with caplog.at_level(logging.ERROR, logger="test.ingest.paths"):
        replies = rig.handle([msg(frame(1), 1), msg(frame(2), 2)])
    assert [_status(r.message) for r in replies] == ["nack:store_unavailable"] * 2  # type: ignore[arg-type]
    assert caplog.messages == ["store unavailable, nacking 2 batch(es): disk I/O error"]
    assert rig.dedup.released == [("gw-1", "s1", 1), ("gw-1", "s1", 2)]
    assert rig.dedup.stored == set()
    rig.ts.failure = None
    assert _status(rig.one(msg(frame(1), 1))) == "stored"  # not taken for a duplicate
    assert rig.ts.count_points() == 3


def test_a_store_that_fails_for_another_reason_says_failed(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.ts.failure = StoreError("constraint failed")
    with caplog.at_level(logging.ERROR, logger="test.ingest.paths"):
        assert _status(rig.one(msg(frame(1), 1))) == "nack:store_unavailable"
    assert caplog.messages == ["store failed, nacking 1 batch(es): constraint failed"]


def test_what_another_replica_stored_is_a_duplicate_without_asking_the_store(rig: Rig) -> None:
    rig.dedup.stored.add(("gw-1", "s1", 1))  # stored by a replica a moment ago
    assert _status(rig.one(msg(frame(1), 1))) == "duplicate"
    assert rig.ts.count_points() == 0
    assert rig.ingestor.metrics.duplicates == 1


def test_a_batch_another_replica_is_storing_is_nacked_in_progress_for_a_second(rig: Rig) -> None:
    rig.dedup.claims.add(("gw-1", "s1", 1))
    nack = rig.one(msg(frame(1), 1))
    assert nack == wire.Nack(
        stream="s1",
        seq=1,
        reason="in_progress",
        retry_after_ms=1000,
        detail="another collector replica is storing this batch now",
    )
    assert rig.ingestor.metrics.nacks["in_progress"] == 1
    rig.one(msg(frame(1), 1))
    assert rig.ingestor.metrics.nacks["in_progress"] == 2
    assert rig.dedup.claims == {("gw-1", "s1", 1)}  # the other replica's claim, untouched


def test_without_the_shared_window_the_document_store_finds_duplicates(rig: Rig) -> None:
    rig.dedup.down = True
    assert _status(rig.one(msg(frame(1), 1))) == "stored"
    assert _status(rig.one(msg(frame(1), 1))) == "duplicate"
    assert rig.ts.count_points() == 3


def test_a_bug_after_the_claim_releases_it(tmp_path: Path) -> None:
    class Broken:
        """Fails for the batch (3 readings); the quarantine entry's one unit passes."""

        def consume(self, gateway_id: str, readings: int, *args: object) -> Verdict:
            if readings > 1:
                raise RuntimeError("a bug in the limiter")
            return Verdict(allowed=True)

        def refund(self, *args: object) -> None:
            pass

    r = Rig(tmp_path)
    r.ingestor._limiter = Broken()  # type: ignore[assignment]
    try:
        # Contained: quarantined as an internal error (and acked), the claim released.
        assert _status(r.one(msg(frame(1), 1))) == "quarantined"
        assert r.dedup.released == [("gw-1", "s1", 1)]
        assert r.dedup.claims == set()
    finally:
        r.close()


# -- the memory bound of a group ---------------------------------------------------------------


def _bad_clock(seq: int) -> Incoming:
    stamp = {wire.PROP_BOOT: "bad-clock", wire.PROP_SENT_MONO: "5", wire.PROP_SENT_WALL: "7"}
    return msg(frame(seq, n=1), seq, props=stamp)


def _future(seq: int) -> Incoming:
    return _at(seq, NOW + 10**6 * 10**9)


# Messages that add nothing to a group's memory (nothing of theirs is held for the write).
COSTLESS: dict[str, Any] = {
    "an empty publish": lambda: Incoming(topics.up_state("gw-1"), b"", {}, NOW),
    "a topic outside the layout": lambda: Incoming("outpost/v1/gw/gw-1/x", b"1", {}, NOW),
    "a decommissioned gateway": lambda: msg(frame(2, gw="gw-gone", n=1), 2, gw="gw-gone"),
    "a state message": lambda: Incoming(
        topics.up_state("gw-1"),
        wire.encode_message(wire.GatewayState(state="online", ts=NOW, boot_id="b1")),
        {},
        NOW,
    ),
    "a batch without stream and seq": lambda: Incoming(topics.up_batch("gw-1"), b"x", {}, NOW),
    "a malformed batch": lambda: msg(b"garbage", 2),
    "the same batch twice": lambda: msg(frame(1, n=1), 1),
    "a batch another replica is storing": lambda: msg(frame(7, n=1), 7),
    "a duplicate check that fails": lambda: msg(frame(8, n=1), 8),
    "a duplicate": lambda: msg(frame(9, n=1), 9),
    "a batch over the rate limit": lambda: msg(frame(2, gw="gw-2", n=5), 2, gw="gw-2"),
    "a clock that cannot be recorded": lambda: _bad_clock(2),
    "a batch in the future": lambda: _future(2),
}


@pytest.mark.parametrize("kind", list(COSTLESS))
def test_refused_and_control_messages_cost_nothing_toward_a_groups_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """With a bound of one reading, two one-reading batches are written together only if what
    comes between them costs nothing; a message that counted would split the write in two."""
    r = Rig(tmp_path, enrollment=Revoked(), readings_per_s=0.001, readings_burst=5)
    try:
        r.docs.seen_fails = frozenset({8})
        r.docs.offset_fails = frozenset({"bad-clock"})
        r.dedup.claims.add(("gw-1", "s1", 7))
        r.handle([msg(frame(9, n=1), 9), msg(frame(1, gw="gw-2", n=5), 1, gw="gw-2")])
        r.ts.writes.clear()
        monkeypatch.setattr(ingest_module, "_GROUP_UNITS", 1)
        replies = r.handle([msg(frame(1, n=1), 1), COSTLESS[kind](), msg(frame(3, n=1), 3)])
        assert r.ts.writes == [2], f"{kind} counted toward the group's bound"
        stored = {r.message.seq for r in replies if getattr(r.message, "status", "") == "stored"}  # type: ignore[union-attr]
        assert stored == {1, 3}
    finally:
        r.close()


def test_a_group_is_written_in_parts_exactly_past_its_bound(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readings and events both count; a write happens once a group holds more than the bound,
    and every batch of every part is answered."""
    monkeypatch.setattr(ingest_module, "_GROUP_UNITS", 2)
    events = [wire.Event(id=f"e{i}", type="motion", ts=NOW, body={}) for i in range(2)]
    replies = rig.handle(
        [
            msg(frame(1, n=1, events=events), 1),  # 3 units: past the bound alone
            msg(frame(2, n=1), 2),
            msg(frame(3, n=1), 3),
            msg(frame(4, n=2), 4),  # 1 + 1 + 2 = 4: past it
            msg(frame(5, n=1), 5),
            msg(frame(6, n=1), 6),
        ]
    )
    assert rig.ts.writes == [1, 4, 2]  # points per write: [1], [2, 3, 4], [5, 6]
    assert sorted(r.message.seq for r in replies) == [1, 2, 3, 4, 5, 6]  # type: ignore[union-attr]
    assert {_status(r.message) for r in replies} == {"stored"}  # type: ignore[arg-type]
    assert rig.ingestor.metrics.batches_stored == 6


# -- what a publish must carry ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "seq", "key"),
    [
        ("s", "1", ("s", 1)),
        ("s" * 64, "1", ("s" * 64, 1)),
        ("s" * 65, "1", None),
        ("", "1", None),
        ("s\n", "1", None),
        ("s", str(2**63 - 1), ("s", 2**63 - 1)),  # 19 digits, the largest int64
        ("s", str(2**63), None),
        ("s", "0" * 19 + "1", None),  # 20 digits, however small
        ("s", "0", None),
        ("s", "-1", None),
        ("s", "١", None),  # a digit, not ASCII
    ],
)
def test_a_publish_names_its_batch_with_a_stream_and_a_seq_in_range(
    stream: str, seq: str, key: tuple[str, int] | None
) -> None:
    assert ingest_module.batch_key({wire.PROP_STREAM: stream, wire.PROP_SEQ: seq}) == key


@pytest.mark.parametrize(
    ("props_stream", "props_seq"), [("s1", 2), ("s2", 1)], ids=["seq", "stream"]
)
def test_a_body_that_names_another_batch_than_its_publish_is_quarantined(
    rig: Rig, props_stream: str, props_seq: int
) -> None:
    payload = frame(1)  # stream s1, seq 1
    message = msg(payload, props_seq, props={wire.PROP_STREAM: props_stream})
    answer = rig.one(message)
    assert answer == wire.Ack(
        stream=props_stream, seq=props_seq, status="quarantined", reason="malformed"
    )
    [entry] = rig.docs.quarantined()
    assert (entry.reason, entry.detail) == (
        "malformed",
        "stream/seq in the body differ from the publish properties",
    )
    assert rig.ts.count_points() == 0


def test_the_configured_frame_and_reading_limits_are_the_ones_applied(tmp_path: Path) -> None:
    r = Rig(tmp_path, max_frame_bytes=1024, max_readings=5)
    try:
        big = frame(1, n=200)
        assert len(big) > 1024
        assert _status(r.one(msg(big, 1))) == "quarantined"
        assert _status(r.one(msg(frame(2, n=6), 2))) == "quarantined"
        assert _status(r.one(msg(frame(3, n=5), 3))) == "stored"
        details = {q.detail for q in r.docs.quarantined()}
        assert details == {
            f"frame is {len(big)} bytes, the limit is 1024",
            "6 readings, the limit is 5",
        }
    finally:
        r.close()


def test_a_timestamp_exactly_the_limit_ahead_is_stored_and_a_nanosecond_more_is_not(
    tmp_path: Path,
) -> None:
    r = Rig(tmp_path, max_future_s=100)
    try:
        assert _status(r.one(_at(1, NOW + 100 * 10**9))) == "stored"
        assert _status(r.one(_at(2, NOW + 100 * 10**9 + 1))) == "quarantined"
        [entry] = r.docs.quarantined()
        assert entry.detail == (
            "a timestamp is 100 s ahead of the collector's clock; the limit is 100 s"
            " ([limits] max_future_s)"
        )
    finally:
        r.close()


# -- store failures, logged without flooding ----------------------------------------------------


def test_an_outage_is_logged_at_most_every_10_s_with_the_count_and_its_end_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.ts.failure = StoreUnavailable("down")
    caplog.set_level(logging.WARNING, logger="test.ingest.paths")
    seq = iter(range(1, 100))

    def send_at(t: float) -> None:
        rig.t = t
        n = next(seq)
        rig.handle([msg(frame(n), n)])

    send_at(100.0)  # the first failure of an outage: logged, with no count
    send_at(101.0)
    send_at(110.0)  # exactly 10 s after the last line: logged, with what came between
    send_at(119.5)
    rig.ts.failure = None
    send_at(121.0)  # the stores are back: said once
    rig.ts.failure = StoreUnavailable("down again")
    send_at(122.0)  # a new outage starts without an old count
    assert caplog.messages == [
        "store unavailable, nacking 1 batch(es): down",
        "store unavailable, nacking 1 batch(es): down (1 more failures since the last line)",
        "stores answer again after 21 s of failures",
        "store unavailable, nacking 1 batch(es): down again",
    ]


def test_corrections_are_counted_for_every_batch_of_a_group(rig: Rig) -> None:
    """Two batches of a boot whose clock is an hour off, in one group: both corrected."""
    hour = 3600 * 10**9
    mono = 10**9

    def late(seq: int) -> Incoming:
        props = {
            wire.PROP_BOOT: "b1",
            wire.PROP_SENT_MONO: str(mono),
            wire.PROP_SENT_WALL: str(NOW - hour),
        }
        payload = frame(seq, offset=NOW - hour - mono, synced=False)
        return msg(payload, seq, props=props)

    rig.handle([late(1), late(2)])
    assert rig.ingestor.metrics.readings_corrected == 6
    assert min(p.ts for p in rig.ts.query("env")) >= NOW + hour - 10**9


def test_the_injected_logger_carries_the_clock_warnings_too(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    props = {
        wire.PROP_BOOT: "b1",
        wire.PROP_SENT_MONO: "5",
        wire.PROP_SENT_WALL: str(NOW - 3600 * 10**9),
    }
    rig.handle([msg(frame(1), 1, props=props)])
    ours = [r.getMessage() for r in caplog.records if r.name == "test.ingest.paths"]
    assert any("gateway gw-1: wall clock is off by" in m for m in ours), caplog.messages


def test_a_correction_that_would_leave_the_time_range_names_the_gateway(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch claiming an absurd capture offset: the correction would put its readings before
    1970, so they are kept as sent, and the log says which gateway and boot."""
    props = {wire.PROP_BOOT: "b1", wire.PROP_SENT_MONO: str(10**9), wire.PROP_SENT_WALL: str(NOW)}
    absurd = frame(1, offset=wire.limits.OFFSET_MAX_NS, synced=False)
    with caplog.at_level(logging.WARNING, logger="test.ingest.paths"):
        assert _status(rig.one(msg(absurd, 1, props=props))) == "stored"
    assert rig.ingestor.metrics.corrections_refused == 3
    [line] = [r.getMessage() for r in caplog.records if "would move" in r.getMessage()]
    assert line.startswith("gateway gw-1 (boot b1): a clock correction of -")
    assert line.endswith(" s would move its timestamps out of range; stored as sent")


def test_a_batch_in_the_future_whose_quarantine_fails_is_nacked_to_come_again(
    tmp_path: Path,
) -> None:
    r = Rig(tmp_path)
    r.docs.quarantine_fails = True
    try:
        nack = r.one(_future(1))
        assert isinstance(nack, wire.Nack)
        assert nack.reason == "store_unavailable"
    finally:
        r.close()


def test_a_wall_clock_a_nanosecond_past_the_configured_tolerance_is_flagged(tmp_path: Path) -> None:
    """``[clock] tolerance_s`` is applied to the nanosecond."""
    for error, flagged in ((2 * 10**9, False), (2 * 10**9 + 1, True)):
        r = Rig(tmp_path / str(error))
        try:
            props = {
                wire.PROP_BOOT: "b1",
                wire.PROP_SENT_MONO: str(10**9),
                wire.PROP_SENT_WALL: str(NOW + error),
            }
            r.handle([msg(frame(1), 1, props=props)])
            gateway = r.docs.gateway("gw-1")
            assert gateway is not None
            assert gateway.clock_flagged is flagged, error
        finally:
            r.close()


# -- what is dropped before it is looked at -----------------------------------------------------


def test_an_empty_publish_is_a_retained_message_cleared_and_counted(rig: Rig) -> None:
    for _ in range(2):
        assert rig.handle([Incoming(topics.up_state("gw-1"), b"", {}, NOW)]) == []
    assert rig.ingestor.metrics.dropped["empty"] == 2
    assert rig.docs.quarantined() == []
    # Empty, but naming a batch: that is a batch with nothing in it, refused and answered.
    assert _status(rig.one(msg(b"", 1))) == "quarantined"
    assert rig.ingestor.metrics.dropped["empty"] == 2


def test_bad_topics_are_quarantined_under_the_gateway_they_name(rig: Rig) -> None:
    rig.handle([Incoming("outpost/v1/gw/gw-1/sideways", b"x", {}, NOW)])
    rig.handle([Incoming("outpost/v1/gw/gw-1/up/nothing", b"y", {}, NOW)])
    entries = sorted(rig.docs.quarantined(), key=lambda q: q.topic)
    assert [(q.gateway_id, q.reason, q.detail) for q in entries] == [
        ("gw-1", "bad_topic", "not an outpost/v1/gw/<id>/up/<kind> topic"),
        ("gw-1", "bad_topic", "no message kind 'nothing' in up/"),
    ]


# -- the quarantine: what it costs and keeps ----------------------------------------------------


def test_a_quarantined_message_costs_one_reading_of_the_rate_limit(tmp_path: Path) -> None:
    r = Rig(tmp_path, readings_per_s=0.001, readings_burst=2)
    try:
        assert _status(r.one(msg(b"garbage", 1))) == "quarantined"  # 1 of 2
        assert _status(r.one(msg(frame(2, n=1), 2))) == "stored"  # the other
        assert _status(r.one(msg(frame(3, n=1), 3))) == "nack:rate_limited"
    finally:
        r.close()


def test_the_quarantine_keeps_what_replay_needs_of_the_properties_cut_to_256(rig: Rig) -> None:
    long = "s" * 300
    props = {wire.PROP_STREAM: long, wire.PROP_SEQ: "1", wire.PROP_BOOT: "b1", "other": "x"}
    assert rig.handle([Incoming(topics.up_batch("gw-1"), frame(1), props, NOW)]) == []
    [entry] = rig.docs.quarantined()
    assert entry.properties == {
        wire.PROP_STREAM: "s" * 256,
        wire.PROP_SEQ: "1",
        wire.PROP_BOOT: "b1",
    }


def test_bad_state_reports_and_renewals_are_quarantined_with_what_is_wrong(rig: Rig) -> None:
    for kind in ("state", "config", "renew"):
        rig.handle([Incoming(f"outpost/v1/gw/gw-1/up/{kind}", b'{"v": 1}', {}, NOW)])
    details = {q.topic.rsplit("/", 1)[1]: q.detail for q in rig.docs.quarantined()}
    # Each names the fields a sender has to fix.
    assert details == {
        "state": "not a gateway state message: state: Field required; ts: Field required;"
        " boot_id: Field required",
        "config": "not a config report: version: Field required; status: Field required;"
        " applied_version: Field required; and 1 more",
        "renew": "not a renew request: request_id: Field required; csr: Field required",
    }


def test_an_unstorable_batch_whose_quarantine_fails_too_is_nacked_to_come_again(
    tmp_path: Path,
) -> None:
    r = Rig(tmp_path)
    r.ts.failure = OverflowError("a value no store takes")
    r.docs.quarantine_fails = True
    try:
        assert _status(r.one(msg(frame(1), 1))) == "nack:store_unavailable"
        assert r.dedup.released == [("gw-1", "s1", 1)]
        r.docs.quarantine_fails = False
        ack = r.one(msg(frame(2), 2))
        assert ack == wire.Ack(stream="s1", seq=2, status="quarantined", reason="unstorable")
        assert r.ingestor.metrics.contained == 2
    finally:
        r.close()


# -- replay ------------------------------------------------------------------------------------


def quarantined(topic: str, raw: bytes, detail: str = "") -> QuarantineEntry:
    """A message of gw-1 quarantined by a bug (fixed since), as replay finds it."""
    return QuarantineEntry(
        received_ns=NOW,
        topic=topic,
        reason="internal_error",
        detail=detail,
        raw=raw,
        gateway_id="gw-1",
        size=1,
    )


def test_a_replayed_config_report_is_saved_and_a_renewal_is_not_replayed(rig: Rig) -> None:
    report = wire.ConfigReport(version=3, status="applied", applied_version=3, ts=NOW)
    entry = quarantined(
        topics.up_config("gw-1"), wire.encode_message(report), detail="a bug, fixed since"
    )
    assert rig.ingestor.replay(entry, NOW) == ("stored", "")
    assert rig.docs.config_report("gw-1") == report
    renewal = quarantined(topics.up_renew("gw-1"), b'{"v": 1, "request_id": "r", "csr": "x"}')
    assert rig.ingestor.replay(renewal, NOW) == (
        "still_invalid",
        "certificate requests are not replayed: the gateway asks again",
    )
    # A state the store cannot save now: to be retried, not "stored".
    rig.docs.state_fails = True
    state = wire.GatewayState(state="online", ts=NOW, boot_id="b1")
    saved_later = quarantined(topics.up_state("gw-1"), wire.encode_message(state))
    assert rig.ingestor.replay(saved_later, NOW) == ("retry", "store_unavailable: disk full")
    assert rig.ingestor.replay(entry, NOW) == ("retry", "store_unavailable: disk full")


def test_a_replayed_entry_with_nothing_in_it_has_nothing_to_ingest(rig: Rig) -> None:
    empty = QuarantineEntry(
        received_ns=NOW, topic=topics.up_batch("gw-1"), reason="x", detail="", raw=b"", size=0
    )
    assert rig.ingestor.replay(empty, NOW) == ("still_invalid", "nothing to ingest in this message")


def test_after_a_replay_bad_messages_are_quarantined_again_as_usual(rig: Rig) -> None:
    rig.handle([msg(b"garbage", 1)])
    [entry] = rig.docs.quarantined()
    assert rig.ingestor.replay(entry, NOW)[0] == "still_invalid"
    rig.handle([msg(b"more garbage", 2)])
    assert len(rig.docs.quarantined()) == 2
    assert rig.ingestor.metrics.quarantined == 2


def test_a_replay_over_the_rate_limit_says_to_try_again_later(tmp_path: Path) -> None:
    r = Rig(tmp_path, readings_per_s=0.001, readings_burst=5)
    try:
        r.handle([msg(frame(1, n=5), 1)])  # the bucket is empty now
        good = frame(9, n=1)
        entry = QuarantineEntry(
            received_ns=NOW,
            topic=topics.up_batch("gw-1"),
            reason="oversized",
            detail="",
            raw=good,
            gateway_id="gw-1",
            properties={wire.PROP_STREAM: "s1", wire.PROP_SEQ: "9"},
            size=len(good),
        )
        assert r.ingestor.replay(entry, NOW) == ("retry", "rate_limited: try again later")
    finally:
        r.close()


def test_the_rate_limit_nack_asks_for_exactly_the_time_the_tokens_take(tmp_path: Path) -> None:
    r = Rig(tmp_path, readings_per_s=10, readings_burst=10)
    try:
        r.one(msg(frame(1, n=10), 1))
        nack = r.one(msg(frame(2, n=10), 2))
        assert isinstance(nack, wire.Nack)
        assert nack.retry_after_ms == 1000  # 10 readings at 10/s
    finally:
        r.close()
