"""The dependency rule, checked statically: medbench imports none of its consumers, and has no import cycles.

``trainers/`` is ``medbench.train``, ``leaderboard/`` is ``medbench.leaderboard`` and ``tasks/`` is
``medbench.tasks``; they build on ``medbench/``, never the reverse. Every import statement of every file under
``medbench/`` counts, including the ones inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "medbench"
CONSUMERS = ("medbench.train", "medbench.leaderboard", "medbench.tasks")

# Known violations being removed by another change; each entry names its reason. Nothing else may be added.
KNOWN: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str) -> set[str]:
    """Every module ``module`` imports (absolute names; ``from a import b`` gives ``a.b`` when that is a module)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in MODULES)
    return found


def _violations(module: str) -> list[str]:
    return sorted(name for name in _imports(module) if any(name == c or name.startswith(f"{c}.") for c in CONSUMERS))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_medbench_imports_none_of_its_consumers(module):
    if module in KNOWN:
        pytest.xfail(KNOWN[module])
    assert not _violations(module), f"{MODULES[module].name}: medbench must not import {_violations(module)}"


@pytest.mark.parametrize("module", sorted(KNOWN))
def test_known_violations_are_still_violations(module):
    # When the known violation is fixed this fails: delete the entry from KNOWN so the rule covers the file again.
    if not _violations(module):
        pytest.fail(f"{module} no longer imports a consumer: remove it from KNOWN in {Path(__file__).name}")


def test_no_import_cycles_inside_medbench():
    graph = {module: sorted(name for name in _imports(module) if name in MODULES and name != module) for module in MODULES}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in graph[module]:
            # A package's __init__ runs before its submodules; an edge to a parent package is not a cycle.
            if module.startswith(f"{target}."):
                continue
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    unknown = [cycle for cycle in cycles if not KNOWN.keys() & set(cycle)]
    assert not unknown, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in unknown)
    if cycles:
        pytest.xfail("; ".join(f"{' -> '.join(cycle)}: {KNOWN[(KNOWN.keys() & set(cycle)).pop()]}" for cycle in cycles))
