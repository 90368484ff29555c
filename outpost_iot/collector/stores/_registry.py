"""The store backends, by the name a collector config gives them in ``[stores]``.

Each :class:`Backend` says which roles it can take (documents, time series), the
``[stores.<section>]`` table it reads and that table's model, and how to open it. The factories
import their client libraries when called, so an embedded collector never loads psycopg or
httpx's InfluxDB client. The config (``collector._config.StoresConfig``), the wiring
(``collector._backends``) and the contract tests (``tests/collector/contract/``) all read this
table; none of them names a backend.

A new backend is its module in this package and one entry in :data:`BACKENDS` (see
``docs/contributing.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

if TYPE_CHECKING:
    from outpost_iot.collector.stores._base import DocumentStore, TimeSeriesStore

_MODEL = ConfigDict(frozen=True, extra="forbid")


class PostgresConfig(BaseModel):
    """``[stores.postgres]``: a PostgreSQL database. The DSN may carry the password; it is
    never logged (or keep it in PGPASSWORD or ~/.pgpass and leave it out of the DSN)."""

    model_config = _MODEL

    dsn: SecretStr
    pool_size: Annotated[int, Field(ge=1, le=200)] = 10
    connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0


class InfluxConfig(BaseModel):
    """``[stores.influx]``: a time-series database spoken to with the InfluxDB line protocol:
    VictoriaMetrics (``url`` is its base address, e.g. http://vm:8428) or InfluxDB 2/3 (with
    org, bucket and token)."""

    model_config = _MODEL

    url: Annotated[str, Field(pattern=r"^https?://")]
    org: str = ""
    bucket: str = "outpost"
    token: SecretStr = SecretStr("")
    batch_lines: Annotated[int, Field(ge=100, le=1_000_000)] = 10_000
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    verify_tls: bool = True
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Opening:
    """What a backend's factory is given."""

    backend: str  # its name (one client may serve several: victoriametrics, influxdb)
    settings: Any  # its [stores.<section>] table, validated by its model; None without one
    path: Path  # the embedded file for this role (documents_path or timeseries_path)
    raw_retention_s: float  # how long raw readings are kept ([retention] raw_days)


@dataclass(frozen=True, slots=True, kw_only=True)
class Backend:
    """A store backend a collector config can name."""

    name: str
    documents: Callable[[Opening], DocumentStore] | None = None
    timeseries: Callable[[Opening], TimeSeriesStore] | None = None
    section: str | None = None  # the [stores.<section>] table it reads (several may share one)
    settings: type[BaseModel] | None = None  # that table's model
    requires: str = ""  # what the table must give, for the message when it is missing
    check: Callable[[Any], str | None] | None = None  # a further problem with the settings

    def opens(self, role: str) -> Callable[[Opening], Any] | None:
        """The factory for ``documents`` or ``timeseries``, or None if this backend does not
        take that role."""
        factory: Callable[[Opening], Any] | None = getattr(self, role)
        return factory


def _sqlite_documents(o: Opening) -> DocumentStore:
    from outpost_iot.collector.stores._sqlite import SqliteDocumentStore

    return SqliteDocumentStore(o.path)


def _sqlite_timeseries(o: Opening) -> TimeSeriesStore:
    from outpost_iot.collector.stores._sqlite import SqliteTimeSeriesStore

    return SqliteTimeSeriesStore(o.path, raw_retention_s=o.raw_retention_s)


def _postgres_documents(o: Opening) -> DocumentStore:
    from outpost_iot.collector.stores._postgres import PostgresDocumentStore

    s: PostgresConfig = o.settings
    return PostgresDocumentStore(
        s.dsn.get_secret_value(), pool_size=s.pool_size, connect_timeout_s=s.connect_timeout_s
    )


def _postgres_timeseries(o: Opening) -> TimeSeriesStore:
    from outpost_iot.collector.stores._postgres import PostgresTimeSeriesStore

    s: PostgresConfig = o.settings
    return PostgresTimeSeriesStore(
        s.dsn.get_secret_value(), pool_size=s.pool_size, connect_timeout_s=s.connect_timeout_s
    )


def _line_protocol(o: Opening) -> TimeSeriesStore:
    from outpost_iot.collector.stores._influx import InfluxTimeSeriesStore

    return InfluxTimeSeriesStore.from_config(o.settings, kind=o.backend)


def _influxdb_needs_org(settings: InfluxConfig) -> str | None:
    if not settings.org:
        return 'timeseries = "influxdb" needs [stores.influx] org, bucket and token'
    return None


# In this order in messages and in the config's schema.
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(name="sqlite", documents=_sqlite_documents, timeseries=_sqlite_timeseries),
        Backend(
            name="victoriametrics",
            timeseries=_line_protocol,
            section="influx",
            settings=InfluxConfig,
            requires="url",
        ),
        Backend(
            name="influxdb",
            timeseries=_line_protocol,
            section="influx",
            settings=InfluxConfig,
            requires="url",
            check=_influxdb_needs_org,
        ),
        Backend(
            name="postgres",
            documents=_postgres_documents,
            timeseries=_postgres_timeseries,
            section="postgres",
            settings=PostgresConfig,
            requires="dsn",
        ),
    )
}


def names(role: str) -> tuple[str, ...]:
    """The backends that can take ``role`` (``documents`` or ``timeseries``)."""
    return tuple(b.name for b in BACKENDS.values() if b.opens(role) is not None)


def sections() -> dict[str, type[BaseModel]]:
    """Every ``[stores.<section>]`` table a backend reads, with its model."""
    return {b.section: b.settings for b in BACKENDS.values() if b.section and b.settings}
