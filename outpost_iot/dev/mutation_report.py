"""Per-module scores of a mutmut run (``scripts/mutation``), from ``mutmut results --all true``
on standard input and the mutated sources in ``mutants/``: a Markdown table for
docs/reliability.md, then the surviving mutants that change logic and nobody has explained.

A mutant is *killed* when a test failed with it (a timeout counts: the tests noticed), *survived*
when every test that runs the mutated function passed, *no tests* when no selected test runs that
function at all. A survivor that changes only the text of a string (a message's wording, the case
of an SQL keyword, which SQLite does not care about) or a logging statement is counted apart as
*text only*. A survivor listed in ``docs/mutation-equivalents.toml`` (by its function and the
change it makes, not by its number, which moves when the function is edited) is *equivalent*
(no behaviour of the product changes with it) or *accepted* (it changes behaviour the tests
leave alone on purpose, such as how long a wait under a second lasts), and the file says why.
The score is killed / (killed + survivors that change logic, accepted ones included): of the
changes to behaviour the tests exercise, how many they notice.

Entries of the equivalents file that match no surviving mutant are reported as stale (the code
changed, or a test now kills the mutant): the file is kept true, not only growing.
"""

from __future__ import annotations

import ast
import collections
import copy
import difflib
import functools
import hashlib
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"^\s*(?P<name>\S+?): (?P<status>.+?)\s*$")
_NAME = re.compile(r"^(?P<module>.+?)\.(?P<func>x[_ǁ].*)__mutmut_(?P<n>\d+)$")
_KILLED = {"killed", "timeout", "caught by type check", "segfault"}
EQUIVALENTS = Path(__file__).resolve().parents[2] / "docs" / "mutation-equivalents.toml"


@functools.cache
def _functions(path: Path) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return {}
    return {
        node.name: node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


_LOG_CALLS = {"debug", "info", "warning", "error", "exception", "critical", "log", "_log_once"}


class _BlankStrings(ast.NodeTransformer):
    """Every string made empty, every logging statement made ``pass``."""

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        return ast.Constant("") if isinstance(node.value, str) else node

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        call = node.value
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr in _LOG_CALLS
        ):
            return ast.Pass()
        return self.generic_visit(node)


