"""The gateway's side of config over the air: files, merge, rollback bookkeeping, refusals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from outpost_iot.agent._managed import ConfigReceiver, ManagedState, merge
from outpost_iot.wire import encode_envelope, seal_config

PEM = serialization.Encoding.PEM


def base(tmp_path: Path) -> dict[str, Any]:
    for name in ("ca.pem", "gw.pem", "gw.key"):
        (tmp_path / name).write_text("x")
    return {
        "gateway_id": "gw-1",
        "state_dir": str(tmp_path / "state"),
        "uplink": {
            "host": "broker",
            "ca_file": str(tmp_path / "ca.pem"),
            "cert_file": str(tmp_path / "gw.pem"),
            "key_file": str(tmp_path / "gw.key"),
        },
        "sources": [{"type": "host"}],
    }


def test_merge_replaces_sources_and_devices_and_keeps_the_identity(tmp_path: Path) -> None:
    b = base(tmp_path)
    b["devices"] = [{"name": "local", "profile": "tasmota", "target": "mqtt://127.0.0.1"}]
    merged = merge(b, {"sources": [{"type": "simulated"}], "uplink": {"host": "new", "port": 9883}})
    assert merged["sources"] == [{"type": "simulated"}]
    assert merged["devices"] == b["devices"]  # not in the managed config: as agent.toml has it
    assert merged["uplink"]["host"] == "new"
    assert merged["uplink"]["key_file"] == b["uplink"]["key_file"]
    # Only the broker moves: the gateway keeps collecting what agent.toml says.
    moved = merge(b, {"uplink": {"host": "mqtt2.example.net", "port": 8883}})
    assert (moved["sources"], moved["devices"]) == (b["sources"], b["devices"])
    assert merge(b, {"devices": []})["devices"] == []  # an empty list is a list: no devices


def test_apply_confirm_and_roll_back(tmp_path: Path) -> None:
    state = ManagedState(tmp_path / "state")
    state.apply(1, {"sources": []}, 10)
    assert (state.dir / "applied.json").stat().st_mode & 0o777 == 0o600
    assert state.confirm() == 1
    state.apply(2, {"sources": [{"type": "host"}]}, 20)
    assert state.pending == {"version": 2, "since_ns": 20}
    assert state.roll_back("no_ack_within_grace", 30) == 2
    applied = state.applied
    assert applied is not None
    assert (applied["version"], applied["config"]) == (1, {"sources": []})
    assert state.pending is None
    assert state.rolled_back_version == 2
    assert state.take_outcome() == {
        "version": 2,
        "status": "rolled_back",
        "reason": "no_ack_within_grace",
        "applied_version": 1,
        "ts": 30,
    }
    assert state.take_outcome() is None  # reported once


@dataclass
class Gateway:
    """A gateway's receiver with real keys, and a signer of envelopes for it."""

    receiver: ConfigReceiver
    state: ManagedState
    envelope: Callable[..., bytes]  # (version, config, gateway_id="gw-1") -> envelope


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    signing = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "signing.pub").write_bytes(
        signing.public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    key = ec.generate_private_key(ec.SECP256R1())
    b = base(tmp_path)  # writes placeholder identity files; the real key goes over gw.key
    (tmp_path / "gw.key").write_bytes(
        key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    state = ManagedState(tmp_path / "state")
    receiver = ConfigReceiver(
        gateway_id="gw-1",
        base=b,
        source="agent.toml",
        state=state,
        key_files=[tmp_path / "gw.key"],
        verify_key_file=tmp_path / "signing.pub",
    )

    def envelope(version: int, config: dict[str, Any], gateway_id: str = "gw-1") -> bytes:
        return encode_envelope(
            seal_config(
                config,
                gateway_id=gateway_id,
                version=version,
                issued_ns=1,
                public_key_pem=key.public_key().public_bytes(
                    PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
                signing_key_pem=signing.private_bytes(
                    PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ),
            )
        )

    return Gateway(receiver, state, envelope)


def test_the_receiver_applies_once_and_never_a_rolled_back_version(gateway: Gateway) -> None:
    receiver, state, envelope = gateway.receiver, gateway.state, gateway.envelope
    v1 = envelope(1, {"sources": [{"type": "simulated", "interval": 1}]})
    assert receiver.receive(v1) == (None, True)
    assert state.confirm() == 1
    assert receiver.receive(v1) == (None, False)  # the retained copy of what runs: silence

    bad = envelope(2, {"sources": [{"type": "simulated", "interval": 0}]})
    report, restart = receiver.receive(bad)
    assert restart is False
    assert report is not None
    assert report.status == "rejected"
    assert report.reason == "invalid"
    assert any("interval" in e for e in report.errors)
    assert state.applied_version == 1  # nothing touched

    v3 = envelope(3, {"uplink": {"host": "nowhere", "port": 1}})
    assert receiver.receive(v3) == (None, True)
    state.roll_back("no_ack_within_grace", 5)
    assert receiver.receive(v3) == (None, False)  # redelivered after the rollback: not again
    assert state.applied_version == 1
    assert receiver.receive(envelope(4, {"sources": []})) == (None, True)  # a newer one is fine


def test_garbage_unsigned_and_foreign_envelopes_are_refused_with_their_reason(
    gateway: Gateway,
) -> None:
    receiver, state = gateway.receiver, gateway.state

    def sealed(gateway_id: str) -> dict[str, Any]:
        config = {"sources": [{"type": "simulated", "interval": 1}]}
        return dict(orjson.loads(gateway.envelope(5, config, gateway_id)))

    cases = {
        b"not json at all": "bad_format",
        b"[1, 2]": "bad_format",
        b'{"version": "7"}': "bad_format",
        orjson.dumps({**sealed("gw-1"), "signature": ""}): "bad_signature",
        orjson.dumps(sealed("gw-2")): "wrong_gateway",
    }
    for payload, reason in cases.items():
        report, restart = receiver.receive(payload)
        assert restart is False
        assert report is not None, payload
        assert (report.status, report.reason) == ("rejected", reason), (payload, report)
        assert report.errors  # says why, in words
        assert all(report.errors)
    assert state.applied is None  # nothing touched


def test_the_buffer_path_cannot_be_moved_over_the_air(tmp_path: Path) -> None:
    """Moving the buffer would leave the backlog behind: refused by name, and never merged."""
    from pydantic import ValidationError

    from outpost_iot.agent._config import ManagedConfig
    from outpost_iot.collector._configs import ConfigInvalid, validate_managed

    for buffer in ({"path": str(tmp_path / "elsewhere.db")}, {"path": None}):
        with pytest.raises(ValidationError, match="path cannot be set over the air"):
            ManagedConfig.model_validate({"buffer": buffer})
        with pytest.raises(ConfigInvalid) as refused:
            validate_managed({"buffer": buffer})
        assert [field for field, _ in refused.value.problems] == ["buffer"]
    ManagedConfig.model_validate({"buffer": {"max_bytes": "64MiB"}})  # the rest may change
    b = base(tmp_path)
    b["buffer"] = {"path": str(tmp_path / "here.db")}
    merged = merge(b, {"buffer": {"path": str(tmp_path / "elsewhere.db"), "max_bytes": "1MiB"}})
    assert merged["buffer"] == {"path": str(tmp_path / "here.db"), "max_bytes": "1MiB"}
