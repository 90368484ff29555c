"""Open the stores a collector config names, through the backends' registry
(:mod:`collector.stores._registry`): the embedded SQLite files or the production backends."""

from __future__ import annotations

from outpost_iot.collector._config import CollectorConfig
from outpost_iot.collector.stores import DocumentStore, TimeSeriesStore
from outpost_iot.collector.stores._registry import BACKENDS, Opening


def open_documents(config: CollectorConfig) -> DocumentStore:
    """Raises :class:`~collector._exceptions.StoreError` (or ``StoreUnavailable``) with the
    place and the reason, never a password."""
    factory = BACKENDS[config.stores.documents].documents
    assert factory is not None  # the config names only backends that take the role
    return factory(_opening(config, "documents"))


def open_timeseries(config: CollectorConfig) -> TimeSeriesStore:
    """As :func:`open_documents`."""
    factory = BACKENDS[config.stores.timeseries].timeseries
    assert factory is not None
    return factory(_opening(config, "timeseries"))


def _opening(config: CollectorConfig, role: str) -> Opening:
    stores = config.stores
    name: str = getattr(stores, role)
    return Opening(
        backend=name,
        settings=stores.settings(name),
        path=getattr(stores, f"{role}_path"),
        raw_retention_s=config.retention.raw_days * 86400,
    )
