"""``outpost-dev``: developer tooling (the local demo)."""

from __future__ import annotations

from pathlib import Path

import click

from outpost_iot.dev._demo import run_demo
from outpost_iot.dev._processes import find_mosquitto


@click.group()
def main() -> None:
    """Outpost developer tools."""


@main.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".outpost-demo"),
    show_default=True,
    help="Where the demo keeps its broker, stores, buffer and logs.",
)
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
def demo(workdir: Path, duration: float | None) -> None:
    """Run Mosquitto, the collector, an enrolled agent and a simulated site of devices."""
    if find_mosquitto() is None:
        raise click.ClickException("mosquitto is not installed: sudo apt-get install mosquitto")
    run_demo(workdir.resolve(), duration=duration)


if __name__ == "__main__":  # pragma: no cover
    main()
