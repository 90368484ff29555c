"""The collector's enrollment service in-process, with a real CA and a real SQLite store: tokens,
enrollment and re-enrollment, renewal, decommissioning and the CRL, and revocations made by
another process. (The technician's flow end to end, with a spawned collector and broker, is in
tests/provisioning/test_enrollment.py; the store's side of tokens in the contract suite.)"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from outpost_iot.collector._config import CollectorConfig, load_config
from outpost_iot.collector._enrollment import (
    TOKEN_PREFIX,
    Enrolled,
    EnrollmentService,
    parse_duration,
)
from outpost_iot.collector._exceptions import EnrollmentRefused
from outpost_iot.collector.stores import CertificateRecord, SqliteDocumentStore
from outpost_iot.dev._processes import Mosquitto, collector_config, free_port
from outpost_iot.provisioning._ca import CertificateAuthority, make_csr, new_key

NOW = 1_795_300_000 * 10**9
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


@dataclass
class Pki:
    cfg: CollectorConfig
    docs: SqliteDocumentStore
    clock: list[int]

    def service(self) -> EnrollmentService:
        assert self.cfg.pki is not None
        assert self.cfg.enrollment is not None
        return EnrollmentService(
            docs=self.docs,
            pki=self.cfg.pki,
            enrollment=self.cfg.enrollment,
            now_ns=lambda: self.clock[0],
        )


def make_pki(tmp_path: Path, crl_reload_command: str = "") -> Pki:
    broker = Mosquitto(tmp_path / "broker")  # its files only: the CA, keys and CRL path
    path = collector_config(
        tmp_path / "c.toml",
        broker,
        tmp_path / "data",
        api_port=free_port(),
        crl_reload_command=crl_reload_command,
    )
    cfg = load_config(path)
    return Pki(cfg, SqliteDocumentStore(cfg.stores.documents_path), [NOW])


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[Pki]:
    p = make_pki(tmp_path)
    yield p
    p.docs.close()


def csr_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return make_csr(key).public_bytes(serialization.Encoding.PEM).decode()


def spki(cert_pem: str) -> bytes:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return cert.public_key().public_bytes(serialization.Encoding.PEM, SPKI)


def signed_part(csr: str) -> bytes:
    """What a re-enrolling gateway signs with its current key: the new request's body."""
    return x509.load_pem_x509_csr(csr.encode()).tbs_certrequest_bytes


def proof(key: ec.EllipticCurvePrivateKey, csr: str) -> bytes:
    return key.sign(signed_part(csr), ec.ECDSA(hashes.SHA256()))


def reenroll(
    svc: EnrollmentService, token: str, csr: str, current: str, proof: bytes | None
) -> Enrolled:
    """Enroll again, presenting the current certificate and a proof of its key."""
    return svc.enroll(
        token=token, csr_pem=csr, hardware={}, current_certificate_pem=current, proof=proof
    )


def refused(code: str, words: str = "") -> pytest.RaisesExc[EnrollmentRefused]:
    """The refusal ``code``, with a message that contains ``words`` (what to change)."""
    match = re.escape(words) if words else None
    return pytest.raises(EnrollmentRefused, match=match, check=lambda e: e.code == code)


# -- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tenant", "site", "expires_s", "uses"),
    [(" ", "hq", 60, 1), ("acme", "", 60, 1), ("acme", "hq", 0, 1), ("acme", "hq", 60, 0)],
)
def test_a_token_needs_a_tenant_a_site_a_lifetime_and_a_use(
    pki: Pki, tenant: str, site: str, expires_s: float, uses: int
) -> None:
    with pytest.raises(ValueError, match=r"must not be empty|positive lifetime"):
        pki.service().create_token(tenant=tenant, site=site, expires_s=expires_s, uses=uses)
    assert pki.docs.enrollment_tokens("acme") == []


def test_a_token_is_shown_once_and_stored_only_as_its_hash(pki: Pki) -> None:
    token, record = pki.service().create_token(tenant="acme", site="hq", expires_s=90, uses=3)
    assert token.startswith(TOKEN_PREFIX)
    # 256 random bits in URL-safe base64 (43 characters); an 8-digit hex id to name it by.
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token[len(TOKEN_PREFIX) :])
    assert re.fullmatch(r"[0-9a-f]{8}", record.id)
    assert record.hash == hashlib.sha256(token.encode()).hexdigest()
    assert (record.created_ns, record.expires_ns) == (NOW, NOW + 90 * 10**9)
    assert (record.uses_total, record.uses_left) == (3, 3)
    [stored] = pki.docs.enrollment_tokens("acme")
    assert (stored.id, stored.hash, stored.site) == (record.id, record.hash, "hq")
    pki.docs.close()
    raw = b"".join(p.read_bytes() for p in pki.cfg.stores.documents_path.parent.glob("*"))
    assert token.encode() not in raw
    assert token[len(TOKEN_PREFIX) :].encode() not in raw


