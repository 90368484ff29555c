"""Stores behind small interfaces; the embedded default is SQLite."""

from collector.stores._base import (
    ApiTokenRecord,
    BatchRecord,
    CertificateRecord,
    DocumentStore,
    EnrollmentTokenRecord,
    GatewayRecord,
    GatewayRegistration,
    QuarantineEntry,
    SeriesWrite,
    StoredPoint,
    TimeSeriesStore,
)
from collector.stores._sqlite import SqliteDocumentStore, SqliteTimeSeriesStore

__all__ = [
    "ApiTokenRecord",
    "BatchRecord",
    "CertificateRecord",
    "DocumentStore",
    "EnrollmentTokenRecord",
    "GatewayRecord",
    "GatewayRegistration",
    "QuarantineEntry",
    "SeriesWrite",
    "SqliteDocumentStore",
    "SqliteTimeSeriesStore",
    "StoredPoint",
    "TimeSeriesStore",
]
