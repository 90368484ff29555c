"""Stores behind small interfaces; the embedded default is SQLite.

The production backends (:class:`PostgresDocumentStore`, …) import their client libraries when
they are first used, so an embedded collector never loads them.
"""

from typing import TYPE_CHECKING, Any

from outpost_iot.collector.stores._alarm_store import alarm_json
from outpost_iot.collector.stores._base import (
    AGGREGATES,
    ALL_TENANTS,
    SEVERITIES,
    SEVERITY_RANK,
    AlarmChanges,
    AlarmClear,
    AlarmCondition,
    AlarmRecord,
    AlarmRuleRecord,
    Alarms,
    ApiTokenRecord,
    AuditEntry,
    AuditLog,
    BatchRecord,
    CertificateRecord,
    ConfigsAndRollouts,
    DesiredConfigRecord,
    DocumentStore,
    EnrollmentTokenRecord,
    FleetGateway,
    GatewayRecord,
    GatewayRegistration,
    Identities,
    IngestRecords,
    LatestValue,
    NotificationRecord,
    NotifyEndpointRecord,
    QuarantineEntry,
    RolloutMember,
    RolloutRecord,
    SeriesGroup,
    SeriesInfo,
    SeriesQuery,
    SeriesWrite,
    SessionRecord,
    StoredPoint,
    TimeSeriesStore,
)
from outpost_iot.collector.stores._sqlite import SqliteDocumentStore, SqliteTimeSeriesStore

if TYPE_CHECKING:
    from outpost_iot.collector.stores._influx import InfluxTimeSeriesStore
    from outpost_iot.collector.stores._postgres import (
        PostgresDocumentStore,
        PostgresTimeSeriesStore,
    )


def __getattr__(name: str) -> Any:
    if name == "PostgresDocumentStore":
        from outpost_iot.collector.stores._postgres import (
            PostgresDocumentStore,
            PostgresTimeSeriesStore,
        )

        return PostgresDocumentStore
    if name == "PostgresTimeSeriesStore":
        from outpost_iot.collector.stores._postgres import PostgresTimeSeriesStore

        return PostgresTimeSeriesStore
    if name == "InfluxTimeSeriesStore":
        from outpost_iot.collector.stores._influx import InfluxTimeSeriesStore

        return InfluxTimeSeriesStore
    raise AttributeError(name)


__all__ = [
    "AGGREGATES",
    "ALL_TENANTS",
    "SEVERITIES",
    "SEVERITY_RANK",
    "AlarmChanges",
    "AlarmClear",
    "AlarmCondition",
    "AlarmRecord",
    "AlarmRuleRecord",
    "Alarms",
    "ApiTokenRecord",
    "AuditEntry",
    "AuditLog",
    "BatchRecord",
    "CertificateRecord",
    "ConfigsAndRollouts",
    "DesiredConfigRecord",
    "DocumentStore",
    "EnrollmentTokenRecord",
    "FleetGateway",
    "GatewayRecord",
    "GatewayRegistration",
    "Identities",
    "InfluxTimeSeriesStore",
    "IngestRecords",
    "LatestValue",
    "NotificationRecord",
    "NotifyEndpointRecord",
    "PostgresDocumentStore",
    "PostgresTimeSeriesStore",
    "QuarantineEntry",
    "RolloutMember",
    "RolloutRecord",
    "SeriesGroup",
    "SeriesInfo",
    "SeriesQuery",
    "SeriesWrite",
    "SessionRecord",
    "SqliteDocumentStore",
    "SqliteTimeSeriesStore",
    "StoredPoint",
    "TimeSeriesStore",
    "alarm_json",
]
