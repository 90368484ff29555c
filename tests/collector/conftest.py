"""Fixtures of the collector tests."""

from tests.collector._api_fixture import api  # noqa: F401  (a fixture)
from tests.collector._fleet_fixture import fleet  # noqa: F401  (a fixture)
