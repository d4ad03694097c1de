"""The panel's user actions, driven through the widget on a FAKE slicer/qt surface (fakes*.py,
widget_harness.py); each test names the Slicer/CTK/Qt behaviour its fakes imitate (issue 10)."""

from __future__ import annotations

import json
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest

from .fakes import FakeSegmentationNode, FakeVolumeNode, serializeImageGeometry, REFERENCE_GEOMETRY
from .widget_harness import actionButtons, buildWidget, fakeUi, loadModuleFile, writeModel


@pytest.fixture
def env(fakeSlicerModules, tmp_path):
    slicer = fakeSlicerModules["slicer"]
    slicer.app.temporaryPath = str(tmp_path / "tmp")
    slicer.app.slicerUserSettingsFilePath = str(tmp_path / "settings" / "slicer.org" / "Slicer.ini")
    (tmp_path / "tmp").mkdir()
    module = loadModuleFile()
    widget = buildWidget(module, slicer)
    return module, widget, slicer


def _volume(slicer, name, ijkToRas=np.diag([0.8, 0.8, 2.0, 1.0]), shape=(4, 6, 5)):
    volume = FakeVolumeNode(np.arange(np.prod(shape), dtype=np.int16).reshape(shape), ijkToRas, name)
    slicer.mrmlScene.nodes.append(volume)
    return volume


def _segmentationFromFile(slicer, volume, name="case_1"):
    """As a .seg.nrrd loaded from disk: reference geometry (conversion parameter), no reference volume."""
    node = FakeSegmentationNode(name)
    node.segmentation.conversionParameters[REFERENCE_GEOMETRY] = serializeImageGeometry(
        volume.ijkToRasArray, volume.GetImageData().GetDimensions())
    mask = np.zeros(volume.voxels.shape, dtype=bool)
    mask[1:3, 2:4, 1:4] = True
    node.addSegment("liver", mask, (0.8, 0.3, 0.2))
    slicer.mrmlScene.nodes.append(node)
    return node


# ----------------------------------------------------------------------------- item 2
def test_train_writes_a_new_folder_named_by_the_user_inside_the_models_folder(env, tmp_path):
    """A directory ctkPathLineEdit only yields existing folders (ctkPathLineEdit.cpp, browse():
    QFileDialog::getExistingDirectory) and the engine refuses an existing --out."""
    module, widget, slicer = env
    node = widget._parameterNode
    defaultParent = node.modelsFolder
    assert defaultParent == tmp_path / "settings" / "slicer.org" / "LabelSharingSeg" / "models"  # next to Slicer.ini
    assert defaultParent != defaultParent.home() and node.modelName == "model"
    node.modelsFolder, node.modelName = tmp_path, "liver_v1"
    widget.trainPanel.addDatasetFolder(str(tmp_path / "task"))
    widget._checkCanApply()
    assert widget.ui.modelTargetLabel.text.endswith(str(tmp_path / "liver_v1"))
    widget.ui.trainButton.click()
    args = widget.fakeJob.args
    assert args[args.index("--out") + 1] == str(tmp_path / "liver_v1")
    (tmp_path / "liver_v1").mkdir()
    widget.fakeJob.finish(0)
    assert widget.ui.modelPathLineEdit.currentPath == str(tmp_path / "liver_v1")
    assert node.modelName == "liver_v1_2"  # the next run gets a free name
    node.modelName = "liver_v1"
    widget.fakeJob.args = None
    widget.ui.trainButton.click()
    assert widget.fakeJob.args is None
    assert "already exists" in slicer.util.errorDisplay.call_args[0][0]


# ----------------------------------------------------------------------------- item 3
def test_a_task_is_defined_from_segmentations_loaded_from_files(env):
    """A .seg.nrrd has reference geometry but no referenceImageGeometryRef; the default source volume
    is the one on the same grid, and choosing it sets the reference
    (vtkMRMLSegmentationNode::SetReferenceImageGeometryParameterFromVolumeNode)."""
    module, widget, slicer = env
    _volume(slicer, "other", np.diag([1.0, 1.0, 1.0, 1.0]))
    source = _volume(slicer, "source")
    segmentation = _segmentationFromFile(slicer, source)
    widget._parameterNode.taskName = "abdomen"
    widget.ui.taskSegmentationsSelector.check([segmentation])
    selector = widget.ui.sourceVolumesTableWidget.cellWidget(0, 1)
    assert selector.currentNode() is source
    widget.ui.computeGroupingButton.click()
    slicer.util.errorDisplay.assert_not_called()
    assert [row.label for row in widget.taskPanel.grouping.rows] == ["liver"]
    assert segmentation.GetNodeReference("referenceImageGeometryRef") is source


