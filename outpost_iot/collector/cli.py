"""``outpost-collector``: run the collector and set up its broker."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import os
import secrets
import ssl
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from outpost_iot import wire
from outpost_iot.collector._app import assemble, enrollment_service
from outpost_iot.collector._backends import open_documents, open_timeseries
from outpost_iot.collector._broker import init_broker, issue_gateway_identity, register_gateways
from outpost_iot.collector._config import CollectorConfig, load_config
from outpost_iot.collector._configs import ConfigInvalid, ConfigRefused, ConfigService
from outpost_iot.collector._enrollment import EnrollmentService, hash_token, parse_duration
from outpost_iot.collector._exceptions import CollectorError, EnrollmentRefused
from outpost_iot.collector._export import (
    last_points,
    parse_time,
    stream_points,
    write_csv,
    write_jsonl,
)
from outpost_iot.collector._rollouts import RolloutError, RolloutService
from outpost_iot.collector._roster import list_roster
from outpost_iot.collector._service import client_tls
from outpost_iot.collector.stores import (
    ApiTokenRecord,
    AuditEntry,
    DesiredConfigRecord,
    DocumentStore,
)
from outpost_iot.provisioning import ProvisioningError
from outpost_iot.systemd import run_until_signal
from outpost_iot.wire import config_option, configure_logging, printable, topics

DEFAULT_CONFIG = Path("/etc/outpost/collector.toml")
_config_option = config_option(DEFAULT_CONFIG, "The collector's TOML config file")


def _audit(docs: DocumentStore, action: str, target: str, tenant: str, **detail: object) -> None:
    """Operator actions from the CLI go to the audit log like the API's, as ``cli:<user>``."""
    docs.audit(
        AuditEntry(
            time.time_ns(), f"cli:{getpass.getuser()}", tenant, action, target, "cli", detail
        )
    )


