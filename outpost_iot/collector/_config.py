"""Collector configuration: a TOML file validated into frozen models, with defaults."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    model_validator,
)

from outpost_iot.collector._exceptions import ConfigError
from outpost_iot.collector.stores._registry import BACKENDS, names, sections
from outpost_iot.wire import MAX_FRAME_BYTES, MAX_READINGS, describe, problems, read_toml

_MODEL = ConfigDict(frozen=True, extra="forbid")


class BrokerConfig(BaseModel):
    """The broker connection, with the collector's own client certificate."""

    model_config = _MODEL

    host: Annotated[str, Field(min_length=1)] = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 8883
    ca_file: Path
    cert_file: Path
    key_file: Path
    # Unique per replica: the broker keeps this replica's session (and its share of the
    # shared subscription) under this id.
    client_id: Annotated[str, Field(min_length=1, max_length=64)] = "outpost-collector-1"
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    # How long the broker keeps this replica's session (subscription and the batches that
    # arrive) while it reconnects or restarts. A replica that stays away longer is let go;
    # gateways send what was queued for it again after their ack timeout. 0: no session.
    session_expiry_s: Annotated[int, Field(ge=0, le=86400)] = 60


class _Stores(BaseModel):
    """Where readings and documents go: the embedded SQLite files (the default), or the
    production backends. ``documents``, ``timeseries`` and one table per backend section
    (``[stores.postgres]``, ``[stores.influx]``) come from the backends' registry
    (:mod:`collector.stores._registry`), so that this model names none of them."""

    model_config = _MODEL

    documents: str = "sqlite"  # narrowed to the registered names in StoresConfig
    timeseries: str = "sqlite"
    timeseries_path: Path = Path("/var/lib/outpost-collector/timeseries.db")
    documents_path: Path = Path("/var/lib/outpost-collector/documents.db")
    dedup_window_days: Annotated[float, Field(gt=0)] = 30.0

    def settings(self, backend: str) -> Any:
        """The ``[stores.<section>]`` table of ``backend``, or None if it reads none."""
        section = BACKENDS[backend].section
        return getattr(self, section) if section else None

    @model_validator(mode="after")
    def _backends_configured(self) -> _Stores:
        for role in ("documents", "timeseries"):
            name = getattr(self, role)
            backend = BACKENDS[name]
            settings = self.settings(name)
            if backend.section and settings is None:
                raise ValueError(
                    f'{role} = "{name}" needs a [stores.{backend.section}] section with '
                    f"{backend.requires}"
                )
            problem = backend.check(settings) if backend.check else None
            if problem:
                raise ValueError(problem)
        return self


if TYPE_CHECKING:
    StoresConfig = _Stores
else:
    StoresConfig = create_model(
        "StoresConfig",
        __base__=_Stores,
        __module__=__name__,
        documents=(Literal[names("documents")], "sqlite"),
        timeseries=(Literal[names("timeseries")], "sqlite"),
        **{section: (model | None, None) for section, model in sections().items()},
    )


class RedisConfig(BaseModel):
    """State shared by collector replicas: rate-limit buckets, the dedup window, latest values.
    Without it a single collector keeps that state in its own process."""

    model_config = _MODEL

    url: SecretStr  # redis://[:password@]host:6379/0 or rediss:// for TLS
    prefix: Annotated[str, Field(max_length=64)] = "outpost:"
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    # Stored batches remembered in Redis (retransmits come within minutes); older ones are
    # found in the document store.
    dedup_window_s: Annotated[float, Field(ge=60)] = 3600.0
    latest_values: bool = True  # keep the dashboard's latest values in Redis


