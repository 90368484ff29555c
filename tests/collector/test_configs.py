"""Desired config from the API: validated, versioned, signed, sealed, published; reports back."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from outpost_iot import wire
from outpost_iot.wire import topics
from tests.collector._api_fixture import T0, Api

CONFIG: dict[str, Any] = {
    "devices": [
        {
            "name": "fw-1",
            "profile": "pfsense-snmp",
            "target": "snmp://10.0.0.1",
            "snmp_user": "outpost",
            "auth_key": "auth-secret-123",
            "priv_key": "priv-secret-456",
        },
        {
            "name": "ctl",
            "profile": "unifi-network",
            "target": "https://10.0.0.2",
            "username": "ro",
            "password": "unifi-secret-789",
            "insecure": True,
        },
    ],
    "sources": [{"type": "host", "interval": 10}],
}
SECRETS = ("auth-secret-123", "priv-secret-456", "unifi-secret-789")


async def put(api: Api, gw: str, config: dict[str, Any], token: str = "operator-a"):  # type: ignore[no-untyped-def]
    return await api.client.put(
        f"/api/v1/gateways/{gw}/config",
        json={"config": config},
        headers={"Authorization": f"Bearer {api.tokens[token]}"},
    )


def opened(api: Api, name: str, payload: bytes, applied: int = 0) -> dict[str, Any]:
    signing = serialization.load_pem_private_key(api.signing_key.read_bytes(), password=None)
    verify = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _, config = wire.open_config(
        payload,
        gateway_id=api.gateways[name],
        applied_version=applied,
        verify_key_pem=verify,
        private_keys=[api.keys[name]],
    )
    return config


async def test_a_config_is_signed_sealed_published_and_opens_on_its_gateway(api: Api) -> None:
    gw = api.gateways["a1"]
    r = await put(api, gw, CONFIG)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1
    assert r.json()["config"]["devices"][0]["auth_key"] == "(sealed)"
    ((topic, payload),) = api.published
    assert topic == topics.down_config(gw)
    stored = api.dump()
    assert b"desired_configs" in stored  # the store was read
    for secret in SECRETS:
        assert secret.encode() not in payload  # the retained message never shows them
        assert secret not in r.text
        assert secret.encode() not in stored  # nor the collector's store
    assert opened(api, "a1", payload) == CONFIG
    with pytest.raises(wire.EnvelopeRefused) as caught:
        opened(api, "a2", payload)  # another gateway cannot use it
    assert caught.value.reason == "wrong_gateway"

    # Version 2 changes an interval and leaves the secrets out: they are kept, sealed.
    change = {
        "devices": [
            {k: v for k, v in d.items() if k not in wire.SECRET_KEYS} | {"interval": 60}
            for d in CONFIG["devices"]
        ],
        "sources": CONFIG["sources"],
    }
    r = await put(api, gw, change)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2
    config = opened(api, "a1", api.published[-1][1], applied=1)
    assert config["devices"][1]["password"] == "unifi-secret-789"
    assert config["devices"][0]["interval"] == 60

    state = (await api.get(f"/api/v1/gateways/{gw}/config")).json()
    assert state["desired"]["version"] == 2
    assert [h["version"] for h in state["history"]] == [2, 1]
    assert state["reported"] is None
    assert state["in_sync"] is False
    log = (await api.get("/api/v1/audit", token="operator-a")).json()
    assert [(e["action"], e["detail"]) for e in log[:2]] == [
        ("config.set", {"version": 2}),
        ("config.set", {"version": 1}),
    ]


async def patch(api: Api, gw: str, change: dict[str, Any]):  # type: ignore[no-untyped-def]
    return await api.client.patch(
        f"/api/v1/gateways/{gw}/config",
        json={"patch": change},
        headers={"Authorization": f"Bearer {api.tokens['operator-a']}"},
    )


async def test_a_patch_changes_one_part_and_keeps_the_sealed_secrets(api: Api) -> None:
    gw = api.gateways["a1"]
    assert (await put(api, gw, CONFIG)).status_code == 200
    r = await patch(
        api,
        gw,
        {"devices": [{"name": "fw-1", "interval": 60}, {"name": "ctl", "password": "rotated-42"}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2
    assert "rotated-42" not in r.text
    payload = api.published[-1][1]
    assert b"rotated-42" not in payload
    config = opened(api, "a1", payload, applied=1)
    fw, ctl = config["devices"]
    assert fw["interval"] == 60
    assert (fw["auth_key"], fw["priv_key"]) == ("auth-secret-123", "priv-secret-456")  # carried
    assert ctl["password"] == "rotated-42"
    assert config["sources"] == CONFIG["sources"]

    # From SNMPv3 to v2c: the v3 secrets are removed, not carried into the new version.
    r = await patch(
        api,
        gw,
        {
            "devices": [
                {
                    "name": "fw-1",
                    "snmp_user": None,
                    "auth_key": None,
                    "priv_key": None,
                    "community": "site-community",
                }
            ]
        },
    )
    assert r.status_code == 200, r.text
    fw = opened(api, "a1", api.published[-1][1], applied=2)["devices"][0]
    assert fw["community"] == "site-community"
    assert not {"auth_key", "priv_key", "snmp_user"} & fw.keys()

    # A patch whose result does not validate is refused before anything is signed.
    before = len(api.published)
    r = await patch(api, gw, {"devices": [{"name": "fw-1", "interval": 0}]})
    assert r.status_code == 422
    assert r.json()["problems"][0]["field"] == "config.devices.0.interval"
    assert len(api.published) == before

    log = (await api.get("/api/v1/audit", token="operator-a")).json()
    assert [e["action"] for e in log[:3]] == ["config.patch", "config.patch", "config.set"]


async def test_a_gateway_without_a_desired_config_can_move_broker_but_not_patch_devices(
    api: Api,
) -> None:
    gw = api.gateways["a2"]  # runs on its agent.toml alone
    r = await patch(api, gw, {"devices": [{"name": "fw-1", "interval": 60}]})
    assert r.status_code == 422
    (problem,) = r.json()["problems"]
    assert problem["field"] == "config.devices"
    assert "agent.toml" in problem["problem"]
    r = await patch(api, gw, {"uplink": {"host": "mqtt2.example.net", "port": 8883}})
    assert r.status_code == 200, r.text
    assert opened(api, "a2", api.published[-1][1]) == {
        "uplink": {"host": "mqtt2.example.net", "port": 8883}
    }


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"profile": "pfsense-snmpp"}, "config.devices.0", "unknown profile 'pfsense-snmpp'"),
        ({"target": "https://10.0.0.1"}, "config.devices.0", "reads over snmp"),
        ({"interval": 0}, "config.devices.0.interval", "greater than 0"),
        ({"auth_key": None, "snmp_user": None}, "config.devices.0", "needs community"),
        ({"colour": "red"}, "config.devices.0.colour", "unknown key"),
    ],
    ids=["unknown-profile", "bad-target", "interval-0", "missing-credential", "unknown-key"],
)
async def test_a_bad_config_is_refused_with_the_field_before_anything_is_sent(
    api: Api, change: dict[str, Any], field: str, words: str
) -> None:
    device = {k: v for k, v in CONFIG["devices"][0].items() if v is not None} | change
    device = {k: v for k, v in device.items() if v is not None}
    if "auth_key" not in device:
        device.pop("priv_key", None)
    r = await put(api, api.gateways["a1"], {"devices": [device]})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_config"
    problems = {p["field"]: p["problem"] for p in body["problems"]}
    assert field in problems, problems
    assert words in problems[field]
    assert api.published == []
    assert api.docs.desired_configs(api.gateways["a1"]) == []
    for secret in SECRETS:
        assert secret not in r.text


async def test_reports_show_desired_versus_reported(api: Api) -> None:
    gw = api.gateways["a1"]
    assert (await put(api, gw, CONFIG)).status_code == 200
    ingestor = api.ingestors[-1]
    report = wire.ConfigReport(
        version=1,
        status="rejected",
        applied_version=0,
        reason="device_error",
        errors=["fw-1: SNMP device refused the auth key"],
        ts=T0,
    )
    ingestor.handle([wire_message(topics.up_config(gw), wire.encode_message(report))])
    state = (await api.get(f"/api/v1/gateways/{gw}/config")).json()
    assert state["reported"]["status"] == "rejected"
    assert state["reported"]["errors"] == ["fw-1: SNMP device refused the auth key"]
    assert state["in_sync"] is False
    applied = report.model_copy(
        update={"status": "applied", "applied_version": 1, "reason": "", "errors": []}
    )
    ingestor.handle([wire_message(topics.up_config(gw), wire.encode_message(applied))])
    state = (await api.get(f"/api/v1/gateways/{gw}/config")).json()
    assert state["in_sync"] is True
    (item,) = [g for g in (await api.get("/api/v1/gateways")).json() if g["id"] == gw]
    assert item["config_version"] == 1
    assert item["config_desired_version"] == 1


async def test_who_may_set_and_read_configs(api: Api) -> None:
    a1, b1 = api.gateways["a1"], api.gateways["b1"]
    assert (await put(api, a1, CONFIG, token="viewer-a")).status_code == 403
    assert (await put(api, b1, CONFIG)).status_code == 404  # another tenant's gateway
    assert (await api.get(f"/api/v1/gateways/{b1}/config")).status_code == 404
    assert (await put(api, b1, CONFIG, token="admin")).status_code == 200


def wire_message(topic: str, payload: bytes):  # type: ignore[no-untyped-def]
    from outpost_iot.collector._ingest import Incoming

    return Incoming(topic, payload, {}, T0)
