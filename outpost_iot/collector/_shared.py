"""State that collector replicas share, in Redis: rate-limit buckets, the dedup window, latest
values.

Without ``[redis]`` a single collector keeps all three in its own process (``_limits``, the
document store's stored-batch records, the time-series store). With it:

- :class:`RedisRateLimiter` — the two token buckets of a gateway live in one Redis hash and are
  refilled and charged by one Lua script on Redis' clock, so every replica draws on the same
  bucket and a gateway gets one limit, not one per replica;
- :class:`RedisDedupWindow` — a batch being stored is *claimed* (``SET NX`` with a TTL) so a
  retransmit that reaches another replica meanwhile is answered ``duplicate`` … once the first
  replica has stored it; the recently stored batches are remembered for ``window_s`` so a
  retransmit is recognised without a database read. The document store's records remain the
  authority (a batch older than the window is still found there), and the time-series writes are
  idempotent, so even a claim lost with a killed replica cannot store a batch twice;
- :class:`LatestValues` — the newest value of every field of every series, for dashboards,
  kept newest-wins (a late backfill never replaces a newer value).

Redis failing is not a reason to stop ingesting: the limiter falls back to the replica's own
buckets, the dedup window to the document store, latest values to the time-series store; each
logs once per outage and ``/readyz`` names ``shared_state``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import orjson

from outpost_iot.collector._limits import RateLimiter, Verdict
from outpost_iot.collector.stores import (
    ALL_TENANTS,
    LatestValue,
    SeriesGroup,
    SeriesInfo,
    SeriesQuery,
    SeriesWrite,
    StoredPoint,
    TimeSeriesStore,
)

if TYPE_CHECKING:
    import redis

    from outpost_iot.collector._config import LimitsConfig, RedisConfig

_CONSUME = """
-- KEYS[1]: the gateway's bucket hash. ARGV: readings, bytes, r_rate, r_cap, b_rate, b_cap, ttl
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local h = redis.call('HMGET', KEYS[1], 'r', 'b', 'at')
local rr, rc, br, bc = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local r = tonumber(h[1]) or rc
local b = tonumber(h[2]) or bc
local at = tonumber(h[3]) or now
local dt = math.max(0, now - at)
r = math.min(rc, r + dt * rr)
b = math.min(bc, b + dt * br)
local need_r = math.min(tonumber(ARGV[1]), rc)
local need_b = math.min(tonumber(ARGV[2]), bc)
local wait_r = 0
local wait_b = 0
if r < need_r then wait_r = (need_r - r) / rr end
if b < need_b then wait_b = (need_b - b) / br end
local allowed = 0
if wait_r == 0 and wait_b == 0 then
  r = r - tonumber(ARGV[1])
  b = b - tonumber(ARGV[2])
  allowed = 1
end
redis.call('HSET', KEYS[1], 'r', r, 'b', b, 'at', now)
redis.call('EXPIRE', KEYS[1], ARGV[7])
return {allowed, tostring(wait_r), tostring(wait_b)}
"""

_REFUND = """
local h = redis.call('HMGET', KEYS[1], 'r', 'b')
if not h[1] then return 0 end
redis.call('HSET', KEYS[1], 'r', math.min(tonumber(ARGV[3]), tonumber(h[1]) + tonumber(ARGV[1])),
           'b', math.min(tonumber(ARGV[4]), tonumber(h[2]) + tonumber(ARGV[2])))
return 1
"""

# KEYS[1]: the (tenant, measurement) hash. ARGV: pairs of (member, '[ts, value]') — a member is
# replaced only by a newer timestamp.
_LATEST = """
for i = 1, #ARGV, 2 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  local replace = true
  if old then
    local old_ts = tonumber(string.match(old, '^%[(%-?%d+)'))
    local new_ts = tonumber(string.match(ARGV[i + 1], '^%[(%-?%d+)'))
    replace = new_ts >= old_ts
  end
  if replace then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""


def connect(config: RedisConfig) -> redis.Redis:
    import redis as redis_lib

    return redis_lib.Redis.from_url(
        config.url.get_secret_value(),
        socket_timeout=config.timeout_s,
        socket_connect_timeout=config.timeout_s,
        health_check_interval=30,
    )


