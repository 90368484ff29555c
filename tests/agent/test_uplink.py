from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from outpost_iot.agent import AckTracker, UplinkError, tls_context
from outpost_iot.provisioning import CertificateAuthority


def test_ack_tracker_expires_unacked_batches() -> None:
    t = AckTracker()
    t.add(1, now=0)
    t.add(2, now=5)
    assert t.next_deadline(10) == 10
    assert t.expire(now=10, timeout=10) == [1]
    assert t.seqs() == {2}
    assert t.discard(2)
    assert not t.discard(2)
    assert len(t) == 0


def test_tls_context_always_verifies_the_broker(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    ca.save(tmp_path / "ca.pem", tmp_path / "ca.key")
    ca.issue_to_files("gw-1", tmp_path / "gw.pem", tmp_path / "gw.key")
    ctx = tls_context(
        ca_file=tmp_path / "ca.pem", cert_file=tmp_path / "gw.pem", key_file=tmp_path / "gw.key"
    )
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_tls_material_that_does_not_load_is_named(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    ca.save(tmp_path / "ca.pem", tmp_path / "ca.key")
    ca.issue_to_files("gw-1", tmp_path / "gw.pem", tmp_path / "gw.key")
    ca.issue_to_files("gw-2", tmp_path / "other.pem", tmp_path / "other.key")
    with pytest.raises(UplinkError, match="do not load together"):
        tls_context(
            ca_file=tmp_path / "ca.pem",
            cert_file=tmp_path / "gw.pem",
            key_file=tmp_path / "other.key",
        )
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(UplinkError, match="ca_file"):
        tls_context(
            ca_file=tmp_path / "bad.pem",
            cert_file=tmp_path / "gw.pem",
            key_file=tmp_path / "gw.key",
        )
