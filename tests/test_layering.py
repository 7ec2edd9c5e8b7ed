"""The folders depend on each other in one direction: modeling_salad <- trainers <- eval <- hub_scripts <- benchmarks.

Every import of every module is read from its syntax tree, including imports inside functions, so a dependency
cannot hide in a function body. Two rules:
- no module imports from a folder later in the order (an upward import);
- the package folders import their own code at module level only: a function-local import of first-party code
  exists to dodge a cycle, which means a concept sits in the wrong layer. (Optional third-party dependencies may
  still be imported lazily; benchmarks import inside the child processes they spawn, so they are exempt.)
`modeling_salad` is the code uploaded to the Hub for `trust_remote_code`, so it imports none of the others.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from hub_scripts.verify import salad_packages

ROOT = Path(__file__).resolve().parent.parent
ORDER = ("modeling_salad", "trainers", "eval", "hub_scripts", "benchmarks")
PACKAGES = ORDER[:-1]


def python_files(folder: str) -> list[Path]:
    return sorted(path for path in (ROOT / folder).rglob("*.py") if "__pycache__" not in path.parts)


def first_party_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level folder imported, line, inside a function) for each first-party import of the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    local = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(function)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top in ORDER:
                found.append((top, node.lineno, id(node) in local))
    return found


def violations(folder: str) -> list[str]:
    rank = ORDER.index(folder)
    problems = []
    for path in python_files(folder):
        name = path.relative_to(ROOT)
        for top, line, inside_function in first_party_imports(path):
            if ORDER.index(top) > rank:
                problems.append(f"{name}:{line} imports {top} (later in {' <- '.join(ORDER)})")
            elif inside_function and folder in PACKAGES:
                problems.append(f"{name}:{line} imports {top} inside a function; import it at module level")
    return problems


def test_the_order_names_every_installed_package():
    assert set(PACKAGES) == set(salad_packages())


@pytest.mark.parametrize("folder", ORDER)
def test_imports_follow_the_layer_order(folder):
    assert violations(folder) == []


def uncommented_local_imports(folder: str) -> list[str]:
    """Function-local imports (of optional dependencies: first-party ones are refused above) without a comment
    on their line or the line before saying why they are lazy."""
    problems = []
    for path in python_files(folder):
        lines = path.read_text().split("\n")
        for function in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    here, before = lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""
                    if "#" not in here and not before.strip().startswith("try:  #"):
                        problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: {here.strip()}")
    return problems


@pytest.mark.parametrize("folder", PACKAGES)
def test_lazy_imports_say_why(folder):
    assert uncommented_local_imports(folder) == []


def test_the_checker_sees_local_and_upward_imports(tmp_path, monkeypatch):
    """The rules catch what they should: a function-local import, and an upward one at module level."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "trainers").mkdir()
    (tmp_path / "trainers" / "bad.py").write_text(
        "from eval.run import run\n\n\ndef f():\n    from trainers.distillation.data import x\n    import numpy\n"
    )
    found = violations("trainers")
    assert len(found) == 2
    assert "bad.py:1 imports eval" in found[0] and "bad.py:5 imports trainers inside a function" in found[1]
