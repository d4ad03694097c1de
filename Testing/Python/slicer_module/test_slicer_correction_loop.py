"""Correct and teach in the module (issue 16): Add to task, the added-case count, Update model, Compare.

FAKE slicer/qt surface (fakes.py, fakes_qt.py, widget_harness.py: the engine job is a
``FakeEngineJob`` that records the command line and lets the test end it).
``qt.QFileDialog.getExistingDirectory(parent, caption, dir)`` returns the chosen folder or "" when
cancelled (Qt 5 ``QFileDialog``); ``qt.QSettings()`` instances share the application settings
(fakes_qt.fakeSettingsClass). The same loop against the real engine: test_slicer_correction_engine.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LabelSharingSegLib.ModelInfo import LabelInfo, ModelInfo, TaskInfo
from LabelSharingSegLib.ModuleError import ModuleError
from LabelSharingSegLib.TaskCases import checkSegmentNames, diceBySegment

from .fakes import FakeSegmentationNode, FakeVolumeNode
from .widget_harness import buildWidget, loadModuleFile

LABELS = {"liver": 1, "tumour": 2}


def writeModel(folder: Path, trainingCases=("abd_001", "abd_002"), parent: str = "") -> Path:
    """A ``model.json`` with one task, the cases it was trained on and its parent (docs/CONTRACTS.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    task = {"modality": "CT", "labels": {name: {"value": v, "shared": v} for name, v in LABELS.items()},
            "validation_cases": ["abd_003"]}
    if trainingCases is not None:
        task["training_cases"] = list(trainingCases)
    body = {"tasks": {"abd": task}, "plan": {"n_shared": 2}, "parent": parent or None}
    (folder / "model.json").write_text(json.dumps(body))
    return folder


def writeDataset(folder: Path, cases=("abd_001", "abd_002", "abd_003")) -> Path:
    """A task folder as the engine reads it: dataset.json, one label per case in labelsTr (images omitted)."""
    (folder / "labelsTr").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"name": "abd", "labels": {"background": 0, **LABELS},
                                                     "file_ending": ".nii.gz", "channel_names": {"0": "CT"}}))
    for case in cases:
        (folder / "labelsTr" / f"{case}.nii.gz").write_bytes(b"")
    return folder


@pytest.fixture
def env(fakeSlicerModules, tmp_path):
    slicer = fakeSlicerModules["slicer"]
    slicer.app.temporaryPath = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    widget = buildWidget(loadModuleFile(), slicer)
    widget.logic.dependencies.missing = lambda distributions=None: []
    node = widget._parameterNode
    node.modelsFolder = tmp_path / "models"
    volume = FakeVolumeNode(np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5), np.diag([0.8, 0.8, 2.0, 1.0]), "ct")
    segmentation = FakeSegmentationNode("ct abd", volume)
    liver = np.zeros(volume.voxels.shape, bool)
    liver[1:3, 1:5, 1:4] = True
    tumour = np.zeros_like(liver)
    tumour[2, 2:4, 2] = True
    segmentation.addSegment("liver", liver)
    segmentation.addSegment("tumour", tumour)
    slicer.mrmlScene.nodes += [volume, segmentation]
    node.inputVolume, node.outputSegmentation = volume, segmentation
    dialog = fakeSlicerModules["qt"].QFileDialog.getExistingDirectory
    return widget, slicer, dialog, tmp_path


def _choose(widget, model: Path) -> None:
    widget.ui.modelPathLineEdit.currentPath = str(model)
    widget._checkCanApply()


