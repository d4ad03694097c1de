"""Every ``slicer.util`` / ``slicer.i18n`` name and every MRML/VTK method the module calls exists in Slicer.

The names come from ``slicer_api_names.txt``, generated once from Slicer's sources (5.8.0 and main,
commit ids in its header) by ``generate_slicer_api_names.py``. No Slicer runs here, so a misspelt
or invented call (``slicer.util.loadSegmentationFromFile``, ``segmentation.GetSegmentByName``)
would otherwise only fail in front of a user.

What is checked, by reading the module's files (``ast``, nothing is imported):

- ``<...slicer...>.util.<name>`` and ``<...slicer...>.i18n.<name>`` attributes, whatever object
  holds the ``slicer`` module (``slicer``, ``self.slicer``, ``self._slicer``, ``slicerModule``), and
  ``from slicer.util import ...`` / ``from slicer.i18n import ...``;
- calls ``<expr>.<Name>(...)`` whose name is capitalised: the MRML/VTK naming (Qt classes ``QName``
  are left out; the module's own methods and Qt's are camelCase).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

HERE = Path(__file__).resolve().parent
MODULE_DIR = HERE.parents[2] / "LabelSharingSeg"
NAMES_FILE = HERE / "slicer_api_names.txt"
MODULE_FILES = [MODULE_DIR / "LabelSharingSeg.py", *sorted((MODULE_DIR / "LabelSharingSegLib").glob("*.py"))]
_SLICER_SUBMODULES = ("util", "i18n")
#: capitalised calls that are not Slicer's, with where they are defined
NOT_SLICER = {
    "PyTorchUtilsLogic": "the PyTorch extension (fepegar/SlicerPyTorch, PyTorchUtils/PyTorchUtils.py)",
}

Use = Tuple[str, str, int]  # (section, name, line)


def apiNames(path: Path = NAMES_FILE) -> Dict[str, Set[str]]:
    """Section -> names of ``slicer_api_names.txt``."""
    sections: Dict[str, Set[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], set())
        else:
            current.add(line)
    return sections


def _holdsSlicer(node: ast.AST) -> bool:
    """``slicer``, ``self.slicer``, ``self._slicer``, ``slicerModule``: an expression naming the slicer module."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name.lstrip("_").lower() in ("slicer", "slicermodule")


def slicerApiUses(source: str) -> List[Use]:
    """The Slicer API names used by Python ``source``: (section, name, line).

    Capitalised calls on a module the file imports (``threading.Thread()``) are not MRML/VTK calls,
    except on ``slicer`` and ``vtk`` themselves.
    """
    tree = ast.parse(source)
    modules = {(alias.asname or alias.name).split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names if alias.name.split(".")[0] not in ("slicer", "vtk")}
    uses: List[Use] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in (f"slicer.{s}" for s in _SLICER_SUBMODULES):
            uses += [(node.module, alias.name, node.lineno) for alias in node.names]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
              and node.value.attr in _SLICER_SUBMODULES and _holdsSlicer(node.value.value)):
            uses.append((f"slicer.{node.value.attr}", node.attr, node.lineno))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, owner = node.func.attr, node.func.value
            if isinstance(owner, ast.Name) and owner.id in modules or name in NOT_SLICER:
                continue
            if name[:1].isupper() and not (name[0] == "Q" and name[1:2].isupper()):
                uses.append(("methods", name, node.lineno))
    return uses


def unknownUses(source: str, names: Dict[str, Set[str]]) -> List[Use]:
    return [use for use in slicerApiUses(source) if use[1] not in names[use[0]]]


def test_the_name_list_names_its_slicer_commits_and_holds_the_usual_api():
    header = NAMES_FILE.read_text(encoding="utf-8").split("[", 1)[0]
    assert "v5.8.0 = d20ee94ceeaf3da1d67042059c6c125c82626005" in header
    assert "main = " in header
    names = apiNames()
    assert {"arrayFromVolume", "loadUI", "tryWithErrorDisplay", "pip_install"} <= names["slicer.util"]
    assert {"tr", "translate"} <= names["slicer.i18n"]
    assert {"AddEmptySegment", "ImportLabelmapToSegmentationNode", "GetNthSegmentID", "InsertNextValue"} <= names["methods"]


@pytest.mark.parametrize("source, expected", [
    ("slicer.util.loadSegmentationFromFile('a.seg.nrrd')", ("slicer.util", "loadSegmentationFromFile")),
    ("self.slicer.util.arrayFromSegmentation(node, 'id')", ("slicer.util", "arrayFromSegmentation")),
    ("from slicer.util import loadSegmentationFromFile", ("slicer.util", "loadSegmentationFromFile")),
    ("node.GetSegmentation().GetSegmentByName('liver')", ("methods", "GetSegmentByName")),
    ("from slicer.i18n import translateText", ("slicer.i18n", "translateText")),
])
def test_an_invented_name_is_caught(source, expected):
    assert [use[:2] for use in unknownUses(source, apiNames())] == [expected]


def test_real_names_and_non_slicer_calls_pass():
    source = (
        "slicer.util.loadSegmentation(path)\n"
        "slicerModule.util.errorDisplay('x', detailedText='y')\n"
        "segment = node.GetSegmentation().GetSegment(node.GetSegmentation().GetNthSegmentID(0))\n"
        "timer = qt.QTimer()\n"
        "import threading\nthreading.Thread(target=print)\n"
        "widget.addItem('text')\n"
    )
    names = apiNames()
    assert unknownUses(source, names) == []
    assert sorted(name for _, name, _ in slicerApiUses(source)) == [
        "GetNthSegmentID", "GetSegment", "GetSegmentation", "GetSegmentation", "errorDisplay", "loadSegmentation"]


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.name)
def test_every_slicer_name_the_module_uses_exists_in_slicer(path):
    unknown = unknownUses(path.read_text(encoding="utf-8"), apiNames())
    assert not unknown, "\n".join(
        f"{path.name}:{line}: {section} has no '{name}' in Slicer 5.8.0 and main (slicer_api_names.txt)"
        for section, name, line in unknown
    )


def test_the_module_files_do_use_the_checked_api():
    """The scan sees the module's real calls (a scan that found nothing would pass vacuously)."""
    uses = {(section, name) for path in MODULE_FILES for section, name, _ in slicerApiUses(path.read_text())}
    assert ("slicer.util", "errorDisplay") in uses and ("methods", "ImportLabelmapToSegmentationNode") in uses
    assert len(uses) > 30
