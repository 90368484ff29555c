"""State shared by collector replicas in a real Redis: one rate limit, one dedup window, latest
values; and what happens when Redis goes away."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from outpost_iot.collector import _shared
from outpost_iot.collector._config import LimitsConfig, RedisConfig
from outpost_iot.collector._exceptions import StoreUnavailable
from outpost_iot.collector._limits import RateLimiter
from outpost_iot.collector.stores import SeriesWrite, SqliteTimeSeriesStore
from outpost_iot.dev._servers import Redis

LIMITS = LimitsConfig(readings_per_s=10, readings_burst=100, bytes_per_s=1e6, bytes_burst=1e7)


@pytest.fixture
def client(redis_server: Redis) -> Iterator[redis.Redis]:
    c = _shared.connect(RedisConfig(url=SecretStr(redis_server.url), timeout_s=0.5))
    yield c
    c.close()


def test_two_replicas_draw_on_one_bucket(client: redis.Redis) -> None:
    a = _shared.RedisRateLimiter(client, LIMITS)
    b = _shared.RedisRateLimiter(client, LIMITS)
    assert a.consume("gw-1", 60, 1000, 0.0).allowed
    verdict = b.consume("gw-1", 60, 1000, 0.0)  # alone, replica b would allow it
    assert not verdict.allowed
    assert verdict.limit == "readings_per_s"
    assert 1.5 < verdict.retry_after_s <= 2.1  # 20 readings short at 10/s
    assert b.consume("gw-2", 60, 1000, 0.0).allowed  # another gateway has its own bucket
    a.refund("gw-1", 60, 1000)  # the batch was not stored after all
    assert b.consume("gw-1", 60, 1000, 0.0).allowed
    local = RateLimiter(readings_per_s=10, readings_burst=100, bytes_per_s=1e6, bytes_burst=1e7)
    assert local.consume("gw-1", 60, 1000, 0.0).allowed  # what each replica would do alone


def test_a_claimed_batch_is_not_taken_twice_and_a_stored_one_is_known(client: redis.Redis) -> None:
    a = _shared.RedisDedupWindow(client, window_s=60)
    b = _shared.RedisDedupWindow(client, window_s=60)
    key = ("gw-1", "s1", 7)
    assert a.take(key) == "claimed"
    assert b.take(key) == "busy"  # replica a is storing it
    a.done([key], stored=False)  # its store failed: the claim is released, nothing remembered
    assert b.take(key) == "claimed"
    b.done([key], stored=True)
    assert a.take(key) == "stored"
    assert b.take(key) == "stored"
    assert client.exists("outpost:c:gw-1:s1:7") == 0  # a duplicate check leaves no claim behind


def test_two_replicas_ingesting_one_batch_store_it_once_and_never_ack_it_early(
    client: redis.Redis, tmp_path: Path
) -> None:
    from outpost_iot.collector import Ingestor
    from outpost_iot.collector.stores import SqliteDocumentStore
    from tests.collector.test_ingest import frame, make_config, msg

    cfg = make_config(tmp_path)
    ts = SqliteTimeSeriesStore(cfg.stores.timeseries_path)
    docs = SqliteDocumentStore(cfg.stores.documents_path)
    replicas = [
        Ingestor(config=cfg, timeseries=ts, documents=docs, dedup=_shared.RedisDedupWindow(client))
        for _ in range(2)
    ]
    # Replica 0 is storing batch 1 right now (its claim is taken), when the retransmit reaches 1.
    assert _shared.RedisDedupWindow(client).take(("gw-1", "s1", 1)) == "claimed"
    [reply] = replicas[1].handle([msg(frame(1), 1)])
    assert (reply.message.kind, reply.message.reason) == ("nack", "in_progress")  # type: ignore[union-attr]
    assert ts.count_points() == 0
    client.delete("outpost:c:gw-1:s1:1")  # replica 0 died; its claim expired
    [reply] = replicas[0].handle([msg(frame(1), 1)])
    assert reply.message.status == "stored"  # type: ignore[union-attr]
    [reply] = replicas[1].handle([msg(frame(1), 1)])
    assert reply.message.status == "duplicate"  # type: ignore[union-attr]
    assert ts.count_points() == 3
    ts.close()
    docs.close()


def test_latest_values_newest_wins_and_the_store_answers_when_redis_is_gone(
    client: redis.Redis, redis_server: Redis, tmp_path: Path
) -> None:
    inner = SqliteTimeSeriesStore(tmp_path / "ts.db")
    ts = _shared.LatestValues(inner, client)
    tags = {"gateway": "gw-1", "device": "d1"}
    ts.write([SeriesWrite("climate", tags, [(2_000, {"celsius": 21.5}), (3_000, {"celsius": 22.0})], "acme")])  # fmt: skip
    ts.write(
        [SeriesWrite("climate", tags, [(1_000, {"celsius": 5.0, "on": True})], "acme")]
    )  # late
    latest = {v.field: (v.ts, v.value) for v in ts.latest("acme", "climate")}
    assert latest == {"celsius": (3_000, 22.0), "on": (1_000, True)}
    assert ts.latest("globex", "climate") == inner.latest("globex", "climate") == []
    assert {v.field for v in ts.latest("*", "climate", tags={"device": "d1"})} == {"celsius", "on"}
    assert ts.latest("acme", "climate", tags={"device": "d9"}) == []
    redis_server.stop()
    # Redis is gone: readings are still stored, and latest values come from the store.
    ts.write([SeriesWrite("climate", tags, [(4_000, {"celsius": 23.0})], "acme")])
    latest = {v.field: v.value for v in ts.latest("acme", "climate")}
    assert latest["celsius"] == 23.0
    limiter = _shared.RedisRateLimiter(client, LIMITS)
    assert limiter.consume("gw-1", 10, 10, 0.0).allowed  # its own buckets meanwhile
    with pytest.raises(StoreUnavailable, match=r"Redis 127\.0\.0\.1"):
        _shared.ping(client)
    inner.close()


def test_the_shared_bucket_refills_at_its_rate(client: redis.Redis) -> None:
    """Emptied, the bucket lets a batch through again once enough has trickled back (by the
    Redis server's clock, whichever replica asks), not before and not never."""
    limits = LimitsConfig(readings_per_s=100, readings_burst=100, bytes_per_s=1e9, bytes_burst=1e9)
    a = _shared.RedisRateLimiter(client, limits)
    b = _shared.RedisRateLimiter(client, limits)
    assert a.consume("gw-r", 100, 10, 0.0).allowed  # the whole burst
    refused = b.consume("gw-r", 50, 10, 0.0)
    assert not refused.allowed
    assert 0.3 < refused.retry_after_s <= 0.5  # 50 readings at 100/s
    emptied = time.monotonic()
    deadline = emptied + 10
    while not b.consume("gw-r", 50, 10, 0.0).allowed:
        assert time.monotonic() < deadline, "the bucket never refilled"
        time.sleep(0.05)
    assert time.monotonic() - emptied >= 0.3, "it let the batch through before it refilled"


def test_with_redis_gone_ingest_finds_duplicates_in_the_document_store_and_says_so_once(
    client: redis.Redis, redis_server: Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The shared window is a shortcut: when Redis is away a retransmit is still acked as a
    duplicate and stored once (the document store knows every stored batch); the outage is
    logged once, and its end."""
    from outpost_iot.collector import Ingestor
    from outpost_iot.collector.stores import SqliteDocumentStore
    from tests.collector.test_ingest import frame, make_config, msg

    cfg = make_config(tmp_path)
    ts = SqliteTimeSeriesStore(cfg.stores.timeseries_path)
    docs = SqliteDocumentStore(cfg.stores.documents_path)
    window = _shared.RedisDedupWindow(client)
    ingestor = Ingestor(config=cfg, timeseries=ts, documents=docs, dedup=window)
    try:
        [reply] = ingestor.handle([msg(frame(1), 1)])
        assert reply.message.status == "stored"  # type: ignore[union-attr]
        assert client.exists("outpost:b:gw-1:s1:1") == 1  # remembered for every replica
        redis_server.stop()
        caplog.set_level(logging.INFO, logger="outpost.collector.shared")
        statuses = [
            r.message.status  # type: ignore[union-attr]
            for seq in (1, 2, 1)
            for r in ingestor.handle([msg(frame(seq), seq)])
        ]
        assert statuses == ["duplicate", "stored", "duplicate"]
        assert ts.count_points() == 6
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1
        assert warned[0].startswith("Redis 127.0.0.1")
        assert warned[0].endswith(
            "duplicates are found in the document store alone until it is back"
        )
        redis_server.start()
        [reply] = ingestor.handle([msg(frame(3), 3)])
        assert reply.message.status == "stored"  # type: ignore[union-attr]
        assert any(m.endswith("is back") for m in caplog.messages)
    finally:
        ts.close()
        docs.close()
