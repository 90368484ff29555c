"""Config files: one way to read a TOML file and one way to say what is wrong with it.

The agent's ``agent.toml``, the collector's ``collector.toml`` and every firmware profile are
read with :func:`read_toml`, and a validation error of any of them, or of a desired config sent
over the air, is put into words by :func:`problems`: ``key.path: what is wrong`` per problem, an
unknown key and a missing one said as such, pydantic's ``Value error,`` left out.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

_F = TypeVar("_F", bound=Callable[..., Any])


def config_option(default: Path, what: str) -> Callable[[_F], _F]:
    """The ``--config`` option of a command that reads a config file (passed as
    ``config_path``); ``what`` names the file in the help, e.g. "The agent's TOML config file"."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=default,
        show_default=True,
        help=f"{what}.",
    )


def read_toml(path: Path, *, missing: str, error: type[Exception]) -> dict[str, Any]:
    """The TOML document at ``path``; ``error(message)`` naming the file if it cannot be read,
    with ``missing`` (what to do) when it does not exist."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not valid TOML: not UTF-8 ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None


def problems(
    exc: ValidationError, *, unknown: str = "unknown key; check the spelling"
) -> list[tuple[str, str]]:
    """``(key path, problem)`` for each error of ``exc``."""
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            message = unknown
        elif err["type"] == "missing":
            message = "required key is missing"
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
        out.append((where, message))
    return out


def describe(source: str, found: list[tuple[str, str]]) -> str:
    """``source: N problem(s):`` and one indented ``key: problem`` line each."""
    lines = [f"{source}: {len(found)} problem(s):"]
    lines += [f"  {where}: {message}" for where, message in found]
    return "\n".join(lines)
