"""The docs describe the commands that exist."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from outpost_iot.agent.cli import main as agent_cli
from outpost_iot.collector.cli import main as collector_cli
from outpost_iot.provisioning.cli import main as provision_cli

DOCS = Path(__file__).resolve().parents[1] / "docs"


def commands(group: click.Group, prefix: str) -> list[str]:
    out = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += commands(cmd, f"{prefix} {name}")
        else:
            out.append(f"{prefix} {name}")
    return out


@pytest.mark.parametrize(
    ("group", "prefix", "doc"),
    [
        (agent_cli, "outpost-agent", "agent.md"),
        (collector_cli, "outpost-collector", "collector.md"),
    ],
)
def test_every_command_is_documented(group: click.Group, prefix: str, doc: str) -> None:
    text = (DOCS / doc).read_text()
    missing = [c for c in commands(group, prefix) if c not in text]
    assert not missing, f"docs/{doc} does not mention {missing}"


def test_every_agent_config_key_is_documented() -> None:
    from outpost_iot.agent._config import (
        AgentConfig,
        BufferConfig,
        DeviceConfig,
        HostSourceConfig,
        SimulatedSourceConfig,
        UplinkConfig,
    )

    text = (DOCS / "agent.md").read_text()
    models = (
        AgentConfig,
        UplinkConfig,
        BufferConfig,
        DeviceConfig,
        HostSourceConfig,
        SimulatedSourceConfig,
    )
    for model in models:
        for key in model.model_fields:
            assert f"{key} =" in text or f"[{key}]" in text or f"[[{key}]]" in text, key


def test_every_enroll_option_is_documented() -> None:
    text = (DOCS / "technician.md").read_text()
    enroll = provision_cli.commands["enroll"]
    for param in enroll.params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("--") and opt != "--help":
                assert opt in text, opt


def test_every_probe_option_is_documented() -> None:
    text = (DOCS / "agent.md").read_text()
    probe = agent_cli.commands["probe"]
    for param in probe.params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("--") and opt != "--help":
                assert f"`{opt}" in text, opt
        envvar = getattr(param, "envvar", None)
        if envvar:
            assert envvar in text, envvar


def test_the_operators_examples_validate() -> None:
    """operator.md's whole config validates, and each patch laid over it still does."""
    import json
    import re

    from outpost_iot.collector._configs import apply_patch, validate_managed

    blocks = re.findall(r"```json\n(.*?)```", (DOCS / "operator.md").read_text(), re.S)
    assert len(blocks) == 3, "a whole config and two patches"
    whole, *patches = (json.loads(b) for b in blocks)
    validate_managed(whole)
    for patch in patches:
        validate_managed(apply_patch(whole, patch))
    changed = apply_patch(whole, patches[0])
    assert [d["name"] for d in changed["devices"]] == ["fw-1", "ctl", "nvr"]
    assert changed["devices"][0]["community"] == "site-ro-community"
