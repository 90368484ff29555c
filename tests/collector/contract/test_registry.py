"""The registry of store backends is what the config accepts and what the contract runs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from outpost_iot.collector._config import StoresConfig
from outpost_iot.collector.stores._registry import BACKENDS, names, sections
from tests.collector.contract.conftest import NOT_IN_CONTRACT, SERVERS


def test_every_registered_backend_runs_the_contract_or_says_why_not() -> None:
    for name in BACKENDS:
        assert (name in SERVERS) != (name in NOT_IN_CONTRACT), name
    assert all(why.strip() for why in NOT_IN_CONTRACT.values())


def test_the_config_takes_the_registered_backends_and_their_sections() -> None:
    assert names("documents") == ("sqlite", "postgres")
    assert names("timeseries") == ("sqlite", "victoriametrics", "influxdb", "postgres")
    assert set(sections()) == {"postgres", "influx"}
    given = {
        "postgres": {"dsn": "postgresql://localhost/outpost"},
        "influx": {"url": "http://vm:8428", "org": "o", "token": "t"},
    }
    for role in ("documents", "timeseries"):
        for name in names(role):
            section = BACKENDS[name].section
            config = StoresConfig.model_validate(
                {role: name, **({section: given[section]} if section else {})}
            )
            assert config.settings(name) == (
                None if section is None else sections()[section].model_validate(given[section])
            )
    with pytest.raises(ValidationError, match="Input should be 'sqlite' or 'postgres'"):
        StoresConfig.model_validate({"documents": "victoriametrics"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        StoresConfig.model_validate({"mongodb": {}})
