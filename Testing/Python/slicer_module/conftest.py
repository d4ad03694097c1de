"""Fixtures of the Slicer-module tests (plain pytest, no Slicer).

The module folder is put on ``sys.path`` so ``LabelSharingSegLib`` imports as it does inside
Slicer. Fakes of ``slicer``/``qt``/``vtk``/``ctk`` are installed into ``sys.modules`` only by the
``fakeSlicerModules`` fixture, which restores ``sys.modules`` afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
MODULE_DIR = REPO / "LabelSharingSeg"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from .fakes import installFakeSlicerModules  # noqa: E402


@pytest.fixture
def fakeSlicerModules():
    """Install fakes of the slicer/qt/vtk/ctk surface the module file touches; restore after."""
    saved = dict(sys.modules)
    modules = installFakeSlicerModules()
    try:
        yield modules
    finally:
        for name in list(sys.modules):
            if name not in saved:
                del sys.modules[name]
        sys.modules.update(saved)