class RetentionConfig(BaseModel):
    """How long data is kept: raw readings (hot), 5-minute and hourly rollups (warm, cold)."""

    model_config = _MODEL

    raw_days: Annotated[float, Field(gt=0)] = 7
    rollup_5m_days: Annotated[float, Field(gt=0)] = 90
    rollup_1h_days: Annotated[float, Field(gt=0)] = 365
    events_days: Annotated[float, Field(gt=0)] = 90
    quarantine_days: Annotated[float, Field(gt=0)] = 30
    audit_days: Annotated[float, Field(gt=0)] = 365
    rollup_interval_s: Annotated[float, Field(gt=0)] = 60  # rollups are brought up to date
    expire_interval_s: Annotated[float, Field(gt=0)] = 3600  # old data is deleted

    @model_validator(mode="after")
    def _longer_tiers(self) -> RetentionConfig:
        if not self.raw_days <= self.rollup_5m_days <= self.rollup_1h_days:
            raise ValueError(
                "raw_days <= rollup_5m_days <= rollup_1h_days: each tier must outlive the finer one"
            )
        return self


class LimitsConfig(BaseModel):
    """Per-gateway limits. Past a rate limit the collector nacks with retry-after."""

    model_config = _MODEL

    readings_per_s: Annotated[float, Field(gt=0)] = 5_000
    readings_burst: Annotated[float, Field(gt=0)] = 50_000
    bytes_per_s: Annotated[float, Field(gt=0)] = 2_000_000
    bytes_burst: Annotated[float, Field(gt=0)] = 8_000_000
    # A frame past these is quarantined; the agent never builds one (wire._limits).
    max_frame_bytes: Annotated[int, Field(ge=1024, le=MAX_FRAME_BYTES)] = MAX_FRAME_BYTES
    max_readings: Annotated[int, Field(ge=1, le=MAX_READINGS)] = MAX_READINGS
    # Readings stamped further ahead of the collector's clock (after clock correction) are
    # quarantined: no store is asked to keep the future.
    max_future_s: Annotated[float, Field(gt=0, le=10 * 365 * 86400)] = 2 * 86400
    # The quarantine of one gateway: its raw bytes are kept up to quarantine_bytes (later
    # entries say what arrived and why, without the bytes); past quarantine_entries, bad
    # messages are counted and dropped. Both shrink again as retention expires old entries.
    quarantine_bytes: Annotated[int, Field(ge=0, le=2**40)] = 64 << 20
    quarantine_entries: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000
    store_retry_after_ms: Annotated[int, Field(ge=100)] = 5_000
    # Batches received but not yet processed; past this the collector answers "overloaded".
    max_queued_batches: Annotated[int, Field(ge=1, le=1_000_000)] = 2_000
    # Bytes received but not yet processed, all gateways together: a flood of large frames is
    # answered "overloaded" past this instead of filling the collector's memory.
    max_queued_bytes: Annotated[int, Field(ge=1 << 20, le=1 << 40)] = 256 << 20
    overload_retry_after_ms: Annotated[int, Field(ge=100)] = 2_000


class ClockConfig(BaseModel):
    """A gateway whose wall clock is off by more than ``tolerance_s`` is flagged and its
    readings' timestamps are corrected from its monotonic clock."""

    model_config = _MODEL

    tolerance_s: Annotated[float, Field(gt=0)] = 2.0


class PkiConfig(BaseModel):
    """The device CA the collector holds, the config-signing key, and the CRL it publishes."""

    model_config = _MODEL

    ca_cert: Path
    ca_key: Path  # 0600; never leaves the collector
    signing_key: Path  # Ed25519, signs desired configs (OTA config)
    crl_file: Path  # read by the broker (`crlfile`)
    gateway_cert_days: Annotated[int, Field(ge=1, le=825)] = 90
    # Run after the CRL file changed, so the broker reads it again (e.g. "systemctl reload
    # mosquitto"). Split on spaces; no shell.
    crl_reload_command: str = ""


class ApiConfig(BaseModel):
    """The collector's HTTPS API (enrollment now; fleet and queries later)."""

    model_config = _MODEL

    listen: str = "0.0.0.0"  # noqa: S104 - the API is meant to be reached by gateways
    port: Annotated[int, Field(ge=1, le=65535)] = 8443
    tls_cert: Path
    tls_key: Path


