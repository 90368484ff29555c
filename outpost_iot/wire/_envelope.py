"""The desired-config envelope: signed by the collector, secrets encrypted to one gateway.

Retained on ``P/down/config``. The collector signs the canonical JSON of the envelope (every
member but ``signature``, keys sorted) with its Ed25519 config-signing key; the gateway checks it
against the key pinned at enrollment. Secret values (passwords, API keys, SNMP communities and v3
keys) are taken out of ``config`` and each sealed to the gateway's own public key:

- EC keys (P-256, P-384): ECIES — an ephemeral key on the same curve, ECDH, HKDF-SHA256, then
  AES-256-GCM;
- RSA keys: RSA-OAEP (SHA-256) wraps a random AES-256-GCM key.

The associated data binds each sealed secret to its gateway and its place in the config, so a
blob cannot be moved to another field or another gateway; the signature binds everything to the
version. A sealed secret can be carried into the next version unchanged, so the collector never
needs (or keeps) the secret in clear.

``cryptography`` is imported inside the functions: the agent loads it only when a config arrives.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from outpost_iot.wire._limits import MAX_CONFIG_VERSION, TIME_MAX_NS, bounded_config

SECRET_KEYS = frozenset({"password", "api_key", "community", "auth_key", "priv_key"})
_INFO = b"outpost-config-secret/v1"
_EC, _RSA = 1, 2


class EnvelopeRefused(Exception):
    """A config envelope the gateway must not apply; ``reason`` is one word for reports."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # bad_format, bad_signature, wrong_gateway, replayed, bad_secret
        self.detail = detail


class ConfigEnvelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1] = 1
    gateway_id: Annotated[str, Field(min_length=1, max_length=64)]
    version: Annotated[int, Field(ge=1, le=MAX_CONFIG_VERSION)]
    issued_ns: Annotated[int, Field(ge=0, le=TIME_MAX_NS)]
    config: Annotated[dict[str, Any], AfterValidator(bounded_config)]
    secrets: dict[str, str] = Field(default_factory=dict)  # "devices.0.password" → sealed
    signature: str = ""

    def signed_bytes(self) -> bytes:
        body = self.model_dump(exclude={"signature"})
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def _segment(item: Any, index: int) -> str:
    """A list element's path segment: ``[name]`` when it has a name, so a secret follows its
    device when the list is reordered; else ``[index]``."""
    if isinstance(item, dict) and isinstance(item.get("name"), str):
        return f"[{item['name']}]"
    return f"[{index}]"


