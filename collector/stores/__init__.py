"""Stores behind small interfaces; the embedded default is SQLite."""

from collector.stores._base import (
    BatchRecord,
    DocumentStore,
    GatewayRecord,
    QuarantineEntry,
    SeriesWrite,
    StoredPoint,
    TimeSeriesStore,
)
from collector.stores._sqlite import SqliteDocumentStore, SqliteTimeSeriesStore

__all__ = [
    "BatchRecord",
    "DocumentStore",
    "GatewayRecord",
    "QuarantineEntry",
    "SeriesWrite",
    "SqliteDocumentStore",
    "SqliteTimeSeriesStore",
    "StoredPoint",
    "TimeSeriesStore",
]
