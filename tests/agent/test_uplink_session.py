"""The uplink's MQTT session in-process, against a real Mosquitto with mTLS and the Outpost
roster: connect, subscribe, birth and will, batches with their user properties, reconnecting
after the broker goes away, config reports, configs from the collector, certificate renewal and
what a technician reads when TLS or the roster refuses the gateway.

The agent and collector processes are tested end to end in tests/e2e; these run the uplink in
the test's own event loop, so that mutation testing (scripts/mutation) reaches its session code.
The collector is a real MQTT client with the collector's certificate that acks what it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions

from outpost_iot import wire
from outpost_iot.agent import Outbox, SystemClock
from outpost_iot.agent._config import UplinkConfig
from outpost_iot.agent._uplink import Uplink
from outpost_iot.collector import issue_gateway_identity
from outpost_iot.dev._processes import Mosquitto
from outpost_iot.provisioning import CertificateAuthority, cert_pem, load_csr
from outpost_iot.wire import Reading, topics
from tests._wait import until

pytestmark = [pytest.mark.broker]

GW = "gw-session"


def _tls(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


@dataclass
class Collector:
    """A real MQTT client with the collector's identity: records what gateways publish and
    acks every batch (but those in ``holding``)."""

    client: aiomqtt.Client
    batches: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # seq, properties
    states: list[wire.GatewayState] = field(default_factory=list)
    reports: list[wire.ConfigReport] = field(default_factory=list)
    renewals: list[wire.RenewRequest] = field(default_factory=list)
    holding: set[int] = field(default_factory=set)
    answer_renewal: Callable[[wire.RenewRequest], wire.RenewResponse] | None = None
    # (kind, QoS, retain) of every message as published: the subscription asks for QoS 2 and
    # keeps the retain flag, so both are the gateway's own.
    delivery: list[tuple[str, int, bool]] = field(default_factory=list)

    def seqs(self) -> list[int]:
        return [seq for seq, _ in self.batches]

    async def run(self) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # the broker went away: so does this
            await self._run()

    async def _run(self) -> None:
        async for message in self.client.messages:
            parsed = topics.parse_up_topic(str(message.topic))
            assert parsed is not None, message.topic
            gateway_id, kind = parsed
            payload = message.payload
            assert isinstance(payload, bytes)
            self.delivery.append((kind, message.qos, message.retain))
            if kind == "state":
                if payload:
                    self.states.append(wire.decode_state(payload))
            elif kind == "config":
                self.reports.append(wire.decode_config_report(payload))
            elif kind == "renew":
                request = wire.decode_renew_request(payload)
                self.renewals.append(request)
                if self.answer_renewal is not None:
                    await self.client.publish(
                        topics.down_renew(gateway_id),
                        wire.encode_message(self.answer_renewal(request)),
                        qos=1,
                    )
            elif kind == "batch":
                props = dict(message.properties.UserProperty)  # type: ignore[union-attr]
                batch = wire.decode_batch(payload)
                self.batches.append((batch.seq, props))
                if batch.seq not in self.holding:
                    ack = wire.Ack(stream=batch.stream_id, seq=batch.seq, status="stored")
                    await self.client.publish(
                        topics.down_ack(gateway_id), wire.encode_message(ack), qos=1
                    )


@dataclass
class Site:
    broker: Mosquitto
    outbox: Outbox
    uplink: Uplink
    collector: Collector
    cfg: UplinkConfig

    def pending(self) -> list[int]:
        return [b.seq for b in self.outbox.pick(1000)]

    def seen(self) -> str:
        return (
            f"collector got batches {self.collector.seqs()}, states"
            f" {[s.state for s in self.collector.states]}, the outbox holds {self.pending()},"
            f" uplink state {self.outbox.stats().uplink!r}"
        )

    async def until(self, predicate: Callable[[], object], what: str, within: float = 30) -> None:
        await until(predicate, within=within, what=what, seen=self.seen)

    def add(self, n: int) -> None:
        for i in range(n):
            self.outbox.append([Reading(measurement="m", tags={}, fields={"n": i}, ts=i + 1)])
            self.outbox.form_batch()
        self.uplink.notify()


def _state(outbox: Outbox, clock: SystemClock) -> Callable[[str], wire.GatewayState]:
    def state(which: str) -> wire.GatewayState:
        return wire.GatewayState(
            state="online" if which == "online" else "offline",
            ts=clock.wall_ns(),
            boot_id=clock.boot_id,
            stream=outbox.stream_id,
        )

    return state


@contextlib.asynccontextmanager
async def _collector(broker: Mosquitto) -> AsyncIterator[Collector]:
    f = broker.files
    async with aiomqtt.Client(
        "localhost",
        broker.port,
        identifier="collector-test",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=_tls(f.ca_cert, f.collector_cert, f.collector_key),
    ) as client:
        await client.subscribe(
            f"outpost/v1/gw/{GW}/up/#", options=SubscribeOptions(qos=2, retainAsPublished=True)
        )
        collector = Collector(client)
        task = asyncio.create_task(collector.run())
        try:
            yield collector
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def site(
    broker: Mosquitto,
    creds: tuple[Path, Path, Path],
    tmp_path: Path,
    *,
    on_config: Callable[[bytes], object] | None = None,
    logger: logging.Logger | None = None,
    rng: random.Random | None = None,
    **uplink: object,
) -> AsyncIterator[Site]:
    ca, cert, key = creds
    settings: dict[str, object] = {
        "reconnect_min": 0.05, "reconnect_max": 0.2, "reconnect_busy_max": 0.5,
        # (Not paho's default of 5 s: a connect timeout dropped on the way would not show.)
        "connect_timeout": 7.0, "ack_timeout": 30.0, "max_inflight": 4, **uplink,
    }  # fmt: skip
    cfg = UplinkConfig(
        host="localhost", port=broker.port, ca_file=ca, cert_file=cert, key_file=key,
        **settings,  # type: ignore[arg-type]
    )  # fmt: skip
    clock = SystemClock()
    configs: list[bytes] = []

    async def got_config(payload: bytes) -> None:
        configs.append(payload)
        if on_config is not None:
            on_config(payload)

    with Outbox(
        path=tmp_path / "buffer.db", gateway_id=GW, clock=clock, max_bytes=64 << 20
    ) as outbox:
        up = Uplink(
            gateway_id=GW,
            config=cfg,
            outbox=outbox,
            clock=clock,
            state=_state(outbox, clock),
            on_config=got_config,
            logger=logger,
            rng=rng,
        )
        async with _collector(broker) as collector:
            task = asyncio.create_task(up.run())
            try:
                yield Site(broker, outbox, up, collector, cfg)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@pytest.fixture
def creds(identity: Callable[[str], tuple[Path, Path, Path]]) -> tuple[Path, Path, Path]:
    return identity(GW)


async def test_batches_reach_the_collector_with_their_properties_and_leave_when_acked(
    broker: Mosquitto, creds: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    async with site(broker, creds, tmp_path) as s:
        s.add(6)
        await s.until(lambda: not s.pending(), "every batch acked and deleted")
        assert sorted(s.collector.seqs()) == [1, 2, 3, 4, 5, 6]
        assert s.uplink.connected.is_set()
        assert s.uplink.acked.is_set()
        assert s.uplink.acks == 6
        assert s.uplink.retransmits == 0
        assert s.outbox.stats().uplink.startswith("connected")
        clock = SystemClock()
        for seq, props in s.collector.batches:
            assert props[wire.PROP_STREAM] == s.outbox.stream_id
            assert props[wire.PROP_SEQ] == str(seq)
            assert props[wire.PROP_BOOT] == clock.boot_id
            # The send stamps are the gateway's clocks when it sent: they fix a wrong clock.
            assert abs(int(props[wire.PROP_SENT_WALL]) - clock.wall_ns()) < 60e9
            assert abs(int(props[wire.PROP_SENT_MONO]) - clock.mono_ns()) < 60e9
        # The birth message is retained and says online, with this buffer's stream.
        assert s.collector.states[0].state == "online"
        assert s.collector.states[0].stream == s.outbox.stream_id
        # QoS 1 for everything; only the state retained (docs/protocol.md).
        assert set(s.collector.delivery) == {("state", 1, True), ("batch", 1, False)}
        # The connection's settings are the config's: its client id is the gateway id, its
        # waits the configured ones.
        assert f" as {GW} " in broker.log_tail(200)
        attempt = s.uplink._attempt
        assert attempt is not None
        assert (attempt._client._keepalive, attempt._client._connect_timeout) == (
            s.cfg.keepalive,
            s.cfg.connect_timeout,
        )


async def test_the_state_is_published_again_each_interval_and_offline_on_shutdown(
    broker: Mosquitto, creds: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    async with site(broker, creds, tmp_path, state_interval=0.2) as s:
        await s.until(lambda: len(s.collector.states) >= 3, "three state messages")
        assert {m.state for m in s.collector.states} == {"online"}
        assert {d for d in s.collector.delivery if d[0] == "state"} == {("state", 1, True)}
        s.collector.states.clear()
    # Stopped (cancelled): it said offline itself, retained, rather than leaving it to the will.
    async with _collector(broker) as late:
        await until(lambda: late.states, within=10, what="the retained state")
        assert late.states[-1].state == "offline"
        assert late.delivery == [("state", 1, True)]


async def test_the_will_says_offline_and_unacked_batches_go_again_after_a_reconnect(
    broker: Mosquitto, creds: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """The connection dies without a DISCONNECT (the gateway lost its network): the broker
    publishes the will, the uplink connects again by itself, and what was in flight without an
    ack is sent again at once, not after the ack timeout (30 s here)."""
    async with site(broker, creds, tmp_path) as s:
        s.collector.holding.add(1)
        s.add(1)
        await s.until(lambda: s.collector.seqs() == [1], "batch 1 sent (its ack held)")
        s.collector.holding.clear()
        attempt = s.uplink._attempt
        assert attempt is not None
        attempt._client.socket().shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        await s.until(
            lambda: any(m.state == "offline" for m in s.collector.states), "the will (offline)"
        )
        # The will is retained with QoS 1: a collector that subscribes later learns it too.
        assert [d for d in s.collector.delivery if d[0] == "state"][:2] == [
            ("state", 1, True),
            ("state", 1, True),
        ]
        await s.until(lambda: not s.pending(), "batch 1 sent again and acked")
        assert s.collector.seqs() == [1, 1]
        assert s.uplink.retransmits == 0  # not an ack timeout: the new session sends it again
        assert s.collector.states[-1].state == "online"


async def test_while_the_broker_is_away_the_outbox_says_disconnected_and_the_backlog_waits(
    broker: Mosquitto,
    creds: tuple[Path, Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="outpost.agent.uplink")
    async with site(broker, creds, tmp_path) as s:
        await s.until(lambda: s.outbox.stats().uplink.startswith("connected"), "connected")
        broker.stop()
        await s.until(lambda: s.outbox.stats().uplink.startswith("disconnected"), "disconnected")
        assert not s.uplink.connected.is_set()
        s.add(3)  # formed while away: kept
        # What went wrong is said: the connection lost, then the broker refusing new ones.
        await s.until(
            lambda: (
                "reconnecting in" in caplog.text
                and re.search(
                    r"uplink to localhost:\d+ lost or refused: .*(refused|Errno)", caplog.text
                )
            ),
            "the reconnect logged with its reason",
        )
        assert sorted(s.pending()) == [1, 2, 3]
        broker.start()
        async with _collector(broker) as back:
            await s.until(lambda: not s.pending(), "the backlog delivered after the restart")
            assert sorted(back.seqs()) == [1, 2, 3]
        assert s.outbox.stats().uplink.startswith("connected")


async def test_config_reports_go_up_and_configs_come_down(
    broker: Mosquitto, creds: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    got: list[bytes] = []
    async with site(broker, creds, tmp_path, on_config=got.append) as s:
        await s.until(s.uplink.connected.is_set, "connected")
        report = wire.ConfigReport(
            version=7, status="rejected", applied_version=6, reason="invalid", errors=["x"], ts=1
        )
        s.uplink.reports.put_nowait(report)
        await s.until(lambda: s.collector.reports, "the config report")
        assert s.collector.reports == [report]
        assert ("config", 1, False) in s.collector.delivery
        # The desired config is retained on P/down/config: handed on as it came, and an empty
        # retained message (the config being cleared) is not.
        await s.collector.client.publish(topics.down_config(GW), b"", qos=1, retain=True)
        await s.collector.client.publish(topics.down_config(GW), b"signed", qos=1, retain=True)
        await s.until(lambda: got, "the config handed on")
        assert got == [b"signed"]
        await s.collector.client.publish(topics.down_config(GW), b"", qos=1, retain=True)


async def test_a_certificate_due_for_renewal_is_renewed_and_the_uplink_goes_on_with_it(
    broker: Mosquitto,
    creds: tuple[Path, Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="outpost.agent.uplink")
    ca = CertificateAuthority.load(broker.files.ca_cert, broker.files.ca_key)
    _, cert, key = creds
    old_cert, old_key = cert.read_bytes(), key.read_bytes()

    def issue(request: wire.RenewRequest) -> wire.RenewResponse:
        csr = load_csr(request.csr)
        new = ca.issue(GW, csr.public_key(), days=90)  # type: ignore[arg-type]
        return wire.RenewResponse(
            request_id=request.request_id, status="issued", certificate=cert_pem(new).decode()
        )

    # Due at once (a tiny fraction of its lifetime), and not again within the hour.
    async with site(broker, creds, tmp_path, renew_at=1e-9, renew_min_interval=3600) as s:
        s.collector.answer_renewal = issue
        await s.until(
            lambda: "reconnecting with the renewed certificate" in caplog.text,
            "the renewal installed and the uplink reconnecting",
        )
        assert s.uplink.renewer.renewals == 1
        # Said under the uplink's logger, where the agent's log settings for it apply.
        assert [
            r.name
            for r in caplog.records
            if r.getMessage().startswith("gateway certificate renewed")
        ] == ["outpost.agent.uplink.renewal"]
        assert ("renew", 1, False) in s.collector.delivery
        assert cert.read_bytes() != old_cert
        assert key.read_bytes() != old_key
        # Connected again with the new certificate: batches still flow.
        s.add(2)
        await s.until(lambda: not s.pending(), "batches acked after the renewal")
        assert len(s.collector.renewals) == 1


async def test_a_refused_renewal_keeps_the_certificate_and_says_why(
    broker: Mosquitto,
    creds: tuple[Path, Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, cert, _ = creds
    old = cert.read_bytes()

    def refuse(request: wire.RenewRequest) -> wire.RenewResponse:
        return wire.RenewResponse(
            request_id=request.request_id, status="refused", reason="revoked", detail="gone"
        )

    async with site(broker, creds, tmp_path, renew_at=1e-9, renew_min_interval=3600) as s:
        s.collector.answer_renewal = refuse
        await s.until(
            lambda: "certificate renewal refused (revoked): gone" in caplog.text,
            "the refusal logged",
        )
        assert cert.read_bytes() == old
        s.add(1)
        await s.until(lambda: not s.pending(), "the batch acked with the old certificate")


async def test_a_broker_certificate_from_another_ca_is_refused_and_the_message_says_so(
    broker: Mosquitto,
    creds: tuple[Path, Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="outpost.agent.uplink")
    _, cert, key = creds
    other = tmp_path / "other-ca"
    other.mkdir()
    CertificateAuthority.create().save(other / "ca.pem", other / "ca.key")
    async with site(broker, (other / "ca.pem", cert, key), tmp_path) as s:
        s.add(1)
        await s.until(
            lambda: "the broker certificate does not verify against uplink.ca_file" in caplog.text,
            "the TLS refusal logged",
        )
        assert not s.uplink.connected.is_set()
        assert s.collector.seqs() == []
        assert s.pending() == [1]


async def test_a_gateway_not_yet_on_the_roster_is_told_and_connects_once_it_is(
    broker: Mosquitto,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="outpost.agent.uplink")
    creds = issue_gateway_identity(broker.files.directory, GW, tmp_path / "id")
    async with site(broker, creds, tmp_path) as s:
        s.add(1)
        await s.until(lambda: "reconnecting in" in caplog.text, "a refused attempt")
        assert not s.uplink.connected.is_set()
        assert "this gateway is not on its roster yet" in caplog.text
        broker.register(GW)  # what the collector does on enrollment
        await s.until(lambda: not s.pending(), "the batch acked once on the roster")


async def test_a_renewal_nobody_answers_is_given_up_and_asked_again(
    broker: Mosquitto,
    creds: tuple[Path, Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from outpost_iot.agent import _uplink

    monkeypatch.setattr(_uplink, "RENEWAL_ANSWER_S", 0.3)
    monkeypatch.setattr(_uplink, "RENEWAL_CHECK_S", 0.2)
    caplog.set_level(logging.INFO, logger="outpost.agent.uplink")
    async with site(broker, creds, tmp_path, renew_at=1e-9, renew_min_interval=0) as s:
        await s.until(lambda: len(s.collector.renewals) >= 2, "a second request")
        assert "no answer to the certificate renewal; trying again later" in caplog.text
        assert s.uplink.connected.is_set()  # the session goes on meanwhile
        s.add(1)
        await s.until(lambda: not s.pending(), "a batch acked while renewals go unanswered")


class _Silent:
    """A TCP listener that takes connections and never says anything: a broker too busy to
    finish a handshake."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            self.held.append(conn)

    def close(self) -> None:
        for c in self.held:
            c.close()
        self.sock.close()


