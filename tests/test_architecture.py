"""The architecture as tested claims: import-linter's contracts (pyproject.toml) hold, the package has no import
cycle counting every import (inside functions and under TYPE_CHECKING too), and the contracts do catch a break."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "domainbed_align"
BOUNDARY = f"{PACKAGE}.upstream"


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root`` (its pyproject.toml), with nothing cached."""
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy under root, not the installed package
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
                           "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=600)


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Tarjan's strongly connected components of more than one module (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(component)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_import_cycle_counting_every_import():
    graph = grimp.build_graph(PACKAGE, exclude_type_checking_imports=False)  # function-level imports included
    assert len(graph.modules) > 30
    assert strongly_connected(graph) == []


def test_only_the_boundary_may_import_domainbed_and_every_other_module_is_checked():
    forbidden = next(c for c in _contracts() if c["type"] == "forbidden")
    assert forbidden["forbidden_modules"] == ["domainbed"]
    children = {f"{PACKAGE}.{p.stem}" for p in (ROOT / PACKAGE).iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert set(forbidden["source_modules"]) == children - {BOUNDARY}  # a new module cannot slip past


def test_layers_are_exhaustive_and_ignore_nothing():
    for contract in _contracts():
        assert "ignore_imports" not in contract, contract["name"]
        if contract["type"] == "layers":
            assert contract["exhaustive"] is True, contract["name"]


@pytest.mark.parametrize("module, upward", [
    ("errors.py", "from domainbed_align.report import tables"),  # the base importing the top
    ("methods/losses.py", "from domainbed_align.methods import trainer"),  # inside a layer, downward only
    ("report/metrics.py", "import domainbed.algorithms"),  # DomainBed outside the boundary
])
def test_an_upward_import_breaks_the_contracts(tmp_path, module, upward):
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / PACKAGE, copy / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    target = copy / PACKAGE / module
    target.write_text(target.read_text() + f"\n\ndef _added_for_the_test():\n    {upward}\n")
    result = lint_imports(copy)
    assert result.returncode == 1, result.stdout[-3000:]
    assert f"{PACKAGE}.{module[:-3].replace('/', '.')} -> " in result.stdout  # named as the culprit
