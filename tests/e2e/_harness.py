"""Real processes for the end-to-end tests: the collector and producer agents."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from outpost_iot.dev._processes import Mosquitto, agent_config, collector_config, spawn, stop
from tests._wait import wait_until


class AckWatcher:
    """Every ack and nack the collector sends to any gateway, seen as the collector's own
    identity sees them (a second client of the broker): which batches were acked ``stored``,
    which ``duplicate``."""

    def __init__(self, broker: Mosquitto) -> None:
        import ssl

        import paho.mqtt.client as mqtt

        from outpost_iot import wire

        self._decode = wire.decode_ack
        self.acks: list[tuple[str, str, int, str]] = []  # (gateway, stream, seq, status)
        f = broker.files
        ctx = ssl.create_default_context(cafile=str(f.ca_cert))
        ctx.load_cert_chain(str(f.collector_cert), str(f.collector_key))
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="ack-watcher", protocol=mqtt.MQTTv5
        )
        self._client.tls_set_context(ctx)
        self._client.on_message = self._on_message
        self._subscribed = False
        self._client.on_subscribe = lambda *_: setattr(self, "_subscribed", True)
        self._client.on_connect = lambda c, *_: c.subscribe("outpost/v1/gw/+/down/ack", qos=1)
        self._client.connect("localhost", broker.port)
        self._client.loop_start()
        wait_until(lambda: self._subscribed, timeout=15, what="the ack watcher to subscribe")

    def _on_message(self, client: object, userdata: object, message: object) -> None:
        msg = self._decode(bytes(message.payload))  # type: ignore[attr-defined]
        gw = str(message.topic).split("/")[3]  # type: ignore[attr-defined]
        status = msg.status if msg.kind == "ack" else f"nack:{msg.reason}"  # type: ignore[union-attr]
        self.acks.append((gw, msg.stream, msg.seq, status))

    def statuses(self, gateway_id: str) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for gw, _, _, status in self.acks:
            if gw == gateway_id:
                out[status] += 1
        return dict(out)

    def stored_twice(self, gateway_id: str) -> list[tuple[str, int]]:
        """Batches acked ``stored`` more than once: stored twice, whatever the rows say."""
        seen: dict[tuple[str, int], int] = defaultdict(int)
        for gw, stream, seq, status in self.acks:
            if gw == gateway_id and status == "stored":
                seen[(stream, seq)] += 1
        return [k for k, n in seen.items() if n > 1]

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@dataclass
class JournalEntry:
    run: str
    n: int
    ts: int
    real_ns: int


@dataclass
class Harness:
    broker: Mosquitto
    root: Path
    collector_extra: str = ""
    api_port: int | None = None  # set: the collector is also the CA with its HTTPS API
    crl_reload_command: str = ""
    collector: subprocess.Popen[bytes] | None = None
    producers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "collector-data"

    @property
    def collector_log(self) -> Path:
        return self.root / "collector.log"

    def start_collector(self) -> None:
        cfg = self.collector_config_path()
        before = self.collector_log.read_text() if self.collector_log.exists() else ""
        self.collector = spawn(
            ["outpost_iot.collector.cli", "serve", "--config", str(cfg)], log=self.collector_log
        )
        wait_until(
            lambda: (
                self.collector_log.read_text().count("collector subscribed")
                > before.count("collector subscribed")
            ),
            timeout=20,
            what="the collector to subscribe",
            seen=lambda: self.collector_log.read_text().splitlines()[-5:],
        )

    def collector_config_path(self) -> Path:
        return collector_config(
            self.root / "collector.toml",
            self.broker,
            self.data,
            extra=self.collector_extra,
            api_port=self.api_port,
            crl_reload_command=self.crl_reload_command,
        )

    def stop_collector(self) -> None:
        if self.collector is not None:
            stop(self.collector)
            self.collector = None

    def agent_config(
        self,
        gateway_id: str,
        identity: tuple[Path, Path, Path],
        *,
        buffer_extra: str = "",
        uplink_extra: str = "",
        port: int | None = None,
        fast_reconnect: bool = True,
    ) -> Path:
        return agent_config(
            self.root / f"{gateway_id}.toml",
            gateway_id=gateway_id,
            port=port or self.broker.port,
            fast_reconnect=fast_reconnect,
            identity=identity,
            state_dir=self.root / gateway_id / "state",
            buffer_extra=buffer_extra or "batch_max_delay = 0.2",
            uplink_extra=uplink_extra or "ack_timeout = 3",
        )

    def journal(self, gateway_id: str) -> Path:
        return self.root / f"{gateway_id}.journal"

    def start_producer(
        self,
        config: Path,
        gateway_id: str,
        *,
        run: str = "0",
        per_poll: int = 20,
        interval: float = 0.05,
        limit: int = 0,
        skew: float = 0.0,
        slots: bool = False,
    ) -> subprocess.Popen[bytes]:
        args = [
            "outpost_iot.dev.producer",
            "--config",
            str(config),
            "--journal",
            str(self.journal(gateway_id)),
            "--run",
            run,
            "--per-poll",
            str(per_poll),
            "--interval",
            str(interval),
            "--limit",
            str(limit),
            "--skew",
            str(skew),
            *(["--slots"] if slots else []),
        ]
        proc = spawn(args, log=self.root / f"{gateway_id}.log")
        self.producers.append(proc)
        return proc

    def read_journal(self, gateway_id: str) -> list[JournalEntry]:
        path = self.journal(gateway_id)
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4:  # a line cut by kill -9 mid-write is incomplete: not counted
                out.append(JournalEntry(parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
        return out

    def stored(self, gateway_id: str) -> dict[tuple[str, int], list[tuple[int, dict[str, object]]]]:
        """(run, n) → every stored reading with that identity: [(ts, fields)]."""
        db = self.data / "timeseries.db"
        found: dict[tuple[str, int], list[tuple[int, dict[str, object]]]] = defaultdict(list)
        if not db.exists():
            return found
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            try:
                rows = conn.execute(
                    "SELECT s.tags, p.ts, p.field, p.value FROM series s JOIN points p"
                    " ON p.series_id = s.id WHERE s.measurement = 'counter'"
                ).fetchall()
            except sqlite3.OperationalError:
                return found
        points: dict[tuple[str, int], dict[str, object]] = defaultdict(dict)
        for tags, ts, name, value in rows:
            t = json.loads(tags)
            if t.get("gateway") != gateway_id:
                continue
            points[(tags, ts)][name] = value
        for (tags, ts), fields in points.items():
            found[(json.loads(tags)["run"], int(fields["n"]))].append((ts, fields))  # type: ignore[call-overload]
        return found

    def status(self, config: Path) -> dict[str, object]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "outpost_iot.agent.cli",
                "status",
                "--config",
                str(config),
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def quarantine(self) -> list[tuple[str, str, str]]:
        with contextlib.closing(
            sqlite3.connect(f"file:{self.data / 'documents.db'}?mode=ro", uri=True)
        ) as conn:
            return conn.execute(
                "SELECT gateway_id, reason, detail FROM quarantine ORDER BY id"
            ).fetchall()

    def close(self) -> None:
        for p in self.producers:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.stop_collector()


def assert_exactly_once(
    h: Harness,
    gateway_id: str,
    journal: list[JournalEntry],
    acks: AckWatcher | None = None,
) -> None:
    """Every journaled reading stored, none twice: by its identity (run, n) in the store's rows,
    and, with ``acks``, no batch acked ``stored`` twice (a duplicate stored with the same
    timestamp overwrites its row and would not show in the rows)."""
    stored = h.stored(gateway_id)
    missing = [(e.run, e.n) for e in journal if (e.run, e.n) not in stored]
    assert not missing, (
        f"{len(missing)} readings handed to the buffer were lost, e.g. {missing[:5]}"
    )
    dup = {k: v for k, v in stored.items() if len(v) > 1}
    assert not dup, f"{len(dup)} readings stored more than once, e.g. {list(dup.items())[:3]}"
    if acks is not None:
        twice = acks.stored_twice(gateway_id)
        assert not twice, f"batches acked 'stored' twice (stored twice): {twice[:5]}"


def readings_dropped(drops: dict[str, int]) -> dict[str, int]:
    """The drops that lost something a source produced: all but ``poll_skipped``, which counts
    polls a busy machine did not make (nothing was read, so nothing was lost)."""
    return {reason: n for reason, n in drops.items() if reason != "poll_skipped"}
