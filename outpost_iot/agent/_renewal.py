"""Certificate renewal: before the gateway certificate expires, get a new one over the uplink.

At ``renew_at`` of its lifetime (two thirds by default) the agent makes a new key, sends a
certificate request on ``P/up/renew`` (its current certificate authenticates it to the broker,
which only lets it use its own topics), and writes the new key and certificate together when
the collector answers on ``P/down/renew``. The uplink then reconnects with them; the buffer is
untouched, and batches in flight are simply sent again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from outpost_iot.agent._exceptions import UplinkError
from outpost_iot.wire import RenewResponse


@dataclass(frozen=True)
class RenewalRequest:
    request_id: str
    csr_pem: str
    key_pem: bytes
    answer: asyncio.Future[RenewResponse]


class CertificateRenewer:
    def __init__(
        self,
        *,
        gateway_id: str,
        cert_file: Path,
        key_file: Path,
        renew_at: float,
        min_interval_s: float,
        logger: logging.Logger | None = None,
    ) -> None:
        self.gateway_id = gateway_id
        self._cert_file = cert_file
        self._key_file = key_file
        self._renew_at = renew_at
        self._min_interval = min_interval_s
        self._log = logger or logging.getLogger("outpost.agent.renewal")
        self._last_attempt: float | None = None
        self._waiting: dict[str, asyncio.Future[RenewResponse]] = {}
        self.renewals = 0

    def due(self) -> bool:
        if (
            self._last_attempt is not None
            and time.monotonic() - self._last_attempt < self._min_interval
        ):
            return False
        try:
            start, end = certificate_validity(self._cert_file.read_bytes())
        except (OSError, ValueError) as exc:
            self._log.error("cannot read the gateway certificate %s: %s", self._cert_file, exc)
            return False
        return time.time() >= start + (end - start) * self._renew_at

    def deliver(self, response: RenewResponse) -> None:
        future = self._waiting.get(response.request_id)
        if future is not None and not future.done():
            future.set_result(response)

    def request(self) -> RenewalRequest:
        """A new key and a CSR for it, registered before it is sent (the answer may be quick)."""
        from cryptography.hazmat.primitives import serialization

        from outpost_iot.provisioning._ca import key_pem, make_csr, new_key

        self._last_attempt = time.monotonic()
        key = new_key()
        csr = make_csr(key, self.gateway_id).public_bytes(serialization.Encoding.PEM)
        request = RenewalRequest(
            uuid.uuid4().hex, csr.decode(), key_pem(key), asyncio.get_running_loop().create_future()
        )
        self._waiting[request.request_id] = request.answer
        return request

    def forget(self, request: RenewalRequest) -> None:
        self._waiting.pop(request.request_id, None)

    def _keep_previous_key(self) -> None:
        """Keep the key being replaced (0600): desired-config secrets sealed to it still open."""
        if not self._key_file.exists():
            return
        folder = self._key_file.parent / PREVIOUS_KEYS
        folder.mkdir(mode=0o700, exist_ok=True)
        target = folder / f"{time.time_ns()}.key"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, self._key_file.read_bytes())
            os.fsync(fd)
        finally:
            os.close(fd)
        for old in previous_keys(self._key_file)[_KEEP_KEYS:]:
            old.unlink()

    def install(self, certificate_pem: str, key: bytes) -> None:
        """Check the new certificate against the new key and our id, then replace both files."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        from outpost_iot.provisioning._exceptions import ProvisioningError
        from outpost_iot.provisioning._files import replace_files

        cert = x509.load_pem_x509_certificate(certificate_pem.encode())
        private = serialization.load_pem_private_key(key, password=None)
        if cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise UplinkError("the renewed certificate is not for the new key; keeping the old one")
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if not cn or cn[0].value != self.gateway_id:
            raise UplinkError("the renewed certificate names another gateway; keeping the old one")
        if self._cert_file.parent != self._key_file.parent:
            raise UplinkError("cert_file and key_file must be in one directory to be renewed")
        try:
            self._keep_previous_key()
            replace_files(
                self._cert_file.parent,
                {
                    self._key_file.name: (key, 0o600),
                    self._cert_file.name: (certificate_pem.encode(), 0o644),
                },
            )
        except ProvisioningError as exc:
            raise UplinkError(str(exc)) from exc
        except OSError as exc:
            raise UplinkError(f"cannot keep the previous key: {exc.strerror}") from exc
        self.renewals += 1
        self._log.info(
            "gateway certificate renewed, valid until %s",
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}",
        )


PREVIOUS_KEYS = "previous-keys"
_KEEP_KEYS = 3


def previous_keys(key_file: Path) -> list[Path]:
    """Keys this gateway had before its renewals, newest first: configs sealed to them open."""
    folder = key_file.parent / PREVIOUS_KEYS
    return sorted(folder.glob("*.key"), reverse=True) if folder.is_dir() else []


def certificate_validity(pem: bytes) -> tuple[float, float]:
    """``(not_before, not_after)`` of a PEM certificate, as Unix times.

    Checking whether renewal is due happens at every connection; loading ``cryptography`` for
    it would add about 11 MB to the agent's memory for good (measured: 45 → 56 MiB). The two
    dates sit at a fixed place in the DER structure (RFC 5280, 4.1), so a few lines read them;
    ``cryptography`` is imported only when a renewal actually happens.
    """
    body = b"".join(
        line.strip() for line in pem.splitlines() if line.strip() and not line.startswith(b"-----")
    )
    try:
        der = base64.b64decode(body, validate=True)
    except binascii.Error:
        raise ValueError("not a PEM certificate") from None
    _, cert_start, _ = _tlv(der, 0, 0x30)  # Certificate
    _, tbs, _ = _tlv(der, cert_start, 0x30)  # TBSCertificate
    pos = tbs
    if der[pos] == 0xA0:  # [0] version
        pos = _skip(der, pos)
    for _ in range(3):  # serialNumber, signature, issuer
        pos = _skip(der, pos)
    _, validity, _ = _tlv(der, pos, 0x30)
    t1, start1, end1 = _tlv(der, validity, None)
    t2, start2, end2 = _tlv(der, end1, None)
    return _asn1_time(t1, der[start1:end1]), _asn1_time(t2, der[start2:end2])


def _tlv(der: bytes, pos: int, want: int | None) -> tuple[int, int, int]:
    """Tag at ``pos``: ``(tag, content start, content end)``."""
    if pos + 2 > len(der):
        raise ValueError("truncated certificate")
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if want is not None and tag != want:
        raise ValueError(f"unexpected DER tag {tag:#x} (wanted {want:#x})")
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(der[pos : pos + n], "big")
        pos += n
    if pos + length > len(der):
        raise ValueError("truncated certificate")
    return tag, pos, pos + length


def _skip(der: bytes, pos: int) -> int:
    return _tlv(der, pos, None)[2]


def _asn1_time(tag: int, raw: bytes) -> float:
    text = raw.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: years 1950-2049
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError(f"unexpected time tag {tag:#x}")
    stamp = dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)
    return stamp.timestamp()
