"""The durable buffer (the *outbox*): readings in, batches out, deleted only on ack.

SQLite in WAL mode. ``append`` commits before it returns: a reading handed to the buffer
survives ``kill -9`` (and power loss with ``durability = "full"``). A batcher turns pending
readings into batches: encoded once, numbered from a persistent counter, one row each. The
sender reads batches, and a batch row is deleted only when the collector acknowledges it.

Disk use is bounded: past ``max_bytes`` the oldest batches are dropped (batches carrying
events last) and every dropped reading is counted by reason in the ``drops`` table.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import orjson
from sqlite_utils import Database

from outpost_iot.agent._clock import EPOCH_JUMP_NS, Clock, ClockEpoch
from outpost_iot.agent._exceptions import BufferError
from outpost_iot.agent._schema import MIGRATIONS
from outpost_iot.wire import (
    MAX_BODY_BYTES,
    MAX_FRAME_BYTES,
    BatchHeader,
    BoundedDict,
    Event,
    Reading,
    batch_body,
    frame,
    private_file,
    series_key,
)

if TYPE_CHECKING:
    from outpost_iot.agent._config import AgentConfig

_WAL_LIMIT = 4 * 1024 * 1024  # bytes the WAL file is truncated to after a checkpoint
_VACUUM_FRACTION = 4  # give free pages back to the OS when they exceed 1/4 of the bound
_SERIES_CACHE = 20_000  # series ids kept in memory (the table has them all)

DROP_DISK_FULL = "disk_full"
DROP_REJECTED = "rejected_by_collector"
DROP_TOO_LARGE = "too_large"
# Drop reasons sources report that concern events (the others concern readings).
# The buffer could not be written (the filesystem is full, an I/O error): what a source handed
# over then is counted in memory and recorded with the next commit that succeeds.
DROP_UNWRITABLE = "buffer_unwritable"
DROP_UNWRITABLE_EVENT = "buffer_unwritable_event"
EVENT_DROP_REASONS = frozenset({"invalid_event", DROP_UNWRITABLE_EVENT})


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """A formed batch waiting for its ack."""

    seq: int
    created_ns: int
    readings: int
    events: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class BufferStats:
    """What ``outpost-agent status`` and the state message report."""

    stream_id: str
    pending_readings: int
    pending_events: int
    batches: int
    batch_readings: int
    oldest_unsent_ns: int | None
    last_ack_ns: int | None
    drops: dict[str, int] = field(default_factory=dict)
    db_bytes: int = 0
    uplink: str = "unknown"
    reset: str = ""  # set when a corrupt buffer was moved aside and this one started anew

    @property
    def backlog_readings(self) -> int:
        return self.pending_readings + self.batch_readings


class Outbox:
    """The agent's SQLite buffer. Not thread-safe: one owner (the agent's event loop)."""

    def __init__(
        self,
        *,
        path: Path,
        gateway_id: str,
        clock: Clock,
        max_bytes: int,
        batch_max_readings: int = 1000,
        durability: str = "full",
        logger: logging.Logger | None = None,
    ) -> None:
        self.path = path
        self.gateway_id = gateway_id
        self.max_bytes = max_bytes
        self.batch_max_readings = batch_max_readings
        self._clock = clock
        self._durability = durability
        self._log = logger or logging.getLogger("outpost.agent.buffer")
        self._conn: sqlite3.Connection | None = None
        self._epoch: ClockEpoch | None = None
        self._stream_id = ""
        self._page_size = 4096
        # (measurement, tag items) → series id, and series id → its JSON key.
        self._series_ids: BoundedDict[tuple[str, tuple[tuple[str, str], ...]], int]
        self._series_ids = BoundedDict(_SERIES_CACHE)
        self._series_keys: BoundedDict[int, bytes] = BoundedDict(_SERIES_CACHE)
        self.reset = ""  # why the buffer was started anew at open, if it was

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def for_agent(cls, config: AgentConfig, clock: Clock) -> Self:
        """The buffer an agent's config describes: its state directory and ``[buffer]``."""
        return cls(
            path=config.buffer_path,
            gateway_id=config.gateway_id,
            clock=clock,
            max_bytes=int(config.buffer.max_bytes),
            batch_max_readings=config.buffer.batch_max_readings,
            durability=config.buffer.durability,
        )

    def open(self) -> Self:
        """Open (or create) the buffer. A buffer SQLite finds corrupt or truncated is moved
        aside (kept for inspection, the previous one removed), a new one starts a new stream,
        and :attr:`reset` says what happened (``status`` and the state message report it)."""
        reset = ""
        try:
            conn = self._connect()
            owner = self._meta_or_of(conn, "gateway_id", self.gateway_id)
            if owner != self.gateway_id:
                # Enrolled again under another id (another tenant): this backlog belongs to
                # the old identity and must not be sent, or seen, under the new one.
                conn.close()
                why = f"it holds the backlog of gateway {owner}, and this gateway is now {self.gateway_id}"
                aside = self._move_aside(why, corrupt=False)
                reset = f"{why}; kept as {aside.name}, a new stream started"
                conn = self._connect()
        except _Corrupt as exc:
            aside = self._move_aside(str(exc))
            reset = f"the buffer was unreadable ({exc}); kept as {aside.name}, a new stream started"
            try:
                conn = self._connect()
            except _Corrupt as again:
                raise BufferError(f"{self.path}: a new buffer is corrupt too: {again}") from None
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('gateway_id', ?)", (self.gateway_id,)
        )
        if reset:
            reset = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: {reset}"
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('reset', ?)", (reset,))
        self._conn = conn
        self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        self._stream_id = self._meta("stream_id")
        self.reset = str(self._meta_or("reset", ""))
        row = conn.execute(
            "SELECT id, boot_id, offset_ns, synced FROM clock_epochs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row:
            self._epoch = ClockEpoch(row[0], row[1], row[2], bool(row[3]))
        return self

    def _connect(self) -> sqlite3.Connection:
        """Connect, check the file's structure, apply migrations. Raises :class:`_Corrupt`
        for a damaged file and :class:`BufferError` for anything else (disk, permissions)."""
        conn: sqlite3.Connection | None = None
        try:
            private_file(self.path)  # 0600 whatever the umask; -wal and -shm follow it
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            # The file's structure, once per start and before anything writes to it (it reads
            # the file: seconds for a full buffer on an SD card; a corrupt page found now is
            # not found mid-send).
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise _Corrupt("; ".join(str(p) for p in problems)[:300])
            # auto_vacuum must be chosen before the first table exists.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            sync = "FULL" if self._durability == "full" else "NORMAL"
            conn.execute(f"PRAGMA synchronous={sync}")
            conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            MIGRATIONS.apply(Database(conn, execute_plugins=False))
            self._meta_of(conn, "stream_id")
            self._meta_of(conn, "next_seq")
        except _Corrupt:
            _close(conn)
            raise
        except sqlite3.OperationalError as exc:
            _close(conn)
            # Locked, I/O error, full disk, no permission: the file may be fine; never move a
            # buffer aside for that.
            raise BufferError(f"{self.path}: cannot open the buffer database: {exc}") from exc
        except (sqlite3.DatabaseError, BufferError) as exc:
            _close(conn)
            raise _Corrupt(str(exc)[:300]) from exc  # not a database, malformed, metadata gone
        except OSError as exc:
            _close(conn)
            raise BufferError(f"{self.path}: cannot create the buffer: {exc.strerror}") from exc
        return conn

    def _move_aside(self, why: str, *, corrupt: bool = True) -> Path:
        """Keep a buffer this agent cannot send from, for inspection (only the latest of each
        kind: it may be large)."""
        kind = "corrupt" if corrupt else "other-gateway"
        what = "the buffer is corrupt" if corrupt else "the buffer is another gateway's"
        for old in self.path.parent.glob(f"{self.path.name}.{kind}-*"):
            old.unlink(missing_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.{kind}-{stamp}")
        try:
            self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                extra = self.path.with_name(self.path.name + suffix)
                if extra.exists():
                    extra.replace(aside.with_name(aside.name + suffix))
        except OSError as exc:
            raise BufferError(
                f"{self.path}: {what} ({why}) and cannot be moved aside: {exc.strerror}"
            ) from exc
        self._log.error(
            "%s: %s (%s); moved to %s and started a new one. Readings in it were not sent;"
            " inspect it with sqlite3 if they matter",
            self.path,
            what,
            why,
            aside,
        )
        return aside

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BufferError(f"{self.path}: the buffer is not open")
        return self._conn

    @property
    def stream_id(self) -> str:
        return self._stream_id

    # -- writing -----------------------------------------------------------------------------

    def append(
        self,
        readings: Sequence[Reading],
        events: Sequence[Event] = (),
        *,
        drops: Mapping[str, int] | None = None,
    ) -> None:
        """Store readings and events durably; committed when this returns. ``drops`` counts
        what a source had to drop (by reason), recorded in the same transaction."""
        if not readings and not events and not drops:
            return
        dumps = orjson.dumps
        ids = self._series_ids
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            epoch = self._current_epoch()
            if readings:
                rows = []
                for r in readings:
                    key = (r.measurement, tuple(r.tags.items()))
                    sid = ids.get(key)
                    if sid is None:
                        sid = self._series_id(r)
                        ids[key] = sid
                    rows.append((epoch, sid, r.ts, dumps(r.fields)))
                conn.executemany(
                    "INSERT INTO readings (epoch, series, ts, fields) VALUES (?, ?, ?, ?)", rows
                )
            if events:
                conn.executemany(
                    "INSERT INTO events (epoch, doc) VALUES (?, ?)",
                    [(epoch, dumps(e.model_dump(mode="json"))) for e in events],
                )
            for reason, count in (drops or {}).items():
                if count > 0:
                    is_event = reason in EVENT_DROP_REASONS
                    self._count_drop(reason, 0 if is_event else count, count if is_event else 0)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            self._series_ids.clear()  # ids made in the rolled-back transaction are gone
            raise BufferError(f"{self.path}: cannot store readings: {exc}") from exc
        self._enforce_bound_after_commit()

    def _enforce_bound_after_commit(self) -> None:
        """The data is committed; if the bound cannot be enforced now (the disk itself is
        full), say so and try again at the next commit, without undoing what was stored."""
        try:
            self.enforce_bound()
        except (BufferError, sqlite3.Error) as exc:
            self._rollback()
            self._log.warning("%s: cannot enforce the disk bound now: %s", self.path, exc)

    def _series_id(self, reading: Reading) -> int:
        key = series_key(reading.measurement, reading.tags)
        self.conn.execute("INSERT OR IGNORE INTO series (key) VALUES (?)", (key,))
        sid = int(self.conn.execute("SELECT id FROM series WHERE key = ?", (key,)).fetchone()[0])
        self._series_keys[sid] = key
        return sid

    def _series_key(self, sid: int) -> bytes:
        key = self._series_keys.get(sid)
        if key is None:
            key = bytes(
                self.conn.execute("SELECT key FROM series WHERE id = ?", (sid,)).fetchone()[0]
            )
            self._series_keys[sid] = key
        return key

    def _current_epoch(self) -> int:
        """The clock epoch for readings stored now; starts a new one after a clock step."""
        wall, mono = self._clock.wall_ns(), self._clock.mono_ns()
        offset, synced = wall - mono, self._clock.synced()
        e = self._epoch
        if (
            e is None
            or e.boot_id != self._clock.boot_id
            or abs(offset - e.offset_ns) > EPOCH_JUMP_NS
            or e.synced != synced
        ):
            cur = self.conn.execute(
                "INSERT INTO clock_epochs (boot_id, offset_ns, synced, started_ns)"
                " VALUES (?, ?, ?, ?)",
                (self._clock.boot_id, offset, int(synced), wall),
            )
            assert cur.lastrowid is not None
            e = self._epoch = ClockEpoch(cur.lastrowid, self._clock.boot_id, offset, synced)
        return e.id

    def form_batch(self, *, max_readings: int | None = None) -> PendingBatch | None:
        """Turn the oldest pending readings and events (of one clock epoch) into a batch."""
        limit = max_readings or self.batch_max_readings
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            batch = self._form_batch_locked(limit)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise BufferError(f"{self.path}: cannot form a batch: {exc}") from exc
        if batch is not None:
            self._enforce_bound_after_commit()
        return batch

    def _form_batch_locked(self, limit: int) -> PendingBatch | None:
        conn = self.conn
        first_r = conn.execute("SELECT epoch FROM readings ORDER BY id LIMIT 1").fetchone()
        first_e = conn.execute("SELECT epoch FROM events ORDER BY id LIMIT 1").fetchone()
        epochs = [row[0] for row in (first_r, first_e) if row]
        if not epochs:
            return None
        epoch_id = min(epochs)
        rows = conn.execute(
            "SELECT id, series, ts, fields FROM readings WHERE epoch = ? ORDER BY id LIMIT ?",
            (epoch_id, limit),
        ).fetchall()
        ev_rows = conn.execute(
            "SELECT id, doc FROM events WHERE epoch = ? ORDER BY id LIMIT ?",
            (epoch_id, max(1, limit // 10)),
        ).fetchall()
        boot_id, offset_ns, synced = conn.execute(
            "SELECT boot_id, offset_ns, synced FROM clock_epochs WHERE id = ?", (epoch_id,)
        ).fetchone()
        seq = int(self._meta("next_seq"))
        created = self._clock.wall_ns()
        header = BatchHeader(
            gateway_id=self.gateway_id,
            stream_id=self._stream_id,
            boot_id=boot_id,
            seq=seq,
            created_ns=created,
            offset_ns=offset_ns,
            synced=bool(synced),
        )
        keys = {sid: self._series_key(sid) for sid in {r[1] for r in rows}}
        first_rows, first_events = rows, ev_rows
        body_len, payload = _assemble(header, rows, ev_rows, keys)
        # The collector refuses a frame past either limit: halve until the batch fits both.
        while (len(payload) > MAX_FRAME_BYTES or body_len > MAX_BODY_BYTES) and (
            len(rows) + len(ev_rows) > 1
        ):
            n_rows, n_events = len(rows), len(ev_rows)
            rows, ev_rows = rows[: n_rows // 2], ev_rows[: n_events // 2]
            if not rows and not ev_rows:  # one left: the first reading, else the first event
                rows, ev_rows = (first_rows[:1], []) if n_rows else ([], first_events[:1])
            body_len, payload = _assemble(header, rows, ev_rows, keys)
        if len(payload) > MAX_FRAME_BYTES or body_len > MAX_BODY_BYTES:
            # One reading or event larger than a frame can never be delivered: count it.
            self._drop_pending(rows, ev_rows, DROP_TOO_LARGE)
            self._log.warning("dropped a reading or event larger than %d bytes", MAX_FRAME_BYTES)
            return None
        conn.execute(
            "INSERT INTO batches (seq, created_ns, readings, events, payload)"
            " VALUES (?, ?, ?, ?, ?)",
            (seq, created, len(rows), len(ev_rows), payload),
        )
        self._delete_pending(rows, ev_rows)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
        return PendingBatch(seq, created, len(rows), len(ev_rows), payload)

    def _delete_pending(self, rows: list[Any], ev_rows: list[Any]) -> None:
        if rows:
            # Readings of one epoch have contiguous ids (epochs only grow).
            self.conn.execute(
                "DELETE FROM readings WHERE id BETWEEN ? AND ?", (rows[0][0], rows[-1][0])
            )
        if ev_rows:
            self.conn.executemany("DELETE FROM events WHERE id = ?", [(r[0],) for r in ev_rows])

    def _drop_pending(self, rows: list[Any], ev_rows: list[Any], reason: str) -> None:
        self._delete_pending(rows, ev_rows)
        self._count_drop(reason, len(rows), len(ev_rows))

    # -- sending -----------------------------------------------------------------------------

    def pick(
        self, count: int, *, exclude: set[int] | frozenset[int] = frozenset()
    ) -> list[PendingBatch]:
        """Up to ``count`` batches to send: newest first, alternating with the oldest.

        Fresh data reaches the dashboard first while the backlog drains from its oldest end.
        """
        if count <= 0:
            return []
        window = count + len(exclude)
        newest = [
            r[0]
            for r in self.conn.execute(
                "SELECT seq FROM batches ORDER BY seq DESC LIMIT ?", (window,)
            )
            if r[0] not in exclude
        ]
        oldest = [
            r[0]
            for r in self.conn.execute(
                "SELECT seq FROM batches ORDER BY seq ASC LIMIT ?", (window,)
            )
            if r[0] not in exclude
        ]
        chosen: list[int] = []
        for pair in zip(newest, oldest, strict=False):
            for seq in pair:
                if seq not in chosen and len(chosen) < count:
                    chosen.append(seq)
        for seq in newest + oldest:
            if len(chosen) >= count:
                break
            if seq not in chosen:
                chosen.append(seq)
        if not chosen:
            return []
        marks = ",".join("?" * len(chosen))
        found = {
            r[0]: PendingBatch(*r)
            for r in self.conn.execute(
                f"SELECT seq, created_ns, readings, events, payload FROM batches"
                f" WHERE seq IN ({marks})",
                chosen,
            )
        }
        return [found[s] for s in chosen if s in found]

    def acknowledge(self, seq: int, *, rejected: bool = False) -> bool:
        """Delete batch ``seq`` after the collector's ack; False if it was not here."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                "DELETE FROM batches WHERE seq = ? RETURNING readings, events", (seq,)
            ).fetchone()
            if row and rejected:
                self._count_drop(DROP_REJECTED, row[0], row[1])
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_ack_ns', ?)",
                (self._clock.wall_ns(),),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise BufferError(f"{self.path}: cannot record ack of batch {seq}: {exc}") from exc
        return row is not None

    def set_uplink_state(self, state: str) -> None:
        """Record the connection state for ``outpost-agent status`` (a separate process)."""
        try:
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('uplink', ?)",
                (f"{state} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",),
            )
        except sqlite3.Error as exc:
            raise BufferError(f"{self.path}: cannot record uplink state: {exc}") from exc

    # -- the disk bound ----------------------------------------------------------------------

    def used_bytes(self) -> int:
        conn = self.conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._page_size)

    def enforce_bound(self) -> int:
        """Drop the oldest data until the buffer fits ``max_bytes``; return readings dropped."""
        dropped = 0
        used = self.used_bytes()
        while (over := used - self.max_bytes) > 0:
            readings, events = self._drop_oldest(over)
            if not readings and not events:  # the tables' own pages are over the bound
                self._log.error(
                    "buffer stays above its bound of %d bytes with nothing left to drop",
                    self.max_bytes,
                )
                break
            dropped += readings
            used = self.used_bytes()
        if dropped:
            self._log.warning(
                "buffer reached its bound of %d bytes: dropped the %d oldest readings",
                self.max_bytes,
                dropped,
            )
            free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
            if free * self._page_size > self.max_bytes // _VACUUM_FRACTION:
                # The pragma frees one page per step, and `execute` steps once (one page
                # given back per call); `executescript` runs it to its end.
                self.conn.executescript("PRAGMA incremental_vacuum;")
        return dropped

    def _drop_oldest(self, over: int) -> tuple[int, int]:
        """Delete at least ``over`` bytes' worth of the oldest data, events last; return the
        readings and events deleted."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Batches without events first, then pending readings, then anything.
            victims = conn.execute(
                "SELECT seq, readings, events, length(payload) FROM batches"
                " WHERE events = 0 ORDER BY seq LIMIT 64"
            ).fetchall()
            if not victims:
                rows = conn.execute("SELECT id FROM readings ORDER BY id LIMIT 2000").fetchall()
                if rows:
                    conn.execute(
                        "DELETE FROM readings WHERE id BETWEEN ? AND ?", (rows[0][0], rows[-1][0])
                    )
                    self._count_drop(DROP_DISK_FULL, len(rows), 0)
                    conn.execute("COMMIT")
                    return len(rows), 0
                victims = conn.execute(
                    "SELECT seq, readings, events, length(payload) FROM batches"
                    " ORDER BY seq LIMIT 64"
                ).fetchall()
            freed = n_readings = n_events = 0
            chosen = []
            for seq, readings, events, size in victims:
                chosen.append((seq,))
                n_readings += readings
                n_events += events
                freed += size
                if freed >= over:
                    break
            conn.executemany("DELETE FROM batches WHERE seq = ?", chosen)
            if chosen:
                self._count_drop(DROP_DISK_FULL, n_readings, n_events)
            else:
                ev = conn.execute("SELECT id FROM events ORDER BY id LIMIT 100").fetchall()
                conn.executemany("DELETE FROM events WHERE id = ?", ev)
                if ev:
                    self._count_drop(DROP_DISK_FULL, 0, len(ev))
                n_events = len(ev)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise BufferError(f"{self.path}: cannot drop old data: {exc}") from exc
        return n_readings, n_events

    # -- reporting ---------------------------------------------------------------------------

    def stats(self) -> BufferStats:
        return read_stats(self.conn)

    def _count_drop(self, reason: str, readings: int, events: int) -> None:
        self.conn.execute(
            "INSERT INTO drops (reason, readings, events) VALUES (?, ?, ?)"
            " ON CONFLICT(reason) DO UPDATE SET readings = readings + excluded.readings,"
            " events = events + excluded.events",
            (reason, readings, events),
        )

    def _meta(self, key: str) -> str:
        return self._meta_of(self.conn, key)

    def _meta_of(self, conn: sqlite3.Connection, key: str) -> str:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise BufferError(f"{self.path}: buffer metadata '{key}' is missing")
        return str(row[0])

    def _meta_or(self, key: str, default: str) -> str:
        return self._meta_or_of(self.conn, key, default)

    @staticmethod
    def _meta_or_of(conn: sqlite3.Connection, key: str, default: str) -> str:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else str(row[0])

    def _rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def _assemble(
    header: BatchHeader, rows: list[Any], ev_rows: list[Any], keys: dict[int, bytes]
) -> tuple[int, bytes]:
    """Build the batch frame from stored JSON fragments, grouping readings by series:
    ``(length of the JSON body, frame)``."""
    groups: dict[bytes, list[tuple[int, bytes]]] = {}
    for _id, sid, ts, fields in rows:
        groups.setdefault(keys[sid], []).append((ts, fields))
    body = batch_body(header, groups, [doc for _id, doc in ev_rows])
    return len(body), frame(body)


class _Corrupt(Exception):
    """The buffer file is damaged (not a database, malformed, its metadata gone)."""


def _close(conn: sqlite3.Connection | None) -> None:
    if conn is not None:
        conn.close()


def read_stats(conn: sqlite3.Connection) -> BufferStats:
    """Buffer statistics from an open connection (read-only is enough)."""
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    pending = conn.execute("SELECT count(*), min(ts) FROM readings").fetchone()
    pending_events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    batches = conn.execute(
        "SELECT count(*), coalesce(sum(readings), 0), min(created_ns) FROM batches"
    ).fetchone()
    oldest_candidates = [v for v in (pending[1], batches[2]) if v is not None]
    drops = {
        reason: readings + events
        for reason, readings, events in conn.execute("SELECT reason, readings, events FROM drops")
    }
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return BufferStats(
        stream_id=str(meta.get("stream_id", "")),
        pending_readings=pending[0],
        pending_events=pending_events,
        batches=batches[0],
        batch_readings=batches[1],
        oldest_unsent_ns=min(oldest_candidates) if oldest_candidates else None,
        last_ack_ns=int(meta["last_ack_ns"]) if "last_ack_ns" in meta else None,
        drops=drops,
        db_bytes=pages * page_size,
        uplink=str(meta.get("uplink", "never connected")),
        reset=str(meta.get("reset", "")),
    )


def open_stats(path: Path) -> BufferStats:
    """Read statistics of the buffer at ``path`` without writing to it."""
    if not path.exists():
        raise BufferError(f"{path}: no buffer here yet; has the agent run with this config?")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return read_stats(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BufferError(
            f"{path}: cannot read the buffer: {exc} (if it is damaged, the agent moves it aside"
            " and starts a new one when it starts)"
        ) from exc
