"""A network path that can be cut: a TCP relay between a gateway and its broker.

``refuse`` is a path that answers with a reset (a firewall rejecting, the broker's host up but
the broker gone): open connections are reset and new ones refused. ``blackhole`` is a path that
drops everything (a cable cut, a mobile link without coverage): nothing is answered or
forwarded, connections stall, and on restore what was held flows on. The relay runs in its own
thread, so tests and benchmarks drive it from synchronous code.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import struct
import subprocess
import threading
from typing import Literal

from outpost_iot.dev._processes import free_port

Mode = Literal["refuse", "blackhole"]


class Relay:
    """Listens on ``port`` (loopback) and forwards to ``target_port``."""

    def __init__(self, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.port = free_port()
        self.accepted = 0  # connections taken while the path was up or blackholed
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="relay")
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> Relay:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def cut(self, mode: Mode = "refuse") -> None:
        self._call(self._cut(mode))

    def restore(self) -> None:
        self._call(self._restore())

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, reuse_address=True
        )

    async def _cut(self, mode: Mode) -> None:
        assert self._flowing is not None
        self._flowing.clear()
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                self._server = None
            for w in list(self._writers):
                _reset(w)
            self._writers.clear()

    async def _restore(self) -> None:
        assert self._flowing is not None
        if self._server is None:
            await self._listen()
        self._flowing.set()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            _reset(w)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self.accepted += 1
        self._writers.add(writer)
        try:
            await self._flowing.wait()  # a blackholed path: the connection waits, unanswered
            try:
                up_r, up_w = await asyncio.open_connection(self.host, self.target_port)
            except OSError:
                _reset(writer)
                return
            self._writers.add(up_w)
            await asyncio.gather(self._pump(reader, up_w), self._pump(up_r, writer))
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while data := await src.read(65536):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(dst)
            _reset(dst)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a path that rejects does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Blackhole:
    """A real blackhole on one loopback port with iptables (root): SYNs and segments to and
    from ``port`` are dropped, so connects time out and open connections stall with TCP's own
    retransmission backoff, as on a cut cable. For benchmarks; the tests use :class:`Relay`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._rules = [
            ["INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"],
            ["INPUT", "-p", "tcp", "--sport", str(port), "-j", "DROP"],
        ]
        self._on = False

    @staticmethod
    def available() -> bool:
        if shutil.which("iptables") is None:
            return False
        return subprocess.run(["iptables", "-L", "-n"], capture_output=True).returncode == 0

    def cut(self) -> None:
        for rule in self._rules:
            subprocess.run(["iptables", "-A", *rule], check=True)
        self._on = True

    def restore(self) -> None:
        if self._on:
            for rule in self._rules:
                subprocess.run(["iptables", "-D", *rule], check=False)
        self._on = False

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
