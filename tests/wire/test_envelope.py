"""The desired-config envelope: signed, secrets sealed to one gateway, refused when wrong."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from outpost_iot.wire import (
    EnvelopeRefused,
    encode_envelope,
    has_place,
    join_secrets,
    open_config,
    seal_config,
    split_secrets,
)
from outpost_iot.wire._envelope import open_secret, seal_secret

PEM = serialization.Encoding.PEM
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
PKCS8 = serialization.PrivateFormat.PKCS8
NOENC = serialization.NoEncryption()

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
            "interval": 30,
        },
    ],
    "sources": [{"type": "host", "interval": 10}],
}
SECRETS = ("auth-secret-123", "priv-secret-456", "unifi-secret-789")


@pytest.fixture(scope="module")
def signing() -> tuple[bytes, bytes]:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(PEM, PKCS8, NOENC), key.public_key().public_bytes(PEM, SPKI)


def gateway_key(kind: str) -> Any:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP384R1() if kind == "p384" else ec.SECP256R1())


def seal(signing: tuple[bytes, bytes], key: Any, version: int = 3, **kw: Any) -> bytes:
    envelope = seal_config(
        kw.pop("config", CONFIG),
        gateway_id=kw.pop("gateway_id", "gw-1"),
        version=version,
        issued_ns=1,
        public_key_pem=key.public_key().public_bytes(PEM, SPKI),
        signing_key_pem=signing[0],
        **kw,
    )
    return encode_envelope(envelope)


@pytest.mark.parametrize("kind", ["p256", "p384", "rsa"])
def test_round_trip_and_no_secret_in_the_clear(signing: tuple[bytes, bytes], kind: str) -> None:
    key = gateway_key(kind)
    data = seal(signing, key)
    for secret in SECRETS:
        assert secret.encode() not in data  # not in the retained message, not in any log of it
    envelope, config = open_config(
        data, gateway_id="gw-1", applied_version=2, verify_key_pem=signing[1], private_keys=[key]
    )
    assert envelope.version == 3
    assert config == CONFIG
    assert "auth_key" not in envelope.config["devices"][0]
    assert set(envelope.secrets) == {
        "devices[fw-1].auth_key",
        "devices[fw-1].priv_key",
        "devices[ctl].password",
    }


def refusal(
    data: bytes, signing: tuple[bytes, bytes], keys: list[Any], **kw: Any
) -> EnvelopeRefused:
    """How ``open_config`` refuses ``data`` (it must), with no secret in the message."""
    with pytest.raises(EnvelopeRefused) as caught:
        open_config(
            data,
            gateway_id=kw.get("gateway_id", "gw-1"),
            applied_version=kw.get("applied", 0),
            verify_key_pem=kw.get("verify", signing[1]),
            private_keys=keys,
        )
    for secret in SECRETS:
        assert secret not in str(caught.value)
    return caught.value


def refused(data: bytes, signing: tuple[bytes, bytes], keys: list[Any], **kw: Any) -> str:
    return refusal(data, signing, keys, **kw).reason


def test_tampered_unsigned_foreign_and_replayed_envelopes_are_refused(
    signing: tuple[bytes, bytes],
) -> None:
    key = gateway_key("p256")
    data = seal(signing, key)
    doc = orjson.loads(data)

    tampered = {**doc, "config": {**doc["config"], "sources": []}}
    assert refused(orjson.dumps(tampered), signing, [key]) == "bad_signature"
    unsigned = {**doc, "signature": ""}
    assert refused(orjson.dumps(unsigned), signing, [key]) == "bad_signature"
    other_signer = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(PEM, SPKI)
    assert refused(data, signing, [key], verify=other_signer) == "bad_signature"
    assert refused(data, signing, [key], gateway_id="gw-2") == "wrong_gateway"
    assert refused(data, signing, [key], applied=3) == "replayed"
    assert refused(data, signing, [key], applied=7) == "replayed"
    # Each refusal says what is wrong in words an operator can act on.
    details = {
        refusal(data, signing, [key], verify=other_signer).detail,
        refusal(data, signing, [key], gateway_id="gw-2").detail,
        refusal(data, signing, [key], applied=7).detail,
    }
    assert details == {
        "the signature does not verify against the pinned key",
        f"the envelope is for {doc['gateway_id']!r}, this is 'gw-2'",
        f"version {doc['version']} is not newer than the applied 7",
    }
    assert refused(b"{not json", signing, [key]) == "bad_format"
    assert refused(b'{"v": 2}', signing, [key]) == "bad_format"


def test_a_sealed_secret_opens_only_where_it_was_sealed(signing: tuple[bytes, bytes]) -> None:
    key, other = gateway_key("p256"), gateway_key("p256")
    # Another gateway's key cannot open it.
    assert refused(seal(signing, key), signing, [other]) == "bad_secret"
    # A validly signed envelope whose blob was moved to another field does not open either.
    doc = orjson.loads(seal(signing, key))
    moved = dict(doc["secrets"])
    moved["devices[ctl].password"] = moved["devices[fw-1].auth_key"]
    resigned = seal_config(
        {"devices": doc["config"]["devices"], "sources": doc["config"]["sources"]},
        gateway_id="gw-1",
        version=4,
        issued_ns=1,
        public_key_pem=key.public_key().public_bytes(PEM, SPKI),
        signing_key_pem=signing[0],
        carried=moved,
    )
    assert refused(encode_envelope(resigned), signing, [key]) == "bad_secret"


def test_secrets_carry_over_versions_and_key_renewals(signing: tuple[bytes, bytes]) -> None:
    old_key, new_key = gateway_key("p256"), gateway_key("p256")
    v1 = orjson.loads(seal(signing, old_key, version=1))
    # Version 2 changes an interval and the order of the devices: the sealed secrets are
    # carried (never seen in clear) and stay with their device.
    config2 = {
        "devices": [dict(d, interval=60) for d in reversed(v1["config"]["devices"])],
        "sources": v1["config"]["sources"],
    }
    v2 = seal(signing, new_key, version=2, config=config2, carried=v1["secrets"])
    # The gateway renewed its certificate since: it opens old blobs with its previous key.
    _, config = open_config(
        v2,
        gateway_id="gw-1",
        applied_version=1,
        verify_key_pem=signing[1],
        private_keys=[new_key, old_key],
    )
    assert config["devices"][0]["name"] == "ctl"
    assert config["devices"][0]["password"] == "unifi-secret-789"
    assert config["devices"][1]["priv_key"] == "priv-secret-456"
    assert config["devices"][1]["interval"] == 60
    assert refused(v2, signing, [new_key], applied=1) == "bad_secret"


@pytest.mark.parametrize(
    ("path", "fits"),
    [
        ("devices[fw-1].auth_key", (0, "auth_key")),  # by name
        ("devices[1].password", (1, "password")),  # by index
        ("devices[2].password", None),  # one past the end
        ("devices[x9].password", None),  # neither a name nor an index
        ("devices[0]", None),  # names a list element, not a member
        ("sources[0].interval.password", None),  # the parent is a number
        ("nothing.password", None),
        ("tags.password", None),  # a list of strings is no object
        ("", None),
    ],
)
def test_a_secret_path_fits_only_a_member_of_an_object(
    path: str, fits: tuple[int, str] | None
) -> None:
    config = {**CONFIG, "tags": ["password", "x"]}
    assert has_place(config, path) is (fits is not None)
    if fits is not None:
        joined = join_secrets(config, {path: "s3cret"})
        device, member = fits
        assert joined["devices"][device][member] == "s3cret"
        assert config == {**CONFIG, "tags": ["password", "x"]}  # a copy: the input unchanged
    else:
        with pytest.raises(EnvelopeRefused) as caught:
            join_secrets(config, {path: "s3cret"})
        assert caught.value.reason == "bad_format"
        assert caught.value.detail == f"secret path {path!r} does not fit the config"
        assert str(caught.value) == f"bad_format: {caught.value.detail}"


def test_a_secret_goes_back_exactly_where_it_was() -> None:
    plain, found = split_secrets(CONFIG)
    assert set(found) == {
        "devices[fw-1].auth_key",
        "devices[fw-1].priv_key",
        "devices[ctl].password",
    }
    assert join_secrets(plain, found) == CONFIG
    unnamed = {"devices": [{"target": "a"}, {"target": "b", "password": "p"}]}
    plain, found = split_secrets(unnamed)
    assert found == {"devices[1].password": "p"}
    assert join_secrets(plain, found) == unnamed


def test_a_blob_that_is_not_a_sealed_secret_is_refused_not_opened() -> None:
    key = gateway_key("p256")
    pem = key.public_key().public_bytes(PEM, SPKI)
    good = seal_secret("v", public_key_pem=pem, gateway_id="gw-1", path="p")
    assert open_secret(good, private_keys=[key], gateway_id="gw-1", path="p") == "v"
    blob = base64.b64decode(good)
    for text, words in [
        (good[:8] + "!" + good[8:], "not a sealed secret"),  # not base64 (strictly)
        ("", "not a sealed secret"),  # empty
        ("AAAA", "sealed to key 0000, tampered"),  # too short: no key of ours has this id
        (base64.b64encode(bytes([3]) + blob[1:]).decode(), "cannot be opened"),  # a kind we lack
        (base64.b64encode(bytes([2]) + blob[1:]).decode(), "cannot be opened"),  # RSA, to EC
    ]:
        with pytest.raises(EnvelopeRefused) as caught:
            open_secret(text, private_keys=[key], gateway_id="gw-1", path="p")
        assert caught.value.reason == "bad_secret"
        assert words in caught.value.detail
        assert caught.value.detail.startswith("p: ")
    odd = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(PEM, SPKI)
    with pytest.raises(ValueError, match="secrets can be sealed to EC or RSA keys only"):
        seal_secret("v", public_key_pem=odd, gateway_id="gw-1", path="p")


def test_the_signing_keys_must_be_ed25519(signing: tuple[bytes, bytes]) -> None:
    key = gateway_key("p256")
    ec_pem = key.private_bytes(PEM, PKCS8, NOENC)
    with pytest.raises(ValueError, match="the config-signing key must be an Ed25519 key"):
        seal_config(
            CONFIG,
            gateway_id="gw-1",
            version=1,
            issued_ns=1,
            public_key_pem=key.public_key().public_bytes(PEM, SPKI),
            signing_key_pem=ec_pem,
        )
    verify = key.public_key().public_bytes(PEM, SPKI)
    pinned_ec = refusal(seal(signing, key), signing, [key], verify=verify)
    assert (pinned_ec.reason, pinned_ec.detail) == (
        "bad_signature",
        "the pinned config-signing key is not Ed25519",
    )
    not_json = refusal(b"[1, 2", signing, [key])
    assert not_json.reason == "bad_format"
    assert not_json.detail.startswith("not a config envelope: ")
