"""Open the stores a collector config names: the embedded SQLite files or the production
backends (PostgreSQL documents, VictoriaMetrics or InfluxDB time series)."""

from __future__ import annotations

from collector._config import CollectorConfig
from collector.stores import (
    DocumentStore,
    SqliteDocumentStore,
    SqliteTimeSeriesStore,
    TimeSeriesStore,
)


def open_documents(config: CollectorConfig) -> DocumentStore:
    """Raises :class:`~collector._exceptions.StoreError` (or ``StoreUnavailable``) with the
    place and the reason, never a password."""
    stores = config.stores
    if stores.documents == "postgres":
        from collector.stores import PostgresDocumentStore

        assert stores.postgres is not None  # the config's validator requires it
        return PostgresDocumentStore(
            stores.postgres.dsn.get_secret_value(),
            pool_size=stores.postgres.pool_size,
            connect_timeout_s=stores.postgres.connect_timeout_s,
        )
    return SqliteDocumentStore(stores.documents_path)


def open_timeseries(config: CollectorConfig) -> TimeSeriesStore:
    stores = config.stores
    if stores.timeseries == "postgres":
        from collector.stores import PostgresTimeSeriesStore

        assert stores.postgres is not None
        return PostgresTimeSeriesStore(
            stores.postgres.dsn.get_secret_value(),
            pool_size=stores.postgres.pool_size,
            connect_timeout_s=stores.postgres.connect_timeout_s,
        )
    if stores.timeseries in ("victoriametrics", "influxdb"):
        from collector.stores import InfluxTimeSeriesStore

        assert stores.influx is not None
        return InfluxTimeSeriesStore.from_config(stores.influx, kind=stores.timeseries)
    return SqliteTimeSeriesStore(
        stores.timeseries_path, raw_retention_s=config.retention.raw_days * 86400
    )
