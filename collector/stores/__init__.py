"""Stores behind small interfaces; the embedded default is SQLite."""

from collector.stores._base import (
    AGGREGATES,
    ALL_TENANTS,
    ApiTokenRecord,
    AuditEntry,
    BatchRecord,
    CertificateRecord,
    DocumentStore,
    EnrollmentTokenRecord,
    GatewayRecord,
    GatewayRegistration,
    LatestValue,
    QuarantineEntry,
    SeriesGroup,
    SeriesQuery,
    SeriesWrite,
    StoredPoint,
    TimeSeriesStore,
)
from collector.stores._sqlite import SqliteDocumentStore, SqliteTimeSeriesStore

__all__ = [
    "AGGREGATES",
    "ALL_TENANTS",
    "ApiTokenRecord",
    "AuditEntry",
    "BatchRecord",
    "CertificateRecord",
    "DocumentStore",
    "EnrollmentTokenRecord",
    "GatewayRecord",
    "GatewayRegistration",
    "LatestValue",
    "QuarantineEntry",
    "SeriesGroup",
    "SeriesQuery",
    "SeriesWrite",
    "SqliteDocumentStore",
    "SqliteTimeSeriesStore",
    "StoredPoint",
    "TimeSeriesStore",
]
