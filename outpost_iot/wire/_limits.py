"""Limits of the wire contract: what any message between a gateway and the collector may hold.

Every number here is a boundary both sides enforce: the agent never builds a message past them
(it drops and counts what does not fit), and the collector quarantines a message that crosses
one, with a reason that names the limit. docs/security.md lists them with their reasons.

Integers are stored as signed 64-bit values (SQLite, PostgreSQL ``bigint``, line protocol), so
every integer on the wire fits int64. Timestamps and clock offsets stay within ±2^62 ns (about
146 years either side of 1970: up to the year 2116), so a timestamp plus a clock correction, or a
bucket start plus a bucket, can never overflow int64 on the way to a store.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

TIME_MAX_NS = 2**62 - 1  # 2116-02-20: timestamps are 0 ..= this
OFFSET_MAX_NS = 2**62 - 1  # clock offsets and corrections are within ± this

MAX_FRAME_BYTES = 1 << 20  # 1 MiB on the wire
# After decompression (a zip bomb stops here). Decoding costs up to ~16 times the body in
# memory for a body of tiny objects (measured: 8 MiB of minimal events peaked at +125 MiB), so
# the body is what bounds a collector's memory per frame; the agent splits batches to fit.
MAX_BODY_BYTES = 2 << 20
MAX_READINGS = 50_000  # readings in one batch
MAX_EVENTS = 5_000  # events in one batch
MAX_SERIES = MAX_READINGS  # series in one batch (each has at least one reading)

MAX_NAME_CHARS = 256  # measurement, tag key, field key, event type
MAX_TAG_VALUE_CHARS = 1024
MAX_TAGS = 64  # tags of one reading
MAX_FIELDS = 256  # fields of one reading
MAX_STRING_FIELD_CHARS = 16_384  # a string field value
MAX_ID_CHARS = 128  # event id, stream id and boot id are shorter still (64)
MAX_SOURCE_CHARS = 256  # an event's source (the device)

MAX_EVENT_DEPTH = 32  # nesting of an event body (dicts and lists)
MAX_EVENT_BODY_BYTES = 64 << 10  # an event body, as JSON
MAX_EVENT_BODY_ITEMS = 10_000  # members and elements in an event body, all levels

MAX_CONFIG_DEPTH = 16  # a desired config's nesting (devices > a device > its variables)
MAX_CONFIG_ITEMS = 100_000  # members and elements of a desired config, all levels
MAX_CONFIG_VERSION = 2**31 - 1  # config versions fit the stores' 32-bit integer columns
MAX_REPORT_ERRORS = 100  # errors listed in a config report
MAX_REPORT_TEXT_CHARS = 2048  # one error or reason in a report
MAX_DROP_REASONS = 64  # drop reasons in a state message
MAX_PROPERTY_CHARS = 64  # the publish's user properties (stream, seq, boot, send stamps)


class TooComplex(ValueError):
    """A JSON-like value past a depth, item or size limit; the message names the limit."""


def check_json_tree(
    value: Any, *, max_depth: int, max_items: int, max_int: int = INT64_MAX
) -> None:
    """Raise :class:`TooComplex` if ``value`` nests deeper than ``max_depth`` (the top level
    is depth 1), holds more than ``max_items`` members and elements, or has an integer outside
    int64. Iterative: a hostile value cannot exhaust the stack."""
    items = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > max_depth:
                raise TooComplex(f"nested deeper than {max_depth} levels")
            items += len(node)
            if items > max_items:
                raise TooComplex(f"more than {max_items} members and elements")
            children: Iterator[Any] = iter(node.values() if isinstance(node, dict) else node)
            stack.extend((child, depth + 1) for child in children)
        elif (
            isinstance(node, int)
            and not isinstance(node, bool)
            and not -max_int - 1 <= node <= max_int
        ):
            raise TooComplex("an integer outside the signed 64-bit range")


def bounded_config(value: dict[str, Any]) -> dict[str, Any]:
    """A desired config (or a patch of one) within its limits: for pydantic ``AfterValidator``;
    raises :class:`TooComplex` (a ``ValueError``) naming the limit."""
    check_json_tree(value, max_depth=MAX_CONFIG_DEPTH, max_items=MAX_CONFIG_ITEMS)
    return value