# ----------------------------------------------------------------------------- item 4
def test_failures_of_slicer_calls_are_shown_and_the_buttons_come_back(env, tmp_path):
    """pip_install raises CalledProcessError (util.py), arrayFromSegmentBinaryLabelmap RuntimeError
    (util.py main line 2445), exportNode ValueError (util.py main line 1474)."""
    module, widget, slicer = env
    source = _volume(slicer, "source")
    segmentation = _segmentationFromFile(slicer, source)
    widget.logic.dependencies._version = lambda name: None if name == "monai" else "1.0"
    slicer.util.pip_install.side_effect = subprocess.CalledProcessError(1, "pip install", output="no network")
    slicer.util.arrayFromSegmentBinaryLabelmap = lambda *args: (_ for _ in ()).throw(RuntimeError("Export of segment failed."))
    slicer.util.exportNode.side_effect = ValueError("no known file format")
    widget._parameterNode.taskName, widget._parameterNode.exportFolder = "t", tmp_path
    widget._parameterNode.exportSegmentation = segmentation
    widget.ui.taskSegmentationsSelector.check([segmentation])
    sys.modules["qt"].QTimer.singleShot = lambda ms, function: function()
    before = [b.enabled for b in actionButtons(widget)]
    for button, expected in [(widget.ui.checkDependenciesButton, "pip exit code 1"),
                             (widget.ui.computeGroupingButton, "Slicer could not read segment 'liver'"),
                             (widget.ui.exportButton, "could not be exported")]:
        slicer.util.errorDisplay.reset_mock()
        button.click()
        assert expected in slicer.util.errorDisplay.call_args[0][0]
        assert [b.enabled for b in actionButtons(widget)] == before, button
    assert "no known file format" in slicer.util.errorDisplay.call_args[1]["detailedText"]


def test_a_bug_is_shown_with_its_traceback_and_still_raised(env):
    """slicer.util.tryWithErrorDisplay shows the error, then re-raises it (util.py main line 3692)."""
    module, widget, slicer = env
    widget.logic.dependencies.missing = lambda distributions=None: 1 / 0
    before = [b.enabled for b in actionButtons(widget)]
    with pytest.raises(ZeroDivisionError):
        widget.ui.checkDependenciesButton.click()
    assert slicer.util.errorDisplay.call_args[0][0].startswith("Checking the Python packages failed.")
    assert "ZeroDivisionError" in slicer.util.errorDisplay.call_args[1]["detailedText"]
    assert [b.enabled for b in actionButtons(widget)] == before


# ----------------------------------------------------------------------------- items 5 and 7
def test_the_saved_task_is_restored_and_history_grows_only_after_success(env, tmp_path):
    """Filling an empty QComboBox makes item 0 current (qcombobox.cpp rowsInserted); ctkPathLineEdit's
    addCurrentPathToHistory emits currentPathChanged again (ctkPathLineEdit.cpp lines 641-670)."""
    module, widget, slicer = env
    node = widget._parameterNode
    node.task = "second"
    model = writeModel(tmp_path / "model")
    widget.ui.modelPathLineEdit.currentPath = str(model)  # RecursionError if the slot adds to the history
    assert widget.ui.taskComboBox.currentText == "second" and node.task == "second"
    assert widget.ui.modelPathLineEdit.history == []
    node.inputVolume = _volume(slicer, "ct")
    widget.logic.dependencies._version = lambda name: "1.0"
    widget.ui.applyButton.click()
    assert widget.fakeJob.args[:2] == ["predict", str(model)]
    widget.logic.segmenter.load = lambda request: FakeSegmentationNode("result")
    widget.fakeJob.finish(0)
    assert widget.ui.modelPathLineEdit.history == [str(model)]