@click.group()
@click.version_option(package_name=wire.DISTRIBUTION)
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
    configure_logging(config.log_level)
    # Our own messages say which store failed and why; the clients' would repeat it per request.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # influxdb-client retries
    try:
        with assemble(config) as collector:
            asyncio.run(run_until_signal(collector.run, "collector"))
    except CollectorError as exc:
        raise click.ClickException(str(exc)) from None


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
    help="User Mosquitto runs as when started as root (default, when run as root: "
    "'mosquitto', as Mosquitto itself does). broker init, run as root, gives that user what "
    "Mosquitto reads and writes, and nothing else.",
)
@click.option(
    "--dynsec-plugin",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Mosquitto's mosquitto_dynamic_security.so (found by itself where distributions put it).",
)
def broker_init(
    directory: Path,
    port: int,
    bind: str,
    hostnames: tuple[str, ...],
    ips: tuple[str, ...],
    no_persistence: bool,
    user: str | None,
    dynsec_plugin: Path | None,
) -> None:
    """Write a Mosquitto config: an mTLS listener, each gateway on its own topics."""
    try:
        files = init_broker(
            directory,
            port=port,
            bind=bind,
            hostnames=hostnames,
            ip_addresses=ips,
            persistence=not no_persistence,
            user=user,
            dynsec_plugin=dynsec_plugin,
        )
    except (ProvisioningError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {files.config}, {files.roster} and certificates in {directory}")
    click.echo(f"start the broker:  mosquitto -c {files.config}")
    click.echo(f"collector identity: {files.collector_cert} / {files.collector_key}")


@broker.command("roster")
@_config_option
def broker_roster(config_path: Path) -> None:
    """List the identities the broker lets in (the collector and enrolled gateways)."""
    try:
        config = load_config(config_path)
        b = config.broker
        names = list_roster(
            host=b.host, port=b.port, ca_file=b.ca_file, cert_file=b.cert_file, key_file=b.key_file
        )
    except (CollectorError, RuntimeError, OSError, ssl.SSLError) as exc:
        raise click.ClickException(str(exc)) from None
    for name in names:
        click.echo(name)


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
@click.option(
    "--broker-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Put the gateway on this running broker's roster (on localhost) as well.",
)
def dev_issue_cert(
    broker_dir: Path, gateway_id: str, out_dir: Path, days: int, broker_port: int | None
) -> None:
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
    if broker_port is None:
        click.echo(
            "the broker lets it do nothing until it is on the roster: run this again with"
            " --broker-port while the broker runs"
        )
        return
    try:
        register_gateways(broker_dir, [gateway_id], port=broker_port)
    except (RuntimeError, OSError) as exc:
        raise click.ClickException(
            f"cannot put {gateway_id} on the broker's roster: {exc}"
        ) from None
    click.echo(f"{gateway_id} is on the broker's roster")


@main.group()
def quarantine() -> None:
    """Inspect batches that failed validation."""


@quarantine.command("list")
@_config_option
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
def quarantine_list(config_path: Path, limit: int) -> None:
    """The most recent quarantined messages, newest first."""
    with _opened(config_path) as (_, docs):
        entries = docs.quarantined(limit=limit)
    if not entries:
        click.echo("quarantine is empty")
    for e in entries:
        click.echo(
            f"#{e.id} {e.gateway_id or '-'} {printable(e.topic)} {e.reason}:"
            f" {printable(e.detail, 1000)} ({e.size or len(e.raw)} bytes)"
        )


@main.command()
@_config_option
@click.option("--measurement", required=True, help="e.g. environment, cpu, mem, net.")
@click.option(
    "--tag", "tag_filters", multiple=True, metavar="KEY=VALUE", help="Only series with this tag."
)
@click.option(
    "--last",
    type=click.IntRange(1, 100_000),
    default=None,
    help="The most recent N readings (default 10). For more, take a range: --since.",
)
@click.option(
    "--since",
    default=None,
    metavar="TIME",
    help="Every reading from TIME on, streamed: 2026-12-03T08:00:00Z, 2026-12-03, 24h (ago), "
    "or nanoseconds since the epoch.",
)
@click.option("--until", default="now", show_default=True, metavar="TIME", help="With --since.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="JSON Lines (one reading per line) or CSV (one row per field).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write to this file instead of standard output.",
)
def readings(
    config_path: Path,
    measurement: str,
    tag_filters: tuple[str, ...],
    last: int | None,
    since: str | None,
    until: str,
    fmt: str,
    output: Path | None,
) -> None:
    """Print stored readings of a measurement: the most recent ones, or every one of a time
    range (streamed, so any range fits: a day, a year)."""
    tags: dict[str, str] = {}
    for item in tag_filters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--tag")
        tags[key] = value
    if since is not None and last is not None:
        raise click.UsageError("--last and --since do not go together: pick one")
    now = time.time_ns()
    span: tuple[int, int] | None = None
    if since is not None:
        try:
            span = (parse_time(since, now_ns=now), parse_time(until, now_ns=now))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since/--until") from None
        if span[0] >= span[1]:
            raise click.BadParameter("--since must be before --until", param_hint="--since")
    try:
        config = load_config(config_path)
        ts = open_timeseries(config)
    except CollectorError as exc:
        raise click.ClickException(str(exc)) from None
    write = write_csv if fmt == "csv" else write_jsonl
    try:
        with output.open("w", newline="") if output else contextlib.nullcontext(sys.stdout) as out:
            if span is not None:
                points = stream_points(ts, measurement, start_ns=span[0], end_ns=span[1], tags=tags)
            else:
                points = iter(last_points(ts, measurement, last or 10, end_ns=now, tags=tags))
            written = write(points, out)
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        sys.stderr.close()
        return
    except (CollectorError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        ts.close()
    if not written:
        click.echo(
            f"no readings of {measurement!r} stored{' in that range' if span else ''}", err=True
        )
    elif output is not None:
        click.echo(f"wrote {written} readings to {output}", err=True)


@contextlib.contextmanager
def _opened(config_path: Path) -> Iterator[tuple[CollectorConfig, DocumentStore]]:
    """The config and the document store of an operator's command; closed when it ends."""
    try:
        config = load_config(config_path)
        docs = open_documents(config)
    except CollectorError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        yield config, docs
    finally:
        docs.close()


def _config_service(
    config_path: Path,
    config: CollectorConfig,
    docs: DocumentStore,
    publish: Callable[[str, bytes], None] | None = None,
) -> ConfigService:
    if config.pki is None:
        raise click.ClickException(f"{config_path}: the collector needs [pki] to sign configs")
    return ConfigService(docs=docs, signing_key=config.pki.signing_key, publish=publish)


def _rollout_service(
    config_path: Path, config: CollectorConfig, docs: DocumentStore
) -> RolloutService:
    """For commands that change rollouts; the running collector steps them."""
    return RolloutService(docs=docs, configs=_config_service(config_path, config, docs))


def _invalid(exc: ConfigInvalid) -> click.ClickException:
    return click.ClickException(
        "the config does not validate; nothing was signed or sent:\n"
        + "\n".join(f"  {f}: {p}" for f, p in exc.problems)
    )


def _enrollment(config: CollectorConfig, docs: DocumentStore) -> EnrollmentService:
    try:
        service = enrollment_service(config, docs)
    except CollectorError as exc:
        raise click.ClickException(str(exc)) from None
    if service is None:
        raise click.ClickException(
            "the config has no [pki] and [enrollment] sections; see docs/collector.md"
        )
    return service


@main.group()
def token() -> None:
    """Enrollment tokens: what a technician needs to enroll a gateway."""


@token.command("create")
@_config_option
@click.option("--tenant", required=True, help="The customer the gateway belongs to.")
@click.option("--site", required=True, help="The site the gateway is installed at.")
@click.option("--expires", default="24h", show_default=True, help="Lifetime: 30m, 24h, 7d.")
@click.option("--uses", type=click.IntRange(1, 10_000), default=1, show_default=True)
def token_create(config_path: Path, tenant: str, site: str, expires: str, uses: int) -> None:
    """Create a token. It is printed once; only its hash is stored."""
    try:
        expires_s = parse_duration(expires)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from None
    with _opened(config_path) as (config, docs):
        try:
            secret, rec = _enrollment(config, docs).create_token(
                tenant=tenant, site=site, expires_s=expires_s, uses=uses
            )
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        _audit(docs, "enrollment_token.create", rec.id, tenant, site=site, uses=uses)
    click.echo(secret)
    click.echo(
        f"token {rec.id}: tenant {tenant}, site {site}, {uses} use(s), expires in {expires}. "
        "It is shown only now.",
        err=True,
    )


@token.command("list")
@_config_option
@click.option("--tenant", default=None, help="Only this tenant's tokens.")
def token_list(config_path: Path, tenant: str | None) -> None:
    """Tokens with their scope, expiry and uses left (never the tokens themselves)."""
    with _opened(config_path) as (_, docs):
        tokens = docs.enrollment_tokens(tenant)
    now = time.time_ns()
    for t in tokens:
        state = (
            "revoked"
            if t.revoked
            else "expired"
            if t.expires_ns <= now
            else "used up"
            if t.uses_left <= 0
            else "valid"
        )
        click.echo(f"{t.id}  {t.tenant}/{t.site}  {t.uses_left}/{t.uses_total} uses left  {state}")


@token.command("revoke")
@_config_option
@click.argument("token_id")
def token_revoke(config_path: Path, token_id: str) -> None:
    """Revoke an enrollment token by its id (from 'token list')."""
    with _opened(config_path) as (_, docs):
        owner = next((t.tenant for t in docs.enrollment_tokens() if t.id == token_id), "")
        if not docs.revoke_enrollment_token(token_id):
            raise click.ClickException(f"no enrollment token {token_id!r}; see 'token list'")
        _audit(docs, "enrollment_token.revoke", token_id, owner)
    click.echo(f"token {token_id} revoked")


@main.group()
def gateway() -> None:
    """Enrolled gateways."""


@gateway.command("list")
@_config_option
@click.option("--tenant", default=None)
def gateway_list(config_path: Path, tenant: str | None) -> None:
    """Gateways with tenant, site, state and certificate expiry."""
    with _opened(config_path) as (_, docs):
        rows = docs.gateways(tenant)
    for g in rows:
        expiry = (
            time.strftime("%Y-%m-%d", time.gmtime(g.cert_not_after_ns / 1e9))
            if g.cert_not_after_ns
            else "-"
        )
        state = "decommissioned" if g.revoked_ns else g.state
        click.echo(f"{g.id}  {g.tenant or '-'}/{g.site or '-'}  {state}  cert until {expiry}")


@gateway.command("decommission")
@_config_option
@click.argument("gateway_id")
def gateway_decommission(config_path: Path, gateway_id: str) -> None:
    """Revoke a gateway's certificates and publish the CRL; the collector refuses it at once."""
    with _opened(config_path) as (config, docs):
        try:
            count = _enrollment(config, docs).decommission(gateway_id)
        except EnrollmentRefused as exc:
            raise click.ClickException(exc.message) from None
        tenant = docs.gateway_tenant(gateway_id) or ""
        _audit(docs, "gateway.decommission", gateway_id, tenant, certificates=count)
    assert config.pki is not None
    click.echo(
        f"gateway {gateway_id} decommissioned: {count} certificate(s) revoked; "
        f"CRL written to {config.pki.crl_file}"
    )


@main.group("config")
def config_group() -> None:
    """Desired configs over the air: set one for a gateway, show desired versus reported."""


@config_group.command("set")
@_config_option
@click.argument("gateway_id")
@click.option(
    "--file",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="JSON or TOML with the managed config: devices, sources, log_level, uplink, buffer.",
)
def config_set(config_path: Path, gateway_id: str, config_file: Path) -> None:
    """Validate, sign, seal and publish a desired config for GATEWAY_ID (retained)."""
    desired = _read_managed(config_file)
    _change_config(
        config_path,
        gateway_id,
        lambda service, actor: service.set_desired(gateway_id, desired, actor),
        "config.set",
    )


@config_group.command("patch")
@_config_option
@click.argument("gateway_id")
@click.option(
    "--file",
    "patch_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="JSON or TOML with the change: a merge patch; devices merge by name.",
)
def config_patch(config_path: Path, gateway_id: str, patch_file: Path) -> None:
    """Change part of GATEWAY_ID's desired config: the newest version with the patch laid over
    it becomes the next (validated, signed, sealed, published)."""
    patch = _read_managed(patch_file)
    _change_config(
        config_path,
        gateway_id,
        lambda service, actor: service.patch_desired(gateway_id, patch, actor),
        "config.patch",
    )


def _change_config(
    config_path: Path,
    gateway_id: str,
    change: Callable[[ConfigService, str], DesiredConfigRecord],
    action: str,
) -> None:
    with _opened(config_path) as (config, docs):
        service = _config_service(
            config_path,
            config,
            docs,
            lambda topic, payload: _publish_retained(config, topic, payload),
        )
        if not docs.gateway_exists(gateway_id):
            raise click.ClickException(f"no gateway {gateway_id!r}; see 'gateway list'")
        try:
            record = change(service, f"cli:{getpass.getuser()}")
        except ConfigInvalid as exc:
            raise _invalid(exc) from None
        except ConfigRefused as exc:
            raise click.ClickException(exc.detail) from None
        _audit(
            docs,
            action,
            gateway_id,
            docs.gateway_tenant(gateway_id) or "",
            version=record.version,
        )
    click.echo(f"desired config {record.version} for {gateway_id} signed and published")


@config_group.command("show")
@_config_option
@click.argument("gateway_id")
def config_show(config_path: Path, gateway_id: str) -> None:
    """Desired versus reported for GATEWAY_ID (secrets shown as (sealed))."""
    with _opened(config_path) as (_, docs):
        records = docs.desired_configs(gateway_id, limit=1)
        report = docs.config_report(gateway_id)
    if not records:
        click.echo(f"{gateway_id}: no desired config set")
    else:
        envelope = wire.ConfigEnvelope.model_validate_json(records[0].envelope)
        shown = wire.join_secrets(envelope.config, dict.fromkeys(envelope.secrets, "(sealed)"))
        click.echo(f"desired  version {records[0].version}, set by {records[0].actor}")
        click.echo(json.dumps(shown, indent=2))
    if report is None:
        click.echo("reported nothing yet")
    else:
        extra = f" ({report.reason}: {'; '.join(report.errors)})" if report.reason else ""
        click.echo(
            f"reported version {report.version} {report.status}, "
            f"running {report.applied_version}{extra}"
        )


def _read_managed(path: Path, option: str = "--file") -> dict[str, Any]:
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint=option) from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: expected an object", param_hint=option)
    return data


def _publish_retained(config: CollectorConfig, topic: str, payload: bytes) -> None:
    """Publish with the collector's own certificate (the running collector republishes too)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{config.broker.client_id}-cli-{os.getpid()}",
        protocol=mqtt.MQTTv5,
    )
    client.tls_set_context(client_tls(config.broker))
    try:
        client.connect(config.broker.host, config.broker.port)
        client.loop_start()
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    except (OSError, RuntimeError, ValueError) as exc:
        raise click.ClickException(
            f"stored, but cannot publish to {config.broker.host}:{config.broker.port}: {exc}; "
            "the collector publishes it when it next connects"
        ) from None
    finally:
        client.loop_stop()
        client.disconnect()


@main.group()
def rollout() -> None:
    """Roll a config out to many gateways in waves (advanced by the running collector)."""


@rollout.command("create")
@_config_option
@click.option("--tenant", required=True, help="Whose gateways.")
@click.option(
    "--file",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="JSON or TOML with the whole managed config for every gateway "
    "(secrets left out are carried from each gateway's previous version).",
)
@click.option(
    "--patch",
    "patch_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Or: JSON or TOML with a change laid over each gateway's own desired config.",
)
@click.option("--site", default=None, help="Only the tenant's gateways at this site.")
@click.option("--tag", default=None, help="Only the tenant's gateways with this tag.")
@click.option("--gateway", "gateways", multiple=True, help="Only these gateways (repeatable).")
@click.option("--waves", default="1,10%,100%", show_default=True, help="Wave sizes.")
@click.option(
    "--abort-above",
    type=click.FloatRange(0, 100),
    default=0.0,
    show_default=True,
    help="Abort when more than this percentage of a wave fails or times out.",
)
@click.option(
    "--timeout",
    "timeout",
    default="10m",
    show_default=True,
    help="How long a gateway may take to report (e.g. 90s, 10m).",
)
@click.option(
    "--device-errors-fail",
    is_flag=True,
    help="Count a gateway whose devices refuse the new config (credentials) as failed.",
)
def rollout_create(
    config_path: Path,
    tenant: str,
    config_file: Path | None,
    patch_file: Path | None,
    site: str | None,
    tag: str | None,
    gateways: tuple[str, ...],
    waves: str,
    abort_above: float,
    timeout: str,
    device_errors_fail: bool,
) -> None:
    """Create a rollout; its first wave starts within seconds in the running collector."""
    if (config_file is None) == (patch_file is None):
        raise click.UsageError("give either --file (a whole config) or --patch (a change)")
    try:
        timeout_s = parse_duration(timeout)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--timeout") from None
    with _opened(config_path) as (config, docs):
        service = _rollout_service(config_path, config, docs)
        try:
            rollout_id = service.create(
                tenant=tenant,
                config=_read_managed(config_file) if config_file else None,
                patch=_read_managed(patch_file, "--patch") if patch_file else None,
                actor=f"cli:{getpass.getuser()}",
                site=site,
                tag=tag,
                gateway_ids=list(gateways) or None,
                waves=[w.strip() for w in waves.split(",")],
                abort_percent=abort_above,
                timeout_s=timeout_s,
                device_errors_fail=device_errors_fail,
            )
        except ConfigInvalid as exc:
            raise _invalid(exc) from None
        except RolloutError as exc:
            raise click.ClickException(exc.detail) from None
        _audit(docs, "rollout.create", rollout_id, tenant, waves=waves)
        members = docs.rollout_members(rollout_id)
    sizes = [
        sum(1 for m in members if m.wave == w) for w in range(max(m.wave for m in members) + 1)
    ]
    click.echo(rollout_id)
    click.echo(
        f"rollout {rollout_id}: {len(members)} gateways in waves of {', '.join(map(str, sizes))}; "
        f"watch it with 'outpost-collector rollout watch {rollout_id}'",
        err=True,
    )


@rollout.command("watch")
@_config_option
@click.argument("rollout_id")
@click.option("--interval", type=click.FloatRange(0.2, 60), default=2.0, show_default=True)
def rollout_watch(config_path: Path, rollout_id: str, interval: float) -> None:
    """Follow a rollout wave by wave until it completes (exit 0) or is aborted (exit 1)."""
    with _opened(config_path) as (_, docs):
        found = docs.rollouts("*", rollout_id=rollout_id)
        if not found:
            raise click.ClickException(f"no rollout {rollout_id!r}")
        total = len(docs.rollout_members(rollout_id))
        with click.progressbar(length=total, label=f"rollout {rollout_id}", file=sys.stderr) as bar:
            done = 0
            while True:
                rollout_ = docs.rollouts("*", rollout_id=rollout_id)[0]
                members = docs.rollout_members(rollout_id)
                finished = sum(1 for m in members if m.outcome is not None)
                bar.update(finished - done)
                done = finished
                if rollout_.status in ("completed", "aborted"):
                    break
                time.sleep(interval)
        reports = {
            m.gateway_id: docs.config_report(m.gateway_id)
            for m in members
            if m.outcome in ("failed", "timed_out")
        }
    for w in range(rollout_.waves):
        ms = [m for m in members if m.wave == w]
        counts = ", ".join(
            f"{sum(1 for m in ms if m.outcome == o)} {o.replace('_', ' ')}"
            for o in ("applied", "failed", "timed_out", "skipped")
        )
        started = "started" if any(m.started_ns for m in ms) else "not started"
        click.echo(f"wave {w + 1}: {len(ms)} gateways, {started}: {counts}")
    for m in members:
        if m.outcome in ("failed", "timed_out"):
            said = reports.get(m.gateway_id)
            if said is not None and said.version == m.version:
                why = said.reason + (f": {'; '.join(said.errors)}" if said.errors else "")
            else:
                why = f"no report within {rollout_.timeout_s:g} s"
            click.echo(f"  {m.gateway_id} (wave {m.wave + 1}) {m.outcome}: {why}")
    click.echo(
        f"rollout {rollout_id} {rollout_.status}"
        + (f": {rollout_.reason}" if rollout_.reason else "")
    )
    if rollout_.status == "aborted":
        sys.exit(1)


def _rollout_control(config_path: Path, rollout_id: str, action: str) -> None:
    with _opened(config_path) as (config, docs):
        service = _rollout_service(config_path, config, docs)
        try:
            rollout_ = service.control("*", rollout_id, action)
        except RolloutError as exc:
            raise click.ClickException(exc.detail) from None
        _audit(docs, f"rollout.{action}", rollout_id, rollout_.tenant)
    click.echo(f"rollout {rollout_id} {rollout_.status}")


@rollout.command("pause")
@_config_option
@click.argument("rollout_id")
def rollout_pause(config_path: Path, rollout_id: str) -> None:
    """No new wave starts until 'resume'."""
    _rollout_control(config_path, rollout_id, "pause")


@rollout.command("resume")
@_config_option
@click.argument("rollout_id")
def rollout_resume(config_path: Path, rollout_id: str) -> None:
    """Carry on with a paused rollout."""
    _rollout_control(config_path, rollout_id, "resume")


@rollout.command("abort")
@_config_option
@click.argument("rollout_id")
def rollout_abort(config_path: Path, rollout_id: str) -> None:
    """Stop a rollout for good; gateways already changed keep their config."""
    _rollout_control(config_path, rollout_id, "abort")


@main.group("api-token")
def api_token() -> None:
    """Bearer tokens for the collector's HTTP API."""


@api_token.command("create")
@_config_option
@click.option("--tenant", required=True, help="The tenant it acts for; '*' (admin only): all.")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True)
@click.option("--name", default="", help="What it is for (shown in listings).")
def api_token_create(config_path: Path, tenant: str, role: str, name: str) -> None:
    """Create an API token. It is printed once; only its hash is stored."""
    if tenant == "*" and role != "admin":
        raise click.BadParameter(
            "only an admin token may act for all tenants ('*')", param_hint="--tenant"
        )
    secret = "opa_" + secrets.token_urlsafe(32)
    record = ApiTokenRecord(
        id=secrets.token_hex(4),
        hash=hash_token(secret),
        tenant=tenant,
        role=role,
        name=name,
        created_ns=time.time_ns(),
    )
    with _opened(config_path) as (_, docs):
        docs.create_api_token(record)
        _audit(docs, "api_token.create", record.id, tenant, role=role, name=name)
    click.echo(secret)
    click.echo(f"API token {record.id}: {role} of tenant {tenant}. It is shown only now.", err=True)


