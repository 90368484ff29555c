from __future__ import annotations

import base64
import os
import random
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wire
from agent import BufferError, Outbox
from agent._buffer import DROP_DISK_FULL, DROP_REJECTED, open_stats


class FakeClock:
    def __init__(self) -> None:
        self.boot_id = "boot-1"
        self.wall = 1_700_000_000 * 10**9
        self.mono = 1_000 * 10**9
        self.is_synced = True

    def wall_ns(self) -> int:
        return self.wall

    def mono_ns(self) -> int:
        return self.mono

    def synced(self) -> bool:
        return self.is_synced

    def advance(self, seconds: float) -> None:
        self.wall += int(seconds * 1e9)
        self.mono += int(seconds * 1e9)


def readings(n: int, start: int = 0, ts: int = 10**18, noise: bool = False) -> list[wire.Reading]:
    rng = random.Random(start)
    return [
        wire.Reading(
            measurement="m",
            tags={"d": str(i % 3)},
            fields={"n": i, "x": rng.random()} if noise else {"n": i},
            ts=ts + i,
        )
        for i in range(start, start + n)
    ]


def outbox(path: Path, clock: FakeClock | None = None, **kw: object) -> Outbox:
    defaults: dict[str, object] = {"max_bytes": 64 << 20, "batch_max_readings": 100}
    defaults.update(kw)
    return Outbox(path=path, gateway_id="gw-1", clock=clock or FakeClock(), **defaults).open()  # type: ignore[arg-type]


def decoded(b: object) -> wire.Batch:
    return wire.decode_batch(b.payload)  # type: ignore[attr-defined]


def test_readings_become_batches_in_order_and_survive_reopen(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    with outbox(db) as ob:
        ob.append(readings(250))
        stream = ob.stream_id
        b1, b2 = ob.form_batch(), ob.form_batch()
        assert b1 is not None
        assert b2 is not None
        assert (b1.seq, b1.readings, b2.seq) == (1, 100, 2)
    with outbox(db) as ob:  # reopened: same stream, counter continues, nothing lost
        assert ob.stream_id == stream
        b3 = ob.form_batch()
        assert b3 is not None
        assert b3.seq == 3
        assert b3.readings == 50
        assert ob.form_batch() is None
        got = [r.fields["n"] for b in ob.pick(10) for r in decoded(b).readings()]
        assert sorted(got) == list(range(250))
        assert decoded(b3).gateway_id == "gw-1"
        assert decoded(b3).stream_id == stream


def test_batches_are_deleted_only_on_ack_and_rejections_count_as_drops(tmp_path: Path) -> None:
    with outbox(tmp_path / "b.db") as ob:
        ob.append(readings(300))
        while ob.form_batch():
            pass
        assert ob.acknowledge(2) is True
        assert ob.acknowledge(2) is False  # a second ack of the same batch changes nothing
        assert ob.acknowledge(3, rejected=True) is True
        s = ob.stats()
        assert (s.batches, s.batch_readings) == (1, 100)
        assert s.drops == {DROP_REJECTED: 100}
        assert s.last_ack_ns is not None


def test_pick_sends_the_newest_first_and_drains_the_oldest(tmp_path: Path) -> None:
    with outbox(tmp_path / "b.db", batch_max_readings=10) as ob:
        ob.append(readings(100))
        while ob.form_batch():
            pass
        assert [b.seq for b in ob.pick(4)] == [10, 1, 9, 2]
        assert [b.seq for b in ob.pick(2, exclude={10, 1})] == [9, 2]
        assert ob.pick(0) == []


def test_a_clock_step_starts_a_new_batch_with_its_own_offset(tmp_path: Path) -> None:
    clock = FakeClock()
    clock.is_synced = False
    with outbox(tmp_path / "b.db", clock) as ob:
        ob.append(readings(5))
        clock.wall += 3600 * 10**9  # NTP sets the clock: wall − mono jumps by an hour
        clock.is_synced = True
        ob.append(readings(5, start=5))
        first, second = decoded(ob.form_batch()), decoded(ob.form_batch())
        assert first.reading_count == second.reading_count == 5
        assert second.clock.offset_ns - first.clock.offset_ns == 3600 * 10**9
        assert (first.clock.synced, second.clock.synced) == (False, True)
        assert first.boot_id == "boot-1"


def test_disk_bound_drops_oldest_batches_and_counts_every_reading(tmp_path: Path) -> None:
    bound = 256 * 1024
    with outbox(tmp_path / "b.db", max_bytes=bound, batch_max_readings=200) as ob:
        produced = 0
        for i in range(100):
            ob.append(readings(200, start=produced, ts=10**18 + i * 1000, noise=True))
            produced += 200
            ob.form_batch()
        s = ob.stats()
        assert ob.used_bytes() <= bound
        dropped = s.drops[DROP_DISK_FULL]
        assert dropped > 0
        assert s.backlog_readings + dropped == produced
        kept = sorted(r.fields["n"] for b in ob.pick(1000) for r in decoded(b).readings())
        assert kept[-1] == produced - 1, "the newest data is kept"
        assert kept == list(range(dropped, produced)), "exactly the oldest were dropped"


def test_migrations_are_recorded(tmp_path: Path) -> None:
    with outbox(tmp_path / "b.db"):
        pass
    conn = sqlite3.connect(tmp_path / "b.db")
    rows = conn.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
    assert rows == [("outpost-agent-buffer", "0001_initial")]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unusable_path_gives_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BufferError, match="cannot create the buffer"):
        Outbox(path=blocker / "b.db", gateway_id="g", clock=FakeClock(), max_bytes=1 << 20).open()
    assert blocker.read_text() == "x"


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a database" * 100)


