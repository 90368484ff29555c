"""Errors of the agent.

::

    AgentError
    ├── ConfigError       the config file is missing, not TOML, or fails validation
    ├── BufferError       the SQLite buffer cannot be opened or written (sqlite3 errors, translated)
    └── UplinkError       the broker connection cannot be set up (bad TLS material, ...)
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class for errors raised by the agent."""


class ConfigError(AgentError):
    """The configuration is unusable; the message names the file, the key and the fix."""


class BufferError(AgentError):
    """The buffer database cannot be used; the message names the file."""


class UplinkError(AgentError):
    """The uplink cannot be configured (for example, a TLS file that does not load)."""
