"""Desired config over the air, on the gateway: verify, validate, apply atomically, roll back.

The operator's part of the config (devices, sources, log level, broker address, buffer) arrives
signed on ``P/down/config``. The agent:

1. opens the envelope (``wire.open_config``): the signature against the key pinned at
   enrollment, addressed to this gateway, newer than the applied version, secrets decrypted
   with this gateway's keys (the current one and the ones before a renewal);
2. validates the whole resulting config before touching anything;
3. writes it atomically (``config/applied.json``: write, fsync, rename, fsync the directory),
   keeps the one before as ``last-good.json``, notes the change as ``pending.json``, and
   restarts itself in place (the buffer is durable: nothing buffered is lost);
4. after the restart, the first ack from the collector confirms the change (report
   ``applied``); no ack within the grace period — a wrong broker address, wrong credentials —
   brings back the last good config, restarts again, and reports ``rolled_back`` with the reason
   once connected. A config that does not open or validate is reported ``rejected``.

Files are 0600 in ``<state_dir>/config/``; they hold device credentials like ``agent.toml``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import orjson

from outpost_iot import wire
from outpost_iot.agent._config import (
    UNKNOWN_KEY,
    AgentConfig,
    ManagedConfig,
    load_raw,
    parse_config,
)

_APPLIED, _LAST_GOOD, _PENDING, _OUTCOME, _REFUSED = (
    "applied.json",
    "last-good.json",
    "pending.json",
    "outcome.json",
    "rolled-back.json",
)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write, fsync, rename over, fsync the directory: the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def merge(base: dict[str, Any], managed: dict[str, Any]) -> dict[str, Any]:
    """The local ``agent.toml`` with the managed part laid over it: ``sources`` and ``devices``
    replace the local lists when given; a section left out stays as ``agent.toml`` has it."""
    raw = dict(base)
    for section in ("sources", "devices"):
        if managed.get(section) is not None:
            raw[section] = managed[section]
    if managed.get("log_level"):
        raw["log_level"] = managed["log_level"]
    if managed.get("alarms") is not None:  # the rules replace; a local broker set here stays
        raw["alarms"] = {**base.get("alarms", {}), **managed["alarms"]}
    if managed.get("uplink"):
        raw["uplink"] = {**base.get("uplink", {}), **managed["uplink"]}
    if managed.get("buffer"):
        # Never the path (ManagedConfig refuses it too): the backlog stays where it is.
        overlay = {k: v for k, v in managed["buffer"].items() if k != "path"}
        raw["buffer"] = {**base.get("buffer", {}), **overlay}
    return raw


class ManagedState:
    """The over-the-air config files of one gateway."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "config"

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            value = orjson.loads((self.dir / name).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        return value if isinstance(value, dict) else None

    def _write(self, name: str, value: dict[str, Any]) -> None:
        write_atomic(self.dir / name, orjson.dumps(value))

    def _remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / name).unlink()

    @property
    def applied(self) -> dict[str, Any] | None:
        """``{"version": N, "config": {...}}`` of what runs now, or None (only agent.toml)."""
        return self._read(_APPLIED)

    @property
    def applied_version(self) -> int:
        applied = self.applied
        return int(applied["version"]) if applied else 0

    @property
    def pending(self) -> dict[str, Any] | None:
        return self._read(_PENDING)

    def apply(self, version: int, managed: dict[str, Any], now_ns: int, digest: str = "") -> None:
        current = self.applied
        self._write(_LAST_GOOD, current or {"version": 0, "config": None})
        self._write(_APPLIED, {"version": version, "config": managed, "digest": digest})
        self._write(_PENDING, {"version": version, "since_ns": now_ns})

    def confirm(self) -> int | None:
        """The pending change got its ack: it is the good config now. Its version, if any."""
        pending = self.pending
        if pending is None:
            return None
        self._remove(_PENDING)
        return int(pending["version"])

    def roll_back(self, reason: str, now_ns: int) -> int:
        """Back to the last good config; the outcome is reported once connected."""
        pending = self.pending or {"version": self.applied_version}
        good = self._read(_LAST_GOOD) or {"version": 0, "config": None}
        if good.get("config") is None:
            self._remove(_APPLIED)
        else:
            self._write(_APPLIED, good)
        self._remove(_PENDING)
        # The retained message still holds that version: never apply it again.
        self._write(_REFUSED, {"version": int(pending["version"])})
        self._write(
            _OUTCOME,
            {
                "version": int(pending["version"]),
                "status": "rolled_back",
                "reason": reason,
                "applied_version": int(good.get("version") or 0),
                "ts": now_ns,
            },
        )
        return int(pending["version"])

    @property
    def rolled_back_version(self) -> int:
        refused = self._read(_REFUSED)
        return int(refused["version"]) if refused else 0

    def take_outcome(self) -> dict[str, Any] | None:
        """A report to send once connected (a rollback that happened while offline)."""
        outcome = self._read(_OUTCOME)
        self._remove(_OUTCOME)
        return outcome

    def effective(self, base: dict[str, Any]) -> dict[str, Any]:
        applied = self.applied
        if applied is None or applied.get("config") is None:
            return base
        return merge(base, applied["config"])


