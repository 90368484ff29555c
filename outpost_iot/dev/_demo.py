"""The local demo: Mosquitto, the collector and one agent with simulated devices."""

from __future__ import annotations

import contextlib
import getpass
import json
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx

from outpost_iot.dev._processes import Mosquitto, collector_config, free_port, spawn, stop
from outpost_iot.dev.site import SimulatedSite


class _Stop(Exception):
    """Ctrl-C, SIGTERM, or the terminal closing (SIGHUP): stop everything."""


def _say(text: str) -> None:
    """Print, unless the terminal is gone (closed: EIO) or the output is a closed pipe."""
    with contextlib.suppress(OSError):
        click.echo(text)


def run_demo(workdir: Path, *, duration: float | None = None) -> None:
    """Run the demo until Ctrl-C, SIGTERM or SIGHUP (or ``duration``), then stop every process
    it started, whichever phase it was in."""

    def _stop(_sig: int, _frame: object) -> None:
        raise _Stop

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    with contextlib.ExitStack() as started:
        try:
            _run_demo(workdir, duration, started)
        except _Stop:
            pass
        finally:
            # Stopping is not interrupted by a second signal (a second Ctrl-C, a SIGHUP after
            # a SIGTERM): every process is stopped.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            _say("stopping agent, collector and broker ...")