def _truncated(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _zeroed_pages(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:8192] + bytes(16384) + data[24576:])


def _no_metadata(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DELETE FROM meta")
    conn.close()


@pytest.mark.parametrize(
    ("damage", "untouched"),
    [(_garbage, True), (_truncated, True), (_zeroed_pages, True), (_no_metadata, False)],
)
def test_a_corrupt_buffer_is_moved_aside_and_a_new_stream_starts(
    tmp_path: Path, damage: Callable[[Path], None], untouched: bool
) -> None:
    path = tmp_path / "b.db"
    with outbox(path) as ob:
        ob.append(readings(3000))
        assert ob.form_batch() is not None
        old_stream = ob.stream_id
    damage(path)
    damaged = path.read_bytes()
    old_umask = os.umask(0o022)  # a careless umask: the new buffer is still private
    try:
        with outbox(path) as ob:
            assert ob.stream_id != old_stream, "a new stream: its seq 1 is not a retransmit"
            assert "unreadable" in ob.reset
            kept = list(tmp_path.glob("b.db.corrupt-*"))
            assert [k.name for k in kept if not k.name.endswith(("-wal", "-shm"))] == [
                n for n in [kept[0].name] if n in ob.reset
            ]
            [aside] = [k for k in kept if k.name in ob.reset]
            # Kept as it was found (a file SQLite could open was opened: its header moved on).
            assert aside.read_bytes() == damaged if untouched else aside.stat().st_size > 0
            ob.append(readings(5))  # the new buffer works
            batch = ob.form_batch()
            assert batch is not None
            assert batch.seq == 1
            assert ob.stats().reset == ob.reset
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Opened again (a restart): the same buffer, still saying what happened.
    with outbox(path) as ob:
        assert ob.stats().backlog_readings == 5
        assert "unreadable" in ob.reset
        assert len(list(tmp_path.glob("b.db.corrupt-*[0-9Z]"))) == 1


def test_a_readonly_look_at_a_corrupt_buffer_says_what_happens_next(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    _garbage(path)
    with pytest.raises(BufferError, match="moves it aside"):
        open_stats(path)
    assert path.read_bytes() == b"not a database" * 100  # status changes nothing


def test_events_ride_in_batches(tmp_path: Path) -> None:
    with outbox(tmp_path / "b.db") as ob:
        ev = wire.Event(id="e1", type="offline", ts=5, source="cam", body={"why": "timeout"})
        ob.append([], [ev])
        b = decoded(ob.form_batch())
        assert b.events == [ev]
        assert b.series == []


def test_a_buffer_of_another_gateway_is_kept_aside_not_sent_under_the_new_id(
    tmp_path: Path,
) -> None:
    """Enrolled again into another tenant (a new gateway id): the old backlog stays behind."""
    path = tmp_path / "b.db"
    with outbox(path) as ob:  # gateway gw-1
        ob.append(readings(50))
        assert ob.form_batch() is not None
        ob.append(readings(7, start=50))
        old_stream = ob.stream_id
    moved = Outbox(path=path, gateway_id="gw-2", clock=FakeClock(), max_bytes=64 << 20).open()
    try:
        assert moved.stream_id != old_stream
        assert moved.stats().backlog_readings == 0, "nothing of gw-1 is sent as gw-2"
        assert "backlog of gateway gw-1" in moved.reset
        [aside] = [
            p for p in tmp_path.glob("b.db.other-gateway-*") if p.name[-4:] not in ("-wal", "-shm")
        ]
        assert aside.name in moved.reset
    finally:
        moved.close()
    with sqlite3.connect(aside) as conn:  # kept whole for inspection
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 7
        assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] >= 1
    # The same gateway again: its own buffer, kept.
    with Outbox(path=path, gateway_id="gw-2", clock=FakeClock(), max_bytes=64 << 20) as again:
        assert again.stream_id == moved.stream_id


def test_a_buffer_others_could_read_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with outbox(path) as ob:
        ob.append(readings(5))
    path.chmod(0o644)  # as an earlier version, or a careless copy, left it
    with outbox(path) as ob:
        assert ob.stats().backlog_readings == 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _accounted(ob: Outbox) -> tuple[int, int]:
    """Readings and events the buffer holds or counted as dropped (by the disk bound)."""
    s = ob.stats()
    batched_events = ob.conn.execute("SELECT coalesce(sum(events), 0) FROM batches").fetchone()[0]
    row = ob.conn.execute(
        "SELECT coalesce(sum(readings), 0), coalesce(sum(events), 0) FROM drops"
    ).fetchone()
    return s.backlog_readings + row[0], s.pending_events + batched_events + row[1]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("readings"), st.integers(1, 900)),
            st.tuples(st.just("events"), st.integers(1, 60)),
            st.tuples(st.just("batch"), st.just(0)),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_every_path_into_the_disk_bound_counts_what_it_drops(
    tmp_path: Path, ops: list[tuple[str, int]]
) -> None:
    """Readings pending or batched, events pending or batched: whichever the bound takes, what
    was appended is still held or counted (the bound is small: it is reached again and again)."""
    import uuid

    path = tmp_path / f"{uuid.uuid4().hex}.db"
    with outbox(path, max_bytes=256 * 1024, batch_max_readings=300) as ob:
        appended_r = appended_e = 0
        for kind, n in ops:
            if kind == "readings":
                ob.append(readings(n, start=appended_r, noise=True))
                appended_r += n
            elif kind == "events":
                body = {"detail": "x" * 2000}
                ob.append(
                    [],
                    [
                        wire.Event(id=f"e{appended_e + i}", type="t", ts=10**18, body=body)
                        for i in range(n)
                    ],
                )
                appended_e += n
            else:
                ob.form_batch()
            assert _accounted(ob) == (appended_r, appended_e), f"after {kind} {n}"
            assert ob.used_bytes() <= 256 * 1024 or kind == "batch"


