"""The package's folders import only downwards (docs/layout.md), and no two modules import each other, even lazily."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vdistill"

#: docs/layout.md's order: a folder (or top-level module) may import only those before it or itself
LAYERS = ["errors", "files", "config", "checkpoints", "registry", "diffusion", "world", "backbones", "data",
          "sampling", "critics", "synth", "preprocess", "roles", "objectives", "training", "modules", "callbacks",
          "profile", "sweep", "commands", "cli"]
#: the bottom floor: these five import one another freely (and only each other)
BASE = set(LAYERS[:5])


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every vdistill module ``path`` imports, at any depth of the file (lazy imports count)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            if base.split(".")[0] == "vdistill":
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "vdistill")
    return found


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}
GRAPH = {m: {d for d in imports(p) if d in MODULES and d != m} for m, p in MODULES.items()}


def floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward(graph: dict[str, set[str]], module: str) -> list[str]:
    """The modules ``module`` imports from a higher floor than its own."""
    rank = LAYERS.index(floor(module))
    found = []
    for dep in graph[module]:
        if not floor(dep) or (floor(module) in BASE and floor(dep) in BASE):  # ``vdistill`` itself; the base floor
            continue
        if LAYERS.index(floor(dep)) > rank:
            found.append(dep)
    return sorted(found)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of the import graph with more than one module."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_every_folder_has_a_floor():
    assert {floor(m) for m in MODULES} - {""} <= set(LAYERS) | {"assets", "recipes"}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if floor(m)))
def test_imports_go_downwards(module):
    assert not upward(GRAPH, module), f"{module} imports from a higher floor: {upward(GRAPH, module)}"


def test_no_two_modules_import_each_other():
    assert not cycles(GRAPH), f"import cycles: {cycles(GRAPH)}"


def test_the_checks_find_a_planted_upward_import_and_cycle():
    planted = {"vdistill.backbones.io": {"vdistill.modules.distill", "vdistill.errors"},
               "vdistill.modules.distill": {"vdistill.backbones.io"}, "vdistill.errors": {"vdistill.config"},
               "vdistill.config": {"vdistill.errors"}}
    assert upward(planted, "vdistill.backbones.io") == ["vdistill.modules.distill"]
    assert upward(planted, "vdistill.errors") == []  # the base floor imports itself freely
    assert sorted(cycles(planted)) == [["vdistill.backbones.io", "vdistill.modules.distill"],
                                       ["vdistill.config", "vdistill.errors"]]
