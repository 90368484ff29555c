"""Real production backends for the tests and benchmarks, each on a free loopback port.

- :class:`Postgres`: ``initdb`` into a directory of its own, then ``pg_ctl`` (as the
  ``postgres`` user when run as root: PostgreSQL refuses to run as root);
- :class:`Redis`: ``redis-server`` with nothing kept on disk;
- :class:`VictoriaMetrics`: the single-node ``victoria-metrics`` binary with deduplication on,
  so a sample written twice (same series and millisecond) is kept once.

Each can be stopped and started again on the same port and data, to play an outage.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from outpost_iot.dev._processes import free_port, wait_for_port


def _find(name: str, *patterns: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for pattern in patterns:
        matches = sorted(Path("/").glob(pattern.lstrip("/")))
        if matches:
            return str(matches[-1])
    return None


def find_postgres_bin() -> Path | None:
    """The directory with ``initdb`` and ``pg_ctl`` (Debian keeps them off the PATH)."""
    initdb = _find("initdb", "/usr/lib/postgresql/*/bin/initdb")
    return Path(initdb).resolve().parent if initdb else None


def find_redis() -> str | None:
    return _find("redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server")


def find_victoria_metrics() -> str | None:
    return _find("victoria-metrics", "/usr/bin/victoria-metrics", "/usr/local/bin/victoria-metrics")


class Postgres:
    """A PostgreSQL cluster of its own; :attr:`dsn` reaches the database ``outpost``."""

    def __init__(self, *, port: int | None = None) -> None:
        bindir = find_postgres_bin()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = bindir
        self.port = port or free_port()
        # Not under pytest's tmp_path: the postgres user must be able to reach it.
        self.directory = Path(tempfile.mkdtemp(prefix="outpost-pg-"))
        self.data = self.directory / "data"
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "outpost",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.dsn = f"postgresql://outpost@127.0.0.1:{self.port}/outpost"
        self._started = False
        self._created = False

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self._user is not None:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stderr.strip() or result.stdout.strip()}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory}"
            " -c max_connections=200 -c shared_buffers=64MB"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.directory / "log"), "-o", options,
            "-w", "start",
        )  # fmt: skip
        self._started = True
        if not self._created:
            self._psql("postgres", "CREATE DATABASE outpost")
            self._created = True

    def _psql(self, database: str, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            f"postgresql://outpost@127.0.0.1:{self.port}/{database}", autocommit=True
        ) as conn:
            conn.execute(sql)

    def stop(self, *, mode: str = "fast") -> None:
        if self._started:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
            self._started = False

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop(mode="immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


class Redis:
    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        binary = find_redis()
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.port = port or free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None


class VictoriaMetrics:
    """Single-node VictoriaMetrics: InfluxDB line protocol at ``/api/v2/write``, Prometheus
    queries at ``/api/v1/query_range``. :attr:`url` is its base address."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        binary = find_victoria_metrics()
        if binary is None:
            raise FileNotFoundError(
                "victoria-metrics is not installed (apt-get install victoria-metrics)"
            )
        self.binary = binary
        self.port = port or free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.directory / "vm.log").open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    f"-storageDataPath={self.directory / 'data'}",
                    f"-httpListenAddr=127.0.0.1:{self.port}",
                    "-retentionPeriod=100y",
                    "-dedup.minScrapeInterval=1ms",  # the same sample twice is kept once
                    "-search.latencyOffset=0s",  # answer with what was just written
                    "-search.disableCache",
                    "-loggerLevel=WARN",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(
            f"victoria-metrics did not start: {(self.directory / 'vm.log').read_text()}"
        )

    def flush(self) -> None:
        """Make everything written so far visible to queries (tests only)."""
        httpx.get(f"{self.url}/internal/force_flush", timeout=10)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