# -- what mutation testing showed untested (scripts/mutation) ---------------------------------


def _batch_sizes(ob: Outbox) -> list[tuple[int, int, int, int]]:
    return ob.conn.execute(
        "SELECT seq, readings, events, length(payload) FROM batches ORDER BY seq"
    ).fetchall()


def _drops_row(ob: Outbox, reason: str) -> tuple[int, int]:
    row = ob.conn.execute("SELECT readings, events FROM drops WHERE reason = ?", (reason,))
    return tuple(row.fetchone() or (0, 0))  # type: ignore[return-value]


def test_the_disk_bound_drops_just_enough_of_the_oldest_batches(tmp_path: Path) -> None:
    with outbox(tmp_path / "b.db", batch_max_readings=50) as ob:
        for i in range(6):
            ob.append(readings(50, start=i * 50, noise=True))
            assert ob.form_batch() is not None
        sizes = _batch_sizes(ob)
        # Exactly the first batch's size: that batch alone frees enough.
        assert ob._drop_oldest(sizes[0][3]) == 50
        assert [s[0] for s in _batch_sizes(ob)] == [s[0] for s in sizes[1:]]
        # A little more than two batches: three go, the oldest three.
        over = sizes[1][3] + sizes[2][3] + 1
        assert ob._drop_oldest(over) == 150
        assert [s[0] for s in _batch_sizes(ob)] == [s[0] for s in sizes[4:]]
        assert _drops_row(ob, DROP_DISK_FULL) == (200, 0)


