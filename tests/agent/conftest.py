"""Fixtures shared by the agent's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from outpost_iot.agent import Agent, Outbox, SystemClock, load_config
from outpost_iot.dev._processes import agent_config


@pytest.fixture
def agent_and_outbox(tmp_path: Path):  # type: ignore[no-untyped-def]
    """An agent with no sources and its buffer, on a config that points nowhere."""
    ca = tmp_path / "x.pem"
    ca.write_text("")
    cfg = load_config(
        agent_config(
            tmp_path / "agent.toml", gateway_id="gw-test", port=1, identity=(ca, ca, ca),
            state_dir=tmp_path / "state",
        )
    )  # fmt: skip
    with Outbox(
        path=cfg.buffer_path, gateway_id="gw-test", clock=SystemClock(), max_bytes=64 << 20
    ) as ob:
        yield Agent(config=cfg, clock=SystemClock(), outbox=ob, sources=[]), ob
