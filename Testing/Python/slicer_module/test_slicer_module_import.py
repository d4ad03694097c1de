"""Importing LabelSharingSeg.py and building its widget with a FAKE slicer/qt/vtk/ctk surface
(fakes.py) imports neither torch nor any other heavy engine dependency (no Slicer)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import types
from unittest import mock

import pytest

from .fakes import MODULE_DIR
from .test_slicer_ui_and_parameters import uiWidgets

FORBIDDEN = ("torch", "monai", "SimpleITK", "safetensors", "slicerio", "nrrd")


class _Forbid(importlib.abc.MetaPathFinder):
    """Fails any import of a forbidden package (even if another test imported it earlier)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise AssertionError(f"importing the module imported {name}")
        return None


@pytest.fixture
def moduleFile(fakeSlicerModules):
    for name in list(sys.modules):
        if name.split(".")[0] in FORBIDDEN + ("LabelSharingSegLib", "labelsharing"):
            del sys.modules[name]  # restored by fakeSlicerModules
    guard = _Forbid()
    sys.meta_path.insert(0, guard)
    try:
        spec = importlib.util.spec_from_file_location("LabelSharingSeg", MODULE_DIR / "LabelSharingSeg.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["LabelSharingSeg"] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.meta_path.remove(guard)


def test_import_defines_the_four_classes_and_the_parameter_node(moduleFile):
    for name in ("LabelSharingSeg", "LabelSharingSegWidget", "LabelSharingSegLogic", "LabelSharingSegTest",
                 "LabelSharingSegParameterNode"):
        assert hasattr(moduleFile, name)
    parent = mock.MagicMock()
    moduleFile.LabelSharingSeg(parent)
    assert parent.title == "LabelSharingSeg" and parent.categories == ["Segmentation"]
    node = moduleFile.LabelSharingSegLogic().getParameterNode()
    assert node.device == "auto" and node.exportFormat == "seg.nrrd"


def test_building_the_widget_uses_only_widgets_of_the_ui_file(moduleFile, fakeSlicerModules):
    names, _ = uiWidgets()
    ui = types.SimpleNamespace(**{name: mock.MagicMock(name=name) for name in names})
    fakeSlicerModules["slicer"].util.childWidgetVariables = lambda widget: ui
    widget = moduleFile.LabelSharingSegWidget(mock.MagicMock())
    widget.setup()  # AttributeError if it touched a widget the .ui lacks
    ui.applyButton.connect.assert_called_with("clicked(bool)", widget.segmentPanel.onApply)
    assert ui.applyButton.enabled is False  # nothing chosen yet
    widget.cleanup()
