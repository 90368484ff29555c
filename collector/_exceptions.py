"""Errors of the collector.

::

    CollectorError
    ├── ConfigError        the config file is missing, not TOML, or fails validation
    └── StoreError         a store failed (sqlite3 / driver errors, translated)
        └── StoreUnavailable   the store cannot be reached now; retry later (nack, not crash)
"""

from __future__ import annotations


class CollectorError(Exception):
    """Base class for errors raised by the collector."""


class ConfigError(CollectorError):
    """The configuration is unusable; the message names the file, the key and the fix."""


class StoreError(CollectorError):
    """A store operation failed."""


class StoreUnavailable(StoreError):
    """The store cannot take writes now (locked, full disk, connection down)."""
