"""An aiomqtt client for long-lived reconnect loops: stops when asked, tells what a publish and
a failed connect were answered.

Both run long-lived reconnect loops around aiomqtt. On Python 3.11 two things can turn a stop
request (cancelling the loop's task: SIGTERM, or the agent restarting into a new config) into
something a loop survives:

- ``asyncio.wait_for``, which aiomqtt uses for every publish, subscribe and connect, returns
  the result and drops the cancellation when both arrive together (fixed in 3.12). A sender
  that publishes in a loop then never stops, and its task group waits for it forever.
  :class:`Client` waits with ``asyncio.timeout`` instead, which keeps count of cancellations.
- A task group re-raises its children's errors in place of the cancellation, and the client's
  ``__aexit__`` can raise ``MqttError`` while disconnecting; a loop that catches ``MqttError``
  would reconnect. :func:`run_session` runs each session in its own task, so a stop always
  reaches the loop as ``CancelledError``.

aiomqtt drops two answers a reconnect loop needs. :meth:`Client.publish_answered` returns the
PUBACK's reason code: "no matching subscribers" (0x10) means the broker took the message and
gave it to nobody, so the sender should try again soon instead of waiting for an ack that cannot
come. After a failed connect, :attr:`Client.costly_failure` says whether the attempt cost the
broker work (it took the TCP connection and then did not answer in time, or said it is busy),
which :class:`mqtt.Backoff` answers with a longer wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import ssl
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

T = TypeVar("T")

# PUBACK: the broker accepted the message and no subscription matched it.
NO_MATCHING_SUBSCRIBERS = 0x10
# CONNACK: server unavailable, server busy, quota exceeded, connection rate exceeded.
BUSY_CONNACK_CODES = frozenset({0x88, 0x89, 0x97, 0x9F})


def session_properties(expiry_s: int) -> Properties:
    """CONNECT properties asking the broker to keep the session ``expiry_s`` seconds after the
    connection ends (with ``clean_start=False``, a reconnect picks it up again)."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = expiry_s
    return props


def _code(rc: object) -> int:
    if isinstance(rc, ReasonCode):
        return int(rc.value)
    return int(rc) if isinstance(rc, int) else -1


