"""Strings from outside (gateways, devices, API callers) made safe to log and show."""

from __future__ import annotations

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str, limit: int = 300) -> str:
    """``text`` with control and other non-printing characters escaped, cut to ``limit``
    characters: a newline from a gateway cannot start a forged log line, and a megabyte of
    text costs one short line."""
    if len(text) > limit:
        text = text[:limit] + f"… ({len(text) - limit} more characters)"
    if text.isprintable():
        return text
    return "".join(
        c
        if c.isprintable()
        else _ESCAPES.get(c, f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
        for c in text
    )
