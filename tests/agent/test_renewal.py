from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from outpost_iot.agent._renewal import CertificateRenewer, certificate_validity
from outpost_iot.provisioning import CertificateAuthority, new_key


def _cert(not_before: dt.datetime, not_after: dt.datetime) -> bytes:
    ca = CertificateAuthority.create()
    key = new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-1")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(ca.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (
            dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            dt.datetime(2026, 4, 2, 3, 4, 5, tzinfo=dt.UTC),
        ),
        # After 2049 X.509 switches from UTCTime to GeneralizedTime.
        (dt.datetime(2049, 6, 1, tzinfo=dt.UTC), dt.datetime(2051, 6, 1, 12, tzinfo=dt.UTC)),
    ],
)
def test_validity_matches_cryptography(start: dt.datetime, end: dt.datetime) -> None:
    pem = _cert(start, end)
    parsed = x509.load_pem_x509_certificate(pem)
    assert certificate_validity(pem) == (
        parsed.not_valid_before_utc.timestamp(),
        parsed.not_valid_after_utc.timestamp(),
    )


def test_validity_of_a_real_issued_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    cert = ca.issue_to_files("gw-1", tmp_path / "c.pem", tmp_path / "k.pem", days=90)
    start, end = certificate_validity((tmp_path / "c.pem").read_bytes())
    assert end - start == pytest.approx(90 * 86400 + 300)
    assert end == cert.not_valid_after_utc.timestamp()


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="PEM"):
        certificate_validity(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match=r"truncated|unexpected"):
        certificate_validity(b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n")


def test_renewal_is_due_at_the_configured_fraction(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    cert = tmp_path / "gateway.pem"
    renewer = CertificateRenewer(
        gateway_id="gw-1",
        cert_file=cert,
        key_file=tmp_path / "gateway.key",
        renew_at=2 / 3,
        min_interval_s=3600,
    )
    cert.write_bytes(_cert(now - dt.timedelta(days=50), now + dt.timedelta(days=40)))
    assert not renewer.due()  # 50 of 90 days: not yet
    cert.write_bytes(_cert(now - dt.timedelta(days=61), now + dt.timedelta(days=29)))
    assert renewer.due()  # 61 of 90 days: past two thirds
