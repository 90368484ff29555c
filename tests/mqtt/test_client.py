"""mqtt.Client against a real Mosquitto: the answers aiomqtt drops, and sessions."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import aiomqtt
import pytest

from outpost_iot import mqtt
from outpost_iot.dev._processes import LocalBroker, Mosquitto

pytestmark = [pytest.mark.broker]
V5 = aiomqtt.ProtocolVersion.V5


def client(port: int, name: str, **kwargs: object) -> mqtt.Client:
    return mqtt.Client("127.0.0.1", port, identifier=name, protocol=V5, **kwargs)  # type: ignore[arg-type]


async def test_publish_answered_tells_no_matching_subscribers(site_broker: LocalBroker) -> None:
    async with client(site_broker.port, "pub") as pub, client(site_broker.port, "sub") as sub:
        assert await pub.publish_answered("t/a", b"1") == mqtt.NO_MATCHING_SUBSCRIBERS
        await sub.subscribe("t/#", qos=1)
        assert await pub.publish_answered("t/a", b"2") == 0
        with pytest.raises(ValueError, match="QoS 1"):
            await pub.publish_answered("t/a", b"3", qos=0)


async def test_a_persistent_session_keeps_what_arrives_while_away(site_broker: LocalBroker) -> None:
    """A collector replica that reconnects gets what was published meanwhile; one that ends its
    session (stopping) leaves nothing behind for the broker to hold."""
    props = mqtt.session_properties(60)

    def replica() -> mqtt.Client:
        return client(site_broker.port, "replica-1", clean_start=False, properties=props)

    async with client(site_broker.port, "pub") as pub:
        async with replica() as sub:
            await sub.subscribe("$share/g/t/#", qos=1)
        # Away (the connection ended without ending the session): the broker keeps it.
        assert await pub.publish_answered("t/a", b"while-away") == 0
        async with replica() as sub:
            async with asyncio.timeout(10):
                message = await anext(aiter(sub.messages))
            assert message.payload == b"while-away"
            await sub.end_session()
        # The session is gone: nobody holds the next one (once the broker has taken the
        # DISCONNECT, which a busy machine may delay; before that the session still answers).
        answers = []
        async with asyncio.timeout(30):
            while mqtt.NO_MATCHING_SUBSCRIBERS not in answers:
                answers.append(await pub.publish_answered("t/a", b"after"))
                await asyncio.sleep(0.05)
        assert set(answers) <= {0, mqtt.NO_MATCHING_SUBSCRIBERS}


@contextlib.contextmanager
def tcp_server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server on a free port that gives each connection it takes to ``handle``."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                handle(srv.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        srv.close()


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """Takes TCP connections and never answers (an overloaded broker, as the client sees it)."""
    held: list[socket.socket] = []
    try:
        with tcp_server(held.append) as port:
            yield port
    finally:
        for s in held:
            s.close()


def _read_and_close(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(5)
        conn.recv(1024)


def closing_server() -> contextlib.AbstractContextManager[int]:
    """Takes each TCP connection, reads the CONNECT and closes it without a CONNACK (a broker
    refusing a revoked certificate after a TLS 1.3 handshake looks like this to the client)."""
    return tcp_server(_read_and_close)


async def test_a_connect_the_broker_took_but_did_not_answer_is_costly(broker: Mosquitto) -> None:
    import ssl

    ctx = ssl.create_default_context(cafile=str(broker.files.ca_cert))
    ctx.load_cert_chain(str(broker.files.collector_cert), str(broker.files.collector_key))
    with silent_server() as port:
        c = mqtt.Client(
            "localhost", port, protocol=V5, tls_context=ctx, connect_timeout=0.5, timeout=1
        )
        with pytest.raises(aiomqtt.MqttError):
            await c.__aenter__()
        assert c.costly_failure
    # Nothing listening: refused at once, no cost to any broker.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    c = mqtt.Client("localhost", closed, protocol=V5, tls_context=ctx, connect_timeout=0.5)
    with pytest.raises(aiomqtt.MqttError):
        await c.__aenter__()
    assert not c.costly_failure
    # A real broker answering: connected, and a later failure is not a busy signal.
    c = mqtt.Client("localhost", broker.port, protocol=V5, tls_context=ctx)
    async with c:
        pass
    assert not c.costly_failure


async def test_a_connection_closed_before_the_connack_fails_the_connect_at_once() -> None:
    """Not after the client's whole timeout (an hour here): the error says what happened and
    costs the broker nothing, so the reconnect policy tries again soon."""
    with closing_server() as port:
        c = client(port, "gw-1", timeout=3600)
        with pytest.raises(aiomqtt.MqttError, match="closed the connection before answering"):
            async with asyncio.timeout(600):  # a guard for a broken client, far past the answer
                await c.__aenter__()
        assert not c.costly_failure


async def test_flow_control_stops_reading_instead_of_queueing_or_dropping(
    site_broker: LocalBroker,
) -> None:
    """A consumer that does not keep up: the client stops reading at 20 waiting messages; the
    rest waits at the broker; every message still arrives, in order."""
    sub = client(site_broker.port, "slow", max_buffered_messages=20)
    async with sub, client(site_broker.port, "fast") as pub:
        await sub.subscribe("burst/#", qos=1)
        for i in range(500):
            await pub.publish("burst/x", str(i).encode(), qos=1)
        await asyncio.sleep(0.5)  # nobody takes anything meanwhile: the client would fill up
        assert len(sub.messages) <= 20 + 5  # a read may bring a few with the one past the mark
        assert sub.paused >= 1
        got = []
        async with asyncio.timeout(30):
            async for message in sub.messages:
                got.append(int(bytes(message.payload)))  # type: ignore[arg-type]
                if len(got) == 500:
                    break
        assert got == list(range(500))


async def test_aiomqtts_dropping_queue_limit_is_refused() -> None:
    with pytest.raises(TypeError, match="max_buffered_messages"):
        mqtt.Client("127.0.0.1", 1, max_queued_incoming_messages=10)
