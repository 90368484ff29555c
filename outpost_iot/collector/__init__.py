"""The Outpost collector: consumes gateway batches, validates, deduplicates, stores, acks."""

from outpost_iot.collector._broker import (
    BrokerFiles,
    init_broker,
    issue_gateway_identity,
    register_gateways,
)
from outpost_iot.collector._config import CollectorConfig, load_config
from outpost_iot.collector._exceptions import (
    CollectorError,
    ConfigError,
    StoreError,
    StoreUnavailable,
)
from outpost_iot.collector._ingest import Incoming, IngestMetrics, Ingestor, Reply
from outpost_iot.collector._limits import RateLimiter
from outpost_iot.collector._service import CollectorService

__all__ = [
    "BrokerFiles",
    "CollectorConfig",
    "CollectorError",
    "CollectorService",
    "ConfigError",
    "Incoming",
    "IngestMetrics",
    "Ingestor",
    "RateLimiter",
    "Reply",
    "StoreError",
    "StoreUnavailable",
    "init_broker",
    "issue_gateway_identity",
    "load_config",
    "register_gateways",
]
