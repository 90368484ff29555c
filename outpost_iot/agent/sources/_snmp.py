"""SNMP devices (pfSense, switches): v2c or v3, numeric OIDs, GETs and GETBULK table walks.

pysnmp is imported only when an SNMP device is configured, so an agent without one stays small.
The client hands the profile's rules one payload per ``[[snmp.get]]`` (``{name: value}``) and per
``[[snmp.walk]]`` (``{index: {column: value}}``). It also reads ``sysUpTime`` on every poll: when
that goes backwards the device restarted, and counter rates start again from a new baseline
instead of turning a counter reset into a huge or negative rate.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

# Numeric OIDs only: keep pysnmp from loading its optional MIB compiler (pysmi, ~10 MiB on a
# small board, and a compiler that would fetch MIB files from the network on a name lookup).
# pysnmp treats pysmi as optional and works without it.
if "pysmi" not in sys.modules:
    sys.modules["pysmi"] = None  # type: ignore[assignment]

from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    bulk_cmd,
    get_cmd,
)
from pysnmp.hlapi.v3arch.asyncio import auth as _auth
from pysnmp.proto import rfc1902, rfc1905

from outpost_iot.agent.profiles import Profile
from outpost_iot.agent.profiles._engine import _holds
from outpost_iot.agent.profiles._model import SnmpWalk
from outpost_iot.agent.sources._polling import DeviceError

SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
_MAX_ROWS = 10_000  # per table: a guard against a device that never ends its walk
_GET_CHUNK = 40  # variables per GET request, well under what a 1472-byte UDP answer holds

AuthProtocol = Literal["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"]
PrivProtocol = Literal["DES", "3DES", "AES", "AES192", "AES256"]
AUTH_PROTOCOLS: dict[str, Any] = {
    "MD5": _auth.USM_AUTH_HMAC96_MD5,
    "SHA": _auth.USM_AUTH_HMAC96_SHA,
    "SHA224": _auth.USM_AUTH_HMAC128_SHA224,
    "SHA256": _auth.USM_AUTH_HMAC192_SHA256,
    "SHA384": _auth.USM_AUTH_HMAC256_SHA384,
    "SHA512": _auth.USM_AUTH_HMAC384_SHA512,
}
PRIV_PROTOCOLS: dict[str, Any] = {
    "DES": _auth.USM_PRIV_CBC56_DES,
    "3DES": _auth.USM_PRIV_CBC168_3DES,
    "AES": _auth.USM_PRIV_CFB128_AES,
    "AES192": _auth.USM_PRIV_CFB192_AES,
    "AES256": _auth.USM_PRIV_CFB256_AES,
}


@dataclass(frozen=True)
class SnmpCredentials:
    """v2c when ``community`` is set; v3 (USM) when ``user`` is."""

    community: str | None = None
    user: str | None = None
    auth_protocol: str = "SHA"
    auth_key: str | None = None
    priv_protocol: str = "AES"
    priv_key: str | None = None

    def __repr__(self) -> str:  # never show keys or the community
        return f"SnmpCredentials(version={self.version}, user={self.user!r})"

    @property
    def version(self) -> str:
        return "v3" if self.user else "v2c"

    @property
    def level(self) -> str:
        if not self.user:
            return "community"
        if self.priv_key:
            return "authPriv"
        return "authNoPriv" if self.auth_key else "noAuthNoPriv"

    def problems(self) -> list[str]:
        """What is missing or wrong, in the words of the config keys and probe options."""
        out: list[str] = []
        if self.user and self.community:
            out.append("give either a community (SNMPv2c) or an SNMPv3 user, not both")
        if not self.user and not self.community:
            out.append("SNMP needs a community (v2c) or snmp_user with keys (v3)")
        if self.auth_protocol.upper() not in AUTH_PROTOCOLS:
            out.append(
                f"auth protocol {self.auth_protocol!r} is not one of {', '.join(AUTH_PROTOCOLS)}"
            )
        if self.priv_protocol.upper() not in PRIV_PROTOCOLS:
            out.append(
                f"privacy protocol {self.priv_protocol!r} is not one of {', '.join(PRIV_PROTOCOLS)}"
            )
        for name, key in (("auth key", self.auth_key), ("privacy key", self.priv_key)):
            if key is not None and len(key) < 8:
                out.append(f"the SNMPv3 {name} must be at least 8 characters (RFC 3414)")
        if self.priv_key and not self.auth_key:
            out.append("SNMPv3 privacy needs an auth key too (authPriv)")
        return out

    def auth_data(self) -> CommunityData | UsmUserData:
        if not self.user:
            # v2c because most devices still speak it; the docs recommend v3 with authPriv.
            return CommunityData(self.community or "", mpModel=1)  # noqa: S508
        return UsmUserData(
            self.user,
            authKey=self.auth_key,
            privKey=self.priv_key,
            authProtocol=AUTH_PROTOCOLS[self.auth_protocol.upper()]
            if self.auth_key
            else _auth.USM_AUTH_NONE,
            privProtocol=PRIV_PROTOCOLS[self.priv_protocol.upper()]
            if self.priv_key
            else _auth.USM_PRIV_NONE,
        )


def parse_snmp_target(target: str) -> tuple[str, int]:
    """``snmp://host[:port]`` → (host, port); port 161 by default."""
    parts = urlsplit(target)
    if parts.scheme != "snmp" or not parts.hostname:
        raise ValueError(f"{target!r} is not an SNMP target; use snmp://host[:port]")
    try:
        port = parts.port or 161
    except ValueError:
        raise ValueError(
            f"{target!r}: the port must be a number from 1 to 65535 (snmp://host[:port])"
        ) from None
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"{target!r}: an SNMP target is only snmp://host[:port]")
    return parts.hostname, port


