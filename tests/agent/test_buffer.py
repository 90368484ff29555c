from __future__ import annotations

import base64
import calendar
import os
import random
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost_iot import wire
from outpost_iot.agent import BufferError, Outbox
from outpost_iot.agent._buffer import DROP_DISK_FULL, DROP_REJECTED, open_stats
from tests._fuzz import budget


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


@pytest.mark.parametrize(("durability", "synchronous"), [("full", 2), ("normal", 1)])
def test_the_buffer_runs_with_the_settings_its_guarantees_need(
    tmp_path: Path, durability: str, synchronous: int
) -> None:
    """``durability = "full"`` survives power loss (SQLite syncs every commit, FULL = 2);
    ``"normal"`` only a crash of the agent (NORMAL = 1). WAL, space given back in steps, and a
    write-ahead log truncated to 4 MiB keep the file within the disk bound."""
    with outbox(tmp_path / "b.db", durability=durability) as ob:
        pragma = {
            name: ob.conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("synchronous", "journal_mode", "auto_vacuum", "journal_size_limit")
        }
        assert pragma == {
            "synchronous": synchronous,
            "journal_mode": "wal",
            "auto_vacuum": 2,  # INCREMENTAL
            "journal_size_limit": 4 * 1024 * 1024,
        }
        # The writer waits for a reader's lock (`outpost-agent status`) instead of failing.
        assert ob.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


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
    tmp_path: Path,
    damage: Callable[[Path], None],
    untouched: bool,
    caplog: pytest.LogCaptureFixture,
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
            # What SQLite found is said (the first problems it lists, or the missing part).
            assert ob.reset.split("unreadable (", 1)[1].split(")", 1)[0] == {
                _garbage: "file is not a database",
                _no_metadata: f"{path}: buffer metadata 'stream_id' is missing",
            }.get(damage, ob.reset.split("unreadable (", 1)[1].split(")", 1)[0])
            # The log says it too, under the buffer's logger.
            found = ob.reset.split("unreadable (", 1)[1].split("); kept as", 1)[0]
            [line] = [r for r in caplog.records if "moved to" in r.getMessage()]
            assert line.name == "outpost.agent.buffer"
            assert f"{path}: the buffer is corrupt ({found}); moved to" in line.getMessage()
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


def test_the_times_the_buffer_writes_down_are_utc_whatever_the_local_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The aside file's name, the reset note and the uplink's "since" say Z: they are UTC on a
    gateway set to any zone (14 hours ahead here), or a technician comparing them with the
    collector's times is misled."""
    monkeypatch.setenv("TZ", "XXX-14")
    time.tzset()
    try:
        path = tmp_path / "b.db"
        path.write_bytes(b"not a database" * 100)
        now = time.time()
        with outbox(path) as ob:
            [aside] = tmp_path.glob("b.db.corrupt-*")
            stamps = [
                (aside.name.rsplit("-", 1)[1], "%Y%m%dT%H%M%SZ"),
                (ob.reset.split(": ", 1)[0], "%Y-%m-%dT%H:%M:%SZ"),
            ]
            ob.set_uplink_state("connected")
            since = ob.stats().uplink.removeprefix("connected since ")
            stamps.append((since, "%Y-%m-%dT%H:%M:%SZ"))
        for text, form in stamps:
            parsed = calendar.timegm(time.strptime(text, form))
            assert abs(parsed - now) < 600, f"{text} is not UTC (now {time.gmtime(now)})"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_buffer_that_cannot_be_written_says_which_and_what(tmp_path: Path) -> None:
    with outbox(tmp_path / "b.db") as ob:
        ob.append(readings(5000, noise=True))
        ob.max_bytes = 4096  # now over its bound
        ob.conn.execute("DROP TABLE drops")  # where the drop would be counted
        with pytest.raises(BufferError, match=r"b\.db: cannot drop old data: no such table"):
            ob.enforce_bound()
        assert ob.conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 5000
        ob.conn.close()  # as good as a disk that went away
        with pytest.raises(BufferError, match=r"b\.db: cannot record uplink state: .*closed"):
            ob.set_uplink_state("connected")


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
        assert ob._drop_oldest(sizes[0][3]) == (50, 0)
        assert [s[0] for s in _batch_sizes(ob)] == [s[0] for s in sizes[1:]]
        # A little more than two batches: three go, the oldest three.
        over = sizes[1][3] + sizes[2][3] + 1
        assert ob._drop_oldest(over) == (150, 0)
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
        assert ob._drop_oldest(sizes[0][3] + sizes[1][3]) == (40, 4)
        assert _drops_row(ob, DROP_DISK_FULL) == (40, 4)
        assert ob.stats().drops == {DROP_DISK_FULL: 44}  # status adds readings and events


