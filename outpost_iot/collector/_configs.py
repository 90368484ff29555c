"""Desired configs: validated, versioned, signed, sealed to the gateway, published retained."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from outpost_iot import wire
from outpost_iot.collector._exceptions import CollectorError, StoreError
from outpost_iot.collector.stores import DesiredConfigRecord, DocumentStore
from outpost_iot.wire import topics

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
    """Check a desired config with the managed-config schema the agent uses, then its devices
    and sources against their firmware profiles; raise :class:`ConfigInvalid`."""
    try:
        wire.limits.bounded_config(config)
    except wire.TooComplex as exc:
        raise ConfigInvalid([("(config)", str(exc))]) from None
    try:
        managed = wire.ManagedConfig.model_validate(config)
    except ValidationError as exc:
        raise ConfigInvalid(wire.problems(exc, unknown="unknown key")) from None
    checked = wire.profile_problems(
        sources=managed.sources, devices=managed.devices, lookup=wire.profile_facts
    )
    if checked:
        raise ConfigInvalid(checked)


_DELETE = "$patch"  # {"name": "fw-1", "$patch": "delete"} removes that item (as Kubernetes does)


def apply_patch(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``base`` changed by ``patch``: a JSON merge patch (RFC 7396) in which lists of named
    objects (``devices``, named ``sources``) are merged item by item on ``name``.

    - an object member in the patch replaces or, for objects, merges into the base's; ``null``
      deletes it;
    - a list whose items are all objects with a ``name`` changes the base list's items of the
      same name (merged the same way), appends new names and removes items given as
      ``{"name": …, "$patch": "delete"}``; the order of the base is kept;
    - any other list replaces the base's.

    A named-list patch on a top-level section the base does not have (the gateway takes it from
    its own ``agent.toml``) raises :class:`ConfigInvalid`: the collector does not know those
    items, so it cannot change one of them without replacing them all.
    """
    problems: list[tuple[str, str]] = []
    out = _merge_object(base, patch, "", problems)
    if problems:
        raise ConfigInvalid(problems)
    return out


def deleted_secrets(patch: dict[str, Any], path: str = "") -> set[str]:
    """Paths of secrets the patch deletes (``"api_key": null``): not carried to the next version."""
    found: set[str] = set()
    for key, change in patch.items():
        here = f"{path}.{key}" if path else key
        if change is None and key in wire.SECRET_KEYS:
            found.add(here)
        elif isinstance(change, dict):
            found |= deleted_secrets(change, here)
        elif isinstance(change, list) and _named(change):
            for item in change:
                found |= deleted_secrets(item, f"{here}[{item['name']}]")
    return found


def _named(items: list[Any]) -> bool:
    return bool(items) and all(
        isinstance(i, dict) and isinstance(i.get("name"), str) for i in items
    )


def _merge_object(
    base: dict[str, Any], patch: dict[str, Any], path: str, problems: list[tuple[str, str]]
) -> dict[str, Any]:
    out = dict(base)
    for key, change in patch.items():
        here = f"{path}.{key}" if path else key
        if change is None:
            out.pop(key, None)
        elif isinstance(change, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_object(out[key], change, here, problems)
        elif isinstance(change, list) and _named(change):
            if not isinstance(out.get(key), list):
                if path == "" and key in ("devices", "sources"):
                    problems.append(
                        (
                            here,
                            f"this gateway's {key} come from its own agent.toml, not from a "
                            f"desired config: set the whole list (config set) before patching "
                            f"items of it",
                        )
                    )
                    continue
                out[key] = []
            out[key] = _merge_named(out[key], change, here, problems)
        else:
            out[key] = _strip_markers(change, here, problems)
    return out


def _merge_named(
    base: list[Any], patch: list[dict[str, Any]], path: str, problems: list[tuple[str, str]]
) -> list[Any]:
    items = list(base)
    for change in patch:
        name = change["name"]
        marker = change.get(_DELETE)
        at = next(
            (i for i, x in enumerate(items) if isinstance(x, dict) and x.get("name") == name),
            None,
        )
        if marker is not None:
            if marker != "delete" or len(change) != 2:
                problems.append(
                    (f"{path}[{name}]", 'to remove an item give only {"name", "$patch": "delete"}')
                )
            elif at is not None:
                del items[at]
            continue  # removing what is not there: nothing to do
        if at is None:
            items.append(_strip_markers(change, f"{path}[{name}]", problems))
        else:
            items[at] = _merge_object(items[at], change, f"{path}[{name}]", problems)
    return items


def _strip_markers(value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    """A value taken from the patch as it is; a ``$patch`` marker has no meaning there."""
    if isinstance(value, dict):
        if _DELETE in value:
            problems.append((path, '"$patch" is only for items of a list merged by name'))
        return {k: _strip_markers(v, f"{path}.{k}", problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_markers(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


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

    def patch_desired(
        self, gateway_id: str, patch: dict[str, Any], actor: str
    ) -> DesiredConfigRecord:
        """Change the gateway's newest desired config by ``patch`` (see :func:`apply_patch`),
        then validate, seal, sign, store and publish it as the next version."""
        return self.commit(self.prepare_patch(gateway_id, patch, actor))

    def current(self, gateway_id: str) -> dict[str, Any]:
        """The newest desired config without its secrets (``{}`` when none was ever set)."""
        previous = self._docs.desired_configs(gateway_id, limit=1)
        if not previous:
            return {}
        return wire.ConfigEnvelope.model_validate_json(previous[0].envelope).config

    def prepare_patch(
        self, gateway_id: str, patch: dict[str, Any], actor: str
    ) -> DesiredConfigRecord:
        """:meth:`prepare` for the newest desired config changed by ``patch``; secrets the patch
        does not give are carried, sealed, from that version."""
        return self.prepare(
            gateway_id,
            apply_patch(self.current(gateway_id), patch),
            actor,
            drop=deleted_secrets(patch),
        )

    def prepare(
        self,
        gateway_id: str,
        config: dict[str, Any],
        actor: str,
        *,
        drop: set[str] | frozenset[str] = frozenset(),
    ) -> DesiredConfigRecord:
        """The next version for the gateway, validated, sealed and signed, not yet stored.
        Secrets at the paths in ``drop`` are not carried from the previous version."""
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
        kept = {
            p: b
            for p, b in carried.items()
            if p not in given and p not in drop and wire.has_place(plain, p)
        }
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
            newest = self._docs.desired_configs(g.id, limit=1)
            if newest and not g.revoked_ns:
                self.publish(topics.down_config(g.id), newest[0].envelope)
                count += 1
        return count
