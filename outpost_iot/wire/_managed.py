"""The managed config: the part of the agent's config an operator sets over the air.

The agent validates its ``agent.toml`` and every desired config with these models; the collector
validates a desired config with them before it signs it. Checking devices and sources against
their firmware profiles is a separate step, :func:`profile_problems`, given a lookup of profile
facts: the agent reads them from its profiles, the collector from the same folder, and neither
imports the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, SecretStr, field_validator
from pydantic import model_validator as _model_validator

from outpost_iot.wire._alarms import EdgeAlarms

_MODEL = ConfigDict(frozen=True, extra="forbid")


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


class SimulatedSourceConfig(BaseModel):
    """Simulated sensors (temperature, humidity, power) for demos and tests."""

    model_config = _MODEL

    type: Literal["simulated"]
    name: str = "sim"
    interval: Annotated[float, Field(gt=0)] = 1.0
    devices: Annotated[int, Field(ge=1, le=10_000)] = 3
    events_every: Annotated[int, Field(ge=0)] = 0  # emit a simulated event every N polls; 0 = never


SourceConfig = Annotated[HostSourceConfig | SimulatedSourceConfig, Field(discriminator="type")]

# The URL schemes of each transport a profile can read over.
SCHEMES = {"mqtt": ("mqtt",), "http": ("http", "https"), "snmp": ("snmp",), "host": ("host",)}


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

    @property
    def scheme(self) -> str:
        return self.target.split("://", 1)[0] if "://" in self.target else ""


def _snmp_credentials(device: DeviceConfig, http_auth: str) -> list[str]:
    out: list[str] = []
    if device.community and device.snmp_user:
        out.append("give either community (SNMPv2c) or snmp_user (SNMPv3), not both")
    elif not device.community and not device.snmp_user:
        out.append("an SNMP device needs community (v2c) or snmp_user with auth_key (v3)")
    if device.priv_key and not device.auth_key:
        out.append("priv_key needs auth_key too (SNMPv3 authPriv)")
    for name in ("auth_key", "priv_key"):
        secret = getattr(device, name)
        if secret is not None and len(secret.get_secret_value()) < 8:
            out.append(f"{name} must be at least 8 characters (RFC 3414)")
    return out


def _http_credentials(device: DeviceConfig, http_auth: str) -> list[str]:
    out: list[str] = []
    if http_auth == "api_key" and not device.api_key:
        out.append("this profile's HTTP API needs api_key")
    if http_auth == "basic" and (not device.username or device.password is None):
        out.append("this profile's HTTP API needs username and password")
    if (
        http_auth == "unifi"
        and not device.api_key
        and (not device.username or device.password is None)
    ):
        out.append(
            "UniFi needs username and password (a local account), or api_key for the "
            "integration API"
        )
    return out


# Missing or contradictory credentials of a device, in config-key words, by transport (given
# the profile's http.auth); a transport not listed needs none (MQTT's are optional).
CREDENTIALS: dict[str, Callable[[DeviceConfig, str], list[str]]] = {
    "snmp": _snmp_credentials,
    "http": _http_credentials,
}


def transport_of_scheme(scheme: str) -> str | None:
    """The transport whose :data:`SCHEMES` include ``scheme``."""
    return next((t for t, schemes in SCHEMES.items() if scheme in schemes), None)


class UplinkTarget(BaseModel):
    """Where the uplink connects; the certificate files stay the gateway's own."""

    model_config = _MODEL

    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 8883


def unique_device_names(devices: Sequence[DeviceConfig]) -> None:
    """Raise :class:`ValueError` naming device names given more than once."""
    names = [d.name for d in devices]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"devices: names must be unique; repeated: {', '.join(dupes)}")


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
    alarms: EdgeAlarms | None = None  # edge alarm rules (docs/alarms.md)

    @field_validator("buffer", mode="before")
    @classmethod
    def _buffer_stays_put(cls, value: object) -> object:
        if isinstance(value, dict) and "path" in value:
            raise ValueError(
                "path cannot be set over the air: the buffer stays where the gateway's"
                " agent.toml puts it (moving it would leave its backlog behind)"
            )
        return value

    @_model_validator(mode="after")
    def _unique_devices(self) -> ManagedConfig:
        unique_device_names(self.devices or [])
        return self


@dataclass(frozen=True, slots=True)
class ProfileFacts:
    """What a config is checked against: the transports a profile reads over, and the
    authentication its HTTP API takes (``none``, ``basic``, ``api_key``, ``unifi``)."""

    transports: tuple[str, ...]
    http_auth: str = "none"


# A profile's facts by name; raises ValueError saying the profile is unknown (and which exist).
ProfileLookup = Callable[[str], ProfileFacts]


def profile_problems(
    *,
    sources: Sequence[HostSourceConfig | SimulatedSourceConfig] | None,
    devices: Sequence[DeviceConfig] | None,
    lookup: ProfileLookup,
) -> list[tuple[str, str]]:
    """What is wrong with these sources and devices given their profiles, as ``(key path,
    problem)`` pairs located as a validation error would be (``devices.0``), like
    :func:`wire.problems`."""
    out: list[tuple[str, str]] = []
    for i, source in enumerate(sources or []):
        if isinstance(source, HostSourceConfig):
            where = f"sources.{i}.host.profile"
            try:
                facts = lookup(source.profile)
            except ValueError as exc:
                out.append((where, str(exc)))
                continue
            if "host" not in facts.transports:
                out.append(
                    (where, f"profile {source.profile} does not read the host (transport 'host')")
                )
    for i, device in enumerate(devices or []):
        problem = _device_problem(device, lookup)
        if problem:
            out.append((f"devices.{i}", problem))
    return out


def _device_problem(device: DeviceConfig, lookup: ProfileLookup) -> str | None:
    try:
        facts = lookup(device.profile)
    except ValueError as exc:
        return str(exc)
    allowed = [s for t in facts.transports for s in SCHEMES[t]]
    if device.scheme not in allowed:
        return (
            f"target {device.target!r}: profile {device.profile} reads over "
            f"{'/'.join(facts.transports)}; use "
            f"{' or '.join(a + '://host[:port]' for a in allowed)}"
        )
    check = CREDENTIALS.get(transport_of_scheme(device.scheme) or "")
    problems = check(device, facts.http_auth) if check else []
    if problems:
        return f"device {device.name}: " + "; ".join(problems)
    return None