def test_add_to_task_asks_the_folder_once_and_writes_the_case_in_the_task_values(env):
    widget, slicer, dialog, tmp_path = env
    model, dataset = writeModel(tmp_path / "model"), writeDataset(tmp_path / "abd")
    _choose(widget, model)
    assert "asked at the first Add to task" in widget.ui.taskCasesLabel.text
    dialog.return_value = str(dataset)
    widget.ui.addToTaskButton.click()
    slicer.util.errorDisplay.assert_not_called()
    assert dialog.call_count == 1 and dialog.call_args[0][2] == ""  # the model records no dataset: no start folder
    args = widget.fakeJob.args
    assert args[:2] == ["add-case", str(dataset)] and len(args) == 4
    image, label = sitk.ReadImage(args[2]), sitk.ReadImage(args[3])
    labels = sitk.GetArrayFromImage(label)
    segmentation = widget._parameterNode.outputSegmentation
    expected = segmentation.masks["liver"] * 1 + segmentation.masks["tumour"] * 1  # tumour (2) inside liver (1)
    np.testing.assert_array_equal(labels, expected)
    assert image.GetSize() == label.GetSize() and image.GetSpacing() == label.GetSpacing()
    assert widget.ui.addToTaskButton.text == "Cancel"
    (dataset / "labelsTr" / "abd_004.nii.gz").write_bytes(b"")  # what add-case would have written
    widget.fakeJob.finish(0)
    assert not Path(args[2]).parent.exists()  # the temporary case files are deleted
    assert "4 case(s), 1 added since the model was trained (abd_004)" in widget.ui.taskCasesLabel.text
    widget.ui.addToTaskButton.click()  # the folder is remembered (application settings): not asked again
    assert dialog.call_count == 1 and widget.fakeJob.args[1] == str(dataset)
    widget.fakeJob.finish(0)
    again = buildWidget(loadModuleFile(), slicer)  # a new session
    again.ui.modelPathLineEdit.currentPath = str(model)
    again._checkCanApply()
    assert str(dataset) in again.ui.taskCasesLabel.text


def test_segments_that_are_not_the_tasks_labels_are_named_and_nothing_is_written(env):
    widget, slicer, dialog, tmp_path = env
    _choose(widget, writeModel(tmp_path / "model"))
    segment = widget._parameterNode.outputSegmentation.GetSegmentation().GetSegment("tumour")
    segment.SetName("lesion")
    widget.ui.addToTaskButton.click()
    message = slicer.util.errorDisplay.call_args[0][0]
    assert "'lesion' are not labels of the task" in message and "'tumour' have no segment" in message
    assert "liver, tumour" in message
    assert widget.fakeJob.args is None and dialog.call_count == 0
    assert list(Path(slicer.app.temporaryPath).iterdir()) == []


def test_a_folder_of_another_task_is_refused(env):
    widget, slicer, dialog, tmp_path = env
    _choose(widget, writeModel(tmp_path / "model"))
    other = writeDataset(tmp_path / "other")
    (other / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "brain": 1}, "file_ending": ".nii.gz"}))
    dialog.return_value = str(other)
    widget.ui.addToTaskButton.click()
    assert "holds another task: its labels are brain" in slicer.util.errorDisplay.call_args[0][0]
    assert widget.fakeJob.args is None
    dialog.return_value = ""  # cancelled: nothing happens, nothing is said
    slicer.util.errorDisplay.reset_mock()
    widget.ui.addToTaskButton.click()
    slicer.util.errorDisplay.assert_not_called()
    assert widget.fakeJob.args is None and list(Path(slicer.app.temporaryPath).iterdir()) == []


def test_the_added_count_is_unknown_for_a_model_without_training_cases(env):
    widget, slicer, dialog, tmp_path = env
    model = writeModel(tmp_path / "model", trainingCases=None)
    dataset = writeDataset(tmp_path / "abd", cases=("abd_001", "abd_002", "abd_003", "abd_004"))
    (dataset / "labelsTr" / ".abd_005.nii.gz.tmp-1-ab.nii.gz").write_bytes(b"")  # a killed writer's file: no case
    _choose(widget, model)
    dialog.return_value = str(dataset)
    widget.ui.chooseTaskDatasetButton.click()
    assert "4 case(s). The model does not list the cases it was trained on" in widget.ui.taskCasesLabel.text