def _run_demo(workdir: Path, duration: float | None, started: contextlib.ExitStack) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    broker = Mosquitto(workdir / "broker")
    data = workdir / "collector-data"
    ts_db = data / "timeseries.db"
    api_port = free_port()
    started.callback(lambda: _say(f"stopped; {_summary(ts_db)}. Files stay in {workdir}"))
    started.callback(broker.stop)
    broker.start()
    ccfg = collector_config(
        workdir / "collector.toml",
        broker,
        data,
        api_port=api_port,
        crl_reload_command=f"kill -HUP {broker.pid}",
    )
    commands = {"collector": ["outpost_iot.collector.cli", "serve", "--config", str(ccfg)]}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    # Last in, first out: the agent, then the collector, the site, the broker.
    started.callback(lambda: procs.get("collector") and stop(procs["collector"]))
    procs["collector"] = spawn(commands["collector"], log=logs / "collector.log")
    api = f"https://localhost:{api_port}"
    _wait_for_api(api, broker.files.ca_cert)

    # The technician's flow: an operator makes a token, the gateway enrolls with it.
    token = _run(
        "outpost_iot.collector.cli",
        "token",
        "create",
        "--config",
        str(ccfg),
        "--tenant",
        "demo",
        "--site",
        "demo-site",
        "--expires",
        "1h",
    ).split()[0]
    gateway = workdir / "gateway"
    acfg = gateway / "agent.toml"
    enrolled_cfg = (
        gateway / "agent.enrolled.toml"
    )  # what enrollment wrote, before the demo's devices
    if not (gateway / "identity" / "gateway.pem").exists():
        enrolled = _run(
            "outpost_iot.provisioning.cli",
            "enroll",
            "--collector",
            api,
            "--token",
            token,
            "--identity-dir",
            str(gateway / "identity"),
            "--config",
            str(acfg),
            "--state-dir",
            str(gateway / "state"),
            "--ca-file",
            str(broker.files.ca_cert),
            "--owner",
            getpass.getuser(),
        )
        # enroll's last line ("Next: systemctl enable ...") is for a real gateway; the demo
        # starts the agent itself.
        _say("\n".join(line for line in enrolled.splitlines() if not line.startswith("Next:")))
        enrolled_cfg.write_text(acfg.read_text())
    # A second demo run in the same directory: the gateway is enrolled already, but the broker
    # and the simulated devices have new ports.
    if not enrolled_cfg.exists():  # a demo directory from before the simulated site
        enrolled_cfg.write_text(acfg.read_text().split("\n[[sources]]", 1)[0] + "\n")
    _point_at(enrolled_cfg, broker.port)
    site = SimulatedSite(workdir / "site", interval=5)
    started.callback(site.stop)
    site.start()
    acfg.write_text(
        enrolled_cfg.read_text()
        + '\n[[sources]]\ntype = "simulated"\ninterval = 1\ndevices = 3\nevents_every = 10\n'
        + '\n[[sources]]\ntype = "host"\ninterval = 10\n\n'
        + site.devices_toml(interval=10)
    )
    gateway_id = json.loads((gateway / "identity" / "enrollment.json").read_text())["gateway_id"]
    console_token = _run(
        "outpost_iot.collector.cli",
        "api-token",
        "create",
        "--config",
        str(ccfg),
        "--tenant",
        "demo",
        "--role",
        "operator",
        "--name",
        "demo console",
    ).split()[0]
    commands["agent"] = ["outpost_iot.agent.cli", "run", "--config", str(acfg)]
    started.callback(lambda: procs.get("agent") and stop(procs["agent"]))
    procs["agent"] = spawn(commands["agent"], log=logs / "agent.log")
    _say(
        f"""
Outpost demo is running (Ctrl-C stops it).
  broker      mosquitto, mTLS on localhost:{broker.port}   config {broker.files.config}
  collector   config {ccfg}   API {api}   log {logs / "collector.log"}
  agent       gateway {gateway_id}, config {acfg}   log {logs / "agent.log"}
  site        simulated devices: pfSense (REST{" and SNMP" if site.snmp else ""}), UniFi OS console,
              Frigate, Tasmota, Zigbee2MQTT, Shelly, ESPHome on a local broker (port {site.broker.port})

Where the data is:
  time series  {ts_db}
  documents    {data / "documents.db"}
  latest       {sys.executable} -m outpost_iot.collector.cli readings --config {ccfg} --measurement unifi_device
  agent buffer {sys.executable} -m outpost_iot.agent.cli status --config {acfg}

The console: {api}/console/  (the certificate is the demo's own CA: {broker.files.ca_cert};
  your browser will ask you to accept it). Sign in with this operator's API token:
  {console_token}

Try it: kill -9 {procs["agent"].pid} (the agent) or kill -9 {procs["collector"].pid} (the collector).
The demo starts a killed process again; the count goes on with nothing lost or doubled.
"""
    )
    begun = time.monotonic()
    while duration is None or time.monotonic() - begun <= duration:
        time.sleep(0.5)
        if int(time.monotonic() - begun) % 5 == 0:
            _say(f"  {time.strftime('%H:%M:%S')}  {_summary(ts_db)}")
            time.sleep(0.6)
        for name, proc in list(procs.items()):
            if proc.poll() is not None:
                procs[name] = spawn(commands[name], log=logs / f"{name}.log")
                _say(f"  {name} exited ({proc.returncode}); started again as pid {procs[name].pid}")


def _run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise click.ClickException(f"{args[0]} {args[1]} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _wait_for_api(url: str, ca: Path, timeout: float = 60) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", verify=ctx, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise click.ClickException(f"the collector's API did not come up at {url}; see the logs")


def _point_at(config: Path, port: int) -> None:
    """The broker of a new demo run has a new port: update the enrolled agent's config."""
    lines = config.read_text().splitlines()
    config.write_text(
        "\n".join(f"port = {port}" if line.startswith("port = ") else line for line in lines) + "\n"
    )


def _summary(ts_db: Path) -> str:
    if not ts_db.exists():
        return "no readings stored yet"
    with contextlib.closing(sqlite3.connect(f"file:{ts_db}?mode=ro", uri=True)) as conn:
        try:
            readings = conn.execute(
                "SELECT count(*) FROM (SELECT DISTINCT series_id, ts FROM points)"
            ).fetchone()[0]
            series = conn.execute("SELECT count(*) FROM series").fetchone()[0]
        except sqlite3.Error:
            return "no readings stored yet"
    return f"{readings} readings stored in {series} series"
