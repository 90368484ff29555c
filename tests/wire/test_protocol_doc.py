"""Every JSON example in docs/protocol.md is valid under the models it illustrates."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from outpost_iot import wire

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
BLOCKS = re.findall(r"```json (\S+)\n(.*?)```", DOC.read_text(), re.S)


def test_the_doc_has_an_example_of_every_message() -> None:
    assert sorted(kind for kind, _ in BLOCKS) == [
        "ack",
        "batch-body",
        "config-envelope",
        "config-report",
        "nack",
        "renew-request",
        "renew-response",
        "state",
    ]


@pytest.mark.parametrize(("kind", "text"), BLOCKS, ids=[k for k, _ in BLOCKS])
def test_example_is_valid(kind: str, text: str) -> None:
    data = orjson.dumps(orjson.loads(text))
    if kind == "batch-body":
        batch = wire.decode_batch(wire.frame(data))
        assert batch.reading_count == 3
    elif kind in ("ack", "nack"):
        assert wire.decode_ack(data).kind == kind
    elif kind == "config-envelope":
        envelope = wire.ConfigEnvelope.model_validate_json(data)
        assert wire.split_secrets(envelope.config)[1] == {}  # no secret left in clear
        assert all(wire.has_place(envelope.config, path) for path in envelope.secrets)
        assert envelope.signature
    elif kind == "config-report":
        assert wire.decode_config_report(data).status == "rolled_back"
    elif kind == "renew-request":
        assert "CERTIFICATE REQUEST" in wire.decode_renew_request(data).csr
    elif kind == "renew-response":
        assert wire.decode_renew_response(data).status == "issued"
    else:
        assert wire.decode_state(data).state == "online"
