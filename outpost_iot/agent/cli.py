"""``outpost-agent``: run the agent, and show the state of its buffer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import aiomqtt
import click
import orjson
from pydantic import ValidationError

from outpost_iot.agent._agent import (
    Agent,
    build_polled_devices,
    build_push_sources,
    build_sources,
    make_device_client,
)
from outpost_iot.agent._buffer import Outbox, open_stats
from outpost_iot.agent._clock import Clock, SkewedClock, SystemClock
from outpost_iot.agent._collection import Collection
from outpost_iot.agent._config import DeviceConfig, load_raw
from outpost_iot.agent._exceptions import AgentError
from outpost_iot.agent._managed import ConfigReceiver, ManagedState, load_config
from outpost_iot.agent._renewal import previous_keys
from outpost_iot.agent.profiles import Mapper, Profile, explain, facts, find_profile, unmapped
from outpost_iot.agent.profiles._model import FieldSpec
from outpost_iot.agent.sources._mqtt import MqttDeviceSource, MqttTarget
from outpost_iot.agent.sources._polling import DeviceError, PolledDevice
from outpost_iot.systemd import Notifier, run_until_signal
from outpost_iot.wire import (
    DISTRIBUTION,
    Event,
    Reading,
    config_option,
    configure_logging,
    problems,
    profile_problems,
)

DEFAULT_CONFIG = Path("/etc/outpost/agent.toml")
_config_option = config_option(DEFAULT_CONFIG, "The agent's TOML config file")


@click.group()
@click.version_option(package_name=DISTRIBUTION)
def main() -> None:
    """Outpost gateway agent: collects readings and ships them to the collector."""


@main.command()
@_config_option
@click.option(
    "--simulate-clock-skew",
    type=float,
    default=0.0,
    help="Demo only: pretend the wall clock is off by this many seconds.",
)
def run(config_path: Path, simulate_clock_skew: float) -> None:
    """Run the agent until SIGINT or SIGTERM."""
    try:
        config = load_config(config_path)
        base = load_raw(config_path)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(config.log_level)
    receiver = ConfigReceiver(
        gateway_id=config.gateway_id,
        base=base,
        source=str(config_path),
        state=ManagedState(config.state_dir),
        key_files=[config.uplink.key_file, *previous_keys(config.uplink.key_file)],
        verify_key_file=config.uplink.signing_key_file,
    )
    clock: Clock = (
        SkewedClock(skew_ns=int(simulate_clock_skew * 1e9))
        if simulate_clock_skew
        else SystemClock()
    )
    try:
        with Outbox.for_agent(config, clock) as outbox:
            agent = Agent(
                config=config,
                clock=clock,
                outbox=outbox,
                sources=build_sources(config, clock),
                push_sources=[
                    *build_push_sources(config, clock),
                    *build_polled_devices(config, clock),
                ],
                notifier=Notifier(),
                receiver=receiver,
            )
            asyncio.run(run_until_signal(agent.run, "agent"))
    except* AgentError as group:
        raise click.ClickException("; ".join(str(e) for e in group.exceptions)) from None
    if agent.restart_requested:
        # The buffer is closed and durable; the same command starts with the new config.
        logging.shutdown()
        os.execv(sys.executable, [sys.executable, "-m", "outpost_iot.agent.cli", *sys.argv[1:]])  # noqa: S606


@main.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(config_path: Path, as_json: bool) -> None:
    """Backlog, oldest unsent reading, last ack and drops, read from the buffer."""
    try:
        config = load_config(config_path)
        stats = open_stats(config.buffer_path)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    now = time.time_ns()
    oldest_s = (now - stats.oldest_unsent_ns) / 1e9 if stats.oldest_unsent_ns else None
    last_ack_s = (now - stats.last_ack_ns) / 1e9 if stats.last_ack_ns else None
    report = {
        "gateway_id": config.gateway_id,
        "buffer": str(config.buffer_path),
        "uplink": stats.uplink,
        "backlog_readings": stats.backlog_readings,
        "backlog_batches": stats.batches,
        "pending_events": stats.pending_events,
        "oldest_unsent_age_s": round(oldest_s, 1) if oldest_s is not None else None,
        "last_ack_age_s": round(last_ack_s, 1) if last_ack_s is not None else None,
        "drops": stats.drops,
        "buffer_bytes": stats.db_bytes,
        "buffer_max_bytes": int(config.buffer.max_bytes),
        "buffer_reset": stats.reset or None,
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"gateway        {report['gateway_id']}")
    click.echo(f"uplink         {report['uplink']}")
    click.echo(
        f"backlog        {stats.backlog_readings} readings "
        f"({stats.batches} batches, {stats.pending_readings} not yet batched)"
    )
    click.echo(f"oldest unsent  {_age(oldest_s)}")
    click.echo(
        f"last ack       {_age(last_ack_s, suffix=' ago') if last_ack_s is not None else 'never'}"
    )
    drops = ", ".join(f"{k}: {v}" for k, v in sorted(stats.drops.items())) or "none"
    click.echo(f"drops          {drops}")
    click.echo(f"buffer         {stats.db_bytes} of {int(config.buffer.max_bytes)} bytes")
    if stats.reset:
        click.echo(f"buffer reset   {stats.reset}")


_PROBE_OPTIONS = {
    "api_key": "--api-key",
    "snmp_user": "--snmp-user",
    "auth_key": "--auth-key",
    "priv_key": "--priv-key",
    "auth_protocol": "--auth-protocol",
    "priv_protocol": "--priv-protocol",
    "community": "--community",
    "username": "--username",
    "password": "--password",
}


@main.command()
@click.option("--profile", "profile_name", required=True, help="A folder of firmware-profiles/.")
@click.option(
    "--target",
    required=True,
    metavar="URL",
    help="snmp://host[:port], https://host[:port], http://host[:port] or mqtt://host[:port].",
)
@click.option("--username", default=None, help="Username on the device or broker.")
@click.option(
    "--password",
    default=None,
    envvar="OUTPOST_PROBE_PASSWORD",
    help="Password (or set OUTPOST_PROBE_PASSWORD).",
)
@click.option(
    "--api-key",
    default=None,
    envvar="OUTPOST_PROBE_API_KEY",
    help="API key: pfSense REST API, UniFi integration API (or set OUTPOST_PROBE_API_KEY).",
)
@click.option(
    "--community",
    default=None,
    envvar="OUTPOST_PROBE_COMMUNITY",
    help="SNMPv2c community (or set OUTPOST_PROBE_COMMUNITY).",
)
@click.option("--snmp-user", default=None, help="SNMPv3 user (USM).")
@click.option(
    "--auth-protocol",
    type=click.Choice(["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"], case_sensitive=False),
    default="SHA",
    show_default=True,
    help="SNMPv3 authentication protocol.",
)
@click.option(
    "--auth-key",
    default=None,
    envvar="OUTPOST_PROBE_AUTH_KEY",
    help="SNMPv3 authentication passphrase (or set OUTPOST_PROBE_AUTH_KEY).",
)
@click.option(
    "--priv-protocol",
    type=click.Choice(["DES", "3DES", "AES", "AES192", "AES256"], case_sensitive=False),
    default="AES",
    show_default=True,
    help="SNMPv3 privacy protocol.",
)
@click.option(
    "--priv-key",
    default=None,
    envvar="OUTPOST_PROBE_PRIV_KEY",
    help="SNMPv3 privacy passphrase (or set OUTPOST_PROBE_PRIV_KEY).",
)
@click.option("--site", default="default", show_default=True, help="UniFi site (short name).")
@click.option(
    "--insecure",
    is_flag=True,
    help="Accept a device certificate that is not trusted (UniFi consoles ship a self-signed "
    "one). Only if you accept the risk.",
)
@click.option(
    "--variable",
    "variables",
    multiple=True,
    metavar="KEY=VALUE",
    help="A profile variable, e.g. prefix=tele.",
)
@click.option(
    "--duration",
    type=click.FloatRange(0.5, 3600),
    default=10.0,
    show_default=True,
    help="For MQTT families: how long to listen, in seconds.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.5, 120),
    default=10.0,
    show_default=True,
    help="For polled devices: how long to wait for the device, in seconds.",
)
@click.option(
    "--unmapped",
    "show_unmapped",
    is_flag=True,
    help="Also list, on stderr, the values the device sent that no rule of the profile read "
    "(what a new firmware added), and why a topic or endpoint gave nothing.",
)
def probe(
    profile_name: str,
    target: str,
    username: str | None,
    password: str | None,
    api_key: str | None,
    community: str | None,
    snmp_user: str | None,
    auth_protocol: str,
    auth_key: str | None,
    priv_protocol: str,
    priv_key: str | None,
    site: str,
    insecure: bool,
    variables: tuple[str, ...],
    duration: float,
    timeout: float,
    show_unmapped: bool,
) -> None:
    """Collect once from a device and print what would be sent, one JSON object per line.

    Readings and events go to stdout; a summary and errors go to stderr. When the device answers
    but nothing maps, stderr says which topics or endpoints were seen and why they did not.
    """
    try:
        profile = find_profile(profile_name)
    except AgentError as exc:
        raise click.BadParameter(str(exc), param_hint="--profile") from None
    values: dict[str, str] = {}
    for item in variables:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--variable")
        values[key] = value
    mqtt = target.startswith("mqtt://") and "mqtt" in profile.profile.transports
    seen = _Seen(mqtt=mqtt)
    if mqtt:
        _probe_mqtt(profile, profile_name, target, username, password, values, duration, seen)
        seen.report(show_unmapped)
        return
    raw = {
        "name": _probe_name(target),
        "profile": profile_name,
        "target": target,
        "username": username,
        "password": password,
        "api_key": api_key,
        "community": community,
        "snmp_user": snmp_user,
        "auth_protocol": auth_protocol.upper(),
        "auth_key": auth_key,
        "priv_protocol": priv_protocol.upper(),
        "priv_key": priv_key,
        "site": site,
        "insecure": insecure,
        "timeout": timeout,
        "variables": values,
    }
    try:
        device = DeviceConfig.model_validate({k: v for k, v in raw.items() if v is not None})
    except ValidationError as exc:
        messages = [problem for _, problem in problems(exc)]
    else:
        checked = profile_problems(sources=None, devices=[device], lookup=facts)
        messages = [problem for _, problem in checked]
    if messages:
        said = "; ".join(_probe_words(m) for m in messages)
        hint = "--target" if "target" in said else None
        raise click.BadParameter(said, param_hint=hint) from None
    started = time.monotonic()
    try:
        collected = asyncio.run(_collect_once(device, profile, seen))
    except DeviceError as exc:
        kind = exc.kind.replace("_", " ")
        message = _probe_words(exc.message)
        raise click.ClickException(
            message if kind in message[:30].lower() else f"{kind}: {message}"
        ) from None
    except ValueError as exc:  # a target the client cannot use
        raise click.BadParameter(str(exc), param_hint="--target") from None
    for r in collected.readings:
        click.echo(orjson.dumps(r.model_dump()).decode())
    for e in collected.events:
        click.echo(orjson.dumps(e.model_dump()).decode())
    measurements = sorted({r.measurement for r in collected.readings})
    click.echo(
        f"probe: {len(collected.readings)} readings and {len(collected.events)} events from "
        f"{target} in {time.monotonic() - started:.1f} s ({profile_name}"
        + (f": {', '.join(measurements)}" if measurements else "")
        + ")",
        err=True,
    )
    if collected.readings and any(
        isinstance(spec, FieldSpec) and spec.rate
        for rule in profile.readings
        for spec in rule.fields.values()
    ):
        click.echo(
            "note: rates (per-second fields) need two polls; the agent sends them from its "
            "second poll on",
            err=True,
        )
    if collected.drops.get("request_failed"):
        click.echo(
            f"{collected.drops['request_failed']} request(s) failed while others answered "
            "(the log above says which): an older firmware without that endpoint?",
            err=True,
        )
    seen.report(show_unmapped)


class _Seen:
    """What the device sent during a probe, per topic or endpoint, for the diagnosis."""

    MAX_KEYS = 1000

    def __init__(self, *, mqtt: bool) -> None:
        self.mqtt = mqtt
        self.mapper: Mapper | None = None
        self.first: dict[str, object] = {}
        self.count: Counter[str] = Counter()
        self.mapped: set[str] = set()

    def observe(self, mapper: Mapper) -> Callable[[str, object], None]:
        self.mapper = mapper

        def seen(key: str, payload: object) -> None:
            if key in self.first or len(self.first) < self.MAX_KEYS:
                self.first.setdefault(key, payload)
                self.count[key] += 1

        return seen

    def report(self, show_unmapped: bool) -> None:
        if self.mapper is None or not self.first:
            return
        why = {key: explain(self.mapper, key, payload) for key, payload in self.first.items()}
        silent = [key for key, reason in why.items() if reason]
        if len(silent) == len(why):
            if self.mqtt:
                sent = f"{sum(self.count.values())} message(s) on {len(why)} topic(s)"
                right = "the right profile and prefix (--variable prefix=...)"
            else:
                sent = f"answers from {len(why)} endpoint(s)"
                right = "the right profile"
            click.echo(
                f"the device sent {sent}, but nothing mapped: is this {right} for its firmware? "
                "Why, per topic or endpoint:",
                err=True,
            )
        if silent and (show_unmapped or len(silent) == len(why)):
            for key in silent[:10]:
                click.echo(f"  {_short(key)}: {why[key]}", err=True)
            if len(silent) > 10:
                click.echo(f"  ... and {len(silent) - 10} more", err=True)
        if not show_unmapped:
            return
        lines = []
        for key, payload in self.first.items():
            if why[key]:
                continue
            lines += [f"  {_short(key)}  {path} = {_short(repr(v))}" for path, v in unmapped(
                self.mapper, key, payload
            )]  # fmt: skip
        if lines:
            click.echo("values no rule read (new in this firmware?):", err=True)
            for line in lines[:200]:
                click.echo(line, err=True)
            if len(lines) > 200:
                click.echo(f"  ... and {len(lines) - 200} more", err=True)
        else:
            click.echo("every value the device sent was read by a rule", err=True)


def _short(text: str, limit: int = 120) -> str:
    from outpost_iot.wire import printable

    return printable(text, limit)


def _probe_name(target: str) -> str:
    host = target.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", host).strip("-.") or "device"
    return name[:64]


def _probe_words(message: str) -> str:
    """Config-key names in an error → the probe's option names."""
    for key, option in _PROBE_OPTIONS.items():
        message = re.sub(rf"(?<![\w-]){key}(?![\w-])", option, message)
    return message


