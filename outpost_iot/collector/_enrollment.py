"""Enrollment, renewal and revocation of gateway identities (the collector's side).

The gateway makes its key and sends a certificate request with a one-time token; the
collector checks the token, issues a short-lived certificate from its device CA with a
gateway id as CN, and registers the gateway. Renewal arrives over the gateway's current,
authenticated MQTT connection. Decommissioning revokes every certificate of the gateway,
rewrites the CRL the broker reads, and makes the collector refuse the gateway at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import secrets
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from outpost_iot.collector._config import EnrollmentConfig, PkiConfig
from outpost_iot.collector._exceptions import EnrollmentRefused
from outpost_iot.collector.stores import (
    CertificateRecord,
    DocumentStore,
    EnrollmentTokenRecord,
    GatewayRegistration,
)
from outpost_iot.provisioning import (
    CertificateAuthority,
    ProvisioningError,
    build_crl,
    cert_pem,
    load_csr,
    write_crl,
)

TOKEN_PREFIX = "opt_"  # noqa: S105 - a prefix that makes leaked tokens easy to grep for
_SLUG = re.compile(r"[^a-z0-9]+")
_MAX_HARDWARE_BYTES = 4096


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not a duration like 30m, 24h or 7d")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@dataclass(frozen=True)
class Enrolled:
    """What the gateway receives (and, for the audit log, how it came about)."""

    gateway_id: str
    token_id: str
    re_enrolled: bool
    moved_from: str  # the id it had in another tenant ("" if none)
    tenant: str
    site: str
    certificate_pem: str
    ca_chain_pem: str
    broker_host: str
    broker_port: int
    config_signing_public_key_pem: str


class EnrollmentService:
    def __init__(
        self,
        *,
        docs: DocumentStore,
        pki: PkiConfig,
        enrollment: EnrollmentConfig,
        now_ns: Callable[[], int] = time.time_ns,
        logger: logging.Logger | None = None,
    ) -> None:
        self._docs = docs
        self._pki = pki
        self._enrollment = enrollment
        self._now = now_ns
        self._log = logger or logging.getLogger("outpost.collector.enrollment")
        self.ca = CertificateAuthority.load(pki.ca_cert, pki.ca_key)
        signing = serialization.load_pem_private_key(pki.signing_key.read_bytes(), password=None)
        self.signing_public_pem = (
            signing.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        self._revoked = docs.revoked_gateways()

    # -- tokens -------------------------------------------------------------------------------

    def create_token(
        self, *, tenant: str, site: str, expires_s: float, uses: int
    ) -> tuple[str, EnrollmentTokenRecord]:
        """A new token: returned once in clear, stored only as its hash."""
        if not tenant.strip() or not site.strip():
            raise ValueError("tenant and site must not be empty")
        if expires_s <= 0 or uses < 1:
            raise ValueError("a token needs a positive lifetime and at least one use")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._now()
        record = EnrollmentTokenRecord(
            id=secrets.token_hex(4),
            hash=hash_token(token),
            tenant=tenant,
            site=site,
            created_ns=now,
            expires_ns=now + int(expires_s * 1e9),
            uses_total=uses,
            uses_left=uses,
        )
        self._docs.create_enrollment_token(record)
        self._log.info(
            "enrollment token %s created for tenant %s, site %s (%d use(s))",
            record.id,
            tenant,
            site,
            uses,
        )
        return token, record

    # -- enrollment ---------------------------------------------------------------------------

    def enroll(
        self,
        *,
        token: str,
        csr_pem: str,
        hardware: dict[str, Any],
        tenant: str | None = None,
        current_certificate_pem: str | None = None,
        proof: bytes | None = None,
    ) -> Enrolled:
        """Enroll a gateway. Nothing is used or stored when this raises."""
        try:
            csr = load_csr(csr_pem)
        except ProvisioningError as exc:
            raise EnrollmentRefused("bad_csr", str(exc)) from None
        if len(repr(hardware)) > _MAX_HARDWARE_BYTES:
            raise EnrollmentRefused("bad_request", "hardware facts are too large")
        keep_id = None
        if current_certificate_pem:
            keep_id = self._proven_identity(current_certificate_pem, proof, csr)
        now = self._now()
        scope: dict[str, str] = {}

        def register(tok: EnrollmentTokenRecord) -> GatewayRegistration:
            scope.update(tenant=tok.tenant, site=tok.site, token_id=tok.id)
            if tenant is not None and tenant != tok.tenant:
                raise EnrollmentRefused(
                    "wrong_tenant",
                    "this token belongs to another tenant; ask for a token for yours",
                    tenant=tok.tenant,
                    token_id=tok.id,
                )
            gateway_id = keep_id
            if keep_id is not None and self._docs.gateway_tenant(keep_id) != tok.tenant:
                # Moving to another tenant: a new identity. The old id, its data and its
                # history stay with the old tenant, and nothing cached under it (the tenant
                # of its readings) can follow the gateway into the new one.
                scope["moved_from"] = keep_id
                gateway_id = None
            gateway_id = gateway_id or self._new_gateway_id(tok.site)
            cert = self._issue(gateway_id, csr)
            return GatewayRegistration(
                gateway_id, hardware, self._record(gateway_id, cert), cert_pem(cert)
            )

        reg = self._docs.redeem_enrollment_token(hash_token(token), now, register)
        tenant_, site = scope["tenant"], scope["site"]
        moved_from = scope.get("moved_from", "")
        if moved_from:
            how = f" (was {moved_from} of another tenant: a new identity)"
        elif keep_id:
            how = " (re-enrolled)"
        else:
            how = ""
        self._log.info(
            "gateway %s enrolled for tenant %s, site %s%s", reg.gateway_id, tenant_, site, how
        )
        return Enrolled(
            gateway_id=reg.gateway_id,
            token_id=scope["token_id"],
            re_enrolled=bool(keep_id) and not moved_from,
            moved_from=moved_from,
            tenant=tenant_,
            site=site,
            certificate_pem=reg.certificate_pem.decode(),
            ca_chain_pem=cert_pem(self.ca.cert).decode(),
            broker_host=self._enrollment.broker_host,
            broker_port=self._enrollment.broker_port,
            config_signing_public_key_pem=self.signing_public_pem,
        )

    def _proven_identity(
        self, cert_pem_text: str, proof: bytes | None, csr: x509.CertificateSigningRequest
    ) -> str | None:
        """The gateway id of a re-enrolling gateway that proves it holds its current key."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem_text.encode())
        except ValueError:
            raise EnrollmentRefused(
                "bad_request", "current_certificate is not a PEM certificate"
            ) from None
        try:
            cert.verify_directly_issued_by(self.ca.cert)
        except (ValueError, TypeError, InvalidSignature):
            return None  # not one of ours: enroll as a new gateway
        record = self._docs.certificate(format(cert.serial_number, "x"))
        if record is None or record.revoked_ns is not None:
            return None
        if proof is None or not _verify(cert.public_key(), proof, csr.tbs_certrequest_bytes):
            raise EnrollmentRefused(
                "bad_proof",
                "the proof of the current key does not verify; re-run enroll with --force",
            )
        return record.gateway_id

    def _new_gateway_id(self, site: str) -> str:
        slug = _SLUG.sub("-", site.lower()).strip("-")[:40] or "gw"
        while True:
            gateway_id = f"{slug}-{secrets.token_hex(3)}"
            if not self._docs.gateway_exists(gateway_id):
                return gateway_id

    def _issue(self, gateway_id: str, csr: x509.CertificateSigningRequest) -> x509.Certificate:
        return self.ca.issue(gateway_id, csr.public_key(), days=self._pki.gateway_cert_days)

    def _record(self, gateway_id: str, cert: x509.Certificate) -> CertificateRecord:
        return CertificateRecord(
            serial=format(cert.serial_number, "x"),
            gateway_id=gateway_id,
            issued_ns=self._now(),
            not_after_ns=int(cert.not_valid_after_utc.timestamp() * 1e9),
            public_key_pem=cert.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode(),
        )

    # -- renewal ------------------------------------------------------------------------------

    def renew(self, gateway_id: str, csr_pem: str) -> str:
        """A new certificate for an enrolled, not revoked gateway (asked over its own topic)."""
        if self.is_revoked(gateway_id):
            raise EnrollmentRefused("revoked", f"gateway {gateway_id} is decommissioned")
        if not self._docs.gateway_exists(gateway_id):
            raise EnrollmentRefused("unknown_gateway", f"gateway {gateway_id} is not enrolled")
        try:
            csr = load_csr(csr_pem)
        except ProvisioningError as exc:
            raise EnrollmentRefused("bad_csr", str(exc)) from None
        cert = self._issue(gateway_id, csr)
        self._docs.record_certificate(self._record(gateway_id, cert))
        self._log.info("renewed the certificate of gateway %s", gateway_id)
        return cert_pem(cert).decode()

    # -- revocation ---------------------------------------------------------------------------

    def is_revoked(self, gateway_id: str) -> bool:
        return gateway_id in self._revoked

    def decommission(self, gateway_id: str) -> int:
        """Revoke the gateway's certificates, publish the CRL; return certificates revoked."""
        if not self._docs.gateway_exists(gateway_id):
            raise EnrollmentRefused("unknown_gateway", f"no gateway {gateway_id!r}")
        count = self._docs.revoke_gateway(gateway_id, self._now())
        self._revoked.add(gateway_id)
        self.publish_crl()
        self._log.warning("gateway %s decommissioned: %d certificate(s) revoked", gateway_id, count)
        return count

    def refresh_revoked(self) -> None:
        """Pick up decommissions made by another process (the CLI) or replica."""
        self._revoked = self._docs.revoked_gateways()

    def publish_crl(self) -> None:
        revoked = [
            (int(serial, 16), dt.datetime.fromtimestamp(ns / 1e9, dt.UTC))
            for serial, ns in self._docs.revoked_certificates()
        ]
        write_crl(self._pki.crl_file, build_crl(self.ca, revoked))
        command = self._pki.crl_reload_command
        if command:
            result = subprocess.run(
                shlex.split(command), capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                self._log.error(
                    "crl_reload_command failed (%d): %s", result.returncode, result.stderr.strip()
                )


def _verify(key: object, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True
