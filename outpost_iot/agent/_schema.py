"""The buffer's schema, as recorded migrations (applied in order, each in a transaction)."""

from __future__ import annotations

import uuid

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("outpost-agent-buffer")


@MIGRATIONS(name="0001_initial")
def _initial(db: Database) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID")
    # The stream id names this buffer's sequence space: a wiped buffer starts a new stream,
    # so its restarted sequence numbers are never mistaken for retransmits.
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('stream_id', ?), ('next_seq', 1)",
        [uuid.uuid4().hex[:16]],
    )
    db.execute(
        "CREATE TABLE clock_epochs (id INTEGER PRIMARY KEY, boot_id TEXT NOT NULL,"
        " offset_ns INTEGER NOT NULL, synced INTEGER NOT NULL, started_ns INTEGER NOT NULL)"
    )
    # A series (measurement + tags) is stored once, as the JSON fragment batches are built from.
    db.execute("CREATE TABLE series (id INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE)")
    # Readings waiting for a batch: fields are stored as the JSON fragment the batch body is
    # assembled from, so forming a batch never re-encodes a reading.
    db.execute(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL,"
        " series INTEGER NOT NULL, ts INTEGER NOT NULL, fields BLOB NOT NULL)"
    )
    db.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, doc BLOB NOT NULL)"
    )
    db.execute(
        "CREATE TABLE batches (seq INTEGER PRIMARY KEY, created_ns INTEGER NOT NULL,"
        " readings INTEGER NOT NULL, events INTEGER NOT NULL, payload BLOB NOT NULL)"
    )
    db.execute(
        "CREATE TABLE drops (reason TEXT PRIMARY KEY, readings INTEGER NOT NULL DEFAULT 0,"
        " events INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
    )