def test_update_runs_in_the_background_and_offers_the_new_model(env):
    widget, slicer, dialog, tmp_path = env
    model, dataset = writeModel(tmp_path / "models" / "abdomen"), writeDataset(tmp_path / "abd")
    node = widget._parameterNode
    node.addTaskEpochs, node.replay, node.device = 3, 0.25, "cpu"
    _choose(widget, model)
    dialog.return_value = str(dataset)
    widget.ui.updateModelButton.click()
    out = tmp_path / "models" / "abdomen_2"
    assert widget.fakeJob.args == ["update", str(model), "--task", "abd", str(dataset), "--out", str(out),
                                   "--epochs", "3", "--replay", "0.25", "--device", "cpu"]
    assert widget.ui.updateModelButton.text == "Cancel" and not widget.ui.addToTaskButton.enabled
    widget.ui.updateModelButton.click()  # Cancel
    assert widget.ui.statusLabel.text == "Updating the model: cancelled." and widget.ui.addToTaskButton.enabled
    assert widget.ui.modelPathLineEdit.currentPath == str(model)
    widget.ui.updateModelButton.click()
    writeModel(out, trainingCases=("abd_001", "abd_002", "abd_004"), parent=str(model))
    widget.fakeJob.finish(0)
    slicer.util.errorDisplay.assert_not_called()
    assert widget.ui.modelPathLineEdit.currentPath == str(out) and widget.segmentPanel.model.folder == out
    assert widget.ui.taskComboBox.currentText == "abd"
    assert [(e.folder, e.source) for e in widget.library.entries()][0] == (out, "updated")
    assert str(dataset) in widget.ui.taskCasesLabel.text  # the updated model's task keeps its folder


def test_compare_segments_with_both_models_and_shows_the_dice_per_segment(env):
    widget, slicer, dialog, tmp_path = env
    old = writeModel(tmp_path / "models" / "abdomen")
    new = writeModel(tmp_path / "models" / "abdomen_2", parent=str(old))
    _choose(widget, new)
    volume = widget._parameterNode.inputVolume
    full = np.ones(volume.voxels.shape, bool)
    half = np.zeros_like(full)
    half[:2] = True
    masks = {str(old): {"liver": full, "tumour": np.zeros_like(full)}, str(new): {"liver": half, "tumour": half}}
    loaded = []

    def load(request):
        """Segmenter.load: a new segmentation named after the volume and task (here with known masks)."""
        result = FakeSegmentationNode(f"{volume.GetName()} {request.task}", volume)
        for name, mask in masks[str(request.model.folder)].items():
            result.addSegment(name, mask)
        loaded.append(result)
        return result

    widget.logic.segmenter.load = load
    widget.ui.compareModelsButton.click()
    assert widget.fakeJob.args[:4] == ["predict", str(old), "--task", "abd"]
    widget.fakeJob.finish(0)
    assert widget.fakeJob.args[:4] == ["predict", str(new), "--task", "abd"]
    assert widget.ui.compareModelsButton.text == "Cancel"
    widget.fakeJob.finish(0)
    slicer.util.errorDisplay.assert_not_called()
    assert [s.GetName() for s in loaded] == ["ct abd (abdomen)", "ct abd (abdomen_2)"]
    text = widget.ui.compareResultLabel.text
    assert "Dice between abdomen and abdomen_2 on ct: liver 0.667, tumour 0.000" in text
    assert widget.ui.compareModelsButton.text != "Cancel" and widget.ui.compareModelsButton.enabled


def test_compare_needs_a_previous_model_and_update_a_local_one(env):
    widget, slicer, dialog, tmp_path = env
    _choose(widget, writeModel(tmp_path / "model"))
    widget.ui.compareModelsButton.click()
    assert "no previous model to compare with" in slicer.util.errorDisplay.call_args[0][0]
    widget.segmentPanel.useModel(ModelInfo.fromServer({"name": "abd", "tasks": {"abd": {"labels": [
        {"name": "liver", "value": 1}]}}}, "https://gpu.example"))
    widget.ui.updateModelButton.click()
    assert "model folder on this computer" in slicer.util.errorDisplay.call_args[0][0]
    assert widget.fakeJob.args is None


def test_names_and_dice_rules():
    task = TaskInfo("abd", "CT", (LabelInfo("liver", 1, 1, (1, 0, 0)), LabelInfo("tumour", 2, 2, (0, 1, 0))))
    checkSegmentNames(["tumour", "liver"], task)  # order does not matter
    with pytest.raises(ModuleError, match="'tumour' have no segment"):
        checkSegmentNames(["liver"], task)
    empty = np.zeros(4, bool)
    assert diceBySegment({"liver": empty}, {"liver": empty}) == {"liver": 1.0}
    assert diceBySegment({"liver": np.ones(4, bool)}, {}) == {"liver": 0.0}
