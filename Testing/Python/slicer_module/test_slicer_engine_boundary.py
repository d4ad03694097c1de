"""The boundary between Slicer's process and the engine (issue 17, design card).

Slicer's process may import ``labelsharing.plan`` (numpy only: label sizes, grouping, pins,
terminology) and ``labelsharing.errors`` (the error type the plan functions raise); everything
else of the engine runs in a ``labelsharing`` subprocess, through the command line users run.
The check reads the import statements of every Slicer-side file (AST), so an import hidden in a
function body counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

MODULE_DIR = Path(__file__).resolve().parents[3] / "LabelSharingSeg"
SLICER_SIDE = sorted([MODULE_DIR / "LabelSharingSeg.py", *(MODULE_DIR / "LabelSharingSegLib").glob("*.py")])
ENGINE = "labelsharing"
ALLOWED = ("labelsharing.plan", "labelsharing.errors")


def engineImports(source: str) -> Iterator[Tuple[int, str]]:
    """(line, module) of every ``labelsharing`` module a source imports; ``from labelsharing import x``
    counts as ``labelsharing.x`` (x may be a module)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = ([f"{node.module}.{alias.name}" for alias in node.names] if node.module == ENGINE
                     else [node.module])
        else:
            continue
        yield from ((node.lineno, name) for name in names if name == ENGINE or name.startswith(ENGINE + "."))


def isAllowed(module: str) -> bool:
    return any(module == allowed or module.startswith(allowed + ".") for allowed in ALLOWED)


def forbiddenImports(path: Path) -> List[str]:
    return [f"{path.name}:{line}: {module}" for line, module in engineImports(path.read_text(encoding="utf-8"))
            if not isAllowed(module)]


@pytest.mark.parametrize("path", SLICER_SIDE, ids=lambda p: p.name)
def test_slicer_side_imports_only_the_plan_package_of_the_engine(path):
    assert forbiddenImports(path) == []


@pytest.mark.parametrize("statement, found", [
    ("from labelsharing.cli import training_defaults", ["labelsharing.cli"]),  # what EngineDefaults did
    ("def f():\n    import labelsharing.infer.predictor as p", ["labelsharing.infer.predictor"]),
    ("from labelsharing import cli, plan", ["labelsharing.cli"]),
    ("import labelsharing", ["labelsharing"]),
    ("from labelsharing.plan import SharedLabelPlan\nfrom labelsharing.plan.terminology import EXAMPLE_ENTRY\n"
     "from labelsharing.errors import LabelSharingError\nimport labelsharingextra\nfrom .labelsharing import x", []),
])
def test_the_check_finds_engine_imports_outside_the_plan_package(statement, found):
    assert [module for _, module in engineImports(statement) if not isAllowed(module)] == found


def test_every_slicer_side_file_is_checked():
    assert {p.name for p in SLICER_SIDE} >= {"LabelSharingSeg.py", "TaskDefinition.py", "EngineDefaults.py"}