def test_a_token_may_live_less_than_a_second(pki: Pki) -> None:
    _, record = pki.service().create_token(tenant="acme", site="hq", expires_s=0.5, uses=1)
    assert record.expires_ns == NOW + 500_000_000


def test_enrollments_are_logged_on_the_enrollment_logger_with_how(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """A new gateway, a re-enrolled one and one that moved tenant each say so in one line."""
    caplog.set_level(logging.INFO, logger="outpost.collector.enrollment")
    svc = pki.service()
    token, record = svc.create_token(tenant="acme", site="hq", expires_s=60, uses=5)
    globex, _ = svc.create_token(tenant="globex", site="plant", expires_s=60, uses=1)
    key = new_key()
    first = svc.enroll(token=token, csr_pem=csr_pem(key), hardware={})
    csr = csr_pem(new_key())
    again = reenroll(svc, token, csr, first.certificate_pem, proof(key, csr))
    csr2 = csr_pem(key)
    moved = reenroll(svc, globex, csr2, first.certificate_pem, proof(key, csr2))
    lines = [r.getMessage() for r in caplog.records if r.name == "outpost.collector.enrollment"]
    assert lines[0] == f"enrollment token {record.id} created for tenant acme, site hq (5 use(s))"
    assert lines[-3:] == [
        f"gateway {first.gateway_id} enrolled for tenant acme, site hq",
        f"gateway {again.gateway_id} enrolled for tenant acme, site hq (re-enrolled)",
        f"gateway {moved.gateway_id} enrolled for tenant globex, site plant"
        f" (was {first.gateway_id} of another tenant: a new identity)",
    ]


# -- enrollment --------------------------------------------------------------------------------


def test_enrolling_issues_a_certificate_for_the_gateways_key_and_its_own_id(pki: Pki) -> None:
    svc = pki.service()
    token, record = svc.create_token(tenant="acme", site="Main Street #2", expires_s=60, uses=2)
    key = new_key()
    got = svc.enroll(token=token, csr_pem=csr_pem(key), hardware={"model": "rpi4"})
    assert got.gateway_id.startswith("main-street-2-")
    assert len(got.gateway_id) == 20
    assert (got.tenant, got.site, got.token_id) == ("acme", "Main Street #2", record.id)
    assert (got.re_enrolled, got.moved_from) == (False, "")
    cert = x509.load_pem_x509_certificate(got.certificate_pem.encode())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == got.gateway_id  # whatever the CSR asked for
    assert spki(got.certificate_pem) == key.public_key().public_bytes(
        serialization.Encoding.PEM, SPKI
    )
    cert.verify_directly_issued_by(svc.ca.cert)
    assert got.ca_chain_pem.encode() == svc.ca.cert.public_bytes(serialization.Encoding.PEM)
    assert pki.cfg.enrollment is not None
    assert (got.broker_host, got.broker_port) == (
        pki.cfg.enrollment.broker_host,
        pki.cfg.enrollment.broker_port,
    )
    assert pki.cfg.pki is not None
    signing = serialization.load_pem_private_key(pki.cfg.pki.signing_key.read_bytes(), None)
    assert got.config_signing_public_key_pem == (
        signing.public_key().public_bytes(serialization.Encoding.PEM, SPKI).decode()
    )
    [gw] = pki.docs.gateways("acme")
    assert (gw.id, gw.site, gw.hardware) == (
        got.gateway_id,
        "Main Street #2",
        {"model": "rpi4"},
    )
    assert pki.docs.gateway_tenant(got.gateway_id) == "acme"
    record_ = pki.docs.certificate(format(cert.serial_number, "x"))
    assert record_ is not None
    assert record_.gateway_id == got.gateway_id
    assert record_.issued_ns == NOW
    key_pem = pki.docs.gateway_public_key(got.gateway_id)
    assert key_pem is not None
    assert key_pem.encode() == spki(got.certificate_pem)  # its secrets are sealed to this key
    assert record_.not_after_ns == int(cert.not_valid_after_utc.timestamp() * 1e9)
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert pki.cfg.pki.gateway_cert_days - 1 <= days <= pki.cfg.pki.gateway_cert_days
    [tok] = pki.docs.enrollment_tokens("acme")
    assert tok.uses_left == 1
    # A site name with nothing usable in it still gives a valid id.
    token2, _ = svc.create_token(tenant="acme", site="###", expires_s=60, uses=1)
    other = svc.enroll(token=token2, csr_pem=csr_pem(new_key()), hardware={})
    assert other.gateway_id.startswith("gw-")
    assert len(other.gateway_id) == 9


@pytest.mark.parametrize("problem", ["bad_csr", "hardware", "wrong_tenant", "expired", "unknown"])
def test_a_refused_enrollment_uses_nothing_and_says_why(pki: Pki, problem: str) -> None:
    svc = pki.service()
    token, _ = svc.create_token(tenant="acme", site="hq", expires_s=60, uses=1)
    csr, hardware, tenant, used = csr_pem(new_key()), {"cpu": "x"}, None, token
    code, words = problem, ""
    if problem == "bad_csr":
        csr = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        words = "not a PEM certificate request: "
    elif problem == "hardware":
        hardware, code, words = {"dmi": "x" * 5000}, "bad_request", "hardware facts are too large"
    elif problem == "wrong_tenant":
        tenant, words = "globex", "belongs to another tenant; ask for a token for yours"
    elif problem == "expired":
        pki.clock[0] += 61 * 10**9
    else:
        used = token + "x"
    with refused(code, words) as caught:
        svc.enroll(token=used, csr_pem=csr, hardware=hardware, tenant=tenant)
    if problem == "wrong_tenant":  # the audit log learns whose token it was
        assert caught.value.tenant == "acme"
        assert caught.value.token_id
    assert pki.docs.gateways("acme") == []
    [tok] = pki.docs.enrollment_tokens("acme")
    assert tok.uses_left == 1  # nothing spent
    if problem != "expired":  # and the token still works
        assert svc.enroll(token=token, csr_pem=csr_pem(new_key()), hardware={}).gateway_id


def test_hardware_facts_at_the_limit_are_kept(pki: Pki) -> None:
    svc = pki.service()
    token, _ = svc.create_token(tenant="acme", site="hq", expires_s=60, uses=1)
    facts = {"dmi": "x" * (4096 - len(repr({"dmi": ""})))}
    assert len(repr(facts)) == 4096
    got = svc.enroll(token=token, csr_pem=csr_pem(new_key()), hardware=facts)
    [gw] = pki.docs.gateways("acme")
    assert (gw.id, gw.hardware) == (got.gateway_id, facts)


def test_re_enrolling_with_proof_of_the_current_key_keeps_the_id(pki: Pki) -> None:
    svc = pki.service()
    token, _ = svc.create_token(tenant="acme", site="hq", expires_s=60, uses=5)
    old_key = new_key()
    first = svc.enroll(token=token, csr_pem=csr_pem(old_key), hardware={})
    new = new_key()
    csr = csr_pem(new)
    again = reenroll(svc, token, csr, first.certificate_pem, proof(old_key, csr))
    assert (again.gateway_id, again.re_enrolled, again.moved_from) == (first.gateway_id, True, "")
    assert spki(again.certificate_pem) != spki(first.certificate_pem)
    # A proof made with another key, or over another request, or none: refused, nothing spent.
    for bad in (proof(new_key(), csr), proof(old_key, csr_pem(new_key())), None):
        with refused("bad_proof", "does not verify; re-run enroll with --force"):
            reenroll(svc, token, csr, again.certificate_pem, bad)
    [tok] = pki.docs.enrollment_tokens("acme")
    assert tok.uses_left == 3
    with refused("bad_request", "current_certificate is not a PEM certificate"):
        svc.enroll(token=token, csr_pem=csr, hardware={}, current_certificate_pem="not a cert")


def test_a_certificate_not_ours_or_revoked_enrolls_as_a_new_gateway(pki: Pki) -> None:
    svc = pki.service()
    token, _ = svc.create_token(tenant="acme", site="hq", expires_s=60, uses=5)
    key = new_key()
    first = svc.enroll(token=token, csr_pem=csr_pem(key), hardware={})
    stranger = CertificateAuthority.create("Someone else's CA")
    foreign = stranger.issue(first.gateway_id, key.public_key(), days=30)
    foreign_pem = foreign.public_bytes(serialization.Encoding.PEM).decode()
    csr = csr_pem(new_key())
    got = reenroll(svc, token, csr, foreign_pem, proof(key, csr))
    assert got.gateway_id != first.gateway_id
    assert not got.re_enrolled
    svc.decommission(first.gateway_id)
    got = reenroll(svc, token, csr, first.certificate_pem, proof(key, csr))
    assert got.gateway_id != first.gateway_id
    assert not got.re_enrolled


def test_moving_to_another_tenant_gives_a_new_identity(pki: Pki) -> None:
    svc = pki.service()
    acme, _ = svc.create_token(tenant="acme", site="hq", expires_s=60, uses=1)
    globex, _ = svc.create_token(tenant="globex", site="plant", expires_s=60, uses=1)
    key = new_key()
    first = svc.enroll(token=acme, csr_pem=csr_pem(key), hardware={})
    csr = csr_pem(key)
    moved = reenroll(svc, globex, csr, first.certificate_pem, proof(key, csr))
    assert moved.gateway_id != first.gateway_id
    assert moved.gateway_id.startswith("plant-")
    assert (moved.moved_from, moved.re_enrolled, moved.tenant) == (
        first.gateway_id,
        False,
        "globex",
    )
    assert pki.docs.gateway_tenant(first.gateway_id) == "acme"  # the old id stays with acme
    assert pki.docs.gateway_tenant(moved.gateway_id) == "globex"


# -- renewal and revocation --------------------------------------------------------------------


def reload_script(path: Path, body: str) -> str:
    """A crl_reload_command: a script (the broker's reload, in production)."""
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o700)
    return str(path)


