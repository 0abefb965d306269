"""The package's dependency rule, read from the source: layers, no import cycle, and imports at the top.

data, losses, metrics, models <- objectives <- inference <- train <- study <- experiments <- cli: nothing
under inference/, models/, losses/ or data/ imports the training code or Lightning, and no module
imports another that (directly or not) imports it back, function-level imports included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
PACKAGE = SRC / "pixcon"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, ast.stmt, bool]]:
    """(imported module, statement, at module level) of every import in ``path``; ``from a.b import c``
    names the module ``a.b.c`` when that is one of pixcon's modules."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    for stmt in tree.body:  # module-level blocks: if TYPE_CHECKING, try/except ImportError
        if isinstance(stmt, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    module = _module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                package = module.split(".")[
                    : len(module.split(".")) - node.level + (path.name == "__init__.py")
                ]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((full if full in MODULES else base, node, id(node) in top))
    return out


def _graph() -> dict[str, set[str]]:
    return {
        m: {name for name, _, _ in _imports(p) if name in MODULES and name != m} for m, p in MODULES.items()
    }


_TRAINING = ("pixcon.train", "pixcon.study", "pixcon.experiments", "pixcon.cli", "lightning")


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        *[
            (layer, _TRAINING)
            for layer in ("pixcon.inference", "pixcon.models", "pixcon.losses", "pixcon.data")
        ],
        (
            "pixcon.train",
            ("pixcon.study", "pixcon.experiments", "pixcon.cli"),
        ),  # the study sits above training
    ],
)
def test_lower_layers_import_no_upper_layer(layer: str, forbidden: tuple[str, ...]) -> None:
    bad = [
        f"{m} imports {name}"
        for m, p in MODULES.items()
        if m == layer or m.startswith(f"{layer}.")
        for name, _, _ in _imports(p)
        if name.startswith(forbidden)
    ]
    assert not bad, bad


def test_the_library_never_imports_the_experiments() -> None:
    bad = [
        f"{m} imports {name}"
        for m, p in MODULES.items()
        if not m.startswith(("pixcon.experiments", "pixcon.cli"))
        for name, _, _ in _imports(p)
        if name.startswith("pixcon.experiments")
    ]
    assert not bad, bad


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycle() -> None:
    # a package importing its own submodules (its public names) is not a cycle; a submodule
    # importing its package back would be
    graph = _graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_imports_are_at_the_top_except_in_the_cli_or_with_a_reason() -> None:
    """A function-level import hides a dependency (and the cycles the tests above look for); outside
    the command-line modules (cli.py, condense/cli.py: they import a command's modules when it runs,
    so that building the parser imports no torch) each one says why in a comment."""
    bad = []
    for m, p in MODULES.items():
        if m == "pixcon.cli" or m.endswith(".cli"):
            continue
        lines = p.read_text().splitlines()
        for name, node, at_top in _imports(p):
            if at_top:
                continue
            here, before = lines[node.lineno - 1], lines[node.lineno - 2]
            if "#" not in here and not before.strip().startswith("#"):
                bad.append(
                    f"{p.relative_to(SRC)}:{node.lineno} imports {name} in a function without a reason"
                )
    assert not bad, bad
