"""The systemd units, and the notify / watchdog protocol (the test plays systemd)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from outpost_iot.agent import Agent, Outbox, SystemClock, load_config
from outpost_iot.agent._uplink import Uplink
from outpost_iot.dev._processes import Mosquitto, agent_config
from outpost_iot.systemd import Notifier, ProgressMonitor
from tests.conftest import require_service

UNITS = Path(__file__).resolve().parents[1] / "systemd"
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("unit", ["outpost-agent.service", "outpost-collector.service"])
def test_units_pass_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    require_service(
        "systemd-analyze", shutil.which("systemd-analyze") is not None, "apt-get install systemd"
    )
    text = (UNITS / unit).read_text()
    # Point ExecStart at this checkout's virtualenv: verify checks that the program exists.
    copy = tmp_path / unit
    for prefix in ("/opt/outpost-agent/bin/", "/opt/outpost-collector/bin/"):
        text = text.replace(prefix, f"{BIN}/")
    copy.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr, result.stderr
    assert "Invalid" not in result.stderr, result.stderr


@pytest.mark.parametrize("unit", ["outpost-agent.service", "outpost-collector.service"])
def test_units_are_hardened(unit: str) -> None:
    lines = set((UNITS / unit).read_text().splitlines())
    for needed in (
        "Type=notify",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "NoNewPrivileges=true",
        "PrivateTmp=true",
        "CapabilityBoundingSet=",
    ):
        assert needed in lines, needed
    assert any(line.startswith("WatchdogSec=") for line in lines)
    assert any(line.startswith("StateDirectory=") for line in lines)
    assert any(line.startswith("User=") and "root" not in line for line in lines)


class FakeSystemd:
    """A NOTIFY_SOCKET that records what the service says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                data = self.sock.recv(4096)
                self.messages.append((time.monotonic(), data.decode()))

    def collect_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Collect until ``predicate()`` holds (or ``timeout``: the assertions then say why);
        a busy machine starts the service late, so no fixed window."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and not predicate():
            self.collect(0.1)

    def said(self, line: str) -> list[float]:
        return [t for t, m in self.messages if line in m.splitlines()]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    s = FakeSystemd(tmp_path / "notify.sock")
    yield s
    s.close()


def test_agent_says_ready_feeds_the_watchdog_and_says_stopping(
    broker: Mosquitto, identity, tmp_path: Path, fake_systemd: FakeSystemd
) -> None:
    cfg = agent_config(
        tmp_path / "agent.toml",
        gateway_id="gw-sd",
        port=broker.port,
        identity=identity("gw-sd"),
        state_dir=tmp_path / "state",
        sources='[[sources]]\ntype = "host"\ninterval = 1\n',
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(fake_systemd.path), "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen(
        [str(BIN / "outpost-agent"), "run", "--config", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        fake_systemd.collect_until(
            lambda: (
                len(fake_systemd.said("WATCHDOG=1")) >= 6
                and any("STATUS=connected;" in m for _, m in fake_systemd.messages)
            ),
            timeout=60,
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        fake_systemd.collect(0.3)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert fake_systemd.said("READY=1")
    pings = fake_systemd.said("WATCHDOG=1")
    assert len(pings) >= 6, fake_systemd.messages  # every 0.5 s for a 1 s watchdog
    assert any("STATUS=connected;" in m for _, m in fake_systemd.messages)
    assert fake_systemd.said("STOPPING=1")


async def test_a_stuck_sender_stops_the_watchdog(
    broker: Mosquitto,
    identity,
    tmp_path: Path,
    fake_systemd: FakeSystemd,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = load_config(
        agent_config(
            tmp_path / "agent.toml",
            gateway_id="gw-stuck",
            port=broker.port,
            identity=identity("gw-stuck"),
            state_dir=tmp_path / "state",
        )
    )
    sender_started = asyncio.Event()

    async def stuck_sender(self: Uplink, client: object) -> None:
        sender_started.set()
        await asyncio.Event().wait()  # hangs, as a sender blocked on a dead socket would

    monkeypatch.setattr(Uplink, "_send", stuck_sender)
    notifier = Notifier({"NOTIFY_SOCKET": str(fake_systemd.path), "WATCHDOG_USEC": "1000000"})
    clock = SystemClock()
    with Outbox(
        path=cfg.buffer_path, gateway_id=cfg.gateway_id, clock=clock, max_bytes=1 << 20
    ) as ob:
        agent = Agent(
            config=cfg,
            clock=clock,
            outbox=ob,
            sources=[],
            notifier=notifier,
            monitor=ProgressMonitor(),
        )
        task = asyncio.create_task(agent.run())
        with caplog.at_level(logging.ERROR):
            await asyncio.wait_for(sender_started.wait(), 10)
            await asyncio.to_thread(fake_systemd.collect, 3.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert fake_systemd.said("READY=1")
    # Stalled after one watchdog interval (1 s) without progress; allow one ping in flight.
    late = [t for t in fake_systemd.said("WATCHDOG=1") if t > fake_systemd.said("READY=1")[0] + 1.6]
    assert late == [], "no pings once the sender stopped making progress"
    assert "no progress from ['uplink']" in caplog.text


def test_progress_monitor_names_what_stalled() -> None:
    now = [0.0]
    m = ProgressMonitor(clock=lambda: now[0])
    m.register("batcher")
    m.register("uplink")
    now[0] = 5.0
    m.beat("batcher")
    assert m.stalled(3.0) == ["uplink"]
    m.beat("uplink")
    assert m.stalled(3.0) == []


def test_notifier_is_silent_without_systemd_and_speaks_to_abstract_sockets() -> None:
    assert not Notifier({}).notify("READY=1")
    assert Notifier({}).watchdog_s is None
    name = f"outpost-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        n = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "30000000"})
        assert n.watchdog_s == 30.0
        assert n.notify("READY=1", "STATUS=fine")
        assert sock.recv(100) == b"READY=1\nSTATUS=fine"
    # A watchdog meant for another process is not ours to feed.
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None
