"""Mosquitto set-up: an mTLS listener where a certificate's CN is the client's identity.

``outpost-collector broker init`` writes the device CA (if there is none yet), the broker's
server certificate, the collector's client certificate, ``mosquitto.conf`` and the roster of
the dynamic-security plugin (``dynamic-security.json``: what each identity may publish and
subscribe to, see ``collector._roster``).

What Mosquitto itself writes (the roster, its log, its persistence) lives in the subdirectory
``mosquitto/``. With ``--user``, Mosquitto drops to that user before it opens any of its files:
the subdirectory is that user's, the broker's certificate and key are readable by that user's
group, and the keys only the collector needs (the CA, the signing key, its own) stay 0600 to
whoever ran ``broker init``.
"""

from __future__ import annotations

import glob
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

import orjson

from outpost_iot.collector._roster import COLLECTOR_IDENTITY, initial_config, register_now
from outpost_iot.provisioning import CertificateAuthority, build_crl, create_signing_key, write_crl
from outpost_iot.wire import MAX_FRAME_BYTES, private_file

# Where distributions put Mosquitto's dynamic-security plugin (Debian: the multiarch libdir).
DYNSEC_PLUGIN_GLOBS = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/lib64/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/*/mosquitto_dynamic_security.so",
)
# A batch frame plus its topic, properties and headers: a packet past this is refused by the
# broker itself (the sender is disconnected), before any collector reads it.
MAX_PACKET_BYTES = MAX_FRAME_BYTES + 64 * 1024
MAX_QUEUED_MESSAGES = 1000
MAX_QUEUED_BYTES = 256 << 20


def find_dynsec_plugin() -> Path | None:
    for pattern in DYNSEC_PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))  # noqa: PTH207 - absolute patterns, Path.glob takes relative ones
        if found:
            return Path(found[0])
    return None


@dataclass(frozen=True)
class BrokerFiles:
    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    collector_cert: Path
    collector_key: Path
    config: Path
    roster: Path
    log: Path
    api_cert: Path
    api_key: Path
    signing_key: Path
    signing_pub: Path
    crl: Path
    state: Path  # what Mosquitto writes: the roster, its log, its persistence

    @classmethod
    def at(cls, directory: Path) -> BrokerFiles:
        d = directory
        return cls(
            d,
            d / "ca.pem",
            d / "ca.key",
            d / "server.pem",
            d / "server.key",
            d / "collector.pem",
            d / "collector.key",
            d / "mosquitto.conf",
            d / "mosquitto" / "dynamic-security.json",
            d / "mosquitto" / "mosquitto.log",
            d / "api.pem",
            d / "api.key",
            d / "signing.key",
            d / "signing.pub",
            d / "crl.pem",
            d / "mosquitto",
        )


def init_broker(
    directory: Path,
    *,
    port: int = 8883,
    bind: str = "127.0.0.1",
    hostnames: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    persistence: bool = True,
    user: str | None = None,
    dynsec_plugin: Path | None = None,
) -> BrokerFiles:
    """Write (or complete) a broker directory. An existing CA is kept, never replaced; an
    existing roster too (it lists the enrolled gateways). Raises :class:`ValueError` when
    Mosquitto's dynamic-security plugin cannot be found."""
    plugin = dynsec_plugin or find_dynsec_plugin()
    if plugin is None or not plugin.is_file():
        raise ValueError(
            "Mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) was not found"
            f"{f' at {plugin}' if plugin else ''}; install mosquitto 2.0 or newer (Debian and"
            " Ubuntu ship it in the mosquitto package) or pass --dynsec-plugin PATH"
        )
    files = BrokerFiles.at(directory)
    if user is None and os.geteuid() == 0 and _user_exists("mosquitto"):
        user = "mosquitto"  # what Mosquitto started as root drops to by default
    owner = _broker_owner(user)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    files.state.mkdir(exist_ok=True, mode=0o700)
    earlier = directory / "dynamic-security.json"  # where versions before 0.2 kept the roster
    if earlier.exists() and not files.roster.exists():
        earlier.replace(files.roster)
    if files.ca_cert.exists() and files.ca_key.exists():
        ca = CertificateAuthority.load(files.ca_cert, files.ca_key)
    else:
        ca = CertificateAuthority.create()
        ca.save(files.ca_cert, files.ca_key)
    ca.issue_to_files(
        hostnames[0] if hostnames else "outpost-broker",
        files.server_cert,
        files.server_key,
        server=True,
        dns_names=hostnames,
        ip_addresses=ip_addresses,
        days=825,
    )
    ca.issue_to_files(COLLECTOR_IDENTITY, files.collector_cert, files.collector_key, days=825)
    # The collector's HTTPS API (enrollment) has its own server certificate for the same names.
    ca.issue_to_files(
        hostnames[0] if hostnames else "outpost-collector",
        files.api_cert,
        files.api_key,
        server=True,
        dns_names=hostnames,
        ip_addresses=ip_addresses,
        days=825,
    )
    if not files.signing_key.exists():
        create_signing_key(files.signing_key, files.signing_pub)
    if not files.crl.exists():
        write_crl(files.crl, build_crl(ca, []))
    if not files.roster.exists():
        private_file(files.roster)
        files.roster.write_bytes(orjson.dumps(initial_config(), option=orjson.OPT_INDENT_2))
    lines = [
        "# Written by outpost-collector broker init.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"persistence {'true' if persistence else 'false'}",
    ]
    if user:
        # Started as root, Mosquitto switches to this user, who must be able to read the keys.
        lines.append(f"user {user}")
    if persistence:
        lines.append(f"persistence_location {files.state}/")
    lines += [
        f"log_dest file {files.log}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        # Who may publish and subscribe to what: the collector, and each enrolled gateway on
        # its own topics only (the plugin checks subscriptions too, which acl_file cannot).
        f"plugin {plugin}",
        f"plugin_opt_config_file {files.roster}",
        f"max_packet_size {MAX_PACKET_BYTES}",
        # What the broker holds for a client that is away (a collector replica reconnecting
        # keeps its session): at most this many batches and bytes, each; past that, the
        # broker drops them and the gateways send them again after their ack timeout.
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        "",
        f"listener {port} {bind}",
        "protocol mqtt",
        f"cafile {files.ca_cert}",
        f"certfile {files.server_cert}",
        f"keyfile {files.server_key}",
        # Revoked gateway certificates; the collector rewrites this file, and Mosquitto reads it
        # again on SIGHUP (see docs/collector.md).
        f"crlfile {files.crl}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "",
    ]
    files.config.write_text("\n".join(lines))
    files.config.chmod(0o644)
    if owner is not None:
        _hand_over(files, *owner)
    return files


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _broker_owner(user: str | None) -> tuple[int, int] | None:
    """The uid and gid Mosquitto will run as, when that is not who runs ``broker init``.
    Raises :class:`ValueError` for a user that does not exist, or when the files cannot be
    handed to another user (not root)."""
    if user is None:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(
            f"--user {user}: no such user on this machine (Debian's mosquitto package creates"
            " 'mosquitto')"
        ) from None
    if entry.pw_uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise ValueError(
            f"--user {user}: only root can hand the broker's files to another user; run"
            " broker init as root, or leave --user out to run Mosquitto as yourself"
        )
    return entry.pw_uid, entry.pw_gid


def _hand_over(files: BrokerFiles, uid: int, gid: int) -> None:
    """What Mosquitto reads to its user's group, what it writes to its user."""
    os.chown(files.directory, -1, gid)
    files.directory.chmod(0o750)
    for public in (files.ca_cert, files.server_cert, files.crl):
        os.chown(public, -1, gid)
        public.chmod(0o644)
    os.chown(files.server_key, -1, gid)
    files.server_key.chmod(0o640)
    os.chown(files.state, uid, gid)
    files.state.chmod(0o700)
    for written in (files.roster, files.log):
        if written.exists():
            os.chown(written, uid, gid)


def register_gateways(
    broker_dir: Path, gateway_ids: list[str], *, port: int, host: str = "localhost"
) -> None:
    """Put gateways on a running broker's roster with the collector's identity (development
    identities and tests; the collector does it for enrolled gateways). Raises
    :class:`RuntimeError` when the broker does not answer."""
    files = BrokerFiles.at(broker_dir)
    register_now(
        host=host,
        port=port,
        ca_file=files.ca_cert,
        cert_file=files.collector_cert,
        key_file=files.collector_key,
        gateway_ids=gateway_ids,
    )


def issue_gateway_identity(
    broker_dir: Path, gateway_id: str, out_dir: Path, *, days: int = 90
) -> tuple[Path, Path, Path]:
    """Development shortcut until enrollment: a gateway key and certificate from the CA (the
    gateway must still be put on the broker's roster: :func:`register_gateways`).

    Returns ``(ca_cert, cert, key)`` paths inside ``out_dir``.
    """
    files = BrokerFiles.at(broker_dir)
    ca = CertificateAuthority.load(files.ca_cert, files.ca_key)
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key, ca_copy = out_dir / "gateway.pem", out_dir / "gateway.key", out_dir / "ca.pem"
    ca.issue_to_files(gateway_id, cert, key, days=days)
    ca_copy.write_bytes(files.ca_cert.read_bytes())
    return ca_copy, cert, key
