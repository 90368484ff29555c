"""The live stream (GET /api/v1/stream): what the ingest stores reaches the clients that may
see it, a reconnect resumes where it left off, a slow client is cut off instead of buffered,
and replicas share one stream through Redis."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost_iot import wire
from outpost_iot.collector._ingest import Incoming
from outpost_iot.collector._rollouts import RolloutService
from outpost_iot.collector._stream import (
    Filter,
    Hub,
    LocalHub,
    Message,
    RedisHub,
    StreamClosed,
    Subscription,
)
from outpost_iot.dev._processes import free_port
from outpost_iot.dev._servers import Redis
from outpost_iot.wire import GatewayState, topics
from tests.collector._api_fixture import T0, Api, batch_message
from tests.collector._fleet_fixture import CONFIG, Fleet

ALL = frozenset(("latest", "event", "gateway", "config", "rollout"))


async def _drain(sub: Subscription, wait_s: float = 0.05) -> list[Message]:
    out = []
    while (m := await sub.next(wait_s)) is not None:
        out.append(m)
    return out


def _data(m: Message) -> Any:
    return orjson.loads(m.data)


# The hub by itself.


async def test_a_client_gets_its_tenants_messages_of_the_kinds_and_gateways_it_asked_for() -> None:
    hub = LocalHub()
    flt = Filter(tenant="acme", kinds=frozenset(("latest", "event")), gateways=frozenset(["g1"]))
    async with hub.subscribe(flt, None) as sub:
        hub.publish("event", "acme", "g1", {"n": 1})
        hub.publish("event", "globex", "g1", {"n": 2})  # another tenant, same gateway name
        hub.publish("event", "acme", "g2", {"n": 3})  # a gateway not asked for
        hub.publish("gateway", "acme", "g1", {"n": 4})  # a kind not asked for
        hub.publish("latest", "acme", "g1", {"n": 5, "series": [{"measurement": "power"}]})
        assert [_data(m)["n"] for m in await _drain(sub)] == [1, 5]
    admin = Filter(tenant="*", kinds=ALL)
    async with hub.subscribe(admin, None) as sub:
        hub.publish("rollout", "globex", "", {"n": 6})
        hub.publish("event", "acme", "g9", {"n": 7})
        assert [_data(m)["n"] for m in await _drain(sub)] == [6, 7]
    only_power = Filter(
        tenant="acme", kinds=frozenset(["latest"]), measurements=frozenset(["power"])
    )
    async with hub.subscribe(only_power, None) as sub:
        hub.publish("latest", "acme", "g1", {"n": 8, "series": [{"measurement": "climate"}]})
        hub.publish("latest", "acme", "g1", {"n": 9, "series": [{"measurement": "power"}]})
        assert [_data(m)["n"] for m in await _drain(sub)] == [9]


async def test_a_reconnect_with_the_last_id_gets_what_was_missed_in_order() -> None:
    hub = LocalHub(ring=100)
    flt = Filter(tenant="acme", kinds=ALL)
    async with hub.subscribe(flt, None) as sub:
        hub.publish("event", "acme", "g1", {"n": 1})
        (first,) = await _drain(sub)
    for n in range(2, 6):
        hub.publish("event", "acme", "g1", {"n": n})
        hub.publish("event", "globex", "g1", {"n": -n})  # never for this client
    async with hub.subscribe(flt, first.id) as sub:
        hub.publish("event", "acme", "g1", {"n": 6})
        got = await _drain(sub)
    assert [_data(m)["n"] for m in got] == [2, 3, 4, 5, 6]
    ids = [m.order() for m in got]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    ("last_id", "reason"),
    [
        ("0-1", "collector_restarted"),  # an id from an earlier run of the collector
        ("garbage", "unknown_id"),
        ("1-2-3", "unknown_id"),
        ("9" * 30 + "-1", "unknown_id"),
    ],
)
async def test_an_id_the_hub_cannot_resume_from_gets_reset_then_live(
    last_id: str, reason: str
) -> None:
    hub = LocalHub()
    hub.publish("event", "acme", "g1", {"n": 1})
    async with hub.subscribe(Filter(tenant="acme", kinds=ALL), last_id) as sub:
        hub.publish("event", "acme", "g1", {"n": 2})
        got = await _drain(sub)
    assert [m.kind for m in got] == ["reset", "event"]
    assert _data(got[0]) == {"reason": reason}
    # The reset carries the newest id: a client that reconnects with it misses nothing after.
    assert got[0].id
    assert got[0].order() < got[1].order()
    assert _data(got[1]) == {"n": 2}


async def test_a_client_further_behind_than_the_ring_is_told_to_reload() -> None:
    hub = LocalHub(ring=100)
    flt = Filter(tenant="acme", kinds=ALL)
    async with hub.subscribe(flt, None) as sub:
        hub.publish("event", "acme", "g1", {"n": 0})
        (seen,) = await _drain(sub)
    for n in range(1, 150):  # 49 of them are no longer kept
        hub.publish("event", "acme", "g1", {"n": n})
    async with hub.subscribe(flt, seen.id) as sub:
        got = await _drain(sub)
    assert [m.kind for m in got] == ["reset"]
    assert _data(got[0]) == {"reason": "too_far_behind"}
    async with hub.subscribe(flt, got[0].id) as sub:  # from the reset's id on: nothing missed
        hub.publish("event", "acme", "g1", {"n": 150})
        assert [_data(m)["n"] for m in await _drain(sub)] == [150]


async def test_a_slow_client_is_cut_off_and_its_queue_freed_the_others_go_on() -> None:
    hub = LocalHub(queue_messages=50, queue_bytes=64 * 1024)
    flt = Filter(tenant="acme", kinds=ALL)
    async with hub.subscribe(flt, None) as slow, hub.subscribe(flt, None) as quick:
        for n in range(200):
            hub.publish("event", "acme", "g1", {"n": n, "pad": "x" * 100})
            if n % 10 == 0:
                await _drain(quick, 0)
        assert slow.closed == "overflow"
        assert slow.queued_bytes == 0
        with pytest.raises(StreamClosed):
            await slow.next(0.1)
        assert hub.clients == 1  # the slow one is gone from the hub
        assert hub.metrics.disconnected_slow == 1
        rest = await _drain(quick)
        assert _data(rest[-1])["n"] == 199
    # Bytes count too: a few large messages overflow a client before many small ones would.
    async with hub.subscribe(flt, None) as sub:
        for _ in range(3):
            hub.publish("event", "acme", "g1", {"pad": "x" * 30_000})
        assert sub.closed == "overflow"


async def test_messages_published_while_the_missed_ones_are_fetched_are_neither_lost_nor_repeated() -> (
    None
):
    class SlowReplay(LocalHub):
        """Fetches the ring as slowly as a Redis round trip, while the ingest publishes."""

        async def _replay(self, last_id: str | None) -> list[Message]:
            kept = await super()._replay(last_id)
            if last_id is None:
                return kept
            publisher = threading.Thread(
                target=lambda: [self.publish("event", "acme", "g", {"n": n}) for n in (3, 4)]
            )
            publisher.start()
            await asyncio.to_thread(publisher.join)
            await asyncio.sleep(0.05)  # their deliveries reach the loop meanwhile
            return kept + [m for m in list(self._ring) if m.order() > (kept or [m])[-1].order()]

    hub = SlowReplay()
    flt = Filter(tenant="acme", kinds=ALL)
    async with hub.subscribe(flt, None) as sub:
        hub.publish("event", "acme", "g", {"n": 1})
        (first,) = await _drain(sub)
    hub.publish("event", "acme", "g", {"n": 2})
    async with hub.subscribe(flt, first.id) as sub:
        got = [_data(m)["n"] for m in await _drain(sub)]
    assert got == [2, 3, 4]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tenants=st.lists(st.sampled_from(["acme", "globex"]), min_size=1, max_size=40),
    seen=st.integers(min_value=0, max_value=45),
    ring=st.integers(min_value=100, max_value=120),
)
def test_resuming_from_any_point_gives_exactly_the_tenants_messages_after_it(
    tenants: list[str], seen: int, ring: int
) -> None:
    async def run() -> None:
        hub = LocalHub(ring=ring)
        for n, tenant in enumerate(tenants):
            hub.publish("event", tenant, "g", {"n": n})
        flt = Filter(tenant="acme", kinds=ALL)
        last = f"{hub._start}-{min(seen, len(tenants))}"
        async with hub.subscribe(flt, last) as sub:
            got = [_data(m)["n"] for m in await _drain(sub, 0)]
        expected = [n for n, t in enumerate(tenants) if t == "acme" and n + 1 > seen]
        assert got == expected

    asyncio.run(run())


@settings(max_examples=200, deadline=None)
@given(last_id=st.text(max_size=64))
def test_any_last_event_id_resumes_or_resets_never_fails(last_id: str) -> None:
    async def run() -> None:
        hub = LocalHub()
        hub.publish("event", "acme", "g", {"n": 1})
        async with hub.subscribe(Filter(tenant="acme", kinds=ALL), last_id) as sub:
            got = await _drain(sub, 0)
        assert all(m.kind in ("reset", "event") for m in got)

    asyncio.run(run())


def test_publishing_never_fails_the_caller() -> None:
    class Broken(LocalHub):
        def _publish(self, items: Any) -> None:
            raise ConnectionError("redis went away")

    hub = Broken()
    hub.publish("event", "acme", "g", {"n": 1})  # no exception
    assert hub.metrics.dropped["unpublished"] == 1


# Over HTTP, from the ingest: a real uvicorn serving the API over real stores.


@dataclass
class SseClient:
    """Reads a text/event-stream response as (id, event, data) triples."""

    response: httpx.Response
    lines: AsyncIterator[str]
    events: list[tuple[str, str, Any]] = field(default_factory=list)

    async def next_event(self, wait_s: float = 30.0) -> tuple[str, str, Any]:
        async with asyncio.timeout(wait_s):
            fields: dict[str, str] = {}
            async for line in self.lines:
                if line == "":
                    if "event" in fields:
                        event = (
                            fields.get("id", ""),
                            fields["event"],
                            orjson.loads(fields["data"]),
                        )
                        self.events.append(event)
                        return event
                    fields = {}
                    continue
                if line.startswith(":"):
                    continue
                key, _, value = line.partition(": ")
                fields[key] = value
        raise AssertionError(f"the stream ended; events so far: {self.events}")


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
    )
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        while not server.started:  # noqa: ASYNC110 - uvicorn has no event for it
            await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        app.state.services.stream.close()
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def sse(
    base: str, token: str | None, last_id: str | None = None, **params: Any
) -> AsyncIterator[SseClient]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if last_id:
        headers["Last-Event-ID"] = last_id
    async with (
        httpx.AsyncClient(base_url=base, timeout=30) as client,
        client.stream("GET", "/api/v1/stream", params=params, headers=headers) as r,
    ):
        yield SseClient(r, r.aiter_lines())


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
async def test_what_the_ingest_stores_reaches_the_tenants_stream_and_a_reconnect_resumes(
    api: Api,
) -> None:
    a1, b1 = api.gateways["a1"], api.gateways["b1"]
    ingest = api.ingestors[-1]
    async with serving(api.app) as base:
        params = {"kind": ["latest", "event", "gateway"], "gateway": [a1, b1]}
        async with sse(base, api.tokens["viewer-a"], **params) as s:
            assert s.response.status_code == 200
            assert s.response.headers["content-type"].startswith("text/event-stream")
            await asyncio.to_thread(
                ingest.handle, [batch_message(b1, 1, [9.0], events=1)]
            )  # globex's
            replies = await asyncio.to_thread(
                ingest.handle, [batch_message(a1, 1, [1.0, 2.5], events=1)]
            )
            assert replies[0].message == wire.Ack(stream="s1", seq=1, status="stored")
            _, kind, data = await s.next_event()
            assert kind == "latest"
            assert data["gateway_id"] == a1
            (series,) = data["series"]
            assert series["measurement"] == "power"
            assert series["fields"] == {"w": 2.5}  # the newest point of the batch
            assert series["tags"] == {"device": "plug", "gateway": a1}
            assert series["ts"] == pytest.approx((T0 + 1) / 1e9)
            _, kind, data = await s.next_event()
            assert (kind, data["gateway_id"], data["type"]) == ("event", a1, "door_open")
            state = GatewayState(state="online", ts=T0, boot_id="b-1", backlog_readings=42)
            msg = Incoming(topics.up_state(a1), state.model_dump_json().encode(), {}, T0)
            await asyncio.to_thread(ingest.handle, [msg])
            last_id, kind, data = await s.next_event()
            assert kind == "gateway"
            assert (data["id"], data["state"], data["backlog_readings"]) == (a1, "online", 42)
            assert all(d.get("gateway_id", d.get("id")) == a1 for _, _, d in s.events)

        # Disconnected: what is stored meanwhile is given on reconnecting with Last-Event-ID.
        await asyncio.to_thread(ingest.handle, [batch_message(a1, 2, [7.0], events=1)])
        async with sse(base, api.tokens["viewer-a"], last_id, **params) as s:
            _, kind, data = await s.next_event()
            assert (kind, data["series"][0]["fields"]) == ("latest", {"w": 7.0})
            _, kind, data = await s.next_event()
            assert (kind, data["id"]) == ("event", "e2-0")


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
async def test_the_stream_refuses_what_it_should(api: Api) -> None:
    async with serving(api.app) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        r = await client.get("/api/v1/stream")
        assert r.status_code == 401
        r = await client.get(
            "/api/v1/stream",
            params={"kind": "everything"},
            headers={"Authorization": f"Bearer {api.tokens['viewer-a']}"},
        )
        assert r.status_code == 422
        assert r.json()["problems"][0]["field"].startswith("query.kind")
        r = await client.get(
            "/api/v1/stream",
            params={"tenant": "globex"},
            headers={"Authorization": f"Bearer {api.tokens['viewer-a']}"},
        )
        assert r.status_code == 403
        api.hub.max_clients = 1
        async with sse(base, api.tokens["viewer-a"]) as first:
            assert first.response.status_code == 200
            await _until(lambda: api.hub.clients == 1)
            r = await client.get(
                "/api/v1/stream", headers={"Authorization": f"Bearer {api.tokens['viewer-a']}"}
            )
            assert r.status_code == 503
            assert r.headers["retry-after"] == "10"


async def _until(condition: Any, wait_s: float = 30.0) -> None:
    async with asyncio.timeout(wait_s):
        while not condition():  # noqa: ASYNC110 - a condition on state, polled
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
async def test_a_client_that_stops_reading_is_cut_off_without_growing_the_collector(
    api: Api,
) -> None:
    """A client that connects and never reads: the socket buffers fill, then its queue, then
    it is disconnected; the collector holds at most the queue's bound for it meanwhile."""
    api.hub.queue_bytes = 256 * 1024
    a1 = api.gateways["a1"]
    async with serving(api.app) as base:
        port = int(base.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            f"GET /api/v1/stream?kind=event&gateway={a1} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {api.tokens['viewer-a']}\r\n\r\n".encode()
        )
        try:
            await _until(lambda: api.hub.clients == 1)
            (sub,) = api.hub._subs
            most = 0
            for n in range(2000):  # ~8 MB of events, far more than the socket and the queue
                api.hub.publish("event", "acme", a1, {"n": n, "pad": "x" * 4000})
                most = max(most, sub.queued_bytes)
                if n % 50 == 0:
                    await asyncio.sleep(0)  # let the response write what it can
                if sub.closed:
                    break
            await _until(lambda: api.hub.clients == 0)
            assert sub.closed == "overflow"
            assert most <= 256 * 1024
            assert api.hub.metrics.disconnected_slow == 1
            async with httpx.AsyncClient(base_url=base) as client:
                text = (await client.get("/metrics")).text
            assert "outpost_stream_disconnected_slow_total 1.0" in text
            assert "outpost_stream_clients 0.0" in text
        finally:
            sock.close()