def _where(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"Redis {kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


class _Outage:
    """Logs the first failure of an outage and the recovery, not every call."""

    def __init__(self, where: str, what: str, logger: logging.Logger) -> None:
        self._where, self._what, self._log = where, what, logger
        self.down = False

    def failed(self, exc: Exception) -> None:
        if not self.down:
            self._log.warning("%s unavailable (%s): %s", self._where, exc, self._what)
        self.down = True

    def ok(self) -> None:
        if self.down:
            self._log.info("%s is back", self._where)
        self.down = False


class RedisRateLimiter:
    """The per-gateway token buckets of :class:`RateLimiter`, shared by every replica."""

    def __init__(
        self,
        client: redis.Redis,
        limits: LimitsConfig,
        *,
        prefix: str = "outpost:",
        logger: logging.Logger | None = None,
    ) -> None:
        import redis as redis_lib

        self._errors = (redis_lib.RedisError, OSError)
        self._client = client
        self._prefix = prefix
        self._args = (
            limits.readings_per_s,
            limits.readings_burst,
            limits.bytes_per_s,
            limits.bytes_burst,
        )
        # Long enough for a bucket to refill completely; then it is full again anyway.
        self._ttl = int(max(limits.readings_burst / limits.readings_per_s,
                            limits.bytes_burst / limits.bytes_per_s)) + 60  # fmt: skip
        self._consume = client.register_script(_CONSUME)
        self._refund = client.register_script(_REFUND)
        self._local = RateLimiter(
            readings_per_s=limits.readings_per_s,
            readings_burst=limits.readings_burst,
            bytes_per_s=limits.bytes_per_s,
            bytes_burst=limits.bytes_burst,
        )
        self._outage = _Outage(
            _where(client),
            "rate limits are enforced by each replica on its own until it is back",
            logger or logging.getLogger("outpost.collector.shared"),
        )

    def consume(self, gateway_id: str, readings: int, size: int, now: float) -> Verdict:
        try:
            allowed, wait_r, wait_b = self._consume(
                keys=[f"{self._prefix}rl:{gateway_id}"],
                args=[readings, size, *self._args, self._ttl],
            )
        except self._errors as exc:
            self._outage.failed(exc)
            return self._local.consume(gateway_id, readings, size, now)
        self._outage.ok()
        if int(allowed):
            return Verdict(True)
        r_wait, b_wait = float(wait_r), float(wait_b)
        if r_wait >= b_wait:
            return Verdict(False, "readings_per_s", r_wait)
        return Verdict(False, "bytes_per_s", b_wait)

    def refund(self, gateway_id: str, readings: int, size: int) -> None:
        try:
            self._refund(
                keys=[f"{self._prefix}rl:{gateway_id}"],
                args=[readings, size, self._args[1], self._args[3]],
            )
        except self._errors as exc:
            self._outage.failed(exc)
            self._local.refund(gateway_id, readings, size)


class RedisDedupWindow:
    """Claims of batches being stored, and the recently stored ones, shared by every replica."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "outpost:",
        window_s: float = 3600.0,
        claim_s: float = 10.0,
        logger: logging.Logger | None = None,
    ) -> None:
        import redis as redis_lib

        self._errors = (redis_lib.RedisError, OSError)
        self._client = client
        self._prefix = prefix
        self._window = max(1, int(window_s))
        self._claim = max(1, int(claim_s))
        self._outage = _Outage(
            _where(client),
            "duplicates are found in the document store alone until it is back",
            logger or logging.getLogger("outpost.collector.shared"),
        )

    def _key(self, kind: str, key: tuple[str, str, int]) -> str:
        gateway_id, stream, seq = key
        return f"{self._prefix}{kind}:{gateway_id}:{stream}:{seq}"

    def take(self, key: tuple[str, str, int]) -> Literal["stored", "busy", "claimed", "unknown"]:
        """In one round trip: ``stored`` (stored recently: a duplicate), ``busy`` (another
        replica is storing it right now), ``claimed`` (this replica takes it), or ``unknown``
        (Redis is down: ask the document store and store it; the writes are idempotent)."""
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.exists(self._key("b", key))
            pipe.set(self._key("c", key), b"1", nx=True, ex=self._claim)
            stored, taken = pipe.execute()
        except self._errors as exc:
            self._outage.failed(exc)
            return "unknown"
        self._outage.ok()
        if stored:
            if taken:  # the claim just made is not needed
                self.done([key], stored=False)
            return "stored"
        return "claimed" if taken else "busy"

    def done(self, keys: Sequence[tuple[str, str, int]], *, stored: bool) -> None:
        """The batches were stored (remember them) or not (release the claims)."""
        try:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                if stored:
                    pipe.set(self._key("b", key), b"1", ex=self._window)
                pipe.delete(self._key("c", key))
            pipe.execute()
        except self._errors as exc:
            self._outage.failed(exc)


class LatestValues:
    """A time-series store whose latest values live in Redis as well: one hash per tenant and
    measurement, member = series tags + field, value = ``[ts, value]``, newest wins. Everything
    else goes to the store it wraps."""

    def __init__(
        self,
        inner: TimeSeriesStore,
        client: redis.Redis,
        *,
        prefix: str = "outpost:",
        logger: logging.Logger | None = None,
    ) -> None:
        import redis as redis_lib

        self._errors = (redis_lib.RedisError, OSError)
        self.inner = inner
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_LATEST)
        self._outage = _Outage(
            _where(client),
            "latest values are read from the time-series store until it is back",
            logger or logging.getLogger("outpost.collector.shared"),
        )

    def query(
        self,
        measurement: str,
        *,
        tenant: str = ALL_TENANTS,
        tags: dict[str, str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> list[StoredPoint]:
        return self.inner.query(
            measurement, tenant=tenant, tags=tags, start_ns=start_ns, end_ns=end_ns
        )

    def aggregate(self, query: SeriesQuery) -> list[SeriesGroup]:
        return self.inner.aggregate(query)

    def devices(self, tenant: str, gateway_id: str) -> dict[str, tuple[list[str], int]]:
        return self.inner.devices(tenant, gateway_id)

    def catalog(
        self, tenant: str, *, tags: dict[str, str] | None = None, limit: int = 10_000
    ) -> list[SeriesInfo]:
        return self.inner.catalog(tenant, tags=tags, limit=limit)

    def refresh_rollups(self, raw_horizon_ns: int = 0) -> int:
        return self.inner.refresh_rollups(raw_horizon_ns)

    def expire(
        self, *, raw_before_ns: int, rollup_5m_before_ns: int, rollup_1h_before_ns: int
    ) -> dict[str, int]:
        return self.inner.expire(
            raw_before_ns=raw_before_ns,
            rollup_5m_before_ns=rollup_5m_before_ns,
            rollup_1h_before_ns=rollup_1h_before_ns,
        )

    def count_points(self, measurement: str | None = None) -> int:
        return self.inner.count_points(measurement)

    def duplicate_points(self, measurement: str | None = None) -> int:
        return self.inner.duplicate_points(measurement)

    def not_kept(self) -> dict[str, int]:
        return self.inner.not_kept()

    def ping(self) -> None:
        self.inner.ping()

    def _hash(self, tenant: str, measurement: str) -> str:
        return f"{self._prefix}latest:{tenant}:{measurement}"

    def write(self, series: Sequence[SeriesWrite]) -> None:
        self.inner.write(series)  # the store first: the cache never shows what is not stored
        newest: dict[tuple[str, str], dict[bytes, tuple[int, Any]]] = {}
        for s in series:
            tags = orjson.dumps(s.tags, option=orjson.OPT_SORT_KEYS)
            members = newest.setdefault((s.tenant, s.measurement), {})
            for ts, fields in s.points:
                for name, value in fields.items():
                    member = tags + b"\x1f" + name.encode()
                    if member not in members or ts >= members[member][0]:
                        members[member] = (ts, value)
        try:
            pipe = self._client.pipeline(transaction=False)
            for (tenant, measurement), members in newest.items():
                args: list[bytes] = []
                for member, (ts, value) in members.items():
                    args += [member, orjson.dumps([ts, value])]
                self._script(keys=[self._hash(tenant, measurement)], args=args, client=pipe)
            pipe.execute()
        except self._errors as exc:
            self._outage.failed(exc)
            return
        self._outage.ok()

    def latest(
        self, tenant: str, measurement: str, *, tags: dict[str, str] | None = None
    ) -> list[LatestValue]:
        try:
            if tenant == ALL_TENANTS:
                keys = list(self._client.scan_iter(match=self._hash("*", measurement), count=500))
            else:
                keys = [self._hash(tenant, measurement).encode()]
            found: dict[bytes, bytes] = {}
            for key in keys:
                if key.decode().rsplit(":", 1)[-1] != measurement:
                    continue  # a measurement whose name ends like this one
                found |= cast(dict[bytes, bytes], self._client.hgetall(key))
        except self._errors as exc:
            self._outage.failed(exc)
            return self.inner.latest(tenant, measurement, tags=tags)
        self._outage.ok()
        if not found:  # Redis was emptied (restarted): the store knows
            return self.inner.latest(tenant, measurement, tags=tags)
        out = []
        for member, raw in found.items():
            tag_json, _, field = member.partition(b"\x1f")
            series_tags = orjson.loads(tag_json)
            if any(series_tags.get(k) != v for k, v in (tags or {}).items()):
                continue
            ts, value = orjson.loads(raw)
            out.append(LatestValue(measurement, series_tags, field.decode(), ts, value))
        return sorted(
            out, key=lambda v: (orjson.dumps(v.tags, option=orjson.OPT_SORT_KEYS), v.field)
        )

    def close(self) -> None:
        self.inner.close()


def ping(client: redis.Redis) -> None:
    import redis as redis_lib

    from outpost_iot.collector._exceptions import StoreUnavailable

    try:
        client.ping()
    except (redis_lib.RedisError, OSError) as exc:
        raise StoreUnavailable(f"{_where(client)}: {exc}") from exc
