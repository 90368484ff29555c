"""Dependencies point one way: read from the source, as a reviewer would.

``wire`` imports neither side; the collector and provisioning never import the agent, the agent
never imports the collector; no module of a package imports itself back through others (every
import counts, also one inside a function; ``if TYPE_CHECKING:`` ones do not).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = tuple(
    f"outpost_iot.{name}"
    for name in ("agent", "collector", "wire", "provisioning", "mqtt", "systemd")
)


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a.b import c`` names ``a.b`` and, if it is one,
    the module ``a.b.c``), leaving out ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    modules = {
        _module(p): p
        for pkg in PACKAGES
        for p in (ROOT / pkg.replace(".", "/")).rglob("*.py")
        if p.is_file()
    }
    graph = {}
    for name, path in modules.items():
        targets = _imports(path)
        # Importing a.b.c runs a/b/__init__ first: an edge to every sub-package on the way
        # (not to the top-level package, whose __init__ every module of it passes through).
        for target in list(targets):
            parts = target.split(".")
            targets.update(".".join(parts[:i]) for i in range(3, len(parts)))
        # A module's own packages are initialised before it runs: importing them adds nothing.
        graph[name] = {
            t for t in targets & modules.keys() if t != name and not name.startswith(t + ".")
        }
    return graph


GRAPH = _graph()


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("outpost_iot.wire", ("agent", "collector", "provisioning")),
        ("outpost_iot.collector", ("agent",)),
        ("outpost_iot.provisioning", ("agent", "collector")),
        ("outpost_iot.agent", ("collector",)),
    ],
)
def test_a_layer_never_imports_the_one_above_or_beside_it(
    package: str, forbidden: tuple[str, ...]
) -> None:
    bad = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module == package or module.startswith(package + ".")
        for target in targets
        if target.split(".")[:2] in [["outpost_iot", f] for f in forbidden]
    )
    assert not bad, bad


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among modules, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_inside_a_package(package: str) -> None:
    inside = {
        m: {t for t in ts if t == package or t.startswith(package + ".")}
        for m, ts in GRAPH.items()
        if m == package or m.startswith(package + ".")
    }
    assert _cycle(inside) is None, " → ".join(_cycle(inside) or [])


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}}) == [
        "a.x",
        "a.y",
        "a.z",
        "a.x",
    ]
    assert _cycle({"a.x": {"a.y"}, "a.y": set()}) is None
