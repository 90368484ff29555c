"""Processes for the demo and the tests: a real Mosquitto, the collector, agents."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from outpost_iot.collector._broker import BrokerFiles, init_broker, register_gateways


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, *, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


class Mosquitto:
    """A Mosquitto with its own config, CA and certificates, on a free loopback port."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        self.files: BrokerFiles = init_broker(
            directory, port=self.port, persistence=False, user=getpass.getuser()
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Mosquitto logs to its file once configured; startup errors come before that.
        with (self.files.directory / "mosquitto.stderr").open("ab") as err:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.files.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log_tail()}") from None

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def kill(self) -> None:
        """kill -9: no clean shutdown, no persistence written."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("mosquitto is not running")
        return self._proc.pid

    def restart(self) -> None:
        self.stop()
        self.start()

    def register(self, *gateway_ids: str) -> None:
        """Put gateways on the broker's roster (as the collector does for enrolled ones)."""
        register_gateways(self.files.directory, list(gateway_ids), port=self.port)

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        for f in (self.files.directory / "mosquitto.stderr", self.files.log):
            if f.exists():
                text += f.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "(no log)"


class LocalBroker:
    """A site's own Mosquitto, as devices use it: plain MQTT, optionally with passwords."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        users: dict[str, str] | None = None,
        max_queued_messages: int | None = None,
    ) -> None:
        """``max_queued_messages``: what the broker holds for a subscriber that reads slowly
        (Mosquitto's default is 1,000; a busy site raises it, docs/agent.md "Bursts")."""
        binary = find_mosquitto()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            f"user {getpass.getuser()}",
        ]
        if max_queued_messages is not None:
            lines.append(f"max_queued_messages {max_queued_messages}")
        if users:
            pwfile = directory / "passwords"
            pwfile.write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
            subprocess.run(["mosquitto_passwd", "-U", str(pwfile)], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(5)
            self._proc = None


def collector_config(
    path: Path,
    broker: Mosquitto,
    data_dir: Path,
    *,
    extra: str = "",
    client_id: str = "outpost-collector-1",
    api_port: int | None = None,
    crl_reload_command: str = "",
    stores: str = "",
    top: str = "",
) -> Path:
    """A collector config for ``broker``; with ``api_port``, also the CA and the HTTPS API.
    ``stores`` goes into ``[stores]`` (e.g. ``documents = "postgres"``), ``top`` before any
    table."""
    f = broker.files
    if api_port is not None:
        extra += f"""
[pki]
ca_cert = "{f.ca_cert}"
ca_key = "{f.ca_key}"
signing_key = "{f.signing_key}"
crl_file = "{f.crl}"
crl_reload_command = "{crl_reload_command}"

[api]
listen = "127.0.0.1"
port = {api_port}
tls_cert = "{f.api_cert}"
tls_key = "{f.api_key}"

[enrollment]
broker_host = "localhost"
broker_port = {broker.port}
"""
    path.write_text(
        f"""\
log_level = "info"
{top}

[broker]
host = "localhost"
port = {broker.port}
ca_file = "{f.ca_cert}"
cert_file = "{f.collector_cert}"
key_file = "{f.collector_key}"
client_id = "{client_id}"

[stores]
timeseries_path = "{data_dir / "timeseries.db"}"
documents_path = "{data_dir / "documents.db"}"
{stores}
{extra}
"""
    )
    return path


def agent_config(
    path: Path,
    *,
    gateway_id: str,
    port: int,
    identity: tuple[Path, Path, Path],
    state_dir: Path,
    sources: str = "",
    uplink_extra: str = "",
    buffer_extra: str = "",
    fast_reconnect: bool = True,
) -> Path:
    """An agent config for tests and the demo; ``fast_reconnect`` shortens the reconnect
    policy (a test's broker restarts should not wait), ``False`` keeps the product's."""
    ca, cert, key = identity
    reconnect = "reconnect_min = 0.2\nreconnect_max = 2.0" if fast_reconnect else ""
    path.write_text(
        f"""\
gateway_id = "{gateway_id}"
state_dir = "{state_dir}"

[uplink]
host = "localhost"
port = {port}
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
{reconnect}
{uplink_extra}

[buffer]
{buffer_extra}

{sources}
"""
    )
    return path


def spawn(
    args: list[str], *, log: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m ARGS`` with the current interpreter, output appended to ``log``."""
    out = log.open("ab") if log else None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            stdin=subprocess.DEVNULL,
            stdout=out or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if out else subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    finally:
        if out:
            out.close()  # the child has its own copy


def stop(proc: subprocess.Popen[bytes], *, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
