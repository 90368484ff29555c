"""Agent configuration: a TOML file validated into frozen models, with defaults.

Errors name the file, the key and what to change (see :func:`load_config`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from agent._exceptions import ConfigError
from wire import topics

_MODEL = ConfigDict(frozen=True, extra="forbid")


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
    # not answer in time, or said it is busy). See outpost_mqtt.Backoff.
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


class BufferConfig(BaseModel):
    """The durable SQLite buffer on the gateway."""

    model_config = _MODEL

    path: Path | None = None  # default: <state_dir>/buffer.db
    max_bytes: Annotated[ByteSize, Field(ge=256 * 1024)] = ByteSize(256 * 1024 * 1024)
    batch_max_readings: Annotated[int, Field(ge=1, le=20_000)] = 1000
    batch_max_delay: Annotated[float, Field(gt=0, le=3600)] = 1.0
    # "full": a commit survives power loss (fsync per commit). "normal": survives a crash of
    # the agent (kill -9) but the last commits may be lost on power loss; faster on SD cards.
    durability: Literal["full", "normal"] = "full"


class HostSourceConfig(BaseModel):
    """The gateway itself, through psutil."""

    model_config = _MODEL

    type: Literal["host"]
    name: str = "host"
    interval: Annotated[float, Field(gt=0)] = 10.0
    profile: str = "host"  # a firmware profile with transport "host" (a board may have its own)

    @field_validator("profile")
    @classmethod
    def _host_profile(cls, value: str) -> str:
        from agent.profiles import find_profile

        try:
            profile = find_profile(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if "host" not in profile.profile.transports:
            raise ValueError(f"profile {value} does not read the host (transport 'host')")
        return value


class SimulatedSourceConfig(BaseModel):
    """Simulated sensors (temperature, humidity, power) for demos and tests."""

    model_config = _MODEL

    type: Literal["simulated"]
    name: str = "sim"
    interval: Annotated[float, Field(gt=0)] = 1.0
    devices: Annotated[int, Field(ge=1, le=10_000)] = 3
    events_every: Annotated[int, Field(ge=0)] = 0  # emit a simulated event every N polls; 0 = never


SourceConfig = Annotated[HostSourceConfig | SimulatedSourceConfig, Field(discriminator="type")]

_SCHEMES = {"mqtt": ("mqtt",), "http": ("http", "https"), "snmp": ("snmp",), "host": ("host",)}


class DeviceConfig(BaseModel):
    """A device (or a local broker with a family of devices) read through a firmware profile."""

    model_config = _MODEL

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    profile: str
    target: str  # mqtt://host[:port], https://host[:port], snmp://host[:port]
    interval: Annotated[float, Field(gt=0)] | None = None  # default: the profile's
    username: str | None = None
    # Secrets: never printed, logged or shown by `status`.
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    community: SecretStr | None = None  # SNMPv2c
    # SNMPv3 (USM): a user, and keys for authNoPriv / authPriv.
    snmp_user: str | None = None
    auth_protocol: Literal["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"] = "SHA"
    auth_key: SecretStr | None = None
    priv_protocol: Literal["DES", "3DES", "AES", "AES192", "AES256"] = "AES"
    priv_key: SecretStr | None = None
    site: Annotated[str, Field(min_length=1)] = "default"  # UniFi site name
    timeout: Annotated[float, Field(gt=0, le=120)] | None = None  # default: from the interval
    variables: dict[str, str] = Field(default_factory=dict)  # e.g. {prefix = "tele"}
    insecure: bool = False  # accept a self-signed device certificate (UniFi consoles ship one)

    @model_validator(mode="after")
    def _profile_and_target(self) -> DeviceConfig:
        from agent.profiles import find_profile  # the profiles load only when devices are set

        try:
            profile = find_profile(self.profile)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        scheme = self.target.split("://", 1)[0] if "://" in self.target else ""
        allowed = [s for t in profile.profile.transports for s in _SCHEMES[t]]
        if scheme not in allowed:
            raise ValueError(
                f"target {self.target!r}: profile {self.profile} reads over "
                f"{'/'.join(profile.profile.transports)}; use "
                f"{' or '.join(a + '://host[:port]' for a in allowed)}"
            )
        problems = self.credential_problems(scheme, profile.http.auth)
        if problems:
            raise ValueError(f"device {self.name}: " + "; ".join(problems))
        return self

    def credential_problems(self, scheme: str, http_auth: str) -> list[str]:
        """Missing or contradictory credentials for this transport, in config-key words."""
        out: list[str] = []
        if scheme == "snmp":
            if self.community and self.snmp_user:
                out.append("give either community (SNMPv2c) or snmp_user (SNMPv3), not both")
            elif not self.community and not self.snmp_user:
                out.append("an SNMP device needs community (v2c) or snmp_user with auth_key (v3)")
            if self.priv_key and not self.auth_key:
                out.append("priv_key needs auth_key too (SNMPv3 authPriv)")
            for name in ("auth_key", "priv_key"):
                secret = getattr(self, name)
                if secret is not None and len(secret.get_secret_value()) < 8:
                    out.append(f"{name} must be at least 8 characters (RFC 3414)")
        elif scheme in ("http", "https"):
            if http_auth == "api_key" and not self.api_key:
                out.append("this profile's HTTP API needs api_key")
            if http_auth == "basic" and (not self.username or self.password is None):
                out.append("this profile's HTTP API needs username and password")
            if (
                http_auth == "unifi"
                and not self.api_key
                and (not self.username or self.password is None)
            ):
                out.append(
                    "UniFi needs username and password (a local account), or api_key for the "
                    "integration API"
                )
        return out


class UplinkTarget(BaseModel):
    """Where the uplink connects; the certificate files stay the gateway's own."""

    model_config = _MODEL

    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 8883


