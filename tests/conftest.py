"""Shared fixtures. Integration tests start their own servers on free ports.

A missing server (no ``mosquitto`` binary) skips the test locally with the reason; with
``OUTPOST_REQUIRE_SERVICES=1`` (set by CI) it fails instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from outpost_iot.collector import issue_gateway_identity
from outpost_iot.dev._processes import LocalBroker, Mosquitto, find_mosquitto
from outpost_iot.dev._servers import Postgres, Redis, find_postgres_bin, find_redis


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
def site_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A site's own Mosquitto (plain MQTT, as devices use it) on a free port."""
    require_service("mosquitto", find_mosquitto() is not None, "apt-get install mosquitto")
    b = LocalBroker(tmp_path / "site-broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def identity(broker: Mosquitto, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Issue a gateway identity and put it on the broker's roster:
    ``identity("gw-1") -> (ca, cert, key)``."""

    def issue(gateway_id: str) -> tuple[Path, Path, Path]:
        issued = issue_gateway_identity(
            broker.files.directory, gateway_id, tmp_path / gateway_id / "id"
        )
        broker.register(gateway_id)
        return issued

    return issue


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """One real PostgreSQL cluster (initdb into a temporary directory) for the whole run."""
    require_service("postgresql", find_postgres_bin() is not None, "apt-get install postgresql")
    server = Postgres()
    server.start()
    yield server
    server.close()


@pytest.fixture
def postgres_dsn(postgres_server: Postgres) -> Iterator[str]:
    """A new, empty database of that cluster for one test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = postgres_server.dsn
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    yield admin.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")  # type: ignore[arg-type]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    """A real redis-server on a free port, keeping nothing on disk."""
    require_service("redis-server", find_redis() is not None, "apt-get install redis-server")
    server = Redis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_DEBS_WANTED] = any(
        "debs" in getattr(item, "fixturenames", ()) for item in session.items
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The Debian packages (tests/test_debian.py) build in the background, at the lowest
    priority, from the first test past the agent's: the build overlaps the tests that run
    before them, but not the agent's burst and timing tests, which a busy machine makes lose
    messages at the site broker (QoS 0 beyond its queue).

    In a worker of several (pytest-xdist, as scripts/test runs the suite) they build when the
    worker that has tests/test_debian.py comes to it, while the others go on with theirs:
    every worker collects every test, so each would build them otherwise."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        return
    if item.config.stash.get(_DEBS_WANTED, False) and AGENT_TESTS not in item.path.parents:
        from tests import test_debian

        test_debian.BUILD.start()


_DEBS_WANTED = pytest.StashKey[bool]()
AGENT_TESTS = Path(__file__).parent / "agent"