# Replicas sharing the stream through a real Redis.


@pytest.fixture
def redis_hubs(redis_server: Redis) -> Iterator[tuple[RedisHub, RedisHub]]:
    import redis

    clients = [redis.Redis.from_url(redis_server.url) for _ in range(2)]
    hubs = tuple(
        RedisHub(c, prefix="outpost:", url=redis_server.url, timeout_s=2.0, ring=1000)
        for c in clients
    )
    yield hubs  # type: ignore[misc]
    for c in clients:
        c.close()


async def _following(hub: Hub) -> asyncio.Task[None]:
    task = asyncio.create_task(hub.run())
    await asyncio.sleep(0.2)  # its first XREAD is waiting
    return task


async def test_a_client_of_one_replica_sees_what_another_stored_and_resumes_on_either(
    redis_hubs: tuple[RedisHub, RedisHub],
) -> None:
    a, b = redis_hubs
    flt = Filter(tenant="acme", kinds=ALL)
    followers = [await _following(a), await _following(b)]
    try:
        async with b.subscribe(flt, None) as sub:
            await asyncio.to_thread(a.publish, "event", "acme", "g1", {"n": 1})
            await asyncio.to_thread(a.publish, "event", "globex", "g1", {"n": -1})
            await asyncio.to_thread(b.publish, "event", "acme", "g1", {"n": 2})
            got: list[Message] = []
            async with asyncio.timeout(30):
                while len(got) < 2:
                    m = await sub.next(1.0)
                    if m is not None:
                        got.append(m)
            assert [_data(m)["n"] for m in got] == [1, 2]
        for n in (3, 4):
            a.publish("event", "acme", "g1", {"n": n})
        # Reconnecting to the other replica with the id one of them gave: nothing missed.
        async with a.subscribe(flt, got[0].id) as sub:
            rest = [_data(m)["n"] for m in await _drain(sub, 0.5)]
        assert rest == [2, 3, 4]
    finally:
        for f in followers:
            f.cancel()
        await asyncio.gather(*followers, return_exceptions=True)


