"""Control messages: acks and nacks (collector → gateway) and gateway state (birth / will)."""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from outpost_iot.wire._exceptions import MessageRejected, summarize
from outpost_iot.wire._limits import (
    INT64_MAX,
    MAX_CONFIG_VERSION,
    MAX_DROP_REASONS,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_REPORT_ERRORS,
    MAX_REPORT_TEXT_CHARS,
    TIME_MAX_NS,
)

# Bounded types for the control messages (wire._limits says why).
Count = Annotated[int, Field(ge=0, le=INT64_MAX, strict=True)]
Seq = Annotated[int, Field(ge=0, le=INT64_MAX)]
Timestamp = Annotated[int, Field(ge=0, le=TIME_MAX_NS, strict=True)]
ConfigVersion = Annotated[int, Field(ge=0, le=MAX_CONFIG_VERSION)]
ShortText = Annotated[str, Field(max_length=MAX_ID_CHARS)]
Text = Annotated[str, Field(max_length=MAX_REPORT_TEXT_CHARS)]

AckStatus = Literal["stored", "duplicate", "quarantined"]
NackReason = Literal["rate_limited", "store_unavailable", "overloaded", "revoked", "in_progress"]
LimitName = Literal["readings_per_s", "bytes_per_s"]


class Ack(BaseModel):
    """The batch ``(stream, seq)`` is durably handled; the gateway may delete it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    kind: Literal["ack"] = "ack"
    stream: ShortText
    seq: Seq
    status: AckStatus
    reason: Text = ""  # for "quarantined": why, so the gateway can log and count it


class Nack(BaseModel):
    """The batch was not stored; keep it and send again after ``retry_after_ms``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    kind: Literal["nack"] = "nack"
    stream: ShortText
    seq: Seq
    reason: NackReason
    limit: LimitName | None = None
    retry_after_ms: Annotated[int, Field(ge=0, le=86_400_000)]  # at most a day
    detail: Text = ""


AckMessage = Annotated[Ack | Nack, Field(discriminator="kind")]
_ACK_ADAPTER: TypeAdapter[Ack | Nack] = TypeAdapter(AckMessage)


class GatewayState(BaseModel):
    """Retained on ``P/up/state``: the birth message, periodic status, and the will."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    state: Literal["online", "offline"]
    ts: Timestamp
    boot_id: ShortText
    agent_version: ShortText = ""
    stream: ShortText = ""
    backlog_batches: Count = 0
    backlog_readings: Count = 0
    oldest_unsent_s: Annotated[float, Field(ge=0, le=1e10, allow_inf_nan=False)] | None = None
    last_ack_ts: Timestamp | None = None
    drops: Annotated[
        dict[Annotated[str, Field(max_length=MAX_NAME_CHARS)], Count],
        Field(max_length=MAX_DROP_REASONS),
    ] = Field(default_factory=dict)
    # Set when the agent found its buffer unreadable and started a new one (kept aside).
    buffer_reset: Text = ""


class ConfigReport(BaseModel):
    """On ``P/up/config``: what the gateway did with a desired config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    version: ConfigVersion  # the envelope's version this is about
    status: Literal["applied", "rejected", "rolled_back"]
    applied_version: ConfigVersion  # what runs now
    reason: ShortText = ""  # bad_signature, replayed, invalid, no_ack_within_grace, …
    # Validation errors, device errors (the agent cuts longer lists and texts to fit).
    errors: Annotated[list[Text], Field(max_length=MAX_REPORT_ERRORS)] = Field(default_factory=list)
    ts: Timestamp

    @staticmethod
    def fit_errors(errors: list[str]) -> list[str]:
        """``errors`` cut to what a report may carry (the first 100, each 2,048 characters)."""
        out = [e[:MAX_REPORT_TEXT_CHARS] for e in errors[:MAX_REPORT_ERRORS]]
        if len(errors) > MAX_REPORT_ERRORS:
            out[-1] = f"… and {len(errors) - MAX_REPORT_ERRORS + 1} more"
        return out


class RenewRequest(BaseModel):
    """On ``P/up/renew``: a new certificate request, made with a new key on the gateway."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    request_id: Annotated[str, Field(min_length=1, max_length=64)]
    csr: Annotated[str, Field(min_length=1, max_length=16_384)]


class RenewResponse(BaseModel):
    """On ``P/down/renew``: the new certificate, or why there is none."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    request_id: Annotated[str, Field(max_length=64)]
    status: Literal["issued", "refused"]
    certificate: Annotated[str, Field(max_length=65_536)] = ""
    reason: ShortText = ""
    detail: Text = ""


def encode_message(msg: BaseModel) -> bytes:
    return orjson.dumps(msg.model_dump(mode="json"))


def decode_ack(data: bytes) -> Ack | Nack:
    try:
        return _ACK_ADAPTER.validate_json(data)
    except ValidationError as exc:
        raise MessageRejected(f"not an ack or nack: {summarize(exc)}") from None


def decode_state(data: bytes) -> GatewayState:
    try:
        return GatewayState.model_validate_json(data)
    except ValidationError as exc:
        raise MessageRejected(f"not a gateway state message: {summarize(exc)}") from None


def decode_config_report(data: bytes) -> ConfigReport:
    try:
        return ConfigReport.model_validate_json(data)
    except ValidationError as exc:
        raise MessageRejected(f"not a config report: {summarize(exc)}") from None


def decode_renew_request(data: bytes) -> RenewRequest:
    try:
        return RenewRequest.model_validate_json(data)
    except ValidationError as exc:
        raise MessageRejected(f"not a renew request: {summarize(exc)}") from None


def decode_renew_response(data: bytes) -> RenewResponse:
    try:
        return RenewResponse.model_validate_json(data)
    except ValidationError as exc:
        raise MessageRejected(f"not a renew response: {summarize(exc)}") from None
