"""Ingest against hostile gateways: no message stops the collector or costs another gateway.

Property-based over every message kind a collector receives (batches, state, config reports,
renewals, unknown kinds and topics), then the specific poisons that stopped it before: values no
store can keep, timestamps at the end of time, clock stamps that overflow a correction, deep
nesting, floods of bad messages. After each, another gateway's good batch is still stored and
acked.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost_iot import wire
from outpost_iot.collector import Incoming, Ingestor, StoreUnavailable
from outpost_iot.collector.stores import SeriesWrite, SqliteDocumentStore, SqliteTimeSeriesStore
from outpost_iot.wire import limits, topics
from tests._fuzz import budget
from tests.collector.test_ingest import NOW, Env, frame, msg
from tests.wire.test_hostile_input import batch_like, body, control, json_values

_seq = itertools.count(1000)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One collector for every generated example (the examples use fresh sequence numbers)."""
    e = Env(tmp_path_factory.mktemp("hostile"), readings_per_s=1e9, readings_burst=1e9)
    yield e
    e.close()


def good(env: Env, gw: str = "gw-good") -> None:
    """A well-behaved gateway is stored and acked right after whatever came before."""
    seq = next(_seq)
    [reply] = env.ingestor.handle([msg(frame(seq, gw=gw), seq, gw=gw)])
    assert reply.message == wire.Ack(stream="s1", seq=seq, status="stored")


kinds = st.sampled_from(["batch", "state", "config", "renew", "other", "batch/x", ""])
props = st.dictionaries(
    st.sampled_from(
        [wire.PROP_STREAM, wire.PROP_SEQ, wire.PROP_BOOT, wire.PROP_SENT_MONO, wire.PROP_SENT_WALL]
    ),
    st.one_of(
        st.text(max_size=30),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.sampled_from(["1", str(2**63), str(2**64), "١٢", "0", "-1"]),
    ),
)
payloads = st.one_of(
    st.binary(max_size=300),
    batch_like.map(lambda v: wire.frame(body(v))),
    control.map(body),
    json_values.map(body),
)


@settings(
    max_examples=budget(250),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.tuples(kinds, props, payloads), min_size=1, max_size=5))
def test_any_group_of_messages_is_answered_and_nothing_else_is_disturbed(
    shared: Env, messages: list[tuple[str, dict[str, str], bytes]]
) -> None:
    incoming = [
        Incoming(f"{topics.ROOT}/gw-bad/up/{kind}", payload, p, NOW)
        for kind, p, payload in messages
    ]
    replies = shared.ingestor.handle(incoming)
    for reply in replies:
        wire.encode_message(reply.message)  # every answer can be sent
        assert reply.topic in (topics.down_ack("gw-bad"), topics.down_renew("gw-bad"))
    good(shared)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


def batch_frame(seq: int, *, gw: str = "gw-1", **changes: Any) -> bytes:
    b: dict[str, Any] = {
        "gw": gw,
        "stream": "s1",
        "boot": "b1",
        "seq": seq,
        "created": NOW,
        "clock": {"offset_ns": 0, "synced": True},
        "series": [{"m": "m", "t": {}, "p": [[NOW, {"v": 1}]]}],
        "events": [],
    }
    b.update(changes)
    return wire.frame(body(b))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"series": [{"m": "energy", "p": [[NOW, {"total": 2**64 - 1}]]}]}, "invalid_schema"),
        ({"series": [{"m": "m", "p": [[2**63 - 1, {"v": 1}]]}]}, "invalid_schema"),
        ({"series": [{"m": "m", "p": [[limits.TIME_MAX_NS, {"v": 1}]]}]}, "future_timestamp"),
        ({"events": [{"id": "e", "type": "t", "ts": NOW, "body": {"a": [[[[1]]]] * 3}}]}, None),
    ],
)
def test_poisoned_batches_are_quarantined_and_the_next_gateway_is_stored(
    env: Env, changes: dict[str, Any], reason: str | None
) -> None:
    [reply] = env.ingestor.handle([msg(batch_frame(1, **changes), 1)])
    if reason is None:
        assert reply.message == wire.Ack(stream="s1", seq=1, status="stored")
    else:
        assert reply.message == wire.Ack(stream="s1", seq=1, status="quarantined", reason=reason)
        [entry] = env.docs.quarantined()
        assert entry.reason == reason
        assert entry.raw  # kept for replay after a fix
    good(env)