class ConfigReceiver:
    """Opens and validates a desired config; applies it or says why not."""

    def __init__(
        self,
        *,
        gateway_id: str,
        base: dict[str, Any],
        source: str,
        state: ManagedState,
        key_files: list[Path],
        verify_key_file: Path,
        now_ns: Any = time.time_ns,
    ) -> None:
        self.gateway_id = gateway_id
        self._base = base
        self._source = source
        self.state = state
        self._key_files = key_files
        self._verify_key_file = verify_key_file
        self._now = now_ns

    def receive(self, payload: bytes) -> tuple[wire.ConfigReport | None, bool]:
        """``(report, restart)``: a report to send now (rejections), and whether the new
        config was written and the agent must restart into it."""
        applied = self.state.applied_version
        version = _version_of(payload)
        if version is None:
            return self._report(
                0,
                "rejected",
                "bad_format",
                [
                    "not a config envelope: a JSON object with an integer version from 0 to"
                    f" {wire.limits.MAX_CONFIG_VERSION} is expected"
                ],
            ), False
        # The retained copy of what runs comes at every connect: recognise it without loading
        # cryptography (about 10 MiB on a small board), and refuse older ones the same way.
        if version <= applied:
            current = self.state.applied or {}
            if current.get("digest") == hashlib.sha256(payload).hexdigest():
                return None, False
            return self._report(
                version,
                "rejected",
                "replayed",
                [f"version {version} is not newer than the applied {applied}"],
            ), False
        if version <= self.state.rolled_back_version:
            return None, False  # rolled back and reported already; waits for a newer version

        from cryptography.hazmat.primitives import serialization  # only for a new config

        keys = []
        for path in self._key_files:
            with contextlib.suppress(FileNotFoundError, ValueError):
                keys.append(serialization.load_pem_private_key(path.read_bytes(), password=None))
        try:
            verify_key = self._verify_key_file.read_bytes()
        except OSError as exc:
            return self._report(0, "rejected", "no_signing_key", [str(exc)]), False
        try:
            envelope, managed = wire.open_config(
                payload,
                gateway_id=self.gateway_id,
                applied_version=applied,
                verify_key_pem=verify_key,
                private_keys=keys,
            )
        except wire.EnvelopeRefused as exc:
            return self._report(version, "rejected", exc.reason, [exc.detail]), False
        problems = _problems(managed, self._base, self._source)
        if problems:
            return self._report(envelope.version, "rejected", "invalid", problems), False
        self.state.apply(
            envelope.version, managed, self._now(), hashlib.sha256(payload).hexdigest()
        )
        return None, True

    def _report(
        self, version: int, status: str, reason: str, errors: list[str]
    ) -> wire.ConfigReport:
        return wire.ConfigReport(
            version=version,
            status=status,
            applied_version=self.state.applied_version,
            reason=reason,
            errors=wire.ConfigReport.fit_errors(errors),
            ts=self._now(),
        )


def _version_of(payload: bytes) -> int | None:
    """The envelope's version, or None when the payload is not an envelope at all."""
    try:
        version = orjson.loads(payload).get("version")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if isinstance(version, bool) or not isinstance(version, int):
        return None
    if not 0 <= version <= wire.limits.MAX_CONFIG_VERSION:
        return None
    return version


def _problems(managed: dict[str, Any], base: dict[str, Any], source: str) -> list[str]:
    """Validation errors of the managed part and of the whole resulting config, secret-free."""
    from pydantic import ValidationError

    from outpost_iot.agent._exceptions import ConfigError

    try:
        ManagedConfig.model_validate(managed)
    except ValidationError as exc:
        return [f"{where}: {problem}" for where, problem in wire.problems(exc, unknown=UNKNOWN_KEY)]
    try:
        config: AgentConfig = parse_config(merge(base, managed), source=source)
    except ConfigError as exc:
        return [str(exc)]
    del config
    return []


def load_config(path: Path) -> AgentConfig:
    """Read and validate ``path`` with the config applied over the air laid over it; raise
    :class:`~agent._exceptions.ConfigError` saying what to change."""
    raw = load_raw(path)
    state_dir = Path(str(raw.get("state_dir", "/var/lib/outpost")))
    return parse_config(ManagedState(state_dir).effective(raw), source=str(path))
