"""A throwaway site for benchmarks: a real Mosquitto (mTLS), an agent and a collector config."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from outpost_iot.collector import issue_gateway_identity
from outpost_iot.dev._processes import Mosquitto, agent_config, collector_config


@dataclass(frozen=True)
class Site:
    root: Path
    broker: Mosquitto
    agent_config: Path
    collector_config: Path


@contextmanager
def site(gateway_id: str, *, collector_extra: str = "", **agent_options: str) -> Iterator[Site]:
    """Start a broker in a temporary directory; stop it and remove everything afterwards."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        broker = Mosquitto(root / "broker")
        broker.start()
        try:
            identity = issue_gateway_identity(root / "broker", gateway_id, root / "id")
            broker.register(gateway_id)
            acfg = agent_config(
                root / "agent.toml",
                gateway_id=gateway_id,
                port=broker.port,
                identity=identity,
                state_dir=root / "state",
                **agent_options,
            )
            ccfg = collector_config(
                root / "collector.toml", broker, root / "data", extra=collector_extra
            )
            yield Site(root, broker, acfg, ccfg)
        finally:
            broker.stop()
