"""``outpost-agent``: run the agent, and show the state of its buffer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from pathlib import Path

import click

from agent._agent import Agent, build_sources
from agent._buffer import Outbox, open_stats
from agent._clock import Clock, SkewedClock, SystemClock
from agent._config import load_config
from agent._exceptions import AgentError
from outpost_systemd import Notifier

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
