"""Enrollment, renewal and revocation with a real Mosquitto, the real collector and agents."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from outpost_iot import wire
from outpost_iot.collector.cli import main as collector_cli
from outpost_iot.dev._processes import free_port
from outpost_iot.provisioning.cli import main as provision_cli
from tests._wait import wait_until
from tests.e2e._harness import Harness, assert_exactly_once
from tests.e2e.test_pipeline import drain
from tests.e2e.test_protection import Client, connects

pytestmark = [pytest.mark.broker]


@pytest.fixture
def pki(harness: Harness) -> Harness:
    """The harness with a collector that is also the CA, serving its HTTPS API."""
    harness.api_port = free_port()
    harness.crl_reload_command = f"kill -HUP {harness.broker.pid}"
    harness.start_collector()
    wait_until(lambda: _api_up(harness), timeout=15, what="the collector's API")
    return harness


def _api_up(h: Harness) -> bool:
    try:
        return httpx.get(f"{url(h)}/healthz", verify=trust(h)).status_code == 200
    except httpx.HTTPError:
        return False


def trust(h: Harness) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(h.broker.files.ca_cert))


def url(h: Harness) -> str:
    return f"https://localhost:{h.api_port}"


def collector(h: Harness, *args: str) -> str:
    result = CliRunner().invoke(
        collector_cli, [*args[:2], "--config", str(h.collector_config_path()), *args[2:]]
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def new_token(
    h: Harness,
    *,
    tenant: str = "acme",
    site: str = "Warehouse 3",
    expires: str = "1h",
    uses: int = 1,
) -> str:
    out = collector(
        h,
        "token",
        "create",
        "--tenant",
        tenant,
        "--site",
        site,
        "--expires",
        expires,
        "--uses",
        str(uses),
    )
    return out.strip().splitlines()[0]


def enroll(h: Harness, token: str, name: str, *extra: str, ca: bool = True) -> CliRunner.invoke:  # type: ignore[valid-type]
    args = [
        "enroll",
        "--collector",
        url(h),
        "--token",
        token,
        "--identity-dir",
        str(h.root / name / "identity"),
        "--config",
        str(h.root / name / "agent.toml"),
        "--state-dir",
        str(h.root / name / "state"),
    ]
    if ca:
        args += ["--ca-file", str(h.broker.files.ca_cert)]
    return CliRunner().invoke(provision_cli, [*args, *extra])


def gateway_id_of(h: Harness, name: str) -> str:
    return json.loads((h.root / name / "identity" / "enrollment.json").read_text())["gateway_id"]


def tune(config: Path, uplink: str = "", buffer: str = "batch_max_delay = 0.2") -> None:
    """Add test settings to an agent config written by enroll."""
    text = config.read_text().replace(
        "[uplink]\n",
        f"[uplink]\nack_timeout = 3\nreconnect_min = 0.2\nreconnect_max = 2.0\n{uplink}\n",
    )
    config.write_text(text + f"\n[buffer]\n{buffer}\n")


def test_an_enrolled_gateway_streams_and_its_token_is_single_use(pki: Harness) -> None:
    h = pki
    token = new_token(h)
    result = enroll(h, token, "site-gw", "--owner", "nobody")
    assert result.exit_code == 0, result.output
    gw = gateway_id_of(h, "site-gw")
    assert gw.startswith("warehouse-3-")
    assert f"Enrolled as gateway {gw}" in result.output
    assert token not in result.output
    identity = h.root / "site-gw" / "identity"
    assert identity.stat().st_mode & 0o777 == 0o700
    key = identity / "gateway.key"
    assert key.stat().st_mode & 0o777 == 0o600
    if os.geteuid() == 0:  # run as root, enroll hands the files to the agent's user
        assert key.stat().st_uid == identity.stat().st_uid == 65534
        assert (h.root / "site-gw" / "state").stat().st_uid == 65534
    cert = x509.load_pem_x509_certificate((identity / "gateway.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == gw
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 89 <= lifetime.days <= 90

    # The written config works as it is: the agent streams over mTLS.
    config = h.root / "site-gw" / "agent.toml"
    tune(config)
    proc = h.start_producer(config, gw, run="e", per_poll=10, limit=100)
    wait_until(
        lambda: len(h.stored(gw)) == 100, timeout=30, what="readings from the enrolled gateway"
    )
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)

    # The collector registered it with its tenant, site and hardware facts.
    with sqlite3.connect(h.data / "documents.db") as docs:
        tenant, site, hardware = docs.execute(
            "SELECT tenant, site, hardware FROM gateways WHERE id = ?", (gw,)
        ).fetchone()
    assert (tenant, site) == ("acme", "Warehouse 3")
    assert json.loads(hardware)["cpu_count"] == os.cpu_count()
    # Its readings belong to its tenant: the store answers that tenant, and no other.
    with sqlite3.connect(h.data / "timeseries.db") as series:
        owners = {
            t
            for (t,) in series.execute(
                "SELECT DISTINCT tenant FROM series WHERE json_extract(tags, '$.gateway') = ?",
                (gw,),
            )
        }
    assert owners == {"acme"}

    # The same token cannot enroll a second gateway.
    again = enroll(h, token, "second-gw")
    assert again.exit_code == 1
    assert "used_up" in again.output
    assert "ask the operator for a new one" in again.output
    assert not (h.root / "second-gw" / "identity" / "gateway.key").exists()

    # The private key never left the gateway's identity directory.
    body = b"".join(key.read_bytes().splitlines()[1:-1])
    for f in (h.data / "documents.db", h.data / "timeseries.db", h.collector_log):
        assert body not in f.read_bytes().replace(b"\n", b"")


def _weak_csr() -> str:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(weak, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_bad_enrollments_say_what_is_wrong_and_change_nothing(pki: Harness) -> None:
    h = pki
    cases = {
        "unknown": (enroll(h, "opt_not-a-token", "a"), "not known to this collector"),
        "wrong tenant": (
            enroll(h, new_token(h), "b", "--tenant", "globex"),
            "belongs to another tenant",
        ),
        "no such collector": (
            CliRunner().invoke(
                provision_cli,
                [
                    "enroll",
                    "--collector",
                    f"https://localhost:{free_port()}",
                    "--token",
                    "x",
                    "--identity-dir",
                    str(h.root / "c"),
                ],
            ),
            "cannot reach the collector",
        ),
        "plain http": (
            CliRunner().invoke(
                provision_cli,
                [
                    "enroll",
                    "--collector",
                    f"http://localhost:{h.api_port}",
                    "--token",
                    "x",
                    "--identity-dir",
                    str(h.root / "d"),
                ],
            ),
            "must start with https://",
        ),
        "tls not verifying": (
            enroll(h, new_token(h), "e", ca=False),
            "TLS certificate does not verify",
        ),
    }
    expiring = new_token(h, expires="1s")
    time.sleep(1.2)
    cases["expired"] = (enroll(h, expiring, "f"), "has expired")
    for name, (result, words) in cases.items():
        assert result.exit_code == 1, name
        assert words in result.output, f"{name}: {result.output}"
    for d in "abcdef":
        assert not (h.root / d / "identity" / "gateway.pem").exists()
        assert not (h.root / d / "agent.toml").exists()

    # A weak key is refused, and the token is not used up by the refusal.
    token = new_token(h)
    r = httpx.post(
        f"{url(h)}/api/v1/enroll", json={"token": token, "csr": _weak_csr()}, verify=trust(h)
    )
    assert r.status_code == 400
    assert r.json()["error"] == "bad_csr"
    assert "RSA 1024 bits" in r.json()["detail"]
    assert enroll(h, token, "g").exit_code == 0

    # A malformed request is answered with the field, never with the token echoed back.
    r = httpx.post(
        f"{url(h)}/api/v1/enroll", json={"token": "opt_secret-value", "csr": 5}, verify=trust(h)
    )
    assert r.status_code == 422
    assert "opt_secret-value" not in r.text
    assert r.json()["problems"][0]["field"] == "csr"


def buffer_while_away(h: Harness, config: Path, gateway_id: str, *, run: str, count: int) -> None:
    """``count`` readings produced while the collector is stopped (they wait in the buffer);
    the collector and its API are back when this returns."""
    h.stop_collector()
    proc = h.start_producer(config, gateway_id, run=run, per_poll=10, limit=count)
    wait_until(
        lambda: len(h.read_journal(gateway_id)) == count, timeout=20, what="buffered readings"
    )
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    h.start_collector()
    wait_until(lambda: _api_up(h), timeout=15, what="the API")


def test_enroll_twice_is_safe_and_force_keeps_the_id_and_the_buffer(pki: Harness) -> None:
    h = pki
    assert enroll(h, new_token(h), "gw").exit_code == 0
    gw = gateway_id_of(h, "gw")
    cert_before = (h.root / "gw" / "identity" / "gateway.pem").read_bytes()
    second = enroll(h, new_token(h), "gw")
    assert second.exit_code == 0
    assert f"already enrolled as {gw}" in second.output
    assert (h.root / "gw" / "identity" / "gateway.pem").read_bytes() == cert_before

    config = h.root / "gw" / "agent.toml"
    tune(config)
    # Readings buffered while the collector is away survive a forced re-enrollment.
    buffer_while_away(h, config, gw, run="before", count=200)
    forced = enroll(h, new_token(h), "gw", "--force")
    assert forced.exit_code == 0, forced.output
    assert gateway_id_of(h, "gw") == gw, "re-enrollment with proof of the old key keeps the id"
    assert (h.root / "gw" / "identity" / "gateway.pem").read_bytes() != cert_before
    drain(h, config, gw)
    assert_exactly_once(h, gw, h.read_journal(gw))


def test_decommissioned_gateway_is_refused_at_once_and_by_the_broker_after_reload(
    pki: Harness,
) -> None:
    h = pki
    assert enroll(h, new_token(h), "gw").exit_code == 0
    gw = gateway_id_of(h, "gw")
    config = h.root / "gw" / "agent.toml"
    tune(config)
    watcher = Client(
        h.broker,
        cert=h.broker.files.collector_cert,
        key=h.broker.files.collector_key,
        client_id="w",
    )
    watcher.connect()
    watcher.subscribe(f"outpost/v1/gw/{gw}/down/ack")
    proc = h.start_producer(config, gw, run="live", per_poll=5, interval=0.1)
    wait_until(lambda: len(h.stored(gw)) > 20, timeout=30, what="readings before decommissioning")

    operator = collector(
        h, "api-token", "create", "--tenant", "acme", "--role", "operator"
    ).split()[0]
    other = collector(h, "api-token", "create", "--tenant", "globex", "--role", "operator").split()[
        0
    ]
    ca = trust(h)
    r = httpx.post(
        f"{url(h)}/api/v1/gateways/{gw}/decommission",
        headers={"Authorization": f"Bearer {other}"},
        verify=ca,
    )
    assert r.status_code == 404, "another tenant's operator cannot even see it"
    r = httpx.post(f"{url(h)}/api/v1/gateways/{gw}/decommission", verify=ca)
    assert r.status_code == 401
    r = httpx.post(
        f"{url(h)}/api/v1/gateways/{gw}/decommission",
        headers={"Authorization": f"Bearer {operator}"},
        verify=ca,
    )
    assert r.status_code == 200, r.text
    assert r.json()["certificates_revoked"] == 1
    stored_at_revocation = len(h.stored(gw))

    # At once: the collector refuses its batches (nack "revoked") and stores nothing more.
    # Within 2 s the broker's roster drops the gateway too; on a busy machine that can come
    # before its next batch, and then the refusal is the broker's (the uplink is lost).
    log = h.root / f"{gw}.log"

    def refused() -> bool:
        nacked = any(
            isinstance(m, wire.Nack) and m.reason == "revoked"
            for m in (wire.decode_ack(p) for _, _, p in watcher.received("/down/ack"))
        )
        return nacked or "lost or refused" in log.read_text(errors="replace")

    wait_until(refused, timeout=15, what="a 'revoked' nack or the broker dropping the gateway")
    time.sleep(1.0)
    assert len(h.stored(gw)) <= stored_at_revocation + 10  # at most a batch already being stored
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    # The CRL names the certificate, and after the reload the broker refuses the gateway.
    crl = x509.load_pem_x509_crl(h.broker.files.crl.read_bytes())
    serial = x509.load_pem_x509_certificate(
        (h.root / "gw" / "identity" / "gateway.pem").read_bytes()
    ).serial_number
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    identity = h.root / "gw" / "identity"
    wait_until(
        lambda: (
            not connects(
                Client(
                    h.broker,
                    cert=identity / "gateway.pem",
                    key=identity / "gateway.key",
                    ca=identity / "ca.pem",
                )
            )
        ),
        timeout=10,
        what="the broker to refuse the revoked certificate",
    )
    watcher.close()


def test_renewal_switches_certificates_without_losing_a_reading(pki: Harness) -> None:
    h = pki
    assert enroll(h, new_token(h), "gw").exit_code == 0
    gw = gateway_id_of(h, "gw")
    identity = h.root / "gw" / "identity"
    first = x509.load_pem_x509_certificate((identity / "gateway.pem").read_bytes())
    config = h.root / "gw" / "agent.toml"
    # Renew as soon as possible (the certificate is 5 minutes into its 90 days).
    tune(config, uplink="renew_at = 0.00001")
    proc = h.start_producer(config, gw, run="r", per_poll=10, interval=0.05)
    wait_until(
        lambda: (
            x509.load_pem_x509_certificate((identity / "gateway.pem").read_bytes()).serial_number
            != first.serial_number
        ),
        timeout=30,
        what="the renewed certificate",
    )
    time.sleep(2.0)  # keep streaming on the new certificate
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    assert (identity / "gateway.key").stat().st_mode & 0o777 == 0o600
    drain(h, config, gw)
    assert_exactly_once(h, gw, h.read_journal(gw))
    with sqlite3.connect(h.data / "documents.db") as docs:
        serials = [
            r[0]
            for r in docs.execute("SELECT serial FROM certificates WHERE gateway_id = ?", (gw,))
        ]
    # One renewal per agent process here (the producer, then the drain): each one recorded.
    current = x509.load_pem_x509_certificate((identity / "gateway.pem").read_bytes())
    assert len(serials) >= 2
    assert format(current.serial_number, "x") in serials
    assert format(first.serial_number, "x") in serials
    log = (h.root / f"{gw}.log").read_text()
    assert "gateway certificate renewed" in log
    assert "reconnecting with the renewed certificate" in log


def test_no_write_permission_on_the_identity_directory(pki: Harness, tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the command as an unprivileged user")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "outpost_iot.provisioning.cli",
            "enroll",
            "--collector",
            url(pki),
            "--token",
            "x",
            "--identity-dir",
            str(locked / "identity"),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 1, result.stderr
    assert "no permission to create" in result.stderr
    assert "--identity-dir" in result.stderr


def test_enrolling_into_another_tenant_gives_a_new_identity_and_leaves_the_backlog(
    pki: Harness,
) -> None:
    """``enroll --force`` with another tenant's token: the gateway proves its key, but its id,
    its history and its unsent backlog stay with the old tenant; nothing of them is sent or
    shown under the new one."""
    h = pki
    assert enroll(h, new_token(h, tenant="acme"), "gw").exit_code == 0
    old = gateway_id_of(h, "gw")
    config = h.root / "gw" / "agent.toml"
    tune(config)
    buffer_while_away(h, config, old, run="acme", count=100)  # the old tenant's backlog
    moved = enroll(h, new_token(h, tenant="globex", site="Globex HQ"), "gw", "--force")
    assert moved.exit_code == 0, moved.output
    new = gateway_id_of(h, "gw")
    assert new != old, "another tenant: a new identity"
    assert new.startswith("globex-hq-")
    tune(config)
    proc = h.start_producer(config, new, run="globex", per_poll=10, limit=50)
    wait_until(lambda: len(h.stored(new)) == 50, timeout=30, what="the new identity's readings")
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    assert {run for run, _ in h.stored(new)} == {"globex"}, "the old backlog went to the new tenant"
    assert h.stored(old) == {}
    assert [q for q in h.quarantine() if q[0] == new] == []
    status = h.status(config)
    assert f"backlog of gateway {old}" in str(status["buffer_reset"])
    assert list((h.root / "gw" / "state").glob("buffer.db.other-gateway-*"))
    with sqlite3.connect(f"file:{h.data / 'documents.db'}?mode=ro", uri=True) as conn:
        tenants = dict(conn.execute("SELECT id, tenant FROM gateways").fetchall())
        [detail] = [
            json.loads(d)
            for (d,) in conn.execute(
                "SELECT detail FROM audit WHERE action = 'gateway.enroll' AND target = ?", (new,)
            )
        ]
    assert (tenants[old], tenants[new]) == ("acme", "globex")
    assert detail["moved_from_another_tenant"] is True


def test_a_decommission_made_with_the_cli_reaches_the_running_collector(pki: Harness) -> None:
    """The CLI is another process: the running collector learns of the revocation from the
    store within seconds, takes the gateway off the broker's roster (which disconnects it) and
    stores nothing more from it."""
    h = pki
    assert enroll(h, new_token(h), "gw-cli").exit_code == 0
    gw = gateway_id_of(h, "gw-cli")
    config = h.root / "gw-cli" / "agent.toml"
    tune(config)
    proc = h.start_producer(config, gw, run="live", per_poll=5, interval=0.1)
    try:
        wait_until(lambda: len(h.stored(gw)) > 20, timeout=30, what="readings first")
        collector(h, "gateway", "decommission", gw)
        wait_until(
            lambda: f"removed gateway(s) {gw}" in h.collector_log.read_text(),
            timeout=15,
            what="the running collector to act on the CLI's decommission",
            seen=lambda: h.collector_log.read_text().splitlines()[-3:],
        )
        settled = len(h.stored(gw))
        wait_until(
            lambda: (
                "certificate revoked" in (h.root / f"{gw}.log").read_text()
                or "not authorized" in (h.root / f"{gw}.log").read_text()
            ),
            timeout=15,
            what="the gateway to be refused",
        )
        assert len(h.stored(gw)) <= settled + 10  # at most a batch already on its way
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_the_broker_roster_follows_enrollment_and_decommission(pki: Harness) -> None:
    """The broker lets a gateway use its topics from its first connection (added at
    enrollment), repairs a roster that lost it (at the collector's next connect), and shuts it
    out within seconds of a decommission made with the CLI."""
    h = pki

    def roster() -> list[str]:
        return collector(h, "broker", "roster").split()

    assert enroll(h, new_token(h), "gw").exit_code == 0
    gw = gateway_id_of(h, "gw")
    assert gw in roster()
    assert "outpost-collector" in roster()
    files = h.broker.files
    from outpost_iot.collector._roster import ask_broker, remove_commands

    ask_broker(
        host="localhost",
        port=h.broker.port,
        ca_file=files.ca_cert,
        cert_file=files.collector_cert,
        key_file=files.collector_key,
        commands=remove_commands([gw]),
    )
    assert gw not in roster(), "(a broker restored from an old backup)"
    h.stop_collector()
    h.start_collector()
    wait_until(lambda: gw in roster(), timeout=15, what="the roster repaired at connect")
    collector(h, "gateway", "decommission", gw)
    wait_until(lambda: gw not in roster(), timeout=15, what="the decommissioned gateway removed")