def test_with_no_batches_the_oldest_pending_readings_are_dropped(tmp_path: Path) -> None:
    with outbox(tmp_path / "b.db") as ob:
        ob.append(readings(2500))
        assert ob._drop_oldest(1) == (2000, 0)  # the oldest 2,000 at a time
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
    assert (
        "the buffer is another gateway's (it holds the backlog of gateway gw-1, and this gateway"
        " is now gw-2)" in caplog.text
    )
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


# -- from the survivors of mutation testing (scripts/mutation, docs/reliability.md) ------------


def test_readings_of_several_series_in_one_append_keep_their_own_tags(tmp_path: Path) -> None:
    written = [
        wire.Reading(measurement=m, tags=t, fields={"v": i}, ts=10**18 + i)
        for i, (m, t) in enumerate(
            [("env", {"d": "1"}), ("env", {"d": "2"}), ("power", {"d": "1"}), ("env", {})]
        )
    ]
    with outbox(tmp_path / "b.db") as ob:
        ob.append(written)
        batch = ob.form_batch()
        assert batch is not None
        back = sorted(decoded(batch).readings(), key=lambda r: r.ts)
        assert [(r.measurement, r.tags, r.fields) for r in back] == [
            (r.measurement, r.tags, r.fields) for r in written
        ]


def test_drops_alone_are_recorded_by_reason_and_nothing_of_zero(tmp_path: Path) -> None:
    """A poll whose every reading was refused hands over drops and nothing else; reasons of
    readings and of events add up per reason."""
    with outbox(tmp_path / "b.db") as ob:
        ob.append([], drops={"invalid_reading": 1, "invalid_event": 2, "timeout": 0})
        ob.append([], drops={"invalid_reading": 3})
        assert ob.stats().drops == {"invalid_reading": 4, "invalid_event": 2}
        ob.append([])  # nothing at all: nothing written
        assert ob.stats().drops == {"invalid_reading": 4, "invalid_event": 2}


def test_a_batch_carries_at_most_a_tenth_as_many_events_as_readings(tmp_path: Path) -> None:
    events = [wire.Event(id=f"e{i}", type="t", ts=10**18 + i) for i in range(3)]
    for limit, per_batch in ((10, [1, 1, 1]), (15, [1, 1, 1]), (20, [2, 1])):
        with outbox(tmp_path / f"b{limit}.db", batch_max_readings=limit) as ob:
            ob.append([], events)
            formed = []
            while (batch := ob.form_batch()) is not None:
                formed.append(batch.events)
                assert decoded(batch).events == events[sum(formed) - batch.events : sum(formed)]
            assert formed == per_batch, limit


def _formed_twice(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fill: Callable[[Outbox], None],
    limit: Callable[[bytes], tuple[str, int]],
) -> list[object]:
    """Fill a buffer and copy it; form a batch from the first copy to learn its size, then set
    the limit to exactly that size (``limit(payload)`` names it) and form from the second."""
    import shutil

    with outbox(tmp_path / "a.db") as ob:
        fill(ob)
    for suffix in ("", "-wal", "-shm"):
        if (tmp_path / f"a.db{suffix}").exists():
            shutil.copy(tmp_path / f"a.db{suffix}", tmp_path / f"b.db{suffix}")
    with outbox(tmp_path / "a.db") as ob:
        first = ob.form_batch()
        assert first is not None
    name, value = limit(first.payload)
    monkeypatch.setattr(f"outpost_iot.agent._buffer.{name}", value)
    with outbox(tmp_path / "b.db") as ob:
        formed: list[object] = []
        while (batch := ob.form_batch()) is not None:
            formed.append(batch)
        assert ob.stats().drops == {}
        return formed


def _body_len(payload: bytes) -> int:
    import zlib

    return len(zlib.decompress(payload[5:]))


@pytest.mark.parametrize(
    ("name", "size"),
    [("MAX_FRAME_BYTES", len), ("MAX_BODY_BYTES", _body_len)],
    ids=["frame", "body"],
)
@pytest.mark.parametrize("n", [1, 50], ids=["one reading", "fifty readings"])
def test_a_batch_of_exactly_a_limit_is_formed_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, size: Callable[[bytes], int], n: int
) -> None:
    """The collector admits a frame and a body of exactly their limits: the agent neither
    splits nor drops a batch that size."""
    formed = _formed_twice(
        tmp_path,
        monkeypatch,
        lambda ob: ob.append(readings(n, noise=True)),
        lambda payload: (name, size(payload)),
    )
    assert [b.readings for b in formed] == [n]  # type: ignore[attr-defined]


