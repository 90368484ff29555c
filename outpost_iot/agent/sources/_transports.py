"""Device transports, by the URL scheme of a device's ``target``.

Each :class:`Transport` makes what reads a device: a source that receives what the device
publishes (``push``: MQTT), or the client a :class:`~agent.sources._polling.PolledDevice` asks
on an interval (``client``: HTTP, SNMP). An HTTP client is chosen by the profile's
``http.auth``: a UniFi controller has its own session handling. Client libraries are imported
when a device needs them, so the agent stays small. The schemes of each transport and the
credentials it needs are wire's (``wire.SCHEMES``, ``wire._managed.CREDENTIALS``): the
collector checks a desired config with them.

A new transport is its client module in this package, one entry in :data:`TRANSPORTS` and its
schemes and credential check in ``outpost_iot/wire/_managed.py`` (see ``docs/contributing.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

from outpost_iot.agent._clock import Clock
from outpost_iot.agent.profiles import Profile
from outpost_iot.agent.sources._base import PushSource
from outpost_iot.agent.sources._polling import DeviceClient
from outpost_iot.wire import SCHEMES, DeviceConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class Transport:
    """How the agent reads a device over one transport."""

    name: str  # as profiles name it (profile.transport)
    push: Callable[[DeviceConfig, Profile, Clock], PushSource] | None = None
    client: Callable[[DeviceConfig, Profile], DeviceClient] | None = None

    @property
    def schemes(self) -> tuple[str, ...]:
        return SCHEMES[self.name]


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _mqtt_source(device: DeviceConfig, profile: Profile, clock: Clock) -> PushSource:
    from outpost_iot.agent.sources._mqtt import MqttDeviceSource, MqttTarget

    return MqttDeviceSource(
        name=device.name,
        profile=profile,
        target=MqttTarget.parse(device.target),
        clock=clock,
        username=device.username,
        password=_secret(device.password),
        variables=device.variables,
    )


def _snmp_client(device: DeviceConfig, profile: Profile) -> DeviceClient:
    from outpost_iot.agent.sources._snmp import SnmpCredentials, SnmpDeviceClient, parse_snmp_target

    host, port = parse_snmp_target(device.target)
    return SnmpDeviceClient(
        profile=profile,
        host=host,
        port=port,
        credentials=SnmpCredentials(
            community=_secret(device.community),
            user=device.snmp_user,
            auth_protocol=device.auth_protocol,
            auth_key=_secret(device.auth_key),
            priv_protocol=device.priv_protocol,
            priv_key=_secret(device.priv_key),
        ),
        # SNMP is UDP: a short wait and one retry beat one long wait.
        timeout=min(device.timeout or 10.0, 5.0) / 2,
        retries=1,
    )


def _unifi_client(device: DeviceConfig, profile: Profile) -> DeviceClient:
    from outpost_iot.agent.sources._unifi import UnifiClient

    return UnifiClient(
        profile=profile,
        base_url=device.target,
        username=device.username,
        password=_secret(device.password),
        api_key=_secret(device.api_key),
        site=device.site,
        insecure=device.insecure,
        timeout=device.timeout or 10.0,
    )


def _plain_http_client(device: DeviceConfig, profile: Profile) -> DeviceClient:
    from outpost_iot.agent.sources._http import HttpDeviceClient

    return HttpDeviceClient(
        profile=profile,
        base_url=device.target,
        api_key=_secret(device.api_key),
        username=device.username,
        password=_secret(device.password),
        insecure=device.insecure,
        timeout=device.timeout or 10.0,
    )


# HTTP clients by the profile's http.auth; any other kind is plain HTTP (none, basic, api_key).
HTTP_CLIENTS: dict[str, Callable[[DeviceConfig, Profile], DeviceClient]] = {
    "unifi": _unifi_client,
}


def _http_client(device: DeviceConfig, profile: Profile) -> DeviceClient:
    return HTTP_CLIENTS.get(profile.http.auth, _plain_http_client)(device, profile)


TRANSPORTS: dict[str, Transport] = {
    t.name: t
    for t in (
        Transport(name="mqtt", push=_mqtt_source),
        Transport(name="http", client=_http_client),
        Transport(name="snmp", client=_snmp_client),
    )
}


def transport_of(device: DeviceConfig) -> Transport:
    """The transport of ``device``'s target (the config was checked: its scheme is known)."""
    for transport in TRANSPORTS.values():
        if device.scheme in transport.schemes:
            return transport
    raise ValueError(f"device {device.name}: no transport reads {device.target!r}")