def test_batches_with_events_go_last_and_their_events_are_counted(tmp_path: Path) -> None:
    with outbox(tmp_path / "b.db", batch_max_readings=20) as ob:
        for i in range(4):
            ev = wire.Event(id=f"e{i}", type="offline", ts=5 + i, source="cam", body={})
            ob.append(readings(20, start=i * 20), [ev, wire.Event(id=f"f{i}", type="x", ts=6)])
            assert ob.form_batch() is not None
        sizes = _batch_sizes(ob)
        assert all(events == 2 for _, _, events, _ in sizes)
        assert ob._drop_oldest(sizes[0][3] + sizes[1][3]) == 40
        assert _drops_row(ob, DROP_DISK_FULL) == (40, 4)
        assert ob.stats().drops == {DROP_DISK_FULL: 44}  # status adds readings and events


def test_with_no_batches_the_oldest_pending_readings_are_dropped(tmp_path: Path) -> None:
    with outbox(tmp_path / "b.db") as ob:
        ob.append(readings(2500))
        assert ob._drop_oldest(1) == 2000  # the oldest 2,000 at a time
        left = ob.conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        assert left == 500
        batch = ob.form_batch(max_readings=1000)
        assert batch is not None
        assert sorted(r.fields["n"] for r in decoded(batch).readings()) == list(range(2000, 2500))
        assert _drops_row(ob, DROP_DISK_FULL) == (2000, 0)


def test_status_reads_what_the_buffer_holds_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    clock = FakeClock()
    with outbox(path, clock=clock) as ob:
        s = open_stats(path)
        assert (s.stream_id, s.uplink, s.reset, s.oldest_unsent_ns) == (
            ob.stream_id,
            "never connected",
            "",
            None,
        )
        ob.append(readings(30, ts=10**18))
        batch = ob.form_batch()
        assert batch is not None
        s = open_stats(path)
        assert s.oldest_unsent_ns == batch.created_ns  # only a batch waits: since it was made
        ob.append(readings(5, start=30, ts=clock.wall - 10**9))  # read a second before
        ob.set_uplink_state("connected")
        ob.acknowledge(999, rejected=True)  # not here: nothing counted
        s = open_stats(path)
        assert s == ob.stats()
        assert (s.pending_readings, s.batches, s.batch_readings) == (5, 1, 30)
        assert s.oldest_unsent_ns == clock.wall - 10**9 + 30  # the oldest pending reading
        assert s.uplink.startswith("connected since ")
        assert s.last_ack_ns == clock.wall
        assert s.drops == {}
        with sqlite3.connect(path) as other:
            pages = other.execute("PRAGMA page_count").fetchone()[0]
            page_size = other.execute("PRAGMA page_size").fetchone()[0]
        assert s.db_bytes == pages * page_size > 0
    before = sorted(p.name for p in tmp_path.iterdir())
    assert open_stats(path).backlog_readings == 35
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created or left