def test_decommissioning_revokes_every_certificate_and_publishes_the_crl(tmp_path: Path) -> None:
    marker = tmp_path / "reloaded"
    p = make_pki(tmp_path, reload_script(tmp_path / "reload", f"echo x >> {marker}"))
    try:
        svc = p.service()
        token, _ = svc.create_token(tenant="acme", site="hq", expires_s=60, uses=2)
        gw = svc.enroll(token=token, csr_pem=csr_pem(new_key()), hardware={}).gateway_id
        keep = svc.enroll(token=token, csr_pem=csr_pem(new_key()), hardware={}).gateway_id
        renewed = svc.renew(gw, csr_pem(new_key()))
        assert not svc.is_revoked(gw)
        p.clock[0] += 10**9
        assert svc.decommission(gw) == 2  # the enrolled and the renewed certificate
        assert svc.is_revoked(gw)
        assert not svc.is_revoked(keep)
        assert p.cfg.pki is not None
        crl = x509.load_pem_x509_crl(p.cfg.pki.crl_file.read_bytes())
        assert crl.is_signature_valid(svc.ca.cert.public_key())  # type: ignore[arg-type]
        renewed_serial = x509.load_pem_x509_certificate(renewed.encode()).serial_number
        revoked = crl.get_revoked_certificate_by_serial_number(renewed_serial)
        assert revoked is not None
        assert revoked.revocation_date_utc.timestamp() == (NOW + 10**9) / 1e9
        assert len(list(crl)) == 2
        assert marker.read_text() == "x\n"  # the broker was told to reload it
        with refused("revoked", f"gateway {gw} is decommissioned"):
            svc.renew(gw, csr_pem(new_key()))
        with refused("unknown_gateway", "no gateway 'nobody-000000'"):
            svc.decommission("nobody-000000")
        with refused("unknown_gateway", "gateway nobody-000000 is not enrolled"):
            svc.renew("nobody-000000", csr_pem(new_key()))
        with refused("bad_csr", "not a PEM certificate request"):
            svc.renew(keep, "not a request")
    finally:
        p.docs.close()