def _without_strings(func: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    body = ast.Module(body=copy.deepcopy(func.body), type_ignores=[])
    return ast.dump(_BlankStrings().visit(body))


def _pair(
    name: str, root: Path
) -> tuple[ast.FunctionDef | ast.AsyncFunctionDef, ast.FunctionDef | ast.AsyncFunctionDef] | None:
    m = _NAME.match(name)
    if not m:
        return None
    funcs = _functions(root / (m["module"].replace(".", "/") + ".py"))
    orig, mutant = (
        funcs.get(f"{m['func']}__mutmut_orig"),
        funcs.get(f"{m['func']}__mutmut_{m['n']}"),
    )
    if orig is None or mutant is None:
        return None
    return orig, mutant


def classify(name: str, root: Path) -> str:
    """``text`` when the mutant differs from the original only inside string literals or
    logging statements, ``logic`` otherwise (or when its source cannot be found)."""
    pair = _pair(name, root)
    if pair is None:
        return "logic"
    if _without_strings(pair[0]) == _without_strings(pair[1]):
        return "text"
    return "logic"


def _body_lines(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    body = ast.Module(body=copy.deepcopy(func.body), type_ignores=[])
    return [line.strip() for line in ast.unparse(body).splitlines()]


def change(name: str, root: Path) -> str:
    """What the mutant changes: the lines of the function it removes (``-``) and adds (``+``),
    normalized by ``ast.unparse`` (comments and formatting do not matter). Empty when its
    source cannot be found."""
    pair = _pair(name, root)
    if pair is None:
        return ""
    before, after = (_body_lines(f) for f in pair)
    return "\n".join(
        line
        for line in difflib.ndiff(before, after)
        if line.startswith(("- ", "+ ")) and line[2:].strip()
    )


def readable(name: str) -> str:
    """``agent._buffer.Outbox._connect`` for mutmut's ``agent._buffer.xǁOutboxǁ_connect``."""
    m = re.match(r"^(?P<module>.+?)\.x(?P<sep>[_ǁ])(?P<rest>.*)$", name)
    if not m:
        return name
    rest = m["rest"]
    if m["sep"] == "ǁ":
        cls, _, method = rest.partition("ǁ")
        rest = f"{cls}.{method}"
    return f"{m['module']}.{rest}"


@dataclass(frozen=True)
class Equivalent:
    """A change that survives because no behaviour depends on it, and why."""

    function: str  # readable: module.Class.method or module.function
    change: str  # as :func:`change` prints it
    why: str
    kind: str = "equivalent"  # or "accepted": a real change the tests leave alone, and why

    def key(self) -> tuple[str, str]:
        return self.function, _normal(self.change)


def _normal(text: str) -> str:
    return "\n".join(line.strip() for line in text.strip().splitlines() if line.strip())


def load_equivalents(path: Path = EQUIVALENTS) -> list[Equivalent]:
    """The equivalents file: ``[[equivalent]]`` tables, each a ``why`` (and a ``kind``:
    ``equivalent``, or ``accepted`` for a change the tests do not pin, by choice) with the
    mutants it explains as ``[[equivalent.mutant]]`` tables of ``function`` and ``change``.
    Raises :class:`ValueError` naming an entry that lacks one of them."""
    if not path.exists():
        return []
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    out = []
    for i, group in enumerate(data.get("equivalent", []), 1):
        why, kind = str(group.get("why", "")).strip(), group.get("kind", "equivalent")
        if not why:
            raise ValueError(f"{path}: equivalent #{i} lacks why")
        if kind not in ("equivalent", "accepted"):
            raise ValueError(f"{path}: equivalent #{i}: kind is equivalent or accepted")
        mutants = group.get("mutant", [])
        if not mutants:
            raise ValueError(f"{path}: equivalent #{i} lists no mutant")
        for j, m in enumerate(mutants, 1):
            missing = [k for k in ("function", "change") if not str(m.get(k, "")).strip()]
            if missing:
                raise ValueError(f"{path}: equivalent #{i}, mutant #{j} lacks {', '.join(missing)}")
            out.append(Equivalent(m["function"], m["change"], why, kind))
    return out


@dataclass
class Report:
    table: str
    unexplained: list[str]  # surviving mutants that change logic, not listed as equivalent
    stale: list[Equivalent]  # listed, but no surviving mutant makes that change

    def __str__(self) -> str:
        out = [self.table, ""]
        out.append(f"{len(self.unexplained)} surviving mutants that change logic and are not"
                   " listed as equivalent (`mutmut show NAME`):")  # fmt: skip
        for name in self.unexplained:
            out.append(f"- {name}")
        if self.stale:
            out += ["", f"{len(self.stale)} entries of the equivalents file match no survivor"
                    " (the code changed, or a test kills them now; remove or update them):"]  # fmt: skip
            for e in self.stale:
                first = _normal(e.change).splitlines()[0] if e.change.strip() else ""
                out.append(f"- {e.function}: {first}")
        return "\n".join(out)


def analyse(
    lines: list[str], root: Path = Path("mutants"), equivalents: list[Equivalent] | None = None
) -> Report:
    listed = {e.key(): e for e in (equivalents or [])}
    used: set[tuple[str, str]] = set()
    by_module: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    unexplained: list[str] = []
    for line in lines:
        m = _LINE.match(line)
        if not m or not (name := _NAME.match(m["name"])):
            continue
        status = m["status"]
        if status == "survived":
            status = "survived " + classify(m["name"], root)
            if status == "survived logic":
                key = (
                    readable(f"{name['module']}.{name['func']}"),
                    _normal(change(m["name"], root)),
                )
                if key in listed:
                    used.add(key)
                    status = listed[key].kind
                else:
                    unexplained.append(m["name"])
        by_module[name["module"]][status] += 1
    out = [
        "| Module | Mutants | Killed | Survived | Accepted | Equivalent"
        " | Survived, text or log only | No test runs it | Score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    total: collections.Counter[str] = collections.Counter()
    for module in sorted(by_module):
        total.update(by_module[module])
        out.append(_row(f"`{module}`", by_module[module]))
    out.append(_row("**all**", total))
    stale = [e for k, e in listed.items() if k not in used]
    return Report("\n".join(out), unexplained, stale)


def report(
    lines: list[str], root: Path = Path("mutants"), equivalents: list[Equivalent] | None = None
) -> str:
    return str(analyse(lines, root, equivalents))


def _row(module: str, c: collections.Counter[str]) -> str:
    killed = sum(c[s] for s in _KILLED)
    logic, text = c["survived logic"], c["survived text"]
    accepted, equivalent = c["accepted"], c["equivalent"]
    # Accepted survivors are survivors: they count against the score. Equivalents are not
    # changes of behaviour at all, so they are left out of it.
    missed = logic + accepted
    # Rounded down: 100 % only when nothing that changes behaviour survives.
    score = f"{100 * killed // (killed + missed)} %" if killed + missed else "–"
    return (
        f"| {module} | {sum(c.values())} | {killed} | {logic} | {accepted} | {equivalent}"
        f" | {text} | {c['no tests']} | {score} |"
    )


def stamp(root: Path = EQUIVALENTS.parent.parent) -> str:
    """A digest of what a mutation run's results depend on: ``[tool.mutmut]``, the modules it
    mutates and the tests it runs (a directory: every Python file in it)."""
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutmut"]
    digest = hashlib.sha256(repr(sorted(config.items())).encode())
    for name in [*config["only_mutate"], *config["pytest_add_cli_args_test_selection"]]:
        path = root / name
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    for f in sorted((root / "tests").glob("*.py")):  # conftest and helpers every test imports
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "--stamp":
        print(stamp())
        return
    if args and args[0] == "--changes":
        # The change each named survivor makes, as the equivalents file wants it.
        for name in sys.stdin.read().split():
            m = _NAME.match(name)
            function = readable(f"{m['module']}.{m['func']}") if m else name
            print(f"## {name}  ({function})")
            print(change(name, Path("mutants")) or "(source not found)")
        return
    print(report(sys.stdin.read().splitlines(), equivalents=load_equivalents()))


if __name__ == "__main__":
    main()
