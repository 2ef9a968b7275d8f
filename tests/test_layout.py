"""The package's layout holds: no import circle, rooms import only downwards, one home per piece.

Imports are read with ``ast`` from every module of the five packages, function-level ones too
(a circle through a lazy import is still a circle of responsibilities).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("space", "evaluators", "baselines", "reports", "search")
# room -> the rooms it may import (besides itself)
ALLOWED = {
    "space": set(),
    "evaluators": {"space"},
    "baselines": {"space"},
    "reports": {"evaluators", "space"},
    "search": {"space", "evaluators", "baselines", "reports"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (``from a.b import c`` is ``a.b.c`` where that is a
    module, else ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names
            ]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(GRAPH[n]):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(GRAPH):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_graph_sees_the_imports() -> None:
    # a sanity check that the walk finds real edges, so that "no cycle" means something
    assert "evaluators.data.covidx" in GRAPH["evaluators.training"] or any(
        m.startswith("evaluators.data") for m in GRAPH["evaluators.training"]
    )
    assert "search.export.load" in GRAPH["search.export.bundle"]


def test_no_import_cycle_anywhere() -> None:
    assert _cycle() is None, " -> ".join(_cycle() or [])


def test_the_cycle_finder_finds_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(GRAPH, "space.spec", GRAPH["space.spec"] | {"space.network"})
    monkeypatch.setitem(GRAPH, "space.network", GRAPH["space.network"] | {"space.spec"})
    assert _cycle() is not None


@pytest.mark.parametrize("room", PACKAGES)
def test_rooms_import_only_downwards(room: str) -> None:
    wrong = sorted(
        f"{name} imports {m}"
        for name, deps in GRAPH.items()
        if name.split(".")[0] == room
        for m in deps
        if m.split(".")[0] not in ALLOWED[room] | {room}
    )
    assert not wrong, wrong


def _definitions(name: str) -> list[str]:
    """Where ``name`` is defined (a function, a class, or an assignment at module level)."""
    out = []
    for mod, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            defined = (
                [node.name]
                if isinstance(node, (ast.FunctionDef, ast.ClassDef))
                else [t.id for t in node.targets if isinstance(t, ast.Name)]
                if isinstance(node, ast.Assign)
                else []
            )
            if name in defined:
                out.append(mod)
    return out


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("input_channels", "evaluators.device"),
        ("resolve_device", "evaluators.device"),
        ("CLASS_NAMES", "evaluators.data.classes"),
        ("rebuild", "search.export.load"),
        ("read_yaml", "search.driver.config"),
        ("write_folder_atomically", "evaluators.files"),
        ("pyplot", "reports.figures"),
    ],
)
def test_one_home_for_each_shared_piece(name: str, home: str) -> None:
    assert _definitions(name) == [home]


def test_no_second_rebuild_or_yaml_loader() -> None:
    for gone in ("model_from_weights", "_trial_model_description", "_pyplot", "_write_json"):
        assert _definitions(gone) == [], gone
    yaml_loads = [
        mod
        for mod, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr in ("safe_load", "load")
        and getattr(node.value, "id", "") == "yaml"
    ]
    assert yaml_loads == ["search.driver.config"]
    assert not (ROOT / "search" / "onnx_parity.py").exists()
