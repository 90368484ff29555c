"""systemd integration shared by the agent and the collector: sd_notify and a watchdog that is
fed only while the pipeline makes progress.

The notify protocol is a datagram of ``KEY=VALUE`` lines to the unix socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). systemd documents it as a
stable interface meant to be reimplemented; it is a few lines, so no dependency is added.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping


class Notifier:
    """Sends notifications to systemd; does nothing when not started by systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # The watchdog is meant for us unless WATCHDOG_PID names another process.
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s: float | None = int(usec) / 1e6 if usec.isdigit() and mine else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *lines: str) -> bool:
        if not self._address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto("\n".join(lines).encode(), self._address)
            except OSError:
                return False
        return True

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> None:
        self.notify("STOPPING=1")


class ProgressMonitor:
    """Named heartbeats. The pipeline is healthy while every registered part beat recently."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._beats: dict[str, float] = {}

    def register(self, name: str) -> None:
        self._beats[name] = self._clock()

    def beat(self, name: str) -> None:
        self._beats[name] = self._clock()

    def stalled(self, max_age: float) -> list[str]:
        now = self._clock()
        return sorted(n for n, t in self._beats.items() if now - t > max_age)


async def feed_watchdog(
    notifier: Notifier,
    monitor: ProgressMonitor,
    *,
    status: Callable[[], str] = lambda: "",
    logger: logging.Logger | None = None,
) -> None:
    """Ping the watchdog at half its interval, but only while nothing is stalled.

    A part that has not beaten for a whole watchdog interval counts as stalled: the pings stop,
    and systemd restarts the service at most one interval later.
    """
    log = logger or logging.getLogger("outpost.systemd")
    if notifier.watchdog_s is None:
        return
    half = notifier.watchdog_s / 2
    while True:
        await asyncio.sleep(half)
        stalled = monitor.stalled(notifier.watchdog_s)
        if stalled:
            log.error(
                "no progress from %s for %.1f s: not feeding the watchdog",
                stalled,
                notifier.watchdog_s,
            )
            continue
        text = status()
        notifier.notify("WATCHDOG=1", *([f"STATUS={text}"] if text else []))


async def run_until_signal(run: Callable[[], Awaitable[object]], name: str) -> None:
    """Run the service ``name`` (``agent``, ``collector``) until SIGTERM, what systemd sends to
    stop it, or SIGINT: either cancels ``run()``, whose own cleanup then runs; the stop is
    logged as ``<name> stopped``."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await run()
    logging.getLogger(f"outpost.{name}").info("%s stopped", name)


__all__ = ["Notifier", "ProgressMonitor", "feed_watchdog", "run_until_signal"]
