"""Desired configs: validated, versioned, signed, sealed to the gateway, published retained."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import wire
from collector._exceptions import CollectorError, StoreError
from collector.stores import DesiredConfigRecord, DocumentStore
from wire import topics

_PLACEHOLDER = "********"  # stands in for a carried secret while the config is validated


class ConfigInvalid(CollectorError):
    """A desired config that fails validation; ``problems`` are (field, problem) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {p}" for f, p in problems))
        self.problems = problems


class ConfigRefused(CollectorError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def validate_managed(config: dict[str, Any]) -> None:
    """Check a desired config with the agent's own models; raise :class:`ConfigInvalid`."""
    from agent._config import ManagedConfig  # the agent's schema is the contract

    try:
        ManagedConfig.model_validate(config)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(top level)"
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            elif err["type"] == "missing":
                message = "required key is missing"
            problems.append((field, message))
        raise ConfigInvalid(problems) from None


class ConfigService:
    def __init__(
        self,
        *,
        docs: DocumentStore,
        signing_key: Path,
        publish: Callable[[str, bytes], None] | None = None,
        now_ns: Callable[[], int] = time.time_ns,
        logger: logging.Logger | None = None,
    ) -> None:
        self._docs = docs
        self._signing_key = signing_key
        self.publish = publish
        self._now = now_ns
        self._log = logger or logging.getLogger("outpost.collector.configs")

    def set_desired(
        self, gateway_id: str, config: dict[str, Any], actor: str
    ) -> DesiredConfigRecord:
        """Validate, version, seal and sign ``config`` for the gateway, store it, publish it.

        Secrets given in clear are sealed now; secrets left out keep the sealed value of the
        previous version (for the same device); nothing secret is stored or published in clear.
        """
        return self.commit(self.prepare(gateway_id, config, actor))

    def prepare(self, gateway_id: str, config: dict[str, Any], actor: str) -> DesiredConfigRecord:
        """The next version for the gateway, validated, sealed and signed, not yet stored."""
        public_key = self._docs.gateway_public_key(gateway_id)
        if public_key is None:
            raise ConfigRefused(
                "no_key", f"gateway {gateway_id!r} has no current certificate to seal secrets to"
            )
        previous = self._docs.desired_configs(gateway_id, limit=1)
        carried: dict[str, str] = {}
        if previous:
            prev = wire.ConfigEnvelope.model_validate_json(previous[0].envelope)
            carried = prev.secrets
        plain, given = wire.split_secrets(config)
        kept = {p: b for p, b in carried.items() if p not in given and wire.has_place(plain, p)}
        validate_managed(wire.join_secrets(plain, {**given, **dict.fromkeys(kept, _PLACEHOLDER)}))
        version = previous[0].version + 1 if previous else 1
        now = self._now()
        envelope = wire.seal_config(
            config,
            gateway_id=gateway_id,
            version=version,
            issued_ns=now,
            public_key_pem=public_key.encode(),
            signing_key_pem=self._signing_key.read_bytes(),
            carried=kept,
        )
        return DesiredConfigRecord(gateway_id, version, now, actor, wire.encode_envelope(envelope))

    def commit(self, record: DesiredConfigRecord) -> DesiredConfigRecord:
        """Store a prepared version and publish it (retained)."""
        version, gateway_id, actor = record.version, record.gateway_id, record.actor
        try:
            self._docs.add_desired_config(record)
        except StoreError as exc:
            raise ConfigRefused(
                "conflict", f"version {version} was set concurrently: {exc}"
            ) from None
        self._log.info("desired config %d for gateway %s set by %s", version, gateway_id, actor)
        if self.publish is not None:
            self.publish(topics.down_config(gateway_id), record.envelope)
        return record

    def republish(self) -> int:
        """Publish every gateway's newest desired config again (after the collector connects)."""
        count = 0
        if self.publish is None:
            return 0
        for g in self._docs.gateways(None):
            newest = self._docs.desired_configs(g["id"], limit=1)
            if newest and not g["revoked_ns"]:
                self.publish(topics.down_config(g["id"]), newest[0].envelope)
                count += 1
        return count
