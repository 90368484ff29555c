"""The uplink's send path in memory: a real SQLite outbox, the real sender and receiver, and a
stand-in for the MQTT client that records publishes and delivers acks. Fast (no broker), so
each rule of the send path has a test of its own: a batch leaves the outbox only when acked,
what is not acked is sent again, a nack holds the sender and halves the window, ``in_progress``
holds only its batch, "no matching subscribers" is retried soon. The real client and broker are
tested in tests/mqtt and tests/e2e."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from outpost_iot import mqtt, wire
from outpost_iot.agent import Outbox, SystemClock
from outpost_iot.agent._config import UplinkConfig
from outpost_iot.agent._uplink import Uplink
from outpost_iot.wire import Reading, topics
from tests._wait import until

GW = "gw-mem"


class FakeClient:
    """What the uplink uses of ``mqtt.Client``."""

    def __init__(self) -> None:
        self.sent: list[int] = []  # seq of every batch publish, in order
        self.answer = 0  # the PUBACK reason code to give
        self._inbox: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        # Called at each publish, before the broker's answer: what happens meanwhile.
        self.meanwhile: Callable[[int], Awaitable[None]] | None = None

    async def publish_answered(self, topic: str, payload: bytes, **kw: Any) -> int:
        props = dict(kw["properties"].UserProperty)
        self.sent.append(int(props[wire.PROP_SEQ]))
        if self.meanwhile is not None:
            await self.meanwhile(int(props[wire.PROP_SEQ]))
        return self.answer

    async def publish(self, *args: object, **kw: object) -> None:
        pass

    @property
    def messages(self) -> AsyncIterator[aiomqtt.Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[aiomqtt.Message]:
        while True:
            yield await self._inbox.get()

    def deliver(self, msg: wire.Ack | wire.Nack) -> None:
        payload = wire.encode_message(msg)
        self._inbox.put_nowait(aiomqtt.Message(topics.down_ack(GW), payload, 1, False, 1, None))


class Rig:
    def __init__(self, outbox: Outbox, uplink: Uplink, client: FakeClient) -> None:
        self.outbox, self.uplink, self.client = outbox, uplink, client

    def ack(self, seq: int, status: str = "stored", stream: str | None = None) -> None:
        self.client.deliver(
            wire.Ack(stream=stream or self.outbox.stream_id, seq=seq, status=status)  # type: ignore[arg-type]
        )

    def nack(self, seq: int, reason: str, retry_after_ms: int) -> None:
        self.client.deliver(
            wire.Nack(
                stream=self.outbox.stream_id,
                seq=seq,
                reason=reason,
                retry_after_ms=retry_after_ms,  # type: ignore[arg-type]
            )
        )

    def stored_seqs(self) -> set[int]:
        return {b.seq for b in self.outbox.pick(1000)}

    def state(self) -> str:
        return (
            f"sent {self.client.sent}, in the outbox {sorted(self.stored_seqs())},"
            f" nacks {self.uplink.nacks}"
        )

    async def until(self, predicate: Any, within: float = 10.0) -> None:
        """Wait for ``predicate``; on timeout, say what was sent and what is left."""
        await until(predicate, within=within, what="the uplink", seen=self.state)

    @contextlib.asynccontextmanager
    async def collector(self, *, holding: frozenset[int] = frozenset()) -> AsyncIterator[None]:
        """A collector that acks every batch as it is sent, except those in ``holding``."""

        async def ack_all() -> None:
            acked: set[int] = set()
            while True:
                for seq in self.client.sent:
                    if seq not in acked and seq not in holding:
                        acked.add(seq)
                        self.ack(seq)
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ack_all())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path, *, batches: int, rng: random.Random | None = None, **uplink: object
) -> AsyncIterator[Rig]:
    cfg = UplinkConfig(
        host="x", ca_file=tmp_path / "ca", cert_file=tmp_path / "c", key_file=tmp_path / "k",
        **{"ack_timeout": 30.0, "max_inflight": 8, **uplink},  # type: ignore[arg-type]
    )  # fmt: skip
    clock = SystemClock()
    with Outbox(path=tmp_path / "buffer.db", gateway_id=GW, clock=clock, max_bytes=64 << 20) as ob:
        for i in range(batches):
            ob.append([Reading(measurement="m", tags={}, fields={"n": i}, ts=i + 1)])
            ob.form_batch()
        up = Uplink(
            gateway_id=GW, config=cfg, outbox=ob, clock=clock, state=lambda s: None, rng=rng
        )  # type: ignore[arg-type,return-value]
        client = FakeClient()
        tasks = [
            asyncio.create_task(up._send(client)),  # type: ignore[arg-type]
            asyncio.create_task(up._receive(client)),  # type: ignore[arg-type]
        ]
        try:
            yield Rig(ob, up, client)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t


async def test_a_batch_leaves_the_outbox_when_acked_not_when_sent(tmp_path: Path) -> None:
    async with rig(tmp_path, batches=3) as r:
        await r.until(lambda: len(r.client.sent) == 3)
        await asyncio.sleep(0.1)  # the sender has nothing more to do
        assert r.stored_seqs() == {1, 2, 3}, "sending deleted a batch"
        r.ack(2)
        await r.until(lambda: r.stored_seqs() == {1, 3})
        r.ack(2)  # a second ack of the same batch (a retransmit's) changes nothing
        r.ack(1, stream="another-stream")  # about a stream this buffer no longer holds
        await asyncio.sleep(0.1)
        assert r.stored_seqs() == {1, 3}


async def test_what_is_not_acked_in_time_is_sent_again(tmp_path: Path) -> None:
    async with rig(tmp_path, batches=2, ack_timeout=0.3) as r:
        await r.until(lambda: sorted(r.client.sent) == [1, 2])
        r.ack(1)
        await r.until(lambda: r.client.sent.count(2) >= 3)
        assert r.client.sent.count(1) == 1  # the acked one is not sent again
        # Every time it went again is counted (what `status` and the state message show).
        assert r.uplink.retransmits == r.client.sent.count(2) - 1


async def test_a_quarantined_batch_is_deleted_and_counted_as_dropped(tmp_path: Path) -> None:
    async with rig(tmp_path, batches=1) as r:
        await r.until(lambda: r.client.sent == [1])
        r.ack(1, status="quarantined")
        await r.until(lambda: r.stored_seqs() == set())
        assert r.outbox.stats().drops == {"rejected_by_collector": 1}


async def test_a_nack_holds_the_sender_and_halves_the_window(tmp_path: Path) -> None:
    async with rig(tmp_path, batches=20, max_inflight=8) as r:
        await r.until(lambda: len(r.client.sent) == 8)  # the window is full
        nacked = min(r.client.sent)
        r.nack(nacked, "rate_limited", retry_after_ms=1500)
        await r.until(lambda: r.uplink.nacks == 1)
        assert r.uplink._window == 4  # halved (it grows by one per ack again)
        held = time.monotonic()
        for seq in sorted(r.client.sent):
            if seq != nacked:
                r.ack(seq)
        await asyncio.sleep(0.5)
        assert len(r.client.sent) == 8, "it sent while the collector asked it to wait"
        await r.until(lambda: len(r.client.sent) > 8)
        assert time.monotonic() - held >= 1.0
        assert nacked in r.stored_seqs()  # kept, and sent again


async def test_in_progress_holds_only_that_batch(tmp_path: Path) -> None:
    async with rig(tmp_path, batches=6, max_inflight=2) as r:
        await r.until(lambda: len(r.client.sent) == 2)
        busy = r.client.sent[0]
        r.nack(busy, "in_progress", retry_after_ms=4000)
        await r.until(lambda: r.uplink.nacks == 1)
        async with r.collector(holding=frozenset({busy})):
            # The rest of the stream goes on while that batch waits (well within its 4 s)...
            await r.until(lambda: r.stored_seqs() == {busy}, within=3.5)
            assert r.client.sent.count(busy) == 1
            assert r.uplink._window == 2  # not congestion: the window stays
            # ... and it is asked about again after its retry_after, not after ack_timeout.
            # (ack_timeout is 30 s; the retry_after, with its jitter, at most 4.8 s.)
            await r.until(lambda: r.client.sent.count(busy) == 2, within=20.0)


async def test_no_matching_subscribers_is_retried_soon_with_one_batch_in_flight(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, batches=5, max_inflight=8) as r:
        r.client.answer = mqtt.NO_MATCHING_SUBSCRIBERS
        await r.until(lambda: len(r.client.sent) >= 3, within=10.0)  # again and again, soon
        # Counted once per answer (the last publish may still be waiting for its answer).
        assert len(r.client.sent) - 1 <= r.uplink.unrouted <= len(r.client.sent)
        assert r.uplink.unrouted >= 2
        assert r.stored_seqs() == {1, 2, 3, 4, 5}
        # One at a time while nobody is subscribed: the same batch, not the whole window.
        assert len(set(r.client.sent)) == 1
        r.client.answer = 0  # a collector subscribed
        async with r.collector():
            await r.until(lambda: r.stored_seqs() == set(), within=10.0)
        assert r.uplink._window == 1 + 5  # back up by one per ack


@pytest.mark.parametrize("code", [0x87, 0x97])
async def test_a_refused_publish_is_kept_and_tried_again(
    tmp_path: Path, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="outpost.agent.uplink")
    async with rig(tmp_path, batches=1) as r:
        r.client.answer = code
        await r.until(lambda: len(r.client.sent) >= 3, within=20.0)
        assert len(r.client.sent) - 1 <= r.uplink.refused <= len(r.client.sent)
        assert r.uplink.refused >= 2
        # Said once, not at every retry (then again every 20th).
        said = [m for m in caplog.messages if "the broker refused it" in m]
        assert len(said) == 1, said
        assert said[0].startswith(
            f"batch 1: the broker refused it (reason code 0x{code:02x}); keeping it, sending again"
        )
        assert r.uplink.unrouted == 0
        assert r.stored_seqs() == {1}


async def test_config_renewals_and_strangers_on_the_down_topics_leave_acks_flowing(
    tmp_path: Path,
) -> None:
    """Whatever arrives on the gateway's down topics (a desired config, a renewal answer, an
    ack about another stream, garbage), the receiver hands it on or drops it and goes on
    taking acks."""
    async with rig(tmp_path, batches=2) as r:
        configs: list[bytes] = []

        async def on_config(payload: bytes) -> None:
            configs.append(payload)

        r.uplink._on_config = on_config
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[wire.RenewResponse] = loop.create_future()
        r.uplink.renewer._waiting["r-1"] = answer
        await r.until(lambda: sorted(r.client.sent) == [1, 2])

        def arrive(topic: str, payload: bytes) -> None:
            r.client._inbox.put_nowait(aiomqtt.Message(topic, payload, 1, False, 1, None))

        arrive(topics.down_config(GW), b"an envelope")
        arrive(topics.down_config(GW), b"")  # a cleared retained config: nothing to apply
        response = wire.RenewResponse(request_id="r-1", status="refused", reason="revoked")
        arrive(topics.down_renew(GW), wire.encode_message(response))
        arrive(topics.down_renew(GW), b"not json")
        r.ack(1, stream="another-stream")
        arrive(topics.down_ack(GW), b"not json")
        r.ack(2)
        await r.until(lambda: r.stored_seqs() == {1})
        assert configs == [b"an envelope"]
        assert answer.done()
        assert answer.result() == response


class Edge(random.Random):
    """Jitter at one end of its range."""

    def __init__(self, *, upper: bool) -> None:
        super().__init__(0)
        self.upper = upper

    def uniform(self, a: float, b: float) -> float:
        return b if self.upper else a


@pytest.mark.parametrize("upper", [False, True], ids=["least", "most"])
async def test_a_nack_holds_for_its_retry_after_and_at_most_a_fifth_more(
    tmp_path: Path, upper: bool
) -> None:
    """The collector's retry_after is a floor; the jitter (so that gateways told the same do
    not all come back at once) adds up to a fifth."""
    want = 3600 * (1.2 if upper else 1.0)
    async with rig(tmp_path, batches=2, max_inflight=1, rng=Edge(upper=upper)) as r:
        await r.until(lambda: r.client.sent == [2])
        r.nack(2, "rate_limited", retry_after_ms=3_600_000)
        await r.until(lambda: r.uplink.nacks == 1)
        held = r.uplink._hold_until - asyncio.get_running_loop().time()
        assert want - 1 < held <= want
        # "in_progress" holds only its batch, for as long.
        r.uplink._hold_until = 0.0
        await r.until(lambda: r.client.sent == [2, 2])  # sent again, newest first
        r.nack(2, "in_progress", retry_after_ms=3_600_000)
        await r.until(lambda: r.uplink.nacks == 2)
        due = r.uplink._tracker.next_deadline(30.0)
        assert due is not None
        assert want - 1 < due - asyncio.get_running_loop().time() <= want


async def test_each_nack_halves_the_window_down_to_one_batch(tmp_path: Path) -> None:
    async with rig(tmp_path, batches=1, max_inflight=8) as r:
        await r.until(lambda: r.client.sent == [1])
        windows = []
        for n in range(1, 5):
            r.nack(1, "rate_limited", retry_after_ms=1)
            await r.until(lambda n=n: r.uplink.nacks == n)  # type: ignore[misc]
            windows.append(r.uplink._window)
        assert windows == [4, 2, 1, 1]
        assert all(type(w) is int for w in windows)


async def test_a_nack_in_the_middle_of_a_burst_stops_it_and_sending_resumes_after(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, batches=6, max_inflight=8) as r:

        async def nack_the_first(seq: int) -> None:
            if len(r.client.sent) == 2:  # the second publish of the burst
                r.nack(r.client.sent[0], "rate_limited", retry_after_ms=200)
                await r.until(lambda: r.uplink.nacks == 1)

        r.client.meanwhile = nack_the_first
        await r.until(lambda: len(r.client.sent) == 2)
        assert len(r.client.sent) == 2  # the rest of the burst waits for the hold
        async with r.collector():
            await r.until(lambda: r.stored_seqs() == set())
        assert sorted(set(r.client.sent)) == [1, 2, 3, 4, 5, 6]


async def test_no_subscriber_is_logged_at_the_first_time_and_every_twentieth(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="outpost.agent.uplink")
    fast = {"reconnect_min": 0.0005, "reconnect_max": 0.001, "reconnect_busy_max": 0.001}
    async with rig(tmp_path, batches=1, **fast) as r:
        r.client.answer = mqtt.NO_MATCHING_SUBSCRIBERS
        await r.until(lambda: r.uplink.unrouted >= 41, within=30.0)
        r.client.answer = 0
        async with r.collector():
            await r.until(lambda: r.stored_seqs() == set())
    said = [m for m in caplog.messages if "no collector is subscribed" in m]
    assert said[0].startswith(
        "batch 1: no collector is subscribed (the broker just restarted?); keeping it,"
        " sending again in"
    )
    times = [int(re.search(r"\((\d+) time\(s\) in a row\)$", m)[1]) for m in said]  # type: ignore[index]
    n = r.uplink.unrouted
    assert times == [1, *range(20, n + 1, 20)]


async def test_a_config_report_the_broker_did_not_take_waits_for_the_next_session(
    tmp_path: Path,
) -> None:
    class Dropping(FakeClient):
        async def publish(self, *args: object, **kw: object) -> None:
            raise aiomqtt.MqttError("the connection went away")

    async with rig(tmp_path, batches=0) as r:
        report = wire.ConfigReport(version=2, status="applied", applied_version=2, ts=1)
        r.uplink.reports.put_nowait(report)
        with pytest.raises(aiomqtt.MqttError):
            await r.uplink._send_reports(Dropping())  # type: ignore[arg-type]
        assert r.uplink.reports.get_nowait() == report  # kept, for the next connection


@pytest.mark.parametrize(
    ("code", "refused"), [(0x00, False), (0x01, False), (0x02, False), (0x80, True), (0x87, True)]
)
async def test_a_subscription_the_broker_refuses_ends_the_session(code: int, refused: bool) -> None:
    """Any reason code from 0x80 up is a refusal (MQTT 5); below it, the granted QoS."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from outpost_iot.agent._uplink import _subscribe

    class Granting:
        async def subscribe(self, topic: str, qos: int) -> list[ReasonCode]:
            assert qos == 1  # acks, renewals and configs at least once
            return [ReasonCode(PacketTypes.SUBACK, identifier=code)]

    if refused:
        with pytest.raises(aiomqtt.MqttError, match="not on its roster yet"):
            await _subscribe(Granting(), "outpost/v1/gw/g/down/ack")  # type: ignore[arg-type]
    else:
        await _subscribe(Granting(), "outpost/v1/gw/g/down/ack")  # type: ignore[arg-type]
