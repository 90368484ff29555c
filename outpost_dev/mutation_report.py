"""Per-module scores of a mutmut run (``scripts/mutation``), from ``mutmut results --all true``
on standard input and the mutated sources in ``mutants/``: a Markdown table for
docs/reliability.md, then the surviving mutants that change logic.

A mutant is *killed* when a test failed with it (a timeout counts: the tests noticed), *survived*
when every test that runs the mutated function passed, *no tests* when no selected test runs that
function at all. A survivor that changes only the text of a string (a message's wording, the case
of an SQL keyword, which SQLite does not care about) or a logging statement is counted apart as
*text only*: most are equivalent to the original, the rest are wording no test pins. The score is
killed / (killed + survivors that change logic): of the changes to behaviour the tests exercise,
how many they notice.
"""

from __future__ import annotations

import ast
import collections
import copy
import functools
import re
import sys
from pathlib import Path

_LINE = re.compile(r"^\s*(?P<name>\S+?): (?P<status>.+?)\s*$")
_NAME = re.compile(r"^(?P<module>.+?)\.(?P<func>x[_ǁ].*)__mutmut_(?P<n>\d+)$")
_KILLED = {"killed", "timeout", "caught by type check", "segfault"}


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


def classify(name: str, root: Path) -> str:
    """``text`` when the mutant differs from the original only inside string literals or
    logging statements, ``logic`` otherwise (or when its source cannot be found)."""
    m = _NAME.match(name)
    if not m:
        return "logic"
    funcs = _functions(root / (m["module"].replace(".", "/") + ".py"))
    orig, mutant = (
        funcs.get(f"{m['func']}__mutmut_orig"),
        funcs.get(f"{m['func']}__mutmut_{m['n']}"),
    )
    if orig is None or mutant is None:
        return "logic"
    if _without_strings(orig) == _without_strings(mutant):
        return "text"
    return "logic"


def report(lines: list[str], root: Path = Path("mutants")) -> str:
    by_module: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    survivors: list[str] = []
    for line in lines:
        m = _LINE.match(line)
        if not m or not (name := _NAME.match(m["name"])):
            continue
        status = m["status"]
        if status == "survived":
            status = "survived " + classify(m["name"], root)
            if status == "survived logic":
                survivors.append(m["name"])
        by_module[name["module"]][status] += 1
    out = [
        "| Module | Mutants | Killed | Survived | Survived, text or log only | No test runs it | Score |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    total: collections.Counter[str] = collections.Counter()
    for module in sorted(by_module):
        total.update(by_module[module])
        out.append(_row(f"`{module}`", by_module[module]))
    out.append(_row("**all**", total))
    out += ["", f"{len(survivors)} surviving mutants that change logic (`mutmut show NAME`):"]
    out += [f"- {name}" for name in survivors]
    return "\n".join(out)


def _row(module: str, c: collections.Counter[str]) -> str:
    killed = sum(c[s] for s in _KILLED)
    logic, text = c["survived logic"], c["survived text"]
    score = f"{100 * killed / (killed + logic):.0f} %" if killed + logic else "–"
    return (
        f"| {module} | {sum(c.values())} | {killed} | {logic} | {text} | {c['no tests']} "
        f"| {score} |"
    )


def main() -> None:
    print(report(sys.stdin.read().splitlines()))


if __name__ == "__main__":
    main()
