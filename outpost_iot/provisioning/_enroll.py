"""The gateway side of enrollment: key on the gateway, CSR + token to the collector, files.

Nothing is written until the collector has answered: a refused or failed enrollment leaves the
gateway exactly as it was. The files then appear together (written to temporary names, synced,
renamed), the private key with mode 0600 in a 0700 directory.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import os
import platform
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from outpost_iot.provisioning._ca import key_pem, make_csr, new_key
from outpost_iot.provisioning._exceptions import ProvisioningError
from outpost_iot.provisioning._files import replace_files

KEY_FILE, CERT_FILE, CA_FILE = "gateway.key", "gateway.pem", "ca.pem"
SIGNING_FILE, INFO_FILE = "config-signing.pub", "enrollment.json"


@dataclass(frozen=True)
class Identity:
    gateway_id: str
    tenant: str
    site: str
    broker_host: str
    broker_port: int
    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def cert(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def ca(self) -> Path:
        return self.directory / CA_FILE


def current_identity(directory: Path) -> tuple[str, x509.Certificate] | None:
    """The gateway id and certificate already in ``directory``, if any."""
    cert_path = directory / CERT_FILE
    if not cert_path.exists() or not (directory / KEY_FILE).exists():
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return None
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return (str(cn[0].value) if cn else "?"), cert


def hardware_facts() -> dict[str, str | int]:
    facts: dict[str, str | int] = {
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "cpu_count": os.cpu_count() or 0,
    }
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                facts["os"] = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    with contextlib.suppress(ValueError, OSError):
        facts["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for serial_file in (
        "/sys/firmware/devicetree/base/serial-number",
        "/sys/class/dmi/id/product_serial",
    ):
        try:
            facts["serial"] = Path(serial_file).read_text().strip("\x00\n ")
            break
        except OSError:
            continue
    try:  # a stable id of this installation, hashed: the machine id itself stays here
        machine_id = Path("/etc/machine-id").read_text().strip()
        facts["machine_id_sha256"] = hashlib.sha256(machine_id.encode()).hexdigest()[:16]
    except OSError:
        pass
    return facts


def check_directory(directory: Path) -> None:
    """The identity directory exists (0700) and is writable, or a clear error."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except PermissionError:
        raise ProvisioningError(
            f"no permission to create {directory}; run as root (sudo) or pass --identity-dir"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ProvisioningError(
            f"no write permission on {directory}; run as root (sudo) or pass --identity-dir"
        )


def request_identity(
    *,
    collector: str,
    token: str,
    ca_file: Path | None,
    tenant: str | None,
    current: tuple[Path, Path] | None,
    timeout: float = 20.0,
) -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    """Make a key here, send the CSR with the token; return the key and the collector's answer."""
    if not collector.startswith("https://"):
        raise ProvisioningError(
            f"the collector URL must start with https:// (got {collector!r}); enrollment never "
            "goes over plain HTTP"
        )
    key = new_key()
    csr = make_csr(key)
    body: dict[str, Any] = {
        "token": token,
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "hardware": hardware_facts(),
    }
    if tenant:
        body["tenant"] = tenant
    if current is not None:
        cert_path, key_path = current
        old_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if isinstance(old_key, ec.EllipticCurvePrivateKey):
            # Proof that this is the same gateway: the current key signs the new request.
            body["current_certificate"] = cert_path.read_text()
            body["proof"] = base64.b64encode(
                old_key.sign(csr.tbs_certrequest_bytes, ec.ECDSA(hashes.SHA256()))
            ).decode()
    verify: ssl.SSLContext | bool = True
    if ca_file is not None:
        try:
            verify = ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ProvisioningError(
                f"--ca-file {ca_file}: not a usable certificate: {exc}"
            ) from None
    url = collector.rstrip("/") + "/api/v1/enroll"
    try:
        with httpx.Client(verify=verify, timeout=timeout) as client:
            response = client.post(url, json=body)
    except httpx.ConnectError as exc:
        if isinstance(
            exc.__cause__ or exc.__context__, ssl.SSLCertVerificationError
        ) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise ProvisioningError(
                f"the collector's TLS certificate does not verify ({collector}). If the collector "
                "has no certificate from a public CA, pass --ca-file with its CA certificate."
            ) from None
        raise ProvisioningError(
            f"cannot reach the collector at {collector}: {exc}. Check the URL and the network."
        ) from None
    except httpx.TimeoutException:
        raise ProvisioningError(
            f"the collector at {collector} did not answer within {timeout:.0f} s"
        ) from None
    except httpx.HTTPError as exc:
        raise ProvisioningError(f"enrollment request to {collector} failed: {exc}") from None
    return key, _answer(response, collector)


_HINTS = {
    "unknown": "the token is not known to this collector: check it, or ask the operator for a new one",
    "expired": "the token has expired: ask the operator for a new one",
    "used_up": "the token was already used: ask the operator for a new one",
    "revoked": "the token was revoked by an operator: ask for a new one",
    "wrong_tenant": "the token belongs to another tenant: ask for a token for your tenant",
    "bad_csr": "the collector refused the certificate request",
}


def _answer(response: httpx.Response, collector: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code == 200 and isinstance(data, dict) and "certificate" in data:
        return data
    if isinstance(data, dict) and "error" in data:
        code = str(data["error"])
        detail = str(data.get("detail", ""))
        hint = _HINTS.get(code, "")
        raise ProvisioningError(
            f"enrollment refused ({code}): {detail}" + (f"; {hint}" if hint else "")
        )
    raise ProvisioningError(
        f"{collector} answered HTTP {response.status_code} to /api/v1/enroll: is this the "
        "collector's URL?"
    )


def write_identity(
    directory: Path, key: ec.EllipticCurvePrivateKey, answer: dict[str, Any], collector: str
) -> Identity:
    """Write key, certificate, CA chain and signing key together; nothing half-written."""
    import json

    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise ProvisioningError("the collector returned a certificate for a different key")
    info = {
        "gateway_id": answer["gateway_id"],
        "tenant": answer["tenant"],
        "site": answer["site"],
        "collector": collector,
        "broker": answer["broker"],
        "enrolled_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "certificate_not_after": cert.not_valid_after_utc.isoformat(),
    }
    files = {
        KEY_FILE: (key_pem(key), 0o600),
        CERT_FILE: (answer["certificate"].encode(), 0o644),
        CA_FILE: (answer["ca_chain"].encode(), 0o644),
        SIGNING_FILE: (answer["config_signing_public_key"].encode(), 0o644),
        INFO_FILE: (json.dumps(info, indent=2).encode(), 0o644),
    }
    replace_files(directory, files)
    return Identity(
        gateway_id=answer["gateway_id"],
        tenant=answer["tenant"],
        site=answer["site"],
        broker_host=answer["broker"]["host"],
        broker_port=int(answer["broker"]["port"]),
        directory=directory,
    )
