"""A small X.509 certificate authority (cryptography): the device CA and what it issues.

Keys are EC P-256, written with 0600 permissions and never logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from outpost_iot.provisioning._exceptions import ProvisioningError


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file created with mode 0600 (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    path.chmod(0o600)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(
        cls, common_name: str = "Outpost device CA", *, days: int = 3650
    ) -> CertificateAuthority:
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ProvisioningError(
                f"cannot load the CA from {cert_path} / {key_path}: {exc}"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ProvisioningError(f"{key_path}: the CA key must be an EC key")
        return cls(cert, key)

    def save(self, cert_path: Path, key_path: Path) -> None:
        write_private(key_path, key_pem(self.key))
        cert_path.write_bytes(cert_pem(self.cert))

    def issue(
        self,
        common_name: str,
        public_key: CertificatePublicKeyTypes,
        *,
        server: bool = False,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        days: int = 90,
    ) -> x509.Certificate:
        """A leaf certificate: a client (gateway, collector) or the broker's server identity."""
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issue_to_files(
        self,
        common_name: str,
        cert_path: Path,
        key_path: Path,
        **kwargs: object,
    ) -> x509.Certificate:
        """Make a key and a certificate for ``common_name`` and write both (key 0600)."""
        key = new_key()
        cert = self.issue(common_name, key.public_key(), **kwargs)  # type: ignore[arg-type]
        write_private(key_path, key_pem(key))
        cert_path.write_bytes(cert_pem(cert))
        return cert


# -- requests, checks and revocation -------------------------------------------------------------

MIN_RSA_BITS = 2048
ALLOWED_CURVES = ("secp256r1", "secp384r1")


def make_csr(
    key: ec.EllipticCurvePrivateKey, common_name: str = "outpost-gateway"
) -> x509.CertificateSigningRequest:
    """A certificate request signed by the gateway's own key (proof that it holds it)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )


def load_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    """Parse and check a CSR: a valid signature and a key that is strong enough."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise ProvisioningError(f"not a PEM certificate request: {exc}") from None
    if not csr.is_signature_valid:
        raise ProvisioningError("the certificate request's signature does not verify")
    check_key_strength(csr.public_key())
    return csr


def check_key_strength(key: object) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise ProvisioningError(
                f"key too weak or unsupported: EC curve {key.curve.name}; use P-256 or P-384"
            )
        return
    from cryptography.hazmat.primitives.asymmetric import rsa

    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ProvisioningError(
                f"key too weak: RSA {key.key_size} bits; use at least {MIN_RSA_BITS} bits or EC P-256"
            )
        return
    raise ProvisioningError(f"unsupported key type {type(key).__name__}; use EC P-256")


def build_crl(
    ca: CertificateAuthority, revoked: list[tuple[int, dt.datetime]], *, days: int = 30
) -> x509.CertificateRevocationList:
    """A CRL signed by the CA listing ``(serial, revoked_at)`` pairs."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=days))
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca.key, hashes.SHA256())


def write_crl(path: Path, crl: x509.CertificateRevocationList) -> None:
    """Replace the CRL file atomically (the broker may read it at any moment)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    tmp.chmod(0o644)
    tmp.replace(path)


# -- the config-signing key (Ed25519) --------------------------------------------------------------


def create_signing_key(key_path: Path, public_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