class ManagedConfig(BaseModel):
    """The part of the agent's config an operator sets over the air (a desired config).

    Each section given replaces (``sources``, ``devices``, ``log_level``) or overrides
    (``uplink``: the broker address; ``buffer``) the gateway's own ``agent.toml``; a section left
    out stays as ``agent.toml`` has it. Identity files and the state directory are always local.
    """

    model_config = _MODEL

    log_level: Literal["debug", "info", "warning", "error"] | None = None
    uplink: UplinkTarget | None = None
    buffer: BufferConfig | None = None
    sources: list[SourceConfig] | None = None
    devices: list[DeviceConfig] | None = None

    @field_validator("buffer", mode="before")
    @classmethod
    def _buffer_stays_put(cls, value: object) -> object:
        if isinstance(value, dict) and "path" in value:
            raise ValueError(
                "path cannot be set over the air: the buffer stays where the gateway's"
                " agent.toml puts it (moving it would leave its backlog behind)"
            )
        return value

    @model_validator(mode="after")
    def _unique_devices(self) -> ManagedConfig:
        names = [d.name for d in self.devices or []]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"devices: names must be unique; repeated: {', '.join(dupes)}")
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

    @model_validator(mode="after")
    def _unique_devices(self) -> AgentConfig:
        names = [d.name for d in self.devices]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"devices: names must be unique; repeated: {', '.join(dupes)}")
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


def load_config(path: Path) -> AgentConfig:
    """Read and validate ``path`` with the config applied over the air laid over it; raise
    :class:`ConfigError` saying what to change."""
    from agent._managed import ManagedState

    raw = load_raw(path)
    state_dir = Path(str(raw.get("state_dir", "/var/lib/outpost")))
    return parse_config(ManagedState(state_dir).effective(raw), source=str(path))


def load_raw(path: Path) -> dict[str, object]:
    """The TOML of ``path`` as it is on disk (without the over-the-air part)."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; pass --config with the agent's TOML file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return raw


def parse_config(raw: dict[str, object], *, source: str = "<config>") -> AgentConfig:
    try:
        config = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    for key in ("ca_file", "cert_file", "key_file"):
        file = getattr(config.uplink, key)
        if not file.is_file():
            raise ConfigError(f"{source}: uplink.{key}: {file} does not exist or is not a file")
    return config


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling against docs/agent-config.md"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)