def test_publish_properties_beyond_range_are_quarantined_without_an_answer(env: Env) -> None:
    for seq_text in (str(2**63), "0", "-5", "1" * 5000, "١"):
        props = {wire.PROP_STREAM: "s1", wire.PROP_SEQ: seq_text}
        replies = env.ingestor.handle([Incoming(topics.up_batch("gw-1"), b"x", props, NOW)])
        assert replies == []  # nothing to ack: no valid (stream, seq)
    long_stream = {wire.PROP_STREAM: "s" * 10_000, wire.PROP_SEQ: "1"}
    assert env.ingestor.handle([Incoming(topics.up_batch("gw-1"), b"x", long_stream, NOW)]) == []
    assert {e.reason for e in env.docs.quarantined()} == {"malformed"}
    good(env)


def test_clock_stamps_that_would_overflow_a_correction_are_ignored(env: Env) -> None:
    """Send stamps past the time range are not used: the batch itself is fine and stored with
    the gateway's own timestamps (before, the stamp reached the store as a 64-bit overflow)."""
    stamps = ((2**63, NOW), (10**19 - 1, NOW), (10**30, NOW), (0, 2**64))
    for seq, (mono, wall) in enumerate(stamps, start=1):
        props = {
            wire.PROP_BOOT: f"b{seq}",
            wire.PROP_SENT_MONO: str(mono),
            wire.PROP_SENT_WALL: str(wall),
        }
        [reply] = env.ingestor.handle([msg(frame(seq, boot=f"b{seq}"), seq, props=props)])
        assert reply.message == wire.Ack(stream="s1", seq=seq, status="stored")
    m = env.ingestor.metrics
    assert (m.contained, m.corrections_refused) == (0, 0), "the stamps were not even used"
    assert sorted(p.ts for p in env.ts.query("env")) == sorted(
        NOW + seq * 1000 + i for seq in (1, 2, 3, 4) for i in range(3)
    )
    assert env.docs.gateway("gw-1").clock_flagged is False  # type: ignore[union-attr]


def test_a_correction_that_leaves_the_time_range_is_not_applied(env: Env) -> None:
    """A boot's offset learned from sane stamps, then a batch claiming an absurd capture offset:
    the correction would put its readings before 1970, so they are kept as the gateway sent them."""
    props = {wire.PROP_BOOT: "b1", wire.PROP_SENT_MONO: str(10**9), wire.PROP_SENT_WALL: str(NOW)}
    [reply] = env.ingestor.handle([msg(frame(1, offset=limits.OFFSET_MAX_NS), 1, props=props)])
    assert reply.message == wire.Ack(stream="s1", seq=1, status="stored")
    assert [p.ts for p in env.ts.query("env")] == [NOW + 1000 + i for i in range(3)]
    assert env.ingestor.metrics.corrections_refused == 3


def test_state_and_config_reports_out_of_range_are_quarantined(env: Env) -> None:
    bad = [
        (topics.up_state("gw-1"), {"state": "online", "ts": 10**30, "boot_id": "b"}),
        (
            topics.up_state("gw-1"),
            {"state": "online", "ts": 1, "boot_id": "b", "drops": {"x": 2**64}},
        ),
        (
            topics.up_config("gw-1"),
            {"version": 2**63, "status": "applied", "applied_version": 1, "ts": 1},
        ),
        (topics.up_renew("gw-1"), {"request_id": "r" * 65, "csr": "x"}),
    ]
    assert env.ingestor.handle([Incoming(t, body(m), {}, NOW) for t, m in bad]) == []
    assert [e.reason for e in env.docs.quarantined()] == ["invalid_schema"] * 4
    good(env)