def test_a_reading_and_an_event_too_large_together_go_one_by_one_the_reading_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = wire.Event(id="e", type="t", ts=10**18, body={"x": _noise(2000, 1)})

    def fill(ob: Outbox) -> None:
        ob.append(readings(1, noise=True), [event])

    formed = _formed_twice(
        tmp_path, monkeypatch, fill, lambda payload: ("MAX_FRAME_BYTES", len(payload) - 1)
    )
    assert [(b.readings, b.events) for b in formed] == [(1, 0), (0, 1)]  # type: ignore[attr-defined]


@settings(
    max_examples=budget(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    total=st.integers(0, 30),
    excluded=st.sets(st.integers(1, 30), max_size=10),
    count=st.integers(0, 35),
)
def test_pick_alternates_newest_and_oldest_of_what_is_not_in_flight(
    tmp_path_factory: pytest.TempPathFactory, total: int, excluded: set[int], count: int
) -> None:
    path = tmp_path_factory.mktemp("pick") / "b.db"
    with outbox(path, batch_max_readings=1) as ob:
        ob.append(readings(total))
        while ob.form_batch():
            pass
        available = [s for s in range(1, total + 1) if s not in excluded]
        want: list[int] = []
        low, high = 0, len(available) - 1
        while low <= high and len(want) < count:
            want.append(available[high])
            high -= 1
            if low <= high and len(want) < count:
                want.append(available[low])
                low += 1
        assert [b.seq for b in ob.pick(count, exclude=excluded)] == want


def test_an_ack_the_buffer_cannot_record_says_which_batch(tmp_path: Path) -> None:
    with outbox(tmp_path / "b.db") as ob:
        ob.append(readings(3))
        assert ob.form_batch() is not None
        ob.conn.execute("DROP TABLE meta")  # where the last ack's time goes
        with pytest.raises(
            BufferError, match=r"b\.db: cannot record ack of batch 1: no such table"
        ):
            ob.acknowledge(1)
        assert [b.seq for b in ob.pick(5)] == [1]  # still there: it goes again
        ob.append(readings(2))
        with pytest.raises(BufferError, match=r"b\.db: cannot form a batch: no such table: meta"):
            ob.form_batch()
        assert ob.conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 2


def _batches(ob: Outbox) -> list[wire.Batch]:
    out = []
    while (batch := ob.form_batch()) is not None:
        out.append(decoded(batch))
    return out


def test_one_clock_epoch_is_one_batch_across_appends_and_restarts(tmp_path: Path) -> None:
    """Readings of one boot with a steady clock form one batch, whoever appended them and
    whether the agent restarted in between; its clock offset is the wall clock minus the
    monotonic one, exactly."""
    clock = FakeClock()
    with outbox(tmp_path / "b.db", clock) as ob:
        assert ob.reset == ""  # a new buffer was not reset
        ob.append(readings(2))
        ob.append(readings(2, start=2))
    clock.advance(10)
    with outbox(tmp_path / "b.db", clock) as ob:  # restarted
        ob.append(readings(2, start=4))
        [batch] = _batches(ob)
        assert batch.reading_count == 6
        assert batch.clock.offset_ns == clock.wall - clock.mono
        assert (batch.clock.synced, batch.boot_id) == (True, "boot-1")


@pytest.mark.parametrize(
    ("change", "split"),
    [
        ("step", False),  # the wall clock stepped by exactly the jump: the same epoch
        ("step+1", True),  # one nanosecond more: a new one
        ("synced", True),  # the time service says synchronized now, no step
        ("boot", True),  # rebooted, the same offset by chance
    ],
)
def test_each_clock_change_alone_starts_a_new_epoch(
    tmp_path: Path, change: str, split: bool
) -> None:
    from outpost_iot.agent._clock import EPOCH_JUMP_NS

    clock = FakeClock()
    with outbox(tmp_path / "b.db", clock) as ob:
        ob.append(readings(2))
        if change.startswith("step"):
            clock.wall += EPOCH_JUMP_NS + (1 if change == "step+1" else 0)
        elif change == "synced":
            clock.is_synced = False
        else:
            clock.boot_id = "boot-2"
        ob.append(readings(2, start=2))
        assert [b.reading_count for b in _batches(ob)] == ([2, 2] if split else [4])


def test_a_closed_buffer_says_so(tmp_path: Path) -> None:
    never = Outbox(path=tmp_path / "n.db", gateway_id="gw-1", clock=FakeClock(), max_bytes=1 << 20)
    with pytest.raises(BufferError, match=r"n\.db: the buffer is not open"):
        never.append(readings(1))
    ob = outbox(tmp_path / "b.db")
    ob.close()
    with pytest.raises(BufferError, match=r"b\.db: the buffer is not open"):
        ob.append(readings(1))


def test_a_new_buffer_that_is_corrupt_too_is_an_error_not_a_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from outpost_iot.agent import _buffer

    path = tmp_path / "b.db"
    _garbage(path)

    def corrupt(self: Outbox) -> sqlite3.Connection:
        raise _buffer._Corrupt("database disk image is malformed")

    monkeypatch.setattr(Outbox, "_connect", corrupt)
    with pytest.raises(BufferError) as caught:
        outbox(path)
    assert str(caught.value) == (
        f"{path}: a new buffer is corrupt too: database disk image is malformed"
    )


def test_the_disk_bound_is_met_exactly_and_what_was_dropped_is_what_it_says(
    tmp_path: Path,
) -> None:
    with outbox(tmp_path / "b.db", max_bytes=64 << 20, batch_max_readings=100) as ob:
        for i in range(100):
            ob.append(readings(100, start=i * 100, noise=True))
            ob.form_batch()
        used = ob.used_bytes()
        ob.max_bytes = used  # exactly at the bound: nothing to drop
        assert ob.enforce_bound() == 0
        assert ob.stats().drops == {}
        ob.max_bytes = used - 1  # a byte over: something goes
        first = ob.enforce_bound()
        assert first > 0
        # Far over: several rounds, each counted; what it returns is what was counted.
        ob.max_bytes = used // 2
        total = first + ob.enforce_bound()
        assert ob.stats().drops == {DROP_DISK_FULL: total}
        assert ob.used_bytes() <= ob.max_bytes


def test_space_freed_by_the_bound_is_given_back_to_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with outbox(path, max_bytes=64 << 20, batch_max_readings=200) as ob:
        for i in range(40):
            ob.append(readings(200, start=i * 200, noise=True))
            ob.form_batch()
        ob.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        big = path.stat().st_size
        ob.max_bytes = big // 8
        ob.enforce_bound()
        ob.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # The file itself shrinks (an SD card's space back), not only its free list.
        assert path.stat().st_size <= big // 4, (big, path.stat().st_size)


def test_a_bound_below_what_the_empty_tables_take_drops_everything_once_and_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with outbox(tmp_path / "b.db", max_bytes=64 << 20, batch_max_readings=100) as ob:
        for i in range(10):
            ob.append(readings(100, start=i * 100, noise=True))
            ob.form_batch()
        ob.max_bytes = 4096  # less than the schema's own pages
        assert ob.enforce_bound() == 1000
        assert ob.stats().drops == {DROP_DISK_FULL: 1000}
        assert "stays above its bound of 4096 bytes with nothing left to drop" in caplog.text
        assert ob.enforce_bound() == 0  # again: nothing to drop, at once


def test_a_buffer_of_only_events_over_its_bound_drops_events_until_it_fits(
    tmp_path: Path,
) -> None:
    events = [
        wire.Event(id=f"e{i}", type="snapshot", ts=10**18 + i, body={"b": _noise(2000, i)})
        for i in range(400)
    ]
    with outbox(tmp_path / "b.db", max_bytes=64 << 20) as ob:
        ob.append([], events)
        ob.max_bytes = ob.used_bytes() // 2
        ob.enforce_bound()
        assert ob.used_bytes() <= ob.max_bytes
        dropped = ob.stats().drops[DROP_DISK_FULL]
        assert 0 < dropped < 400
        assert ob.stats().pending_events == 400 - dropped


def test_a_locked_buffer_is_an_error_that_says_so_not_a_crash(tmp_path: Path) -> None:
    """Another process holds the write lock (a status read gone wrong, a backup): the write
    fails as a BufferError the agent counts, and the buffer is usable once the lock is gone."""
    with outbox(tmp_path / "b.db") as ob:
        ob.conn.execute("PRAGMA busy_timeout=100")
        other = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(BufferError, match=r"b\.db: cannot store readings: database is locked"):
            ob.append(readings(1))
        other.execute("ROLLBACK")
        other.close()
        ob.append(readings(1))
        assert ob.stats().pending_readings == 1