def _value(value: Any) -> Any:
    """A pysnmp value as a plain JSON value; None for 'no such object' and friends."""
    if isinstance(value, rfc1905.NoSuchObject | rfc1905.NoSuchInstance | rfc1905.EndOfMibView):
        return None
    if isinstance(value, rfc1902.IpAddress):
        return value.prettyPrint()
    if isinstance(value, rfc1902.ObjectIdentifier):
        return str(value)
    if isinstance(value, rfc1902.OctetString):
        raw = bytes(value)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.hex(":")  # a MAC address or other binary string
        return text.rstrip("\x00")
    try:
        return int(value)
    except (TypeError, ValueError):
        return value.prettyPrint()


def _oid(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


class SnmpDeviceClient:
    """Polls one SNMP agent for the OIDs a profile names."""

    def __init__(
        self,
        *,
        profile: Profile,
        host: str,
        port: int = 161,
        credentials: SnmpCredentials,
        timeout: float = 2.0,
        retries: int = 1,
    ) -> None:
        problems = credentials.problems()
        if problems:
            raise DeviceError("auth_failed", "; ".join(problems))
        self._profile = profile
        self.host = host
        self.port = port
        self._credentials = credentials
        self._auth = credentials.auth_data()
        self._timeout = timeout
        self._retries = retries
        self._engine: SnmpEngine | None = None
        self._target: UdpTransportTarget | None = None
        self._uptime: int | None = None
        self.restarted = False  # set by fetch() when sysUpTime went backwards

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    async def _open(self) -> tuple[SnmpEngine, UdpTransportTarget]:
        if self._engine is None:
            self._engine = SnmpEngine()
        if self._target is None:
            try:
                self._target = await UdpTransportTarget.create(
                    (self.host, self.port), timeout=self._timeout, retries=self._retries
                )
            except Exception as exc:  # pysnmp raises its own error for a name that won't resolve
                raise DeviceError(
                    "unreachable", f"cannot resolve SNMP device {self.host!r}: {exc}"
                ) from None
        return self._engine, self._target

    async def fetch(self) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        names: list[tuple[str, str]] = [("", SYS_UPTIME)]
        for group in self._profile.snmp.get:
            names += [(group.key + "\0" + name, oid) for name, oid in group.oids.items()]
        values = await self._get([oid for _, oid in names])
        uptime = values.get(SYS_UPTIME)
        self.restarted = (
            isinstance(uptime, int) and self._uptime is not None and uptime < self._uptime
        )
        if isinstance(uptime, int):
            self._uptime = uptime
        for group in self._profile.snmp.get:
            payload = {
                name: values[oid] for name, oid in group.oids.items() if values.get(oid) is not None
            }
            out.append((group.key, payload))
        for table in self._profile.snmp.walk:
            out.append((table.key, await self._table(table)))
        return out

    async def _get(self, oids: list[str]) -> dict[str, Any]:
        engine, target = await self._open()
        values: dict[str, Any] = {}
        for start in range(0, len(oids), _GET_CHUNK):
            chunk = oids[start : start + _GET_CHUNK]
            result = await get_cmd(
                engine,
                self._auth,
                target,
                ContextData(),
                *[ObjectType(ObjectIdentity(oid)) for oid in chunk],
                lookupMib=False,
            )
            for name, value in self._check(result):
                values[str(name)] = _value(value)
        return values

    async def _table(self, table: SnmpWalk) -> dict[str, dict[str, Any]]:
        """A table: every column walked, or with ``rows``, the tested columns walked first and
        the others read only for the rows that pass."""
        if not table.rows:
            return await self._walk(table.columns)
        rows = await self._walk({name: table.columns[name] for name in table.rows})
        kept = {
            index: row
            for index, row in rows.items()
            if all(_holds(test, row.get(name)) for name, test in table.rows.items())
        }
        rest = {name: oid for name, oid in table.columns.items() if name not in table.rows}
        wanted = [(index, name, f"{oid}.{index}") for index in kept for name, oid in rest.items()]
        values = await self._get([oid for _, _, oid in wanted])
        for index, name, oid in wanted:
            if values.get(oid) is not None:
                kept[index][name] = values[oid]
        return kept

    async def _walk(self, columns: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Walk the columns side by side with GETBULK, the way `snmptable` does."""
        engine, target = await self._open()
        prefixes = {name: _oid(oid) for name, oid in columns.items()}
        cursor = dict(prefixes)
        active = list(columns)
        rows: dict[str, dict[str, Any]] = {}
        while active:
            result = await bulk_cmd(
                engine,
                self._auth,
                target,
                ContextData(),
                0,
                self._profile.snmp.max_repetitions,
                *[ObjectType(ObjectIdentity(cursor[name])) for name in active],
                lookupMib=False,
            )
            var_binds = self._check(result)
            finished: set[str] = set()
            advanced: set[str] = set()
            for i, (name_obj, value) in enumerate(var_binds):
                column = active[i % len(active)]
                if column in finished:
                    continue
                oid = tuple(name_obj)
                prefix = prefixes[column]
                if (
                    isinstance(value, rfc1905.EndOfMibView)
                    or oid[: len(prefix)] != prefix
                    or oid <= cursor[column]  # not increasing: a broken agent; stop, don't loop
                ):
                    finished.add(column)
                    continue
                index = ".".join(str(p) for p in oid[len(prefix) :])
                converted = _value(value)
                if converted is not None:
                    rows.setdefault(index, {})[column] = converted
                cursor[column] = oid
                advanced.add(column)
            if len(rows) > _MAX_ROWS:
                break
            active = [c for c in active if c not in finished and c in advanced]
        return rows

    def _check(self, result: Any) -> list[tuple[Any, Any]]:
        error_indication, error_status, error_index, var_binds = result
        if error_indication:
            raise self._error(str(error_indication))
        if error_status:
            status = error_status.prettyPrint()
            if status == "authorizationError":
                raise DeviceError(
                    "auth_failed",
                    f"SNMP device {self.where} does not allow {self._credentials.level} access "
                    f"for {self._credentials.user or 'this community'} to these OIDs; check the "
                    "security level the device requires (e.g. authPriv) and its view",
                )
            raise DeviceError(
                "bad_response",
                f"SNMP device {self.where} answered {status} (at variable {int(error_index)})",
            )
        return [(vb[0], vb[1]) for vb in var_binds]

    def _error(self, text: str) -> DeviceError:
        creds = self._credentials
        lower = text.lower()
        if "timeout" in lower or "no snmp response" in lower:
            who = (
                "the community"
                if creds.version == "v2c"
                else f"SNMPv3 user {creds.user!r} and its keys"
            )
            return DeviceError(
                "timeout",
                f"SNMP timeout: no answer from {self.where} within {self._timeout:g} s "
                f"(tried {self._retries + 1}×); check {who}, the device's SNMP access list "
                f"(it must allow this gateway) and that UDP port {self.port} is open",
            )
        if "unknown usm user" in lower or "unknownusername" in lower.replace(" ", ""):
            return DeviceError(
                "auth_failed", f"SNMP device {self.where} does not know SNMPv3 user {creds.user!r}"
            )
        if "digest" in lower:
            return DeviceError(
                "auth_failed",
                f"SNMP device {self.where} refused the auth key for {creds.user!r}: "
                f"check the auth key and protocol (auth_key, auth_protocol = {creds.auth_protocol}; probe: --auth-key, --auth-protocol)",
            )
        if "decrypt" in lower:
            return DeviceError(
                "auth_failed",
                f"SNMP device {self.where} could not decrypt the request from {creds.user!r}: "
                f"check the privacy key and protocol (priv_key, priv_protocol = {creds.priv_protocol}; probe: --priv-key, --priv-protocol)",
            )
        if "unsupportedseclevel" in lower.replace(" ", "") or "security level" in lower:
            return DeviceError(
                "auth_failed",
                f"SNMP device {self.where} does not accept {creds.level} for {creds.user!r}; "
                "check which security level the device requires",
            )
        return DeviceError("bad_response", f"SNMP device {self.where}: {text}")

    async def aclose(self) -> None:
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None
            self._target = None
            await asyncio.sleep(0)
