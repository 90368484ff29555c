"""Shared fixtures. Integration tests start their own servers on free ports.

A missing server (no ``mosquitto`` binary) skips the test locally with the reason; with
``OUTPOST_REQUIRE_SERVICES=1`` (set by CI) it fails instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector import issue_gateway_identity
from outpost_dev._processes import Mosquitto, find_mosquitto


def require_service(name: str, available: bool, how: str) -> None:
    if available:
        return
    message = f"{name} is not available ({how})"
    if os.environ.get("OUTPOST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message}; OUTPOST_REQUIRE_SERVICES=1 makes this a failure")
    pytest.skip(message)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto with mTLS and the Outpost ACLs, on a free port."""
    require_service("mosquitto", find_mosquitto() is not None, "apt-get install mosquitto")
    mosquitto = Mosquitto(tmp_path / "broker")
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def identity(broker: Mosquitto, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Issue a gateway identity: ``identity("gw-1") -> (ca, cert, key)``."""

    def issue(gateway_id: str) -> tuple[Path, Path, Path]:
        return issue_gateway_identity(
            broker.files.directory, gateway_id, tmp_path / gateway_id / "id"
        )

    return issue
