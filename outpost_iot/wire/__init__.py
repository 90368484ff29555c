"""The wire contract shared by the agent and the collector.

Readings and events, the batch codec, the MQTT topic layout, the control messages, the
signed config envelope and the managed config it carries (with where the firmware profiles it
is checked against are). The
agent imports this package and never the collector; the collector imports this package and
never the agent.
"""

from outpost_iot.wire import _limits as limits
from outpost_iot.wire import _topics as topics
from outpost_iot.wire._alarms import EVENT_TYPE as ALARM_EVENT
from outpost_iot.wire._alarms import (
    MAX_ORIGINATOR_CHARS,
    EdgeAlarms,
    EdgeRule,
    series_originator,
)
from outpost_iot.wire._bounded import BoundedDict
from outpost_iot.wire._codec import (
    VERSION,
    Batch,
    BatchHeader,
    ClockInfo,
    SeriesPoints,
    batch_body,
    decode_batch,
    encode_batch,
    frame,
    group_readings,
    series_key,
)
from outpost_iot.wire._envelope import (
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
from outpost_iot.wire._exceptions import BatchRejected, MessageRejected, RejectReason, WireError
from outpost_iot.wire._files import private_file
from outpost_iot.wire._limits import MAX_BODY_BYTES, MAX_FRAME_BYTES, MAX_READINGS, TooComplex
from outpost_iot.wire._managed import (
    SCHEMES,
    BufferConfig,
    DeviceConfig,
    HostSourceConfig,
    ManagedConfig,
    ProfileFacts,
    ProfileLookup,
    SimulatedSourceConfig,
    SourceConfig,
    UplinkTarget,
    profile_problems,
    unique_device_names,
)
from outpost_iot.wire._messages import (
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
from outpost_iot.wire._models import Event, FieldValue, Reading
from outpost_iot.wire._profiles import profile_facts, profile_folder, profiles_dir
from outpost_iot.wire._text import LogThrottle, SafeFormatter, configure_logging, printable
from outpost_iot.wire._toml import config_option, describe, problems, read_toml
from outpost_iot.wire._version import DISTRIBUTION, installed_version

# MQTT 5 user properties on every batch publish. They travel outside the encoded body, so a
# batch is encoded once and still carries its send time, and a body that does not decode
# can still be acknowledged by (stream, seq).
PROP_STREAM = "stream"
PROP_SEQ = "seq"
PROP_BOOT = "boot"
PROP_SENT_MONO = "sent_mono_ns"
PROP_SENT_WALL = "sent_wall_ns"

__all__ = [
    "ALARM_EVENT",
    "DISTRIBUTION",
    "MAX_BODY_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_ORIGINATOR_CHARS",
    "MAX_READINGS",
    "PROP_BOOT",
    "PROP_SENT_MONO",
    "PROP_SENT_WALL",
    "PROP_SEQ",
    "PROP_STREAM",
    "SCHEMES",
    "SECRET_KEYS",
    "VERSION",
    "Ack",
    "AckStatus",
    "Batch",
    "BatchHeader",
    "BatchRejected",
    "BoundedDict",
    "BufferConfig",
    "ClockInfo",
    "ConfigEnvelope",
    "ConfigReport",
    "DeviceConfig",
    "EdgeAlarms",
    "EdgeRule",
    "EnvelopeRefused",
    "Event",
    "FieldValue",
    "GatewayState",
    "HostSourceConfig",
    "LimitName",
    "LogThrottle",
    "ManagedConfig",
    "MessageRejected",
    "Nack",
    "NackReason",
    "ProfileFacts",
    "ProfileLookup",
    "Reading",
    "RejectReason",
    "RenewRequest",
    "RenewResponse",
    "SafeFormatter",
    "SeriesPoints",
    "SimulatedSourceConfig",
    "SourceConfig",
    "TooComplex",
    "UplinkTarget",
    "WireError",
    "batch_body",
    "config_option",
    "configure_logging",
    "decode_ack",
    "decode_batch",
    "decode_config_report",
    "decode_renew_request",
    "decode_renew_response",
    "decode_state",
    "describe",
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
    "problems",
    "profile_facts",
    "profile_folder",
    "profile_problems",
    "profiles_dir",
    "read_toml",
    "seal_config",
    "series_key",
    "series_originator",
    "split_secrets",
    "topics",
    "unique_device_names",
]