def test_status_before_the_agent_ever_ran_says_so_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(BufferError, match=r"b\.db: no buffer here yet; has the agent run"):
        open_stats(tmp_path / "b.db")
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_buffer_with_a_stale_journal_leaves_nothing_of_it_in_the_new_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged buffer with a -wal and -shm beside it (power lost mid-write): the new buffer
    starts clean, the damaged file is kept, and the log says where it went."""
    path = tmp_path / "b.db"
    _garbage(path)
    path.with_name("b.db-wal").write_bytes(b"old journal" * 100)
    path.with_name("b.db-shm").write_bytes(b"old index" * 100)
    with outbox(path) as fresh:
        assert "unreadable" in fresh.reset
        [aside] = [
            p for p in tmp_path.glob("b.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))
        ]
        assert aside.read_bytes() == b"not a database" * 100
        fresh.append(readings(3))
    with outbox(path) as again:
        assert again.stats().backlog_readings == 3
    assert "the buffer is corrupt" in caplog.text
    assert str(aside) in caplog.text


def test_a_buffer_of_another_gateway_is_named_so_in_the_log_and_only_the_latest_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "b.db"
    with outbox(path) as ob:
        ob.append(readings(40))
    for gateway in ("gw-2", "gw-3"):  # enrolled again, twice
        with Outbox(path=path, gateway_id=gateway, clock=FakeClock(), max_bytes=1 << 20) as ob:
            ob.append(readings(1))
    assert "the buffer is another gateway's" in caplog.text
    kept = [
        p for p in tmp_path.glob("b.db.other-gateway-*") if not p.name.endswith(("-wal", "-shm"))
    ]
    assert len(kept) == 1  # only the latest of each kind: it may be large
    with sqlite3.connect(kept[0]) as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 1  # gw-2's


@pytest.mark.parametrize(
    ("gateway", "words"), [("gw-1", "is corrupt"), ("gw-2", "is another gateway's")]
)
def test_a_buffer_that_cannot_be_moved_aside_says_why_and_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gateway: str, words: str
) -> None:
    path = tmp_path / "b.db"
    with outbox(path) as ob:
        ob.append(readings(3))
    if gateway == "gw-1":
        for journal in tmp_path.glob("b.db-*"):  # no journal to rebuild it from
            journal.unlink()
        _garbage(path)

    def refuse(self: Path, target: Path) -> Path:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "replace", refuse)
    with pytest.raises(BufferError, match=rf"b\.db: the buffer {words}.*cannot be moved aside"):
        Outbox(path=path, gateway_id=gateway, clock=FakeClock(), max_bytes=1 << 20).open()


def _noise(n: int, seed: int) -> str:
    """``n`` characters that do not compress (as a camera's snapshot in base64 would not)."""
    return base64.b64encode(random.Random(seed).randbytes(n * 3 // 4)).decode()[:n]


def test_a_batch_past_the_frame_limit_is_halved_until_it_fits(tmp_path: Path) -> None:
    """40 events of 60 KB that do not compress are 1.8 MB: more than one frame. They go in
    two batches of 20, each under the limit, every event once and in order."""
    events = [
        wire.Event(id=f"e{i}", type="snapshot", ts=10**18 + i, body={"jpeg": _noise(60_000, i)})
        for i in range(40)
    ]
    with outbox(tmp_path / "b.db", batch_max_readings=1000) as ob:
        ob.append([], events)
        formed = [ob.form_batch(), ob.form_batch(), ob.form_batch()]
        assert formed[2] is None
        sizes = [len(b.payload) for b in formed[:2]]  # type: ignore[union-attr]
        assert all(s <= wire.limits.MAX_FRAME_BYTES for s in sizes), sizes
        got = [decoded(b).events for b in formed[:2]]
        assert [len(g) for g in got] == [20, 20]
        assert [e.id for g in got for e in g] == [e.id for e in events]
        assert ob.stats().drops == {}


def test_a_batch_past_the_body_limit_is_halved_though_its_frame_is_small(tmp_path: Path) -> None:
    """1,000 readings of 4 KB that compress to almost nothing: a 4 MB body, past the 2 MiB
    the collector unpacks, in a frame of a few kilobytes. Halved by the body limit alone."""
    big = [
        wire.Reading(measurement="m", tags={}, fields={"s": "a" * 4096}, ts=10**18 + i)
        for i in range(1000)
    ]
    with outbox(tmp_path / "b.db", batch_max_readings=1000) as ob:
        ob.append(big)
        first, second = ob.form_batch(), ob.form_batch()
        assert first is not None
        assert second is not None
        assert len(first.payload) < wire.limits.MAX_FRAME_BYTES // 10
        assert (first.readings, second.readings) == (500, 500)
        assert decoded(first).reading_count == 500
        assert ob.form_batch() is None


def test_one_reading_larger_than_a_batch_is_dropped_and_counted(tmp_path: Path) -> None:
    """A reading of 130 fields of 16 KB that do not compress (2 MB) can never be delivered: it
    is counted as ``too_large``; what comes after it is sent."""
    huge = wire.Reading(
        measurement="m",
        tags={},
        fields={f"f{i}": _noise(16_384, i) for i in range(130)},
        ts=10**18,
    )
    with outbox(tmp_path / "b.db", batch_max_readings=1000) as ob:
        ob.append([huge])
        ob.append(readings(3, ts=10**18 + 1))
        assert ob.form_batch() is None  # the huge one, dropped
        assert ob.stats().drops == {"too_large": 1}
        after = ob.form_batch()
        assert after is not None
        assert decoded(after).reading_count == 3
        # Past the body limit alone (it compresses well): the collector would refuse it too.
        ob.append([huge.model_copy(update={"fields": {f"f{i}": "a" * 16_384 for i in range(200)}})])
        assert ob.form_batch() is None
        assert ob.stats().drops == {"too_large": 2}
