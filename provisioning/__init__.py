"""Provisioning: the device CA and the identities it issues."""

from provisioning._ca import CertificateAuthority, cert_pem, key_pem, new_key, write_private
from provisioning._exceptions import ProvisioningError

__all__ = [
    "CertificateAuthority",
    "ProvisioningError",
    "cert_pem",
    "key_pem",
    "new_key",
    "write_private",
]