@api_token.command("revoke")
@_config_option
@click.argument("token_id")
def api_token_revoke(config_path: Path, token_id: str) -> None:
    """Revoke an API token by its id."""
    with _opened(config_path) as (_, docs):
        if not docs.revoke_api_token(token_id, time.time_ns()):
            raise click.ClickException(f"no active API token {token_id!r}")
        _audit(docs, "api_token.revoke", token_id, "")
    click.echo(f"API token {token_id} revoked")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


@main.group("alarm-rule")
def alarm_rule() -> None:
    """Alarm rules (docs/alarms.md): what raises an alarm, per tenant."""


@alarm_rule.command("create")
@_config_option
@click.option("--tenant", required=True, help="The customer the rule is for.")
@click.option(
    "--file",
    "rule_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The rule as JSON or TOML: name, severity, condition, scope (docs/alarms.md).",
)
def alarm_rule_create(config_path: Path, tenant: str, rule_file: Path) -> None:
    """Add a rule; one that does not validate is refused with each problem named."""
    from pydantic import ValidationError

    from outpost_iot.collector._alarms import RuleIn
    from outpost_iot.collector.stores import AlarmRuleRecord

    data = _read_managed(rule_file)
    try:
        rule = RuleIn.model_validate(data)
    except ValidationError as exc:
        raise click.ClickException(wire.describe(str(rule_file), wire.problems(exc))) from None
    with _opened(config_path) as (config, docs):
        if len(docs.rules(tenant)) >= config.alarms.max_rules:
            raise click.ClickException(
                f"tenant {tenant} has {config.alarms.max_rules} rules ([alarms] max_rules)"
            )
        now = time.time_ns()
        record = AlarmRuleRecord(
            f"rule-{secrets.token_hex(6)}", tenant, rule.name, rule.severity, rule.enabled,
            rule.edge, rule.notify, rule.spec(), now, now, f"cli:{getpass.getuser()}",
        )  # fmt: skip
        docs.save_rule(record)
        _audit(docs, "alarm_rule.create", record.id, tenant, name=rule.name, **rule.spec())
    click.echo(record.id)


