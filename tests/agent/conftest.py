"""Fixtures of the agent's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from outpost_dev._processes import LocalBroker, find_mosquitto
from tests.conftest import require_service


@pytest.fixture
def site_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A site's own Mosquitto (plain MQTT, as devices use it) on a free port."""
    require_service("mosquitto", find_mosquitto() is not None, "apt-get install mosquitto")
    b = LocalBroker(tmp_path / "site-broker")
    b.start()
    yield b
    b.stop()
