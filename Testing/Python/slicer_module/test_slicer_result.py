"""The result section: Show 3D button and embedded Segment Editor, driven through the widget on a
FAKE slicer/qt surface (fakes.py: singleton nodes of vtkMRMLScene; fakes_qt.py:
qMRMLSegmentationShow3DButton and qMRMLSegmentEditorWidget with the call order their .cxx needs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from LabelSharingSegLib.ModelInfo import ModelInfo
from LabelSharingSegLib.ResultPanel import EDITOR_NODE_TAG

from .fakes import FakeSegmentationNode, FakeSegmentEditorNode, FakeVolumeNode
from .fakes_files import writeEngineResult
from .widget_harness import buildWidget, loadModuleFile, writeModel


@pytest.fixture
def env(fakeSlicerModules, tmp_path):
    slicer = fakeSlicerModules["slicer"]
    slicer.app.temporaryPath = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    theEditorModulesNode = FakeSegmentEditorNode()  # what Slicer's Segment Editor module made (SegmentEditor.py)
    theEditorModulesNode.SetSingletonTag("SegmentEditor")
    slicer.mrmlScene.nodes.append(theEditorModulesNode)
    module = loadModuleFile()
    return module, buildWidget(module, slicer), slicer


def _segment(widget, slicer, tmp_path):
    """Apply on a volume with a one-label model; the engine's result is written by the test."""
    ijkToRas = np.diag([-0.8, -0.8, 2.0, 1.0])
    volume = FakeVolumeNode(np.zeros((3, 4, 5), dtype=np.int16), ijkToRas, "CT")
    slicer.mrmlScene.nodes.append(volume)
    widget._parameterNode.inputVolume = volume
    widget.logic.dependencies._version = lambda name: "1.0"
    model = writeModel(tmp_path / "model")
    widget.ui.modelPathLineEdit.currentPath = str(model)
    widget.ui.applyButton.click()
    args = widget.fakeJob.args
    labels = np.zeros((3, 4, 5), dtype=np.uint8)
    labels[1, 1:3, 1:4] = 1
    out, task = args[args.index('--out') + 1], args[3]
    if task == "auto":  # Automatic, the default for two tasks: the engine names the task it recognised
        task = "first"
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "volume.prediction.json").write_text(json.dumps({"task": task, "recognition": {"score": 0.9}}))
    writeEngineResult(args[4], f"{out}/volume.seg.nrrd", labels, ModelInfo.load(model).task(task).labels)
    widget.fakeJob.finish(0)
    slicer.util.errorDisplay.assert_not_called()
    # Setting outputSegmentation sets a node reference of the real parameter node (parameterNodeWrapper
    # serializers.py: SetNodeReferenceID), which invokes ModifiedEvent when the reference changes
    # (vtkMRMLNode.cxx, SetAndObserveNthNodeReferenceID); the widget observes it with _checkCanApply
    # (setParameterNode). The fake parameter node fires no event, so the test runs the observer.
    widget._checkCanApply()
    return volume, widget._parameterNode.outputSegmentation


def test_the_result_is_shown_in_3d_and_opened_in_the_embedded_editor(env, tmp_path):
    module, widget, slicer = env
    editor, show3D = widget.ui.segmentEditorWidget, widget.ui.segmentationShow3DButton
    assert show3D.segmentationNode() is None and editor.segmentationNode() is None  # nothing segmented yet
    volume, result = _segment(widget, slicer, tmp_path)
    assert isinstance(result, FakeSegmentationNode)
    assert show3D.segmentationNode() is result
    assert editor.segmentationNode() is result and editor.sourceVolumeNode() is volume
    assert editor.criticals == []  # editor node, then segmentation, then source volume
    editorNode = editor.mrmlSegmentEditorNode()
    assert editorNode.GetSingletonTag() == EDITOR_NODE_TAG and editorNode in slicer.mrmlScene.nodes
    theEditorModulesNode = slicer.mrmlScene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
    assert theEditorModulesNode.segmentationNode is None  # the Segment Editor module keeps its own choice

    widget._parameterNode.outputSegmentation = None  # "Create new segmentation" chosen again
    widget._checkCanApply()  # what the parameter node's ModifiedEvent runs
    assert show3D.segmentationNode() is None and editor.segmentationNode() is None


def test_the_editor_is_active_only_while_shown(env, tmp_path):
    """As SegmentEditor.py enter/exit: installKeyboardShortcuts when shown; setActiveEffect(None),
    uninstallKeyboardShortcuts, removeViewObservations when the module is left or the section
    collapsed (ctkCollapsibleButton contentsCollapsed(bool)), so no hidden effect acts on the views."""
    module, widget, slicer = env
    editor, section = widget.ui.segmentEditorWidget, widget.ui.resultEditorCollapsibleButton
    section.collapsed = True  # as the .ui starts it
    widget.enter()
    assert not editor.shortcutsInstalled
    section.collapsed = False
    assert editor.shortcutsInstalled
    _segment(widget, slicer, tmp_path)
    editor.setActiveEffect("Paint")
    section.collapsed = True
    assert editor.activeEffect is None and not editor.viewsObserved and not editor.shortcutsInstalled
    section.collapsed = False
    editor.setActiveEffect("Paint")
    widget.exit()
    assert editor.activeEffect is None and not editor.viewsObserved and not editor.shortcutsInstalled
    section.collapsed, section.collapsed = True, False  # not entered: nothing is installed
    assert not editor.shortcutsInstalled
    widget.enter()
    assert editor.shortcutsInstalled


def test_closing_the_scene_lets_go_of_the_result_and_keeps_one_editor_node(env, tmp_path):
    module, widget, slicer = env
    editor = widget.ui.segmentEditorWidget
    _segment(widget, slicer, tmp_path)
    editorNode = editor.mrmlSegmentEditorNode()
    widget.onSceneStartClose(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent)
    assert editor.segmentationNode() is None and widget.ui.segmentationShow3DButton.segmentationNode() is None
    widget.onSceneEndClose(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent)
    assert editor.mrmlSegmentEditorNode() is editorNode  # the singleton is found again, not duplicated
    assert sum(getattr(n, "singletonTag", None) == EDITOR_NODE_TAG for n in slicer.mrmlScene.nodes) == 1
    assert editor.criticals == []
