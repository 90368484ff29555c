from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from outpost_iot.dev._processes import Mosquitto
from tests.e2e._harness import Harness


@pytest.fixture
def harness(broker: Mosquitto, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(broker=broker, root=tmp_path)
    yield h
    h.close()