@alarm_rule.command("list")
@_config_option
@click.option("--tenant", default=None, help="Only this tenant's rules.")
def alarm_rule_list(config_path: Path, tenant: str | None) -> None:
    """Rules: id, tenant, severity, condition and scope."""
    with _opened(config_path) as (_, docs):
        rules = docs.rules(tenant or "*")
    for r in rules:
        state = "" if r.enabled else "  (disabled)"
        click.echo(
            f"{r.id}  {r.tenant}  {r.severity:8}  {printable(r.name)}  "
            f"{json.dumps(r.spec, sort_keys=True)}{state}"
        )


@alarm_rule.command("delete")
@_config_option
@click.argument("rule_id")
def alarm_rule_delete(config_path: Path, rule_id: str) -> None:
    """Delete a rule; its open alarms are cleared (without notifications)."""
    with _opened(config_path) as (_, docs):
        found = docs.rules("*", rule_id=rule_id)
        if not found or not docs.delete_rule(found[0].tenant, rule_id):
            raise click.ClickException(f"no alarm rule {rule_id!r}; see 'alarm-rule list'")
        _audit(docs, "alarm_rule.delete", rule_id, found[0].tenant, name=found[0].name)
    click.echo(f"rule {rule_id} deleted")


@main.group("alarm")
def alarm_group() -> None:
    """Alarms: list, acknowledge."""


