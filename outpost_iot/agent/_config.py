"""Agent configuration: a TOML file validated into frozen models, with defaults.

The sections an operator may also set over the air (buffer, sources, devices) are wire's
managed-config models; devices and sources are then checked against their firmware profiles.
Errors name the file, the key and what to change (see :func:`agent._managed.load_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from outpost_iot.agent._exceptions import ConfigError
from outpost_iot.agent.profiles import facts
from outpost_iot.wire import (
    BufferConfig,
    DeviceConfig,
    EdgeAlarms,
    HostSourceConfig,
    ManagedConfig,
    SimulatedSourceConfig,
    SourceConfig,
    describe,
    problems,
    profile_problems,
    read_toml,
    topics,
    unique_device_names,
)

# The managed part of the config is wire's (the collector checks desired configs with it):
# re-exported here, where the agent's own config is.
__all__ = [
    "UNKNOWN_KEY",
    "AgentConfig",
    "BufferConfig",
    "DeviceConfig",
    "HostSourceConfig",
    "ManagedConfig",
    "SimulatedSourceConfig",
    "UplinkConfig",
    "load_raw",
    "parse_config",
]

_MODEL = ConfigDict(frozen=True, extra="forbid")
UNKNOWN_KEY = "unknown key; check the spelling against docs/agent.md"


class UplinkConfig(BaseModel):
    """The MQTT connection to the cloud broker. TLS with a client certificate, always."""

    model_config = _MODEL

    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 8883
    ca_file: Path
    cert_file: Path
    key_file: Path
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    ack_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_inflight: Annotated[int, Field(ge=1, le=256)] = 8
    state_interval: Annotated[float, Field(gt=0)] = 60.0
    # Reconnect: full jitter up to a ceiling that doubles from reconnect_min to reconnect_max
    # (refused or unreachable) or to reconnect_busy_max (the broker took the connection and did
    # not answer in time, or said it is busy). See mqtt.Backoff.
    reconnect_min: Annotated[float, Field(gt=0, le=60)] = 0.5
    reconnect_max: Annotated[float, Field(gt=0, le=600)] = 4.0
    reconnect_busy_max: Annotated[float, Field(gt=0, le=3600)] = 120.0
    # TCP connect and TLS handshake, each; then as long again for the broker's CONNACK.
    connect_timeout: Annotated[float, Field(gt=0, le=120)] = 5.0
    # Renew the certificate at this fraction of its lifetime, at most once per interval.
    renew_at: Annotated[float, Field(gt=0, lt=1)] = 2 / 3
    renew_min_interval: Annotated[float, Field(ge=0)] = 3600.0
    # Over-the-air config: the collector's signing key pinned at enrollment (default: next to
    # key_file), and how long a new config may go without an ack before it is rolled back.
    config_signing_key: Path | None = None
    config_grace_s: Annotated[float, Field(gt=0)] = 300.0

    @property
    def signing_key_file(self) -> Path:
        return self.config_signing_key or self.key_file.parent / "config-signing.pub"

    @model_validator(mode="after")
    def _reconnect_order(self) -> UplinkConfig:
        if not self.reconnect_min <= self.reconnect_max <= self.reconnect_busy_max:
            raise ValueError(
                "need reconnect_min <= reconnect_max <= reconnect_busy_max, got "
                f"{self.reconnect_min}, {self.reconnect_max}, {self.reconnect_busy_max}"
            )
        return self


class AgentConfig(BaseModel):
    """The whole agent configuration."""

    model_config = _MODEL

    gateway_id: str
    state_dir: Path = Path("/var/lib/outpost")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    uplink: UplinkConfig
    buffer: BufferConfig = BufferConfig()
    sources: list[SourceConfig] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(default_factory=list)
    alarms: EdgeAlarms = EdgeAlarms()

    @model_validator(mode="after")
    def _unique_devices(self) -> AgentConfig:
        unique_device_names(self.devices)
        return self

    @field_validator("gateway_id")
    @classmethod
    def _gateway_id(cls, value: str) -> str:
        if not topics.valid_gateway_id(value):
            raise ValueError(
                "must be 1-64 characters of letters, digits, '.', '_' or '-' and match the "
                "CN of the gateway certificate"
            )
        return value

    @property
    def buffer_path(self) -> Path:
        return self.buffer.path or self.state_dir / "buffer.db"


def load_raw(path: Path) -> dict[str, object]:
    """The TOML of ``path`` as it is on disk (without the over-the-air part)."""
    return read_toml(
        path, missing="no such file; pass --config with the agent's TOML file", error=ConfigError
    )


def parse_config(raw: dict[str, object], *, source: str = "<config>") -> AgentConfig:
    """Validate ``raw``, then its sources and devices against their firmware profiles; raise
    :class:`ConfigError` listing every problem with its key."""
    try:
        config = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe(source, problems(exc, unknown=UNKNOWN_KEY))) from None
    checked = profile_problems(sources=config.sources, devices=config.devices, lookup=facts)
    if checked:
        raise ConfigError(describe(source, checked))
    for key in ("ca_file", "cert_file", "key_file"):
        file = getattr(config.uplink, key)
        if not file.is_file():
            raise ConfigError(f"{source}: uplink.{key}: {file} does not exist or is not a file")
    return config