def test_a_newline_in_a_config_report_cannot_forge_a_log_line(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    report = wire.ConfigReport(
        version=3,
        status="rejected",
        applied_version=2,
        reason="invalid",
        errors=["devices.0: bad\n2026-01-01 00:00:00 ERROR outpost: forged line"],
        ts=NOW,
    )
    with caplog.at_level(logging.INFO):
        env.ingestor.handle(
            [Incoming(topics.up_config("gw-1"), wire.encode_message(report), {}, NOW)]
        )
    [record] = [r for r in caplog.records if "config 3" in r.getMessage()]
    line = wire.SafeFormatter("%(message)s").format(record)
    assert "\n" not in line
    assert "bad\\n2026-01-01" in line


class Unstorable(SqliteTimeSeriesStore):
    """A store that cannot take one value (what a backend's own limit looks like)."""

    def write(self, series: Any) -> None:
        for s in series:
            for _ts, fields in s.points:
                if fields.get("t") == 13.0:
                    raise OverflowError("Python int too large to convert to SQLite INTEGER")
        super().write(series)


def test_a_batch_no_store_can_take_is_quarantined_and_its_group_is_stored(tmp_path: Path) -> None:
    e = Env(tmp_path)
    e.ts.close()
    e.ts = Unstorable(e.cfg.stores.timeseries_path)
    e.ingestor = Ingestor(config=e.cfg, timeseries=e.ts, documents=e.docs, monotonic=lambda: 0.0)
    try:
        poisoned = msg(frame(7, n=14), 7)  # its readings hold t = 0.0 .. 13.0
        replies = e.ingestor.handle([msg(frame(5), 5), poisoned, msg(frame(9), 9)])
        assert {r.message.seq: r.message.status for r in replies} == {  # type: ignore[union-attr]
            5: "stored",
            7: "quarantined",
            9: "stored",
        }
        [entry] = e.docs.quarantined()
        assert (entry.reason, entry.raw) == ("unstorable", poisoned.payload)
        assert "OverflowError" in entry.detail
        assert e.ingestor.metrics.contained == 1
        assert e.ts.count_points("env") == 6
    finally:
        e.close()


def test_an_error_in_our_own_code_quarantines_that_message_only(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = env.ingestor._state

    def broken(m: Incoming, gateway_id: str) -> None:
        if gateway_id == "gw-1":
            raise RuntimeError("a bug in state handling")
        original(m, gateway_id)

    monkeypatch.setattr(env.ingestor, "_state", broken)
    state = wire.encode_message(wire.GatewayState(state="online", ts=NOW, boot_id="b"))
    replies = env.ingestor.handle(
        [
            Incoming(topics.up_state("gw-1"), state, {}, NOW),
            msg(frame(1, gw="gw-2"), 1, gw="gw-2"),
            Incoming(topics.up_state("gw-3"), state, {}, NOW),
        ]
    )
    assert [r.message.status for r in replies] == ["stored"]  # type: ignore[union-attr]
    [entry] = env.docs.quarantined()
    assert (entry.reason, entry.gateway_id) == ("internal_error", "gw-1")
    assert "a bug in state handling" in entry.detail
    assert env.docs.gateway("gw-3").state == "online"  # type: ignore[union-attr]


def test_a_bug_in_a_batch_that_cannot_be_quarantined_is_nacked_to_come_again(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch that met the bug must not be acked ``quarantined`` (the gateway would delete
    it) when the quarantine could not keep it: it is nacked, to be sent again. A batch with no
    stream and seq gets no answer, and the round goes on."""

    original = env.ingestor._batch

    def broken(m: Incoming, gateway_id: str, *rest: Any) -> int:
        if gateway_id == "gw-1":
            raise RuntimeError("a bug in batch handling")
        return original(m, gateway_id, *rest)

    def no_room(entry: object) -> None:
        raise StoreUnavailable("the document store is down")

    monkeypatch.setattr(env.ingestor, "_batch", broken)
    monkeypatch.setattr(env.docs, "quarantine", no_room)
    [reply] = env.ingestor.handle([msg(frame(4), 4)])
    assert reply.topic == topics.down_ack("gw-1")
    assert isinstance(reply.message, wire.Nack)
    assert (reply.message.seq, reply.message.reason) == (4, "store_unavailable")
    nameless = Incoming(topics.up_batch("gw-1"), frame(5), {}, NOW)
    assert env.ingestor.handle([nameless]) == []
    assert env.ingestor.metrics.contained == 2
    # A quarantine that fails with a bug of its own: the same answer, and the rest of the
    # group is still stored and acked.
    monkeypatch.setattr(env.docs, "quarantine", lambda entry: 1 / 0)
    replies = env.ingestor.handle([msg(frame(6), 6), msg(frame(1, gw="gw-2"), 1, gw="gw-2")])
    answers = {(r.topic, r.message.seq, type(r.message).__name__) for r in replies}
    assert answers == {(topics.down_ack("gw-1"), 6, "Nack"), (topics.down_ack("gw-2"), 1, "Ack")}
    assert env.ts.count_points("env") == 3  # gw-2's batch


def test_a_bug_while_handling_a_batch_still_answers_that_batch(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway whose batch met the bug gets an answer on its own ack topic (else it would
    send the batch again at every ack timeout, forever); nobody else is touched."""
    original = env.ingestor._batch

    def broken(m: Incoming, gateway_id: str, *rest: Any) -> int:
        if gateway_id == "gw-1":
            raise RuntimeError("a bug in batch handling")
        return original(m, gateway_id, *rest)

    monkeypatch.setattr(env.ingestor, "_batch", broken)
    replies = env.ingestor.handle([msg(frame(4), 4), msg(frame(1, gw="gw-2"), 1, gw="gw-2")])
    answers = {(r.topic, r.message.seq, r.message.status) for r in replies}  # type: ignore[union-attr]
    assert answers == {
        (topics.down_ack("gw-1"), 4, "quarantined"),
        (topics.down_ack("gw-2"), 1, "stored"),
    }
    assert env.ingestor.metrics.contained == 1
    [entry] = env.docs.quarantined()
    assert (entry.reason, entry.gateway_id) == ("internal_error", "gw-1")
    assert "RuntimeError: a bug in batch handling" in entry.detail
    assert "a message from gateway gw-1 on" in caplog.text
    assert "RuntimeError: a bug in batch handling" in caplog.text
    [logged] = [r for r in caplog.records if "could not be handled" in r.getMessage()]
    assert logged.exc_info is not None  # the traceback, to find the bug
    # Only a batch is answered: a bug on another kind of message from the same gateway gets
    # no ack (there is no batch to acknowledge), and is counted again.
    monkeypatch.setattr(env.ingestor, "_state", lambda m, g: broken(m, "gw-1"))
    state = wire.encode_message(wire.GatewayState(state="online", ts=NOW, boot_id="b"))
    assert env.ingestor.handle([Incoming(topics.up_state("gw-1"), state, {}, NOW)]) == []
    assert env.ingestor.metrics.contained == 2


def test_quarantine_is_bounded_per_gateway_and_charged_to_its_rate_limit(tmp_path: Path) -> None:
    e = Env(
        tmp_path, quarantine_entries=5, quarantine_bytes=3000, bytes_burst=20_000, bytes_per_s=1
    )
    try:
        garbage = [msg(b"\x00" * 1000, seq, gw="gw-bad") for seq in range(1, 31)]
        replies = e.ingestor.handle(garbage)
        kept = e.docs.quarantined(gateway_id="gw-bad")
        assert len(kept) == 5, "past the entry budget, bad messages are counted, not kept"
        assert sum(len(q.raw) for q in kept) <= 3000, "raw bytes past the byte budget not kept"
        assert [q.size for q in kept] == [1000] * 5  # the size as received is always recorded
        assert any("budget" in q.detail for q in kept)
        m = e.ingestor.metrics
        assert m.dropped["quarantine_full"] > 0
        # 20 kB of burst at 1 byte/s: the flood runs into the gateway's own rate limit.
        assert m.dropped["rate_limited"] > 0
        # Every message is accounted for once: kept, or dropped with one reason.
        assert len(kept) + m.dropped["quarantine_full"] + m.dropped["rate_limited"] == 30
        statuses = {type(r.message).__name__ for r in replies}
        assert statuses == {"Ack", "Nack"}
        assert all(
            r.message.reason == "rate_limited" for r in replies if isinstance(r.message, wire.Nack)
        )
        # Another gateway has its own budget and its own limit.
        good(e, "gw-other")
    finally:
        e.close()


def test_a_group_of_large_batches_is_stored_in_parts(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import outpost_iot.collector._ingest as ingest_module

    writes: list[int] = []
    original = env.ts.write

    def counting(series: list[SeriesWrite]) -> None:
        writes.append(sum(len(s.points) for s in series))
        original(series)

    monkeypatch.setattr(ingest_module, "_GROUP_UNITS", 25)
    monkeypatch.setattr(env.ts, "write", counting)
    replies = env.ingestor.handle([msg(frame(s, n=10), s) for s in range(1, 7)])
    assert [r.message.status for r in replies] == ["stored"] * 6  # type: ignore[union-attr]
    assert writes == [30, 30], "stored in parts once 25 readings were held"


def test_rollups_and_expiry_survive_values_at_every_limit(tmp_path: Path) -> None:
    """Timestamps at the end of the range and int64 values whose sums overflow int64 cannot
    stop maintenance (it ran at every start and failed before)."""
    ts = SqliteTimeSeriesStore(tmp_path / "ts.db")
    try:
        end = limits.TIME_MAX_NS
        ts.write(
            [
                SeriesWrite(
                    "m",
                    {"gateway": "g"},
                    [(end - 1, {"big": limits.INT64_MAX}), (end, {"big": limits.INT64_MAX})],
                    "t",
                ),
                SeriesWrite("m", {"gateway": "g"}, [(0, {"big": limits.INT64_MIN})], "t"),
            ]
        )
        assert ts.refresh_rollups(end) >= 2
        ts.expire(raw_before_ns=1, rollup_5m_before_ns=1, rollup_1h_before_ns=1)
        from outpost_iot.collector.stores import SeriesQuery

        [group] = ts.aggregate(
            SeriesQuery(
                tenant="t",
                measurement="m",
                field="big",
                start_ns=end - 3600 * 10**9 - (end % (3600 * 10**9)),
                end_ns=end + 1,  # the last point is at the very end
                bucket_ns=3600 * 10**9,
                aggregate="sum",
            )
        )
        [(_, total)] = group.points
        assert total == pytest.approx(2.0 * limits.INT64_MAX)
    finally:
        ts.close()


def test_documents_store_is_private_whatever_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        docs = SqliteDocumentStore(tmp_path / "d" / "docs.db")
        docs.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d" / "docs.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700


def test_a_group_of_two_stores_the_good_one_and_refunds_the_unstorable(tmp_path: Path) -> None:
    """Even a group of two is retried batch by batch; the unstorable batch's readings are given
    back to the gateway's rate limit (only its quarantine entry costs)."""
    e = Env(tmp_path, readings_per_s=0.001, readings_burst=20)
    e.ts.close()
    e.ts = Unstorable(e.cfg.stores.timeseries_path)
    e.ingestor = Ingestor(config=e.cfg, timeseries=e.ts, documents=e.docs, monotonic=lambda: 0.0)
    try:
        replies = e.ingestor.handle([msg(frame(5), 5), msg(frame(7, n=14), 7)])
        assert {r.message.seq: r.message.status for r in replies} == {  # type: ignore[union-attr]
            5: "stored",
            7: "quarantined",
        }
        assert e.ingestor.metrics.contained == 1
        # 20 − 3 stored − 1 for the quarantine entry: 16 readings may come at once (13 here,
        # which 20 − 17 − 1 would refuse).
        [reply] = e.ingestor.handle([msg(frame(8, n=13), 8)])
        assert reply.message.status == "stored"  # type: ignore[union-attr]
    finally:
        e.close()


def _corrected(env: Env, seq: int, delta: int) -> Incoming:
    """Batch ``seq`` from a boot whose live stamps make the collector correct it by ``delta``."""
    mono = 10**9
    props = {wire.PROP_BOOT: "b1", wire.PROP_SENT_MONO: str(mono), wire.PROP_SENT_WALL: str(NOW)}
    return msg(frame(seq, offset=NOW - mono - delta, synced=False), seq, props=props)


def test_corrections_to_the_exact_ends_of_the_time_range(env: Env) -> None:
    """A correction may put a reading at 0 or at the last nanosecond of the range, not past."""
    lo = NOW + 1000  # batch 1's first reading
    [r] = env.ingestor.handle([_corrected(env, 1, -lo)])
    assert r.message.status == "stored"  # type: ignore[union-attr]
    assert sorted(p.ts for p in env.ts.query("env")) == [0, 1, 2]
    assert env.ingestor.metrics.corrections_refused == 0
    hi = NOW + 2000 + 2  # batch 2's last reading
    [r] = env.ingestor.handle([_corrected(env, 2, limits.TIME_MAX_NS - hi)])
    # Corrected to the end of time: in range, so applied, and then far in the future.
    assert r.message.status == "quarantined"  # type: ignore[union-attr]
    assert r.message.reason == "future_timestamp"  # type: ignore[union-attr]
    [r] = env.ingestor.handle([_corrected(env, 3, limits.TIME_MAX_NS - (NOW + 3002) + 1)])
    assert r.message.status == "stored"  # type: ignore[union-attr]  # as sent
    [r] = env.ingestor.handle([_corrected(env, 4, -(NOW + 4000) - 1)])
    assert r.message.status == "stored"  # type: ignore[union-attr]  # as sent
    assert env.ingestor.metrics.corrections_refused == 6
    assert env.ingestor.metrics.readings_corrected == 3


def test_the_quarantine_counts_and_cuts_what_it_keeps(tmp_path: Path) -> None:
    raw = [frame(1)[:-3] + b"bad", frame(2)[:-4] + b"bad!"]
    e = Env(tmp_path, quarantine_bytes=len(raw[0]) + len(raw[1]))
    try:
        for i, payload in enumerate(raw, 1):
            e.ingestor.handle([msg(payload, i)])
        e.ingestor.handle([msg(b"one byte too many", 3)])
        e.ingestor.handle([msg(b"and another", 4)])
        entries = e.docs.quarantined()
        assert sorted(q.raw for q in entries) == sorted([b"", b"", *raw])  # exactly the budget
        [cut, _] = [q for q in entries if not q.raw]
        assert cut.detail.startswith("not an Outpost batch frame")  # what was wrong comes first
        assert cut.detail.endswith(" bytes is used)")
        assert e.ingestor.metrics.quarantined == 4
        assert e.ingestor.metrics.quarantine_bytes_not_kept == len(b"one byte too many") + len(
            b"and another"
        )
    finally:
        e.close()


def test_a_long_detail_is_cut_to_a_thousand_characters(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(m: Incoming, gateway_id: str) -> None:
        raise RuntimeError("x" * 5000)

    monkeypatch.setattr(env.ingestor, "_state", broken)
    state = wire.encode_message(wire.GatewayState(state="online", ts=NOW, boot_id="b"))
    env.ingestor.handle([Incoming(topics.up_state("gw-1"), state, {}, NOW)])
    [entry] = env.docs.quarantined()
    assert entry.detail == "RuntimeError: " + "x" * 986 + "… (4014 more characters)"
