"""``outpost-provision``: the field technician's command to enroll a gateway."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import click

from outpost_iot.provisioning._enroll import (
    CERT_FILE,
    KEY_FILE,
    Identity,
    check_directory,
    current_identity,
    request_identity,
    write_identity,
)
from outpost_iot.provisioning._exceptions import ProvisioningError
from outpost_iot.wire import DISTRIBUTION, private_file


@click.group()
@click.version_option(package_name=DISTRIBUTION)
def main() -> None:
    """Outpost provisioning: turn a fresh gateway into a trusted, running agent."""


@main.command()
@click.option(
    "--collector", required=True, metavar="URL", help="The collector, https://host[:port]."
)
@click.option(
    "--token",
    required=True,
    envvar="OUTPOST_ENROLL_TOKEN",
    metavar="TOKEN",
    help="The one-time enrollment token (or set OUTPOST_ENROLL_TOKEN).",
)
@click.option(
    "--identity-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("/var/lib/outpost/identity"),
    show_default=True,
    help="Where the key and certificates are kept (0700; the key 0600).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("/etc/outpost/agent.toml"),
    show_default=True,
    help="Where to write the agent's config.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("/var/lib/outpost"),
    show_default=True,
    help="The agent's state (its buffer).",
)
@click.option(
    "--ca-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Trust this CA certificate for the collector's HTTPS (sites without a public CA).",
)
@click.option("--tenant", default=None, help="Refuse the token unless it belongs to this tenant.")
@click.option("--force", is_flag=True, help="Re-enroll an enrolled gateway (its buffer is kept).")
@click.option("--start", is_flag=True, help="Enable and start outpost-agent (systemd) afterwards.")
@click.option(
    "--owner",
    default="outpost",
    show_default=True,
    help="Run as root, hand the identity and state directories to this user (the agent's).",
)
def enroll(
    collector: str,
    token: str,
    identity_dir: Path,
    config_path: Path,
    state_dir: Path,
    ca_file: Path | None,
    tenant: str | None,
    force: bool,
    start: bool,
    owner: str,
) -> None:
    """Enroll this gateway: make its key here, get its certificate, write the agent config."""
    try:
        check_directory(identity_dir)
        existing = current_identity(identity_dir)
        if existing and not force:
            gateway_id, cert = existing
            click.echo(
                f"This gateway is already enrolled as {gateway_id} (certificate valid until "
                f"{cert.not_valid_after_utc:%Y-%m-%d}). Nothing changed.\n"
                "To enroll it again, run the same command with --force; its buffer is kept."
            )
            return
        current = (identity_dir / CERT_FILE, identity_dir / KEY_FILE) if existing else None
        key, answer = request_identity(
            collector=collector, token=token, ca_file=ca_file, tenant=tenant, current=current
        )
        identity = write_identity(identity_dir, key, answer, collector)
        wrote_config = write_agent_config(config_path, identity, state_dir)
        handed = hand_over(owner, identity_dir, state_dir, files=(config_path,))
    except ProvisioningError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"Enrolled as gateway {identity.gateway_id} (tenant {identity.tenant}, site {identity.site})."
    )
    click.echo(f"  identity   {identity_dir} (key {identity.key}, mode 0600)")
    click.echo(f"  broker     {identity.broker_host}:{identity.broker_port}")
    if handed:
        click.echo(f"  owner      {owner} (the agent's user) owns {identity_dir} and {state_dir}")
    click.echo(
        f"  config     {config_path} ({'written' if wrote_config else 'kept: it already names this gateway'})"
    )
    if start:
        _start_service()
    else:
        click.echo("Next: sudo systemctl enable --now outpost-agent, then: outpost-agent status")


def write_agent_config(path: Path, identity: Identity, state_dir: Path) -> bool:
    """Write a working agent config; keep an existing one that already names this gateway."""
    if path.exists():
        text = path.read_text()
        if f'gateway_id = "{identity.gateway_id}"' in text:
            return False
        backup = path.with_suffix(path.suffix + ".bak")
        shutil.copy2(path, backup)
        backup.chmod(0o600)  # it holds the old device passwords
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".new")
        # Device passwords go into this file: 0600 whatever the umask (handed to the agent's
        # user with the identity when enroll runs as root).
        tmp.unlink(missing_ok=True)
        private_file(tmp)
        tmp.write_text(
            f"""\
# Written by outpost-provision enroll for gateway {identity.gateway_id}.
# See docs/agent.md for every key. Add [[sources]] for the devices at this site.
gateway_id = "{identity.gateway_id}"
state_dir = "{state_dir}"

[uplink]
host = "{identity.broker_host}"
port = {identity.broker_port}
ca_file = "{identity.ca}"
cert_file = "{identity.cert}"
key_file = "{identity.key}"

[[sources]]
type = "host"
interval = 10
"""
        )
        tmp.replace(path)
    except OSError as exc:
        raise ProvisioningError(f"cannot write the agent config {path}: {exc.strerror}") from None
    return True


def hand_over(owner: str, *directories: Path, files: tuple[Path, ...] = ()) -> bool:
    """As root, give the agent's user its directories and ``files`` (the key and the config
    stay 0600, now theirs)."""
    if os.geteuid() != 0:
        return False
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        return False  # no such user (yet): the files stay root's; docs/technician.md says so
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in [directory, *directory.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
    for path in files:
        if path.exists():
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return True


def _start_service() -> None:
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise click.ClickException("systemctl not found: start the agent with 'outpost-agent run'")
    result = subprocess.run([systemctl, "enable", "--now", "outpost-agent"], check=False)
    if result.returncode != 0:
        raise click.ClickException(
            "systemctl could not start outpost-agent; see journalctl -u outpost-agent"
        )
    click.echo("outpost-agent started. Check it with: outpost-agent status")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
