"""``outpost-collector``: run the collector and set up its broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

import click
import orjson

from collector._broker import init_broker, issue_gateway_identity
from collector._config import load_config
from collector._exceptions import CollectorError
from collector._ingest import Ingestor
from collector._service import CollectorService
from collector.stores import SqliteDocumentStore, SqliteTimeSeriesStore
from provisioning import ProvisioningError
from wire import topics

DEFAULT_CONFIG = Path("/etc/outpost/collector.toml")
_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="The collector's TOML config file.",
)


@click.group()
@click.version_option(package_name="outpost")
def main() -> None:
    """Outpost collector: ingests gateway batches into the stores."""


@main.command()
@_config_option
def serve(config_path: Path) -> None:
    """Consume batches from the broker and store them, until SIGINT or SIGTERM."""
    try:
        config = load_config(config_path)
    except CollectorError as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        ts = SqliteTimeSeriesStore(config.stores.timeseries_path)
        docs = SqliteDocumentStore(config.stores.documents_path)
    except CollectorError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        ingestor = Ingestor(config=config, timeseries=ts, documents=docs)
        service = CollectorService(
            broker=config.broker,
            ingestor=ingestor,
            documents=docs,
            dedup_window_s=config.stores.dedup_window_days * 86400,
            max_queued=config.limits.max_queued_batches,
            overload_retry_after_ms=config.limits.overload_retry_after_ms,
        )
        asyncio.run(_run_until_signal(service))
    finally:
        ts.close()
        docs.close()


async def _run_until_signal(service: CollectorService) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await service.run()
    logging.getLogger("outpost.collector").info("collector stopped")


@main.group()
def broker() -> None:
    """Set up the MQTT broker (Mosquitto) for Outpost."""


@broker.command("init")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Where to write the CA, certificates, mosquitto.conf and acl.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8883, show_default=True)
@click.option("--bind", default="127.0.0.1", show_default=True, help="Listener address.")
@click.option(
    "--hostname",
    "hostnames",
    multiple=True,
    default=("localhost",),
    show_default=True,
    help="Name(s) gateways use to reach the broker (the server certificate's SANs).",
)
@click.option(
    "--ip",
    "ips",
    multiple=True,
    default=("127.0.0.1",),
    show_default=True,
    help="IP address(es) for the server certificate's SANs.",
)
@click.option("--no-persistence", is_flag=True, help="Do not persist broker state to disk.")
@click.option(
    "--user",
    default=None,
    help="User Mosquitto runs as when started as root (default: its own 'mosquitto'); "
    "this user must be able to read the key files.",
)
def broker_init(
    directory: Path,
    port: int,
    bind: str,
    hostnames: tuple[str, ...],
    ips: tuple[str, ...],
    no_persistence: bool,
    user: str | None,
) -> None:
    """Write a Mosquitto config with an mTLS listener and per-gateway topic ACLs."""
    try:
        files = init_broker(
            directory,
            port=port,
            bind=bind,
            hostnames=hostnames,
            ip_addresses=ips,
            persistence=not no_persistence,
            user=user,
        )
    except (ProvisioningError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {files.config}, {files.acl} and certificates in {directory}")
    click.echo(f"start the broker:  mosquitto -c {files.config}")
    click.echo(f"collector identity: {files.collector_cert} / {files.collector_key}")


@main.command("dev-issue-cert")
@click.option(
    "--broker-dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="The directory written by 'broker init' (holds the CA).",
)
@click.option("--gateway-id", required=True, help="The gateway id (the certificate's CN).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Where to write ca.pem, gateway.pem and gateway.key (0600).",
)
@click.option("--days", type=click.IntRange(1, 825), default=90, show_default=True)
def dev_issue_cert(broker_dir: Path, gateway_id: str, out_dir: Path, days: int) -> None:
    """Development only: issue a gateway certificate directly from the CA."""
    if not topics.valid_gateway_id(gateway_id):
        raise click.BadParameter(
            "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            param_hint="--gateway-id",
        )
    try:
        ca, cert, key = issue_gateway_identity(broker_dir, gateway_id, out_dir, days=days)
    except (ProvisioningError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {cert} and {key} (0600) for gateway {gateway_id}; CA in {ca}")


@main.group()
def quarantine() -> None:
    """Inspect batches that failed validation."""


@quarantine.command("list")
@_config_option
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
def quarantine_list(config_path: Path, limit: int) -> None:
    """The most recent quarantined messages, newest first."""
    try:
        config = load_config(config_path)
        docs = SqliteDocumentStore(config.stores.documents_path)
    except CollectorError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        entries = docs.quarantined(limit=limit)
    finally:
        docs.close()
    if not entries:
        click.echo("quarantine is empty")
    for e in entries:
        click.echo(
            f"#{e.id} {e.gateway_id or '-'} {e.topic} {e.reason}: {e.detail} ({len(e.raw)} bytes)"
        )


@main.command()
@_config_option
@click.option("--measurement", required=True, help="e.g. environment, cpu, mem, net.")
@click.option(
    "--tag", "tag_filters", multiple=True, metavar="KEY=VALUE", help="Only series with this tag."
)
@click.option("--last", type=click.IntRange(1, 100_000), default=10, show_default=True)
def readings(config_path: Path, measurement: str, tag_filters: tuple[str, ...], last: int) -> None:
    """Print the most recent stored readings of a measurement, one JSON object per line."""
    tags: dict[str, str] = {}
    for item in tag_filters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--tag")
        tags[key] = value
    try:
        config = load_config(config_path)
        ts = SqliteTimeSeriesStore(config.stores.timeseries_path)
    except CollectorError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        points = ts.query(measurement, tags=tags)[-last:]
    finally:
        ts.close()
    if not points:
        click.echo(f"no readings of {measurement!r} stored yet", err=True)
    for p in points:
        click.echo(
            orjson.dumps(
                {"measurement": p.measurement, "tags": p.tags, "fields": p.fields, "ts": p.ts}
            ).decode()
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
