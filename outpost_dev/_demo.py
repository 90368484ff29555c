"""The local demo: Mosquitto, the collector and one agent with simulated devices."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import sys
import time
from pathlib import Path

import click

from collector._broker import issue_gateway_identity
from outpost_dev._processes import Mosquitto, agent_config, collector_config, spawn, stop

GATEWAY_ID = "gw-demo"


def run_demo(workdir: Path, *, duration: float | None = None) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(workdir / "broker")
    identity = issue_gateway_identity(
        workdir / "broker", GATEWAY_ID, workdir / "gateway" / "identity"
    )
    data = workdir / "collector-data"
    ccfg = collector_config(workdir / "collector.toml", broker, data)
    acfg = agent_config(
        workdir / "agent.toml",
        gateway_id=GATEWAY_ID,
        port=broker.port,
        identity=identity,
        state_dir=workdir / "gateway" / "state",
        sources=(
            '[[sources]]\ntype = "host"\ninterval = 5\n\n'
            '[[sources]]\ntype = "simulated"\ninterval = 1\ndevices = 3\nevents_every = 10\n'
        ),
    )
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    broker.start()
    commands = {
        "collector": ["collector.cli", "serve", "--config", str(ccfg)],
        "agent": ["agent.cli", "run", "--config", str(acfg)],
    }
    procs = {name: spawn(args, log=logs / f"{name}.log") for name, args in commands.items()}
    ts_db = data / "timeseries.db"
    click.echo(
        f"""
Outpost demo is running (Ctrl-C stops it).
  broker      mosquitto, mTLS on localhost:{broker.port}   config {broker.files.config}
  collector   config {ccfg}   log {logs / "collector.log"}
  agent       gateway {GATEWAY_ID}, config {acfg}   log {logs / "agent.log"}

Where the data is:
  time series  {ts_db}
  documents    {data / "documents.db"}
  e.g.  sqlite3 {ts_db} "SELECT s.measurement, s.tags, p.field, p.value FROM points p JOIN series s ON s.id = p.series_id ORDER BY p.ts DESC LIMIT 10"
  agent buffer {sys.executable} -m agent.cli status --config {acfg}

Try it: kill -9 {procs["agent"].pid} (the agent) or kill -9 {procs["collector"].pid} (the collector).
The demo starts a killed process again; the count goes on with nothing lost or doubled.
"""
    )
    stopping = False

    def _stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    started = time.monotonic()
    try:
        while not stopping:
            time.sleep(0.5)
            if int(time.monotonic() - started) % 5 == 0:
                click.echo(f"  {time.strftime('%H:%M:%S')}  {_summary(ts_db)}")
                time.sleep(0.6)
            for name, proc in list(procs.items()):
                if proc.poll() is not None and not stopping:
                    procs[name] = spawn(commands[name], log=logs / f"{name}.log")
                    click.echo(
                        f"  {name} exited ({proc.returncode}); started again as pid "
                        f"{procs[name].pid}"
                    )
            if duration is not None and time.monotonic() - started > duration:
                stopping = True
    finally:
        click.echo("stopping agent, collector and broker ...")
        stop(procs["agent"])
        stop(procs["collector"])
        broker.stop()
        click.echo(f"stopped; {_summary(ts_db)}. Files stay in {workdir}")


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
