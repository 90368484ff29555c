"""``outpost-agent``: run the agent, and show the state of its buffer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import aiomqtt
import click
import orjson

from agent._agent import Agent, build_polled_devices, build_push_sources, build_sources
from agent._buffer import Outbox, open_stats
from agent._clock import Clock, SkewedClock, SystemClock
from agent._config import load_config
from agent._exceptions import AgentError
from agent.profiles import find_profile
from agent.sources._mqtt import MqttDeviceSource, MqttTarget
from outpost_systemd import Notifier
from wire import Event, Reading

DEFAULT_CONFIG = Path("/etc/outpost/agent.toml")
_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="The agent's TOML config file.",
)


@click.group()
@click.version_option(package_name="outpost")
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
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    clock: Clock = (
        SkewedClock(skew_ns=int(simulate_clock_skew * 1e9))
        if simulate_clock_skew
        else SystemClock()
    )
    try:
        with Outbox(
            path=config.buffer_path,
            gateway_id=config.gateway_id,
            clock=clock,
            max_bytes=int(config.buffer.max_bytes),
            batch_max_readings=config.buffer.batch_max_readings,
            durability=config.buffer.durability,
        ) as outbox:
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
            )
            asyncio.run(_run_until_signal(agent))
    except* AgentError as group:
        raise click.ClickException("; ".join(str(e) for e in group.exceptions)) from None


async def _run_until_signal(agent: Agent) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await agent.run()
    logging.getLogger("outpost.agent").info("agent stopped")


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


@main.command()
@click.option("--profile", "profile_name", required=True, help="A folder of firmware-profiles/.")
@click.option(
    "--target", required=True, metavar="URL", help="mqtt://host[:port] (more transports follow)."
)
@click.option("--username", default=None, help="Username on the device or broker.")
@click.option(
    "--password",
    default=None,
    envvar="OUTPOST_PROBE_PASSWORD",
    help="Password (or set OUTPOST_PROBE_PASSWORD).",
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
def probe(
    profile_name: str,
    target: str,
    username: str | None,
    password: str | None,
    variables: tuple[str, ...],
    duration: float,
) -> None:
    """Collect once from a device and print what would be sent, one JSON object per line."""
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
    if "mqtt" not in profile.profile.transports:
        raise click.ClickException(
            f"profile {profile_name} reads over {'/'.join(profile.profile.transports)}, which this probe "
            "does not reach yet"
        )
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
    )
    counts = {"readings": 0, "events": 0}
    devices: set[str] = set()

    def show(readings: Sequence[Reading], events: Sequence[Event]) -> None:
        for r in readings:
            click.echo(orjson.dumps(r.model_dump()).decode())
            devices.add(r.tags.get("device", ""))
        for e in events:
            click.echo(orjson.dumps(e.model_dump()).decode())
        counts["readings"] += len(readings)
        counts["events"] += len(events)

    try:
        asyncio.run(_listen(source, show, duration))
    except aiomqtt.MqttError as exc:
        raise click.ClickException(_mqtt_problem(mqtt_target, exc)) from None
    click.echo(
        f"probe: {counts['readings']} readings and {counts['events']} events from "
        f"{len(devices - {''})} device(s) in {duration:g} s ({profile_name}, {mqtt_target})",
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