# ----------------------------------------------------------------------------- item 10
def test_training_defaults_and_limits_come_from_the_engine(env, tmp_path):
    module, widget, slicer = env
    result = subprocess.run([sys.executable, "-m", "labelsharing", "defaults", "--json"], capture_output=True,
                            text=True, timeout=120, check=True)
    engine = json.loads(result.stdout)
    node = widget._parameterNode
    assert node.trainEpochs == engine["train"]["epochs"]["default"]
    assert node.addTaskEpochs == engine["add-task"]["epochs"]["default"]
    assert node.replay == engine["add-task"]["replay"]["default"]
    widget.ui.replaySpinBox.setRange.assert_called_with(0.0, 0.99)  # the engine refuses 1.0: [0, 1)
    widget.ui.trainEpochsSpinBox.setRange.assert_called_with(1, 2**31 - 1)
    writeModel(tmp_path / "base")
    widget.ui.modelPathLineEdit.currentPath = str(tmp_path / "base")
    widget.trainPanel.addDatasetFolder(str(tmp_path / "task"))
    node.modelsFolder, node.trainEpochs, node.addTaskEpochs = tmp_path, 7, 3
    widget.logic.dependencies._version = lambda name: "1.0"
    widget.ui.trainButton.click()
    assert widget.fakeJob.args[widget.fakeJob.args.index("--epochs") + 1] == "7"
    widget.fakeJob.cancel()
    widget.ui.addTaskButton.click()
    assert widget.fakeJob.args[widget.fakeJob.args.index("--epochs") + 1] == "3"


def test_keep_look_alikes_apart_adds_the_flag_to_local_train_and_add_task_only_when_checked(env, tmp_path):
    """The checkbox writes ``keepLookAlikesApart`` (QCheckBoxToBoolConnector, guiConnectors.py); the runs read it."""
    module, widget, slicer = env
    node = widget._parameterNode
    assert node.keepLookAlikesApart is False
    writeModel(tmp_path / "base")
    widget.ui.modelPathLineEdit.currentPath = str(tmp_path / "base")
    widget.trainPanel.addDatasetFolder(str(tmp_path / "task"))
    node.modelsFolder = tmp_path
    widget.logic.dependencies._version = lambda name: "1.0"
    commands = {}
    for checked in (False, True):
        node.keepLookAlikesApart = checked
        for button in (widget.ui.trainButton, widget.ui.addTaskButton):
            button.click()
            commands[checked, widget.fakeJob.args[0]] = widget.fakeJob.args
            widget.fakeJob.cancel()
    for kind in ("train", "add-task"):
        assert "--keep-look-alikes-apart" not in commands[False, kind]
        assert commands[True, kind] == commands[False, kind] + ["--keep-look-alikes-apart"]


def test_an_engine_warning_naming_the_keep_apart_flag_is_followed_by_the_checkbox_that_sets_it(env, tmp_path):
    """The engine's look-alike warnings (``warning: ...`` lines: plan/planner.py, train/incremental.py) name the
    command-line flag; the log adds where the panel sets it. Other lines get nothing added."""
    module, widget, slicer = env
    widget.trainPanel.addDatasetFolder(str(tmp_path / "task"))
    widget._parameterNode.modelsFolder = tmp_path
    widget.logic.dependencies._version = lambda name: "1.0"
    widget.ui.trainButton.click()
    log = widget.ui.logTextEdit.appendPlainText
    log.reset_mock()
    warning = "warning: 'a' and 'b' look alike (...). --keep-look-alikes-apart puts the others on shared labels"
    for line in ("epoch   1/1 | step 2 | loss 2.289", warning):
        widget.fakeJob.onLog(line)
    assert [call.args[0] for call in log.call_args_list] == [
        "epoch   1/1 | step 2 | loss 2.289", warning,
        "  (in this module: Train / add task section, 'Keep look-alike tasks apart')"]


def test_a_saved_parameter_node_keeps_its_training_values(env):
    module, widget, slicer = env
    node = widget._parameterNode
    node.trainEpochs, node.replay = 7, 0.0  # the user's choice, saved with the scene
    widget.setParameterNode(None)
    widget.setParameterNode(node)
    assert (node.trainEpochs, node.replay, node.trainingDefaultsSet) == (7, 0.0, True)


