"""The wire contract shared by the agent and the collector.

Readings and events, the batch codec, the MQTT topic layout, the control messages and the
signed config envelope. The
agent imports this package and never the collector; the collector imports this package and
never the agent.
"""

from wire import _limits as limits
from wire import _topics as topics
from wire._bounded import BoundedDict
from wire._codec import (
    VERSION,
    Batch,
    ClockInfo,
    SeriesPoints,
    decode_batch,
    encode_batch,
    frame,
    group_readings,
)
from wire._envelope import (
    SECRET_KEYS,
    ConfigEnvelope,
    EnvelopeRefused,
    encode_envelope,
    has_place,
    join_secrets,
    key_id,
    open_config,
    seal_config,
    split_secrets,
)
from wire._exceptions import BatchRejected, MessageRejected, RejectReason, WireError
from wire._files import private_file
from wire._limits import MAX_BODY_BYTES, MAX_FRAME_BYTES, MAX_READINGS, TooComplex
from wire._messages import (
    Ack,
    AckStatus,
    ConfigReport,
    GatewayState,
    LimitName,
    Nack,
    NackReason,
    RenewRequest,
    RenewResponse,
    decode_ack,
    decode_config_report,
    decode_renew_request,
    decode_renew_response,
    decode_state,
    encode_message,
)
from wire._models import Event, FieldValue, Reading
from wire._text import LogThrottle, SafeFormatter, configure_logging, printable
from wire._version import DISTRIBUTION, installed_version

# MQTT 5 user properties on every batch publish. They travel outside the encoded body, so a
# batch is encoded once and still carries its send time, and a body that does not decode
# can still be acknowledged by (stream, seq).
PROP_STREAM = "stream"
PROP_SEQ = "seq"
PROP_BOOT = "boot"
PROP_SENT_MONO = "sent_mono_ns"
PROP_SENT_WALL = "sent_wall_ns"

__all__ = [
    "DISTRIBUTION",
    "MAX_BODY_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_READINGS",
    "PROP_BOOT",
    "PROP_SENT_MONO",
    "PROP_SENT_WALL",
    "PROP_SEQ",
    "PROP_STREAM",
    "SECRET_KEYS",
    "VERSION",
    "Ack",
    "AckStatus",
    "Batch",
    "BatchRejected",
    "BoundedDict",
    "ClockInfo",
    "ConfigEnvelope",
    "ConfigReport",
    "EnvelopeRefused",
    "Event",
    "FieldValue",
    "GatewayState",
    "LimitName",
    "LogThrottle",
    "MessageRejected",
    "Nack",
    "NackReason",
    "Reading",
    "RejectReason",
    "RenewRequest",
    "RenewResponse",
    "SafeFormatter",
    "SeriesPoints",
    "TooComplex",
    "WireError",
    "configure_logging",
    "decode_ack",
    "decode_batch",
    "decode_config_report",
    "decode_renew_request",
    "decode_renew_response",
    "decode_state",
    "encode_batch",
    "encode_envelope",
    "encode_message",
    "frame",
    "group_readings",
    "has_place",
    "installed_version",
    "join_secrets",
    "key_id",
    "limits",
    "open_config",
    "printable",
    "private_file",
    "seal_config",
    "split_secrets",
    "topics",
]