class Client(aiomqtt.Client):
    """``aiomqtt.Client`` whose timeouts never swallow a cancellation, and which keeps the
    broker's answers to publishes and failed connects (same arguments)."""

    def __init__(
        self,
        *args: Any,
        connect_timeout: float | None = None,
        max_buffered_messages: int | None = None,
        **kwargs: Any,
    ) -> None:
        """``connect_timeout``: for the TCP connect and the TLS handshake, each (paho's
        default is 5 s); the CONNACK is waited for up to the client's ``timeout``.

        ``max_buffered_messages``: flow control for received messages. When this many wait to
        be taken from :attr:`messages`, the client stops reading its socket until half of them
        are taken; the rest waits in the kernel's buffers and at the broker (TCP flow control).
        Nothing is dropped, unlike aiomqtt's ``max_queued_incoming_messages``.
        """
        if "max_queued_incoming_messages" in kwargs:
            raise TypeError("use max_buffered_messages: it pauses reading instead of dropping")
        super().__init__(*args, **kwargs)
        self._pause_at = max_buffered_messages
        self._reading_fd: int | None = None
        self.paused = 0  # times reading was paused (flow control engaged)
        if connect_timeout is not None:
            self._client.connect_timeout = connect_timeout
        self._answers: dict[int, int] = {}
        self._tcp_up = False
        self._timed_out = False
        self._connecting = False
        self.costly_failure = False
        # paho opens the TCP connection and then does the TLS handshake in one call. To tell a
        # broker that took the connection from one that could not be reached, and to close
        # the socket when the handshake fails (paho leaves it open), both halves are wrapped
        # here (instance attributes: only this client's paho object is affected).
        paho = self._client
        open_tcp = paho._create_socket_connection
        paho_tls = paho._ssl_wrap_socket

        def tcp_connection() -> socket.socket:
            sock = open_tcp()
            self._tcp_up = True
            return sock

        def tls_connection(tcp: socket.socket) -> ssl.SSLSocket:
            ctx = paho._ssl_context
            if ctx is None or not ctx.check_hostname:
                return paho_tls(tcp)  # paho checks the host name itself then
            tls = ctx.wrap_socket(tcp, server_hostname=paho._host, do_handshake_on_connect=False)
            tls.settimeout(paho._connect_timeout)
            try:
                tls.do_handshake()
            except BaseException:
                tls.close()
                raise
            return tls

        paho._create_socket_connection = tcp_connection  # type: ignore[method-assign]
        paho._ssl_wrap_socket = tls_connection  # type: ignore[method-assign,assignment]

    @property
    def messages(self) -> aiomqtt.client.MessagesIterator:
        return _FlowControlledMessages(self)

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        super()._on_socket_open(client, userdata, sock)
        self._reading_fd = sock.fileno()

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._reading_fd = None
        super()._on_socket_close(client, userdata, sock)

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        # aiomqtt schedules add_writer(fd) from paho's thread; when the connection closes
        # before that runs, asyncio logs an EBADF traceback (seen in bench/chaos.py). Register
        # only if the socket is still open (and still the same one).
        def write_ready() -> None:
            try:
                client.loop_write()
            except Exception as exc:  # a broken connection: as aiomqtt treats it
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        fd = sock.fileno()

        def register() -> None:
            if fd < 0 or sock.fileno() != fd:
                return
            with contextlib.suppress(OSError, ValueError):
                self._loop.add_writer(fd, write_ready)

        self._loop.call_soon_threadsafe(register)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        super()._on_message(client, userdata, message)
        if (
            self._pause_at is not None
            and self._reading_fd is not None
            and self._queue.qsize() >= self._pause_at
            and self._loop.remove_reader(self._reading_fd)
        ):
            self.paused += 1

    def _resume_reading(self) -> None:
        fd = self._reading_fd
        if fd is None or self._pause_at is None or self._queue.qsize() > self._pause_at // 2:
            return
        try:
            self._loop.add_reader(fd, self._read_ready)  # replaces aiomqtt's callback, if any
        except (ValueError, OSError):  # the socket closed meanwhile
            self._reading_fd = None

    def _read_ready(self) -> None:
        # What aiomqtt's own reader does: read, and go on while TLS has decoded bytes pending.
        paho = self._client
        try:
            while True:
                paho.loop_read()
                sock = paho._sock
                if sock is not None and hasattr(sock, "pending") and sock.pending() > 0:
                    continue
                break
        except Exception as exc:  # a broken connection: as aiomqtt treats it
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)

    async def __aenter__(self) -> Client:
        self._tcp_up = self._timed_out = self.costly_failure = False
        self._connecting = True
        try:
            await super().__aenter__()
        except aiomqtt.MqttCodeError as exc:
            self.costly_failure = _code(exc.rc) in BUSY_CONNACK_CODES or (
                self._tcp_up and self._timed_out
            )
            raise
        except aiomqtt.MqttError:
            self.costly_failure = self._tcp_up and self._timed_out
            raise
        finally:
            self._connecting = False
        return self

    def _on_disconnect(
        self,
        client: Any,
        userdata: Any,
        flags: Any,
        reason_code: Any,
        properties: Any = None,
    ) -> None:
        # Closed before the CONNACK (a broker that refuses the certificate after a TLS 1.3
        # handshake, one restarting or reloading): aiomqtt would wait out its whole timeout for
        # an answer that cannot come. The connect fails now and the reconnect policy decides.
        if self._connecting and not self._connected.done():
            why = f"the broker closed the connection before answering ({reason_code})"
            self._connected.set_exception(aiomqtt.MqttError(why))
            return
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

    def _client_connect(self) -> None:
        try:
            super()._client_connect()
        except TimeoutError:  # the TCP connect or the TLS handshake did not finish in time
            self._timed_out = True
            raise

    async def _wait_for(self, fut: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109 - overrides aiomqtt's signature
        # Same contract as aiomqtt's: None means the client's timeout, math.inf means none.
        if timeout is None:
            timeout = self.timeout
        try:
            async with asyncio.timeout(None if timeout == math.inf else timeout):
                return await fut
        except TimeoutError:
            if self._connecting:
                self._timed_out = True  # no CONNACK in time
            raise aiomqtt.MqttError("Operation timed out") from None

    def _on_publish(
        self,
        client: Any,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if mid in self._answers:
            self._answers[mid] = _code(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def end_session(self, *, timeout: float = 2.0) -> None:  # noqa: ASYNC109
        """Disconnect and tell the broker to drop this client's session now (a stopping
        collector replica: the others take its share of the shared subscription at once)."""
        props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        if self._client.disconnect(properties=props) == 0:
            await self._wait_for(asyncio.shield(self._disconnected), timeout=timeout)

    async def publish_answered(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - aiomqtt's publish has it too
    ) -> int:
        """Publish at QoS 1 or 2 and return the broker's reason code (0: delivered to a
        subscriber or queued; :data:`NO_MATCHING_SUBSCRIBERS`; 0x80 and up: refused)."""
        if qos < 1:
            raise ValueError("only QoS 1 and 2 publishes are answered")
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != 0:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        self._answers[info.mid] = 0
        try:
            if not info.is_published():
                confirmation = asyncio.Event()
                with self._pending_call(info.mid, confirmation, self._pending_publishes):
                    await self._wait_for(confirmation.wait(), timeout=timeout)
            return self._answers.get(info.mid, 0)
        finally:
            self._answers.pop(info.mid, None)


class _FlowControlledMessages(aiomqtt.client.MessagesIterator):
    """aiomqtt's iterator, which starts reading the socket again once enough was taken."""

    _client: Client

    async def __anext__(self) -> aiomqtt.Message:
        message = await super().__anext__()
        self._client._resume_reading()
        return message


async def run_session(session: Coroutine[Any, Any, None], *, name: str | None = None) -> None:
    """Await one connection session so that a stop request always stops the caller.

    The session runs in its own task behind a shield. A stop request cancels the session,
    waits for it to end whatever it raises, and goes on as ``CancelledError``. Errors of a
    session that ends on its own propagate unchanged. (``Task.cancelling()`` cannot tell the
    two apart: on 3.11 a task group can leave it raised after a child's error.)
    """
    task = asyncio.ensure_future(session)
    if name is not None:
        task.set_name(name)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: what it raised while stopping is not news
        raise
