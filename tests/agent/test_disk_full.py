"""A gateway whose disk is full: the buffer cannot be written, nothing stops, and what could not
be stored is counted. SQLite's own "database or disk is full" (SQLITE_FULL) comes from a page
limit on the real buffer file; bench/chaos.py fills a real filesystem."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from outpost_iot.agent import BufferError, Outbox
from outpost_iot.wire import Event, Reading


def readings(n: int, start: int = 0) -> list[Reading]:
    return [
        Reading(measurement="m", tags={"d": "1"}, fields={"n": i}, ts=1 + i)
        for i in range(start, start + n)
    ]


def fill_up(ob: Outbox) -> int:
    """Let the file grow no further: the next pages it needs make SQLite answer SQLITE_FULL."""
    pages = ob.conn.execute("PRAGMA page_count").fetchone()[0]
    ob.conn.execute(f"PRAGMA max_page_count = {pages}")
    return int(pages)


def test_a_full_disk_counts_what_it_could_not_store_and_records_it_later(agent_and_outbox) -> None:  # type: ignore[no-untyped-def]
    agent, ob = agent_and_outbox
    agent.submit(readings(100))
    pages = fill_up(ob)
    with pytest.raises(Exception, match="full"):  # the condition is real: SQLite says so
        ob.append(readings(5000, 100))
    event = Event(id="e1", type="t", ts=5, body={})
    agent.submit(readings(5000, 100), [event], {"mapping_error": 2})  # no exception
    agent.submit(readings(3000, 5100))
    assert ob.stats().drops == {}, "nothing could be recorded while the disk is full"
    ob.conn.execute(f"PRAGMA max_page_count = {pages * 100}")  # space again
    agent.submit(readings(10, 8100))
    drops = ob.stats().drops
    assert drops["buffer_unwritable"] == 8000
    assert drops["buffer_unwritable_event"] == 1
    assert drops["mapping_error"] == 2
    assert ob.stats().backlog_readings == 110  # what was stored stays stored
    agent.submit(readings(1, 9000))
    assert ob.stats().drops["buffer_unwritable"] == 8000  # recorded once, not again


def form_all(ob: Outbox) -> None:
    while ob.form_batch() is not None:
        pass


def test_forming_batches_on_a_full_disk_waits_and_loses_nothing(agent_and_outbox) -> None:  # type: ignore[no-untyped-def]
    _, ob = agent_and_outbox
    for i in range(6):
        ob.append(readings(1000, 1000 * i))
    pages = fill_up(ob)
    with pytest.raises(BufferError, match="full"):
        form_all(ob)
    assert ob.stats().backlog_readings == 6000  # the failed batch was rolled back, whole
    ob.conn.execute(f"PRAGMA max_page_count = {pages * 100}")
    form_all(ob)
    assert ob.stats().backlog_readings == 6000
    assert ob.stats().batches == 6
    assert ob.stats().drops == {}


def test_sqlite_full_is_what_a_page_limit_gives(tmp_path: Path) -> None:
    """The simulation above is the real error: SQLITE_FULL, as a filesystem out of space gives."""
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA max_page_count = 2")
    with pytest.raises(sqlite3.OperationalError) as err:
        conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 4000,)] * 10)
    assert err.value.sqlite_errorcode == sqlite3.SQLITE_FULL