@alarm_group.command("list")
@_config_option
@click.option("--tenant", default=None)
@click.option(
    "--status",
    type=click.Choice(["open", "active", "acknowledged", "cleared"]),
    default="open",
    show_default=True,
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
def alarm_list(config_path: Path, tenant: str | None, status: str, limit: int) -> None:
    """Alarms, newest first."""
    with _opened(config_path) as (_, docs):
        alarms = docs.alarms(tenant or "*", status=status, limit=limit)
    for a in alarms:
        raised = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a.raised_ns / 1e9))
        click.echo(
            f"{a.id}  {raised}Z  {a.severity:8}  {a.status:12}  {a.tenant}  "
            f"{printable(a.name)}  {printable(a.originator)}"
        )


@alarm_group.command("ack")
@_config_option
@click.argument("alarm_id", type=click.IntRange(1, 2**63 - 1))
def alarm_ack(config_path: Path, alarm_id: int) -> None:
    """Acknowledge an alarm: someone is on it (it stays open until it clears)."""
    with _opened(config_path) as (_, docs):
        acked = docs.ack_alarm("*", alarm_id, f"cli:{getpass.getuser()}", time.time_ns())
        if acked is None:
            raise click.ClickException(
                f"alarm {alarm_id} is not open and unacknowledged; see 'alarm list'"
            )
        _audit(docs, "alarm.acknowledge", str(alarm_id), acked.tenant, rule=acked.rule_id)
    click.echo(f"alarm {alarm_id} acknowledged")
