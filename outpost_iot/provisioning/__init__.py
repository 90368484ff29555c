"""Provisioning: the device CA and the identities it issues."""

from outpost_iot.provisioning._ca import (
    CertificateAuthority,
    build_crl,
    cert_pem,
    check_key_strength,
    create_signing_key,
    key_pem,
    load_csr,
    make_csr,
    new_key,
    write_crl,
    write_private,
)
from outpost_iot.provisioning._exceptions import ProvisioningError

__all__ = [
    "CertificateAuthority",
    "ProvisioningError",
    "build_crl",
    "cert_pem",
    "check_key_strength",
    "create_signing_key",
    "key_pem",
    "load_csr",
    "make_csr",
    "new_key",
    "write_crl",
    "write_private",
]