def split_secrets(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``config`` without its secret values, and the secrets by path (``devices[fw-1].password``)."""
    found: dict[str, str] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                here = f"{path}.{key}" if path else str(key)
                if key in SECRET_KEYS and isinstance(value, str):
                    found[here] = value
                    continue
                out[key] = walk(value, here)
            return out
        if isinstance(node, list):
            return [walk(item, path + _segment(item, i)) for i, item in enumerate(node)]
        return node

    return walk(config, ""), found


_PART = re.compile(r"\.?([^.\[\]]+)|\[([^\]]+)\]")


def _parent(config: Any, path: str) -> tuple[Any, str] | None:
    """The object holding the member ``path`` names, and the member's name; None if absent."""
    parts = [(m.group(1), m.group(2)) for m in _PART.finditer(path)]
    if not parts or parts[-1][0] is None:
        return None
    node = config
    for key, item in parts[:-1]:
        if key is not None:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        else:
            if not isinstance(node, list):
                return None
            named = [x for x in node if isinstance(x, dict) and x.get("name") == item]
            if named:
                node = named[0]
            elif item.isdigit() and int(item) < len(node):
                node = node[int(item)]
            else:
                return None
    return (node, parts[-1][0]) if isinstance(node, dict) else None


def has_place(config: dict[str, Any], path: str) -> bool:
    """Whether ``config`` still has the object a secret at ``path`` belongs to."""
    return _parent(config, path) is not None


def join_secrets(config: dict[str, Any], secrets: dict[str, str]) -> dict[str, Any]:
    """Put secret values back at their paths (a copy; ``config`` is not changed)."""
    out: dict[str, Any] = orjson.loads(orjson.dumps(config))
    for path, value in secrets.items():
        found = _parent(out, path)
        if found is None:
            raise EnvelopeRefused("bad_format", f"secret path {path!r} does not fit the config")
        node, leaf = found
        node[leaf] = value
    return out


def key_id(public_key_pem: bytes) -> str:
    """A short name for a public key: which of its keys a gateway needs to open a secret."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_key_pem)
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def _aad(gateway_id: str, path: str) -> bytes:
    return f"{gateway_id}\n{path}".encode()


def seal_secret(value: str, *, public_key_pem: bytes, gateway_id: str, path: str) -> str:
    """Encrypt one secret to the gateway's public key (EC or RSA); base64 text."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = serialization.load_pem_public_key(public_key_pem)
    kid = bytes.fromhex(key_id(public_key_pem))
    nonce = os.urandom(12)
    aad = _aad(gateway_id, path)
    if isinstance(key, ec.EllipticCurvePublicKey):
        ephemeral = ec.generate_private_key(key.curve)
        shared = ephemeral.exchange(ec.ECDH(), key)
        point = ephemeral.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        aes_key = HKDF(hashes.SHA256(), 32, salt=point, info=_INFO).derive(shared)
        head = bytes([_EC]) + kid + len(point).to_bytes(2, "big") + point
    elif isinstance(key, rsa.RSAPublicKey):
        aes_key = AESGCM.generate_key(256)
        wrapped = key.encrypt(
            aes_key,
            padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
        )
        head = bytes([_RSA]) + kid + len(wrapped).to_bytes(2, "big") + wrapped
    else:
        raise ValueError("secrets can be sealed to EC or RSA keys only")
    sealed = AESGCM(aes_key).encrypt(nonce, value.encode(), aad)
    return base64.b64encode(head + nonce + sealed).decode()


def open_secret(text: str, *, private_keys: list[Any], gateway_id: str, path: str) -> str:
    """Decrypt a sealed secret with whichever of the gateway's keys it was sealed to."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    try:
        blob = base64.b64decode(text, validate=True)
        kind, kid = blob[0], blob[1:9].hex()
        size = int.from_bytes(blob[9:11], "big")
        head, rest = blob[11 : 11 + size], blob[11 + size :]
        nonce, sealed = rest[:12], rest[12:]
    except (ValueError, IndexError):
        raise EnvelopeRefused("bad_secret", f"{path}: not a sealed secret") from None
    for key in private_keys:
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if key_id(public_pem) != kid:
            continue
        try:
            if kind == _EC and isinstance(key, ec.EllipticCurvePrivateKey):
                peer = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, head)
                shared = key.exchange(ec.ECDH(), peer)
                aes_key = HKDF(hashes.SHA256(), 32, salt=head, info=_INFO).derive(shared)
            elif kind == _RSA and isinstance(key, rsa.RSAPrivateKey):
                aes_key = key.decrypt(
                    head,
                    padding.OAEP(
                        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
                    ),
                )
            else:
                break
            return AESGCM(aes_key).decrypt(nonce, sealed, _aad(gateway_id, path)).decode()
        except (InvalidTag, ValueError):
            break
    raise EnvelopeRefused(
        "bad_secret",
        f"{path}: cannot be opened with this gateway's keys (sealed to key {kid}, tampered, "
        "or meant for another gateway or field)",
    )


def seal_config(
    config: dict[str, Any],
    *,
    gateway_id: str,
    version: int,
    issued_ns: int,
    public_key_pem: bytes,
    signing_key_pem: bytes,
    carried: dict[str, str] | None = None,
) -> ConfigEnvelope:
    """Take the secrets out of ``config``, seal each to the gateway, and sign the envelope.

    ``carried`` are sealed secrets of the previous version kept as they are (the operator did
    not change them); a secret given in clear in ``config`` replaces the carried one.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    plain, secrets = split_secrets(config)
    # A carried secret whose device is gone from the config is dropped with it.
    carried = {path: blob for path, blob in (carried or {}).items() if has_place(plain, path)}
    sealed = {
        path: seal_secret(value, public_key_pem=public_key_pem, gateway_id=gateway_id, path=path)
        for path, value in secrets.items()
    }
    envelope = ConfigEnvelope(
        gateway_id=gateway_id,
        version=version,
        issued_ns=issued_ns,
        config=plain,
        secrets={**carried, **sealed},
    )
    key = serialization.load_pem_private_key(signing_key_pem, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("the config-signing key must be an Ed25519 key")
    signature = base64.b64encode(key.sign(envelope.signed_bytes())).decode()
    return envelope.model_copy(update={"signature": signature})


def encode_envelope(envelope: ConfigEnvelope) -> bytes:
    return orjson.dumps(envelope.model_dump(), option=orjson.OPT_SORT_KEYS)


def open_config(
    data: bytes,
    *,
    gateway_id: str,
    applied_version: int,
    verify_key_pem: bytes,
    private_keys: list[Any],
) -> tuple[ConfigEnvelope, dict[str, Any]]:
    """Check an envelope the way a gateway must before touching anything; return it and the
    config with its secrets in clear. Raises :class:`EnvelopeRefused`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        envelope = ConfigEnvelope.model_validate(orjson.loads(data))
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise EnvelopeRefused("bad_format", f"not a config envelope: {exc}") from None
    verify_key = serialization.load_pem_public_key(verify_key_pem)
    if not isinstance(verify_key, ed25519.Ed25519PublicKey):
        raise EnvelopeRefused("bad_signature", "the pinned config-signing key is not Ed25519")
    try:
        verify_key.verify(base64.b64decode(envelope.signature), envelope.signed_bytes())
    except (InvalidSignature, ValueError):
        raise EnvelopeRefused(
            "bad_signature", "the signature does not verify against the pinned key"
        ) from None
    if envelope.gateway_id != gateway_id:
        raise EnvelopeRefused(
            "wrong_gateway", f"the envelope is for {envelope.gateway_id!r}, this is {gateway_id!r}"
        )
    if envelope.version <= applied_version:
        raise EnvelopeRefused(
            "replayed",
            f"version {envelope.version} is not newer than the applied {applied_version}",
        )
    secrets = {
        path: open_secret(text, private_keys=private_keys, gateway_id=gateway_id, path=path)
        for path, text in envelope.secrets.items()
    }
    return envelope, join_secrets(envelope.config, secrets)
