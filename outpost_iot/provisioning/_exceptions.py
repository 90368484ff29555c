"""Errors of provisioning.

::

    ProvisioningError     CA material missing or unusable, bad identity directory, ...
"""


class ProvisioningError(Exception):
    """Provisioning failed; the message says what to change."""
