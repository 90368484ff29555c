"""The MQTT topic layout (MQTT 5, QoS 1). ``P = outpost/v1/gw/{gateway_id}``."""

from __future__ import annotations

import re

ROOT = "outpost/v1/gw"
SHARE_GROUP = "collectors"
# What the collector replicas subscribe to; the broker splits the load between them.
COLLECTOR_SUBSCRIPTION = f"$share/{SHARE_GROUP}/{ROOT}/+/up/#"

# Gateway ids are certificate CNs and topic levels: no MQTT wildcards, no separators.
GATEWAY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def valid_gateway_id(gateway_id: str) -> bool:
    """True when ``gateway_id`` can be a CN and a single topic level."""
    return bool(GATEWAY_ID_PATTERN.match(gateway_id))


def prefix(gateway_id: str) -> str:
    return f"{ROOT}/{gateway_id}"


def up_batch(gateway_id: str) -> str:
    return f"{ROOT}/{gateway_id}/up/batch"


def up_state(gateway_id: str) -> str:
    return f"{ROOT}/{gateway_id}/up/state"


def up_config(gateway_id: str) -> str:
    return f"{ROOT}/{gateway_id}/up/config"


def up_renew(gateway_id: str) -> str:
    return f"{ROOT}/{gateway_id}/up/renew"


def down_renew(gateway_id: str) -> str:
    return f"{ROOT}/{gateway_id}/down/renew"


def down_ack(gateway_id: str) -> str:
    return f"{ROOT}/{gateway_id}/down/ack"


def down_config(gateway_id: str) -> str:
    return f"{ROOT}/{gateway_id}/down/config"


def gateway_of(topic: str) -> str | None:
    """The gateway id of any topic under ``outpost/v1/gw/<id>/``, valid or not otherwise."""
    parts = topic.split("/", 4)
    if len(parts) < 4 or "/".join(parts[:3]) != ROOT or not valid_gateway_id(parts[3]):
        return None
    return parts[3]


def parse_up_topic(topic: str) -> tuple[str, str] | None:
    """``outpost/v1/gw/G/up/KIND`` → ``(G, KIND)``; None for anything else."""
    parts = topic.split("/")
    if len(parts) != 6 or "/".join(parts[:3]) != ROOT or parts[4] != "up":
        return None
    if not valid_gateway_id(parts[3]):
        return None
    return parts[3], parts[5]