class _Most(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b  # every wait at its ceiling: what the policy allows, exactly


@pytest.mark.parametrize("busy", [True, False], ids=["busy", "refused"])
async def test_a_broker_that_takes_the_connection_and_never_answers_gets_the_busy_wait(
    creds: tuple[Path, Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    busy: bool,
) -> None:
    """A broker that took the TCP connection and did not answer in time is probably busy: the
    next attempt waits the busy ceiling (here reconnect_max × 8, within reconnect_busy_max).
    A refused connection costs the broker nothing: the ordinary ceiling."""
    caplog.set_level(logging.INFO, logger="outpost.agent.uplink")
    ca, cert, key = creds
    silent = _Silent()
    server = asyncio.create_task(silent.serve())
    if not busy:
        silent.sock.close()  # nobody listens there any more: refused
    cfg = UplinkConfig(
        host="localhost", port=silent.port, ca_file=ca, cert_file=cert, key_file=key,
        reconnect_min=0.05, reconnect_max=0.1, reconnect_busy_max=0.6, connect_timeout=0.3,
    )  # fmt: skip
    clock = SystemClock()
    try:
        with Outbox(path=tmp_path / "b.db", gateway_id=GW, clock=clock, max_bytes=1 << 24) as ob:
            up = Uplink(gateway_id=GW, config=cfg, outbox=ob, clock=clock, state=_state(ob, clock), rng=_Most())  # fmt: skip
            task = asyncio.create_task(up.run())
            try:
                await until(
                    lambda: "reconnecting in" in caplog.text,
                    within=30,
                    what="a failed attempt",
                    seen=lambda: caplog.text[-2000:],
                )
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        server.cancel()
        silent.close()
    first = next(m for m in caplog.messages if m.startswith("reconnecting in"))
    if busy:
        assert first == (
            "reconnecting in 0.6 s (the broker took the connection but did not answer in"
            " time: it may be busy)"
        )
    else:
        assert first == "reconnecting in 0.1 s"


async def test_reconnect_attempts_are_spaced_by_the_wait_they_announce(
    broker: Mosquitto,
    creds: tuple[Path, Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each "reconnecting in X s" is followed by at least X s without an attempt (a lower
    bound: a busy machine only makes the gap longer)."""
    caplog.set_level(logging.INFO, logger="outpost.agent.uplink")
    # Every wait at its ceiling, 1.2 s: exactly what is announced (the log rounds to 0.1 s).
    async with site(
        broker, creds, tmp_path, rng=_Most(),
        reconnect_min=1.2, reconnect_max=1.2, reconnect_busy_max=1.2,
    ) as s:  # fmt: skip
        await s.until(s.uplink.connected.is_set, "connected")
        broker.stop()
        await s.until(
            lambda: sum(r.getMessage().startswith("reconnecting in") for r in caplog.records) >= 3,
            "three reconnects",
            within=60,
        )
    waits = [r for r in caplog.records if r.getMessage().startswith("reconnecting in")]
    fails = [r for r in caplog.records if "lost or refused" in r.getMessage()]
    for wait in waits[:2]:
        announced = float(wait.getMessage().split()[2])
        assert announced == 1.2
        following = next(f for f in fails if f.created > wait.created)
        assert following.created - wait.created >= announced - 0.02, (
            announced,
            following.created - wait.created,
        )


async def test_a_stop_with_a_broker_that_no_longer_answers_ends_in_seconds(
    broker: Mosquitto, creds: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Stopping says offline first, but waits for the broker at most 2 s: a frozen broker must
    not hold a shutdown until systemd kills the agent."""
    async with site(broker, creds, tmp_path) as s:
        await s.until(s.uplink.connected.is_set, "connected")
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            task = asyncio.ensure_future(asyncio.sleep(0))
            run = next(t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "Uplink.run")  # type: ignore[union-attr]
            run.cancel()
            await until(run.done, within=20, what="the uplink to stop")
            await task
        finally:
            os.kill(broker.pid, signal.SIGCONT)