async def test_with_redis_gone_the_ingest_goes_on_and_clients_are_reset_when_it_is_back(
    redis_hubs: tuple[RedisHub, RedisHub], redis_server: Redis
) -> None:
    a, _ = redis_hubs
    flt = Filter(tenant="acme", kinds=ALL)
    follower = await _following(a)
    try:
        async with a.subscribe(flt, None) as sub:
            redis_server.stop()
            a.publish("event", "acme", "g1", {"n": 1})  # does not raise
            assert a.metrics.dropped["unpublished"] == 1
            redis_server.start()
            async with asyncio.timeout(60):
                while (m := await sub.next(1.0)) is None or m.kind != "reset":
                    pass
            assert _data(m) == {"reason": "unavailable"}
            await asyncio.to_thread(a.publish, "event", "acme", "g1", {"n": 2})
            assert a.metrics.dropped["unpublished"] == 1, a.metrics
            async with asyncio.timeout(30):
                while (m := await sub.next(1.0)) is None:
                    pass
            assert _data(m) == {"n": 2}
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


# Rollout progress.


async def test_rollout_progress_reaches_its_tenant_as_it_happens(fleet: Fleet) -> None:
    hub = LocalHub()
    rollouts = RolloutService(
        docs=fleet.docs, configs=fleet.configs, now_ns=lambda: fleet.clock[0], stream=hub
    )
    async with (
        hub.subscribe(Filter(tenant="acme"), None) as acme,
        hub.subscribe(Filter(tenant="globex"), None) as globex,
    ):
        rid = rollouts.create(tenant="acme", config=CONFIG, actor="ops", waves=["1", "100%"])
        rollouts.step()  # wave 1 starts
        rollouts.step()  # nothing happened: nothing is sent
        first = next(m.gateway_id for m in fleet.docs.rollout_members(rid) if m.wave == 0)
        fleet.report(first, 1, "applied")
        rollouts.step()  # wave 1 went well: wave 2 is next
        rollouts.control("acme", rid, "abort")
        got = [_data(m) for m in await _drain(acme)]
        assert await _drain(globex) == []
    assert [(g["id"], g["status"], g["current_wave"]) for g in got] == [
        (rid, "running", 0),  # made
        (rid, "running", 0),  # wave 1 started
        (rid, "running", 1),  # its gateway applied it
        (rid, "aborted", 1),
    ]
    assert got[1]["waves"][0] == {
        "index": 0, "gateways": 1, "started": True, "pending": 1,
        "applied": 0, "failed": 0, "timed_out": 0, "skipped": 0,
    }  # fmt: skip
    assert got[2]["waves"][0]["applied"] == 1
    assert got[3]["reason"] == "aborted by an operator"


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
async def test_enrollments_tags_and_decommissions_reach_the_fleet_stream(api: Api) -> None:
    """The fleet page updates without a reload when a technician enrolls a gateway (shown with
    its site) and when an operator tags or decommissions one; another tenant hears nothing."""
    from cryptography.hazmat.primitives import serialization

    from outpost_iot.provisioning._ca import make_csr, new_key

    operator = {"Authorization": f"Bearer {api.tokens['operator-a']}"}
    a1, a2 = api.gateways["a1"], api.gateways["a2"]
    flt = Filter(tenant="acme", kinds=frozenset({"gateway"}))
    other = Filter(tenant="globex", kinds=ALL)
    async with api.hub.subscribe(flt, None) as sub, api.hub.subscribe(other, None) as theirs:
        r = await api.client.put(f"/api/v1/gateways/{a1}/tags", json={"tags": ["cold", "eu"]}, headers=operator)  # fmt: skip
        assert r.status_code == 200, r.text
        (m,) = await _drain(sub)
        assert (_data(m)["id"], _data(m)["tags"], _data(m)["site"]) == (a1, ["cold", "eu"], "hq")

        r = await api.client.post(f"/api/v1/gateways/{a2}/decommission", headers=operator)
        assert r.status_code == 200, r.text
        (m,) = await _drain(sub)
        assert (_data(m)["id"], _data(m)["state"]) == (a2, "decommissioned")

        r = await api.client.post("/api/v1/enrollment-tokens", json={"site": "Depot 7"}, headers=operator)  # fmt: skip
        csr = make_csr(new_key()).public_bytes(serialization.Encoding.PEM).decode()
        r = await api.client.post("/api/v1/enroll", json={"token": r.json()["token"], "csr": csr})
        assert r.status_code == 200, r.text
        (m,) = await _drain(sub)
        assert (_data(m)["id"], _data(m)["site"]) == (r.json()["gateway_id"], "Depot 7")
        assert _data(m)["state"] == "unknown"  # enrolled; not connected yet
        assert await _drain(theirs) == []


async def test_a_client_let_in_as_the_last_place_is_taken_is_told_to_come_back_later() -> None:
    """Two clients arriving together for the last place: both pass the route's check, one
    subscribes, and the other's stream says to reconnect later instead of ending blank."""
    from outpost_iot.collector.api.routes.stream import _events

    hub = LocalHub(max_clients=1)
    flt = Filter(tenant="acme", kinds=ALL)
    async with hub.subscribe(flt, None):
        chunks = [c async for c in _events(hub, flt, None)]
    assert chunks == [b"retry: 30000\n: too many stream clients; reconnect later\n\n"]
