"""The engine's house rules: stage packages that talk through their public APIs.

The engine is grouped by stage (data, plan, model, train, infer, serve, demo, and utils); each
package's ``__init__`` names its public API. Code outside a package, the benchmarks included,
imports only that API, so a package's modules can be split or renamed without touching the
others; the Slicer process may import the plan package, which needs numpy alone.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "LabelSharingSeg" / "labelsharing"
STAGES = ("utils", "data", "plan", "model", "train", "federated", "infer", "serve", "demo")
#: packages of the optional extras (serve, federated); names built on them need them only when used
OPTIONAL = {"fastapi", "starlette", "uvicorn", "flwr"}
#: modules of the top level that every stage may import
SHARED = {"labelsharing", "labelsharing.errors"}


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every ``from labelsharing... import`` and ``import labelsharing...``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "labelsharing":
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "labelsharing"]
    return found


def _reaches_into(path: Path, own: str | None) -> list[str]:
    """Imports in ``path`` of another package's module, or of a name that package does not export."""
    problems = []
    for line, module, names in _imports(path):
        parts = module.split(".")
        if module in SHARED or len(parts) < 2 or parts[1] not in STAGES or parts[1] == own:
            continue
        if len(parts) > 2:
            problems.append(f"{path.relative_to(ROOT)}:{line} imports {module} (use labelsharing.{parts[1]})")
            continue
        exported = set(importlib.import_module(module).__all__)
        problems += [f"{path.relative_to(ROOT)}:{line} imports {module}.{n}, not in its __all__"
                     for n in names if n not in exported]
    return problems


def test_stage_packages_import_each_other_only_through_their_public_api():
    problems = []
    for path in sorted(ENGINE.rglob("*.py")):
        relative = path.relative_to(ENGINE).parts
        problems += _reaches_into(path, relative[0] if len(relative) > 1 else None)
    assert not problems, "\n".join(problems)


def test_the_benchmarks_use_only_the_public_api():
    problems = [p for path in sorted((ROOT / "benchmarks").glob("*.py")) for p in _reaches_into(path, None)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("stage", STAGES)
def test_every_exported_name_exists(stage):
    package = importlib.import_module(f"labelsharing.{stage}")
    assert package.__all__, f"labelsharing.{stage} exports nothing"
    for name in package.__all__:
        try:
            assert getattr(package, name) is not None
        except ModuleNotFoundError as missing:  # a name of an optional extra that is not installed here
            assert missing.name in OPTIONAL, f"labelsharing.{stage}.{name} needs {missing.name}"
    assert sorted(dir(package)) == sorted(package.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'not_exported'"):
        getattr(package, "not_exported")


def test_the_top_level_holds_no_stage_code():
    """Stages live in their packages; the top level keeps the version, the error type and the entry point."""
    assert sorted(p.name for p in ENGINE.glob("*.py")) == ["__init__.py", "__main__.py", "errors.py"]
    assert sorted(p.name for p in ENGINE.iterdir() if p.is_dir() and p.name != "__pycache__") == \
        sorted([*STAGES, "cli"])


def test_the_plan_package_needs_numpy_alone():
    """What the Slicer process imports to show the grouping loads no SimpleITK, torch or MONAI."""
    code = ("import sys\nfrom labelsharing.plan import SharedLabelPlan, LabelStats, measure_label_sizes, "
            "terminology_entry_problem, read_pins\n"
            "print(sorted(m for m in ('SimpleITK', 'torch', 'monai', 'openvino') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


#: the stages in dependency order: each uses only those before it (README, "The engine, by stage")
ORDER = ("utils", "plan", "data", "model", "infer", "train", "federated", "serve", "demo", "cli")
#: the one import upwards: the planner reads the datasets it plans (when it runs; plan stays numpy-only)
UPWARDS = {("plan/planner.py", "data")}


def test_each_stage_uses_only_the_stages_before_it():
    problems = []
    for path in sorted(ENGINE.rglob("*.py")):
        relative = path.relative_to(ENGINE)
        if len(relative.parts) < 2:
            continue
        own = relative.parts[0]
        for line, module, _ in _imports(path):
            parts = module.split(".")
            used = parts[1] if len(parts) > 1 else None
            if used in ORDER and ORDER.index(used) > ORDER.index(own) \
                    and (relative.as_posix(), used) not in UPWARDS:
                problems.append(f"{relative}:{line}: {own} imports {module}")
    assert not problems, "\n".join(problems)