def test_the_panel_opens_when_the_engine_cannot_give_its_defaults(fakeSlicerModules, tmp_path, monkeypatch):
    """No limits on the fields and the reason on the status line; the engine checks the values when it runs."""
    from LabelSharingSegLib import EngineDefaults

    monkeypatch.setattr(EngineDefaults, "_SESSION", {})
    slicer = fakeSlicerModules["slicer"]
    slicer.app.temporaryPath = str(tmp_path)
    module = loadModuleFile()
    failing = "import sys; print('error: cannot start', file=sys.stderr); sys.exit(2)"
    monkeypatch.setattr(module.EngineJob, "command", lambda self, args: ([sys.executable, "-c", failing], None))
    ui = fakeUi()
    slicer.util.childWidgetVariables = lambda widget: ui
    widget = module.LabelSharingSegWidget(mock.MagicMock())
    widget.setup()
    assert "did not report its training defaults: cannot start" in ui.statusLabel.text
    ui.trainEpochsSpinBox.setRange.assert_not_called()
    assert not widget._parameterNode.trainingDefaultsSet
    ui.statusLabel.text = "Segmentation: done."
    widget.setParameterNode(widget._parameterNode)  # entering the module again: asked and told once
    assert ui.statusLabel.text == "Segmentation: done."


# ----------------------------------------------------------------------------- item 11
def test_dataset_export_disables_the_actions_and_reports_each_case(env, tmp_path):
    """Main-thread work repaints through slicer.app.processEvents(); the buttons stay disabled meanwhile."""
    module, widget, slicer = env
    source = _volume(slicer, "source")
    cases = [_segmentationFromFile(slicer, source, f"case_{i}") for i in range(3)]
    seen = []
    before = [b.enabled for b in actionButtons(widget)]
    slicer.app.processEvents = lambda: seen.append(
        (widget.ui.progressBar.value, widget.ui.statusLabel.text, any(b.enabled for b in actionButtons(widget))))
    node = widget._parameterNode
    node.taskName, node.datasetFolder = "abdomen", tmp_path
    widget.logic.dependencies._version = lambda name: "1.0"
    widget.ui.taskSegmentationsSelector.check(cases)
    widget.ui.exportDatasetButton.click()
    slicer.util.errorDisplay.assert_not_called()
    assert (tmp_path / "abdomen" / "labelsTr" / "case_2.nrrd").is_file()
    assert not any(enabled for _, _, enabled in seen)
    assert [text for _, text, _ in seen if text.startswith("Writing case")] == [
        f"Writing case case_{i} ({i + 1} of 3)..." for i in range(3)]
    assert [b.enabled for b in actionButtons(widget)] == before
    assert widget.trainPanel.datasetFolders() == [str(tmp_path / "abdomen")]


# ----------------------------------------------------------------------------- issue 10, item 8
def test_exported_task_dataset_keeps_the_segments_terminology(env, tmp_path):
    """A segment's terminology is its "TerminologyEntry" tag, read through vtkSegment::GetTag(tag,
    vtk.reference) (vtkSegment.h, 5.8.0 and main); it goes into dataset.json ``terminology``."""
    from .test_slicer_terminology import LIVER

    module, widget, slicer = env
    case = _segmentationFromFile(slicer, _volume(slicer, "source"))
    segment = case.segmentation.GetSegment(case.segmentation.GetNthSegmentID(0))
    segment.SetTag(segment.GetTerminologyEntryTagName(), LIVER)
    node = widget._parameterNode
    node.taskName, node.datasetFolder = "abdomen", tmp_path
    widget.logic.dependencies._version = lambda name: "1.0"
    widget.ui.taskSegmentationsSelector.check([case])
    widget.ui.exportDatasetButton.click()
    slicer.util.errorDisplay.assert_not_called()
    description = json.loads((tmp_path / "abdomen" / "dataset.json").read_text())
    assert description["terminology"] == {"liver": LIVER} and description["colors"]["liver"] == [0.8, 0.3, 0.2]