class EnrollmentConfig(BaseModel):
    """What an enrolled gateway is told: where its broker is."""

    model_config = _MODEL

    broker_host: Annotated[str, Field(min_length=1)]
    broker_port: Annotated[int, Field(ge=1, le=65535)] = 8883


class StreamConfig(BaseModel):
    """``[stream]``: the live stream of ``GET /api/v1/stream`` (docs/api.md)."""

    model_config = _MODEL

    # Messages kept for clients that reconnect with Last-Event-ID (in Redis with [redis]).
    ring: Annotated[int, Field(ge=100, le=1_000_000)] = 10_000
    max_clients: Annotated[int, Field(ge=1, le=100_000)] = 500  # per collector
    # What one client may have waiting before it is disconnected as too slow.
    queue_messages: Annotated[int, Field(ge=10, le=100_000)] = 2_000
    queue_bytes: Annotated[int, Field(ge=65_536, le=256 * 1024 * 1024)] = 4 * 1024 * 1024


class AlarmsConfig(BaseModel):
    """``[alarms]``: rule evaluation and notification delivery (docs/alarms.md)."""

    model_config = _MODEL

    interval_s: Annotated[float, Field(ge=1, le=3600)] = 15.0  # scheduled rules (not thresholds)
    max_rules: Annotated[int, Field(ge=1, le=1_000_000)] = 20_000  # per tenant
    max_endpoints: Annotated[int, Field(ge=1, le=1_000)] = 50  # per tenant
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0  # one delivery attempt
    give_up_after_s: Annotated[float, Field(ge=60, le=30 * 86400)] = 86400.0
    # Webhooks over plain HTTP, and to loopback, private or link-local addresses, are refused
    # unless allowed (a webhook URL must not reach the collector's own network).
    allow_http: bool = False
    allow_private_targets: bool = False


class SmtpConfig(BaseModel):
    """``[smtp]``: the mail server alarm emails go through."""

    model_config = _MODEL

    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str = ""
    password: SecretStr = SecretStr("")
    from_address: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    ca_file: Path | None = None  # to verify the server's certificate (default: the system's)


class CollectorConfig(BaseModel):
    model_config = _MODEL

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    summary_interval_s: Annotated[float, Field(gt=0)] = 60.0  # the ingest summary in the log
    broker: BrokerConfig
    stores: StoresConfig = StoresConfig()
    redis: RedisConfig | None = None
    limits: LimitsConfig = LimitsConfig()
    retention: RetentionConfig = RetentionConfig()
    clock: ClockConfig = ClockConfig()
    pki: PkiConfig | None = None
    api: ApiConfig | None = None
    enrollment: EnrollmentConfig | None = None
    stream: StreamConfig = StreamConfig()
    alarms: AlarmsConfig = AlarmsConfig()
    smtp: SmtpConfig | None = None


def load_config(path: Path) -> CollectorConfig:
    raw = read_toml(
        path,
        missing="no such file; pass --config with the collector's TOML file",
        error=ConfigError,
    )
    try:
        config = CollectorConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe(str(path), problems(exc))) from None
    files = [("broker", k, getattr(config.broker, k)) for k in ("ca_file", "cert_file", "key_file")]
    if config.pki:
        files += [("pki", k, getattr(config.pki, k)) for k in ("ca_cert", "ca_key", "signing_key")]
    if config.api:
        files += [("api", k, getattr(config.api, k)) for k in ("tls_cert", "tls_key")]
        if config.pki is None or config.enrollment is None:
            raise ConfigError(
                f"{path}: [api] needs [pki] and [enrollment] (enrollment issues certificates)"
            )
    for section, key, file in files:
        if not file.is_file():
            raise ConfigError(f"{path}: {section}.{key}: {file} does not exist or is not a file")
    return config