async def _collect_once(device: DeviceConfig, profile: Profile, seen: _Seen) -> Collection:
    client = make_device_client(device, profile)
    mapper = Mapper(profile, variables=device.variables, device=device.name)
    polled = PolledDevice(
        name=device.name,
        client=client,
        mapper=mapper,
        interval=device.interval or profile.profile.interval,
        clock=SystemClock(),
        timeout=(device.timeout or 10.0) * 3,  # several requests, each with its own timeout
        observe=seen.observe(mapper),
    )
    try:
        return await polled.collect_once()
    finally:
        await client.aclose()


def _probe_mqtt(
    profile: Profile,
    profile_name: str,
    target: str,
    username: str | None,
    password: str | None,
    values: dict[str, str],
    duration: float,
    seen: _Seen,
) -> None:
    try:
        mqtt_target = MqttTarget.parse(target)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--target") from None
    source = MqttDeviceSource(
        name=mqtt_target.host,
        profile=profile,
        target=mqtt_target,
        clock=SystemClock(),
        username=username,
        password=password,
        variables=values,
        observe=lambda key, payload: observe(key, payload),
    )
    observe = seen.observe(source.mapper)
    counts = {"readings": 0, "events": 0}
    devices: set[str] = set()
    dropped: Counter[str] = Counter()

    def show(
        readings: Sequence[Reading], events: Sequence[Event], drops: Mapping[str, int]
    ) -> None:
        for r in readings:
            click.echo(orjson.dumps(r.model_dump()).decode())
            devices.add(r.tags.get("device", ""))
        for e in events:
            click.echo(orjson.dumps(e.model_dump()).decode())
        counts["readings"] += len(readings)
        counts["events"] += len(events)
        dropped.update(drops)

    try:
        asyncio.run(_listen(source, show, duration))
    except aiomqtt.MqttError as exc:
        raise click.ClickException(_mqtt_problem(mqtt_target, exc)) from None
    click.echo(
        f"probe: {counts['readings']} readings and {counts['events']} events from "
        f"{len(devices - {''})} device(s) in {duration:g} s ({profile_name}, {mqtt_target})",
        err=True,
    )
    if dropped:
        click.echo(
            "dropped (the log says which limit): "
            + ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items())),
            err=True,
        )
    if source.messages == 0:
        click.echo(
            f"no messages on {', '.join(source.mapper.mqtt_filters())}: is the device publishing "
            "to this broker, with this prefix (--variable prefix=...)?",
            err=True,
        )


async def _listen(source: MqttDeviceSource, show: Callable[..., None], duration: float) -> None:
    async with asyncio.timeout(duration + 10):  # the connection itself may hang
        task = asyncio.create_task(source.session(show))
        done, _ = await asyncio.wait({task}, timeout=duration)
        if task in done:
            task.result()  # raises the connection error
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _mqtt_problem(target: MqttTarget, exc: aiomqtt.MqttError) -> str:
    text = str(exc)
    if (
        "refused" in text.lower()
        and "connection" in text.lower()
        and "authoriz" not in text.lower()
    ):
        return f"cannot reach the MQTT broker at {target}: connection refused; check the address and that the broker listens on that port"
    if "authoriz" in text.lower() or "password" in text.lower():
        return (
            f"the MQTT broker at {target} refused the credentials; check --username and --password"
        )
    if "timed out" in text.lower():
        return f"no answer from the MQTT broker at {target}; check the address and the firewall"
    return f"MQTT broker at {target}: {text}"


def _age(seconds: float | None, suffix: str = "") -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s{suffix}"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min{suffix}"
    return f"{seconds / 3600:.1f} h{suffix}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
