"""What the SQL document store needs of a database: a cursor, and the spellings that differ."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class Cursor(Protocol):
    """What the shared SQL needs of a DB-API cursor (``sqlite3`` and ``psycopg`` alike)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, args: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, rows: Any, /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Dialect:
    """What differs between the SQL databases behind :class:`SqlDocumentStore`."""

    name: str
    json_value: Callable[[Any], Any]  # a Python value as the parameter of a JSON column
    json_loads: Callable[[Any], Any]  # a JSON column's value, as fetched, as Python
    json_text: Callable[[str, str], str]  # SQL for the text of one key of a JSON column
    greatest: str  # the larger of two values: SQLite's scalar max(), PostgreSQL's GREATEST()
    byte_length: str  # the length of a blob in bytes
    binary_order: str  # appended to a text column to order it by bytes
    lock_row: str  # appended to a SELECT that is read, then written in the same transaction