def test_a_failing_crl_reload_is_logged_and_the_decommission_stands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = make_pki(tmp_path, reload_script(tmp_path / "reload", "echo no broker >&2; exit 3"))
    try:
        svc = p.service()
        token, _ = svc.create_token(tenant="acme", site="hq", expires_s=60, uses=1)
        gw = svc.enroll(token=token, csr_pem=csr_pem(new_key()), hardware={}).gateway_id
        assert svc.decommission(gw) == 1
        assert svc.is_revoked(gw)
        assert "crl_reload_command failed (3): no broker" in caplog.text
    finally:
        p.docs.close()


def test_a_decommission_by_another_process_is_seen_after_a_refresh(pki: Pki) -> None:
    running = pki.service()
    token, _ = running.create_token(tenant="acme", site="hq", expires_s=60, uses=1)
    gw = running.enroll(token=token, csr_pem=csr_pem(new_key()), hardware={}).gateway_id
    cli = EnrollmentService(  # the CLI: its own store connection and service
        docs=SqliteDocumentStore(pki.cfg.stores.documents_path),
        pki=pki.cfg.pki,  # type: ignore[arg-type]
        enrollment=pki.cfg.enrollment,  # type: ignore[arg-type]
    )
    cli.decommission(gw)
    assert not running.is_revoked(gw)  # cached until the next refresh
    running.refresh_revoked()
    assert running.is_revoked(gw)
    assert pki.service().is_revoked(gw)  # and a service started now knows at once


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), (" 30m ", 1800.0), ("24h", 86400.0), ("7d", 604800.0), ("1.5h", 5400.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "m", "-5m", "5 minutes", "1w", "5mm"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration like 30m, 24h or 7d"):
        parse_duration(text)


def test_certificates_last_the_configured_days_and_ids_never_collide(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pki.cfg.pki is not None
    pki.cfg = pki.cfg.model_copy(
        update={"pki": pki.cfg.pki.model_copy(update={"gateway_cert_days": 7})}
    )
    svc = pki.service()
    token, _ = svc.create_token(tenant="acme", site="x" * 45, expires_s=60, uses=3)
    first = svc.enroll(token=token, csr_pem=csr_pem(new_key()), hardware={})
    cert = x509.load_pem_x509_certificate(first.certificate_pem.encode())
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 7
    assert first.gateway_id.startswith("x" * 40 + "-")  # the site cut to 40 characters
    assert len(first.gateway_id) == 47
    renewed = svc.renew(first.gateway_id, csr_pem(new_key()))
    cert = x509.load_pem_x509_certificate(renewed.encode())
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 7
    # The random part is drawn again while the id is taken.
    suffix = first.gateway_id[41:]
    draws = iter([suffix, suffix, "00beef"])
    monkeypatch.setattr(
        "outpost_iot.collector._enrollment.secrets.token_hex", lambda n: next(draws)
    )
    second = svc.enroll(token=token, csr_pem=csr_pem(new_key()), hardware={})
    assert second.gateway_id == "x" * 40 + "-00beef"


def test_the_crl_dates_are_utc_whatever_the_local_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    p = make_pki(tmp_path, reload_script(tmp_path / "reload", "exit 0"))
    try:
        svc = p.service()
        token, _ = svc.create_token(tenant="acme", site="hq", expires_s=60, uses=1)
        gw = svc.enroll(token=token, csr_pem=csr_pem(new_key()), hardware={})
        svc.decommission(gw.gateway_id)
        assert p.cfg.pki is not None
        [entry] = list(x509.load_pem_x509_crl(p.cfg.pki.crl_file.read_bytes()))
        assert entry.revocation_date_utc.timestamp() == NOW / 1e9
        assert "crl_reload_command failed" not in caplog.text  # it succeeded: nothing to say
    finally:
        p.docs.close()
        monkeypatch.undo()
        time.tzset()


def test_re_enrolling_with_an_rsa_key_verifies_its_proof(pki: Pki) -> None:
    svc = pki.service()
    token, _ = svc.create_token(tenant="acme", site="hq", expires_s=60, uses=3)
    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    first = svc.enroll(token=token, csr_pem=csr_pem(old), hardware={})  # type: ignore[arg-type]
    csr = csr_pem(new_key())
    good = old.sign(signed_part(csr), padding.PKCS1v15(), hashes.SHA256())
    again = reenroll(svc, token, csr, first.certificate_pem, good)
    assert again.gateway_id == first.gateway_id
    with refused("bad_proof"):
        reenroll(svc, token, csr, first.certificate_pem, good[:-1] + bytes([good[-1] ^ 1]))


def test_a_key_of_a_kind_we_do_not_verify_is_no_proof(pki: Pki) -> None:
    """Defence in depth: a certificate of ours for an Ed25519 key (enrollment never issues one:
    CSRs must be EC or RSA) cannot prove anything."""
    svc = pki.service()
    token, _ = svc.create_token(tenant="acme", site="hq", expires_s=60, uses=2)
    first = svc.enroll(token=token, csr_pem=csr_pem(new_key()), hardware={})
    odd = ed25519.Ed25519PrivateKey.generate()
    cert = svc.ca.issue(first.gateway_id, odd.public_key())
    pki.docs.record_certificate(
        CertificateRecord(format(cert.serial_number, "x"), first.gateway_id, NOW, NOW + 10**18)
    )
    csr = csr_pem(new_key())
    current = cert.public_bytes(serialization.Encoding.PEM).decode()
    with refused("bad_proof"):
        reenroll(svc, token, csr, current, odd.sign(signed_part(csr)))
