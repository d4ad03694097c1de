"""The task list's Automatic entry (issue 15): ``--task auto`` for models of several tasks, and the
engine's report (task used, score, confidence, unfamiliar-image warning) in the status line.

FAKE slicer/qt surface (fakes.py, widget_harness.py): Qt's ``QComboBox`` makes the first item inserted
into an empty box current (fakes_qt.FakeComboBox); the engine's result and its
``volume.prediction.json`` (the format of ``labelsharing/infer/predictor.py``) are written by the test.
The same against the real worker: test_slicer_correction_engine.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from LabelSharingSegLib.ModelInfo import ModelInfo

from .fakes import FakeVolumeNode
from .fakes_files import writeEngineResult
from .widget_harness import buildWidget, loadModuleFile, writeModel

WARNING = "the image looks unlike the training images of task 'first' (relative distance 1.8); check the task"


@pytest.fixture
def widget(fakeSlicerModules, tmp_path):
    slicer = fakeSlicerModules["slicer"]
    slicer.app.temporaryPath = str(tmp_path)
    widget = buildWidget(loadModuleFile(), slicer)
    widget.logic.dependencies.missing = lambda distributions=None: []
    volume = FakeVolumeNode(np.zeros((3, 4, 5), dtype=np.int16), np.diag([0.8, 0.8, 2.0, 1.0]), "CT")
    slicer.mrmlScene.nodes.append(volume)
    widget._parameterNode.inputVolume = volume
    widget.slicer = slicer
    return widget


def _entries(widget):
    combo = widget.ui.taskComboBox
    return [combo.items[i] for i in range(combo.count)]


def test_automatic_is_offered_first_and_chosen_for_several_tasks_only(widget, tmp_path):
    widget.ui.modelPathLineEdit.currentPath = str(writeModel(tmp_path / "two"))
    assert _entries(widget) == ["Automatic", "first", "second"] and widget.ui.taskComboBox.currentText == "Automatic"
    assert widget._parameterNode.task == "auto" and "among first, second" in widget.ui.taskComboBox.toolTip
    widget.ui.modelPathLineEdit.currentPath = str(writeModel(tmp_path / "one", tasks=("only",)))
    assert _entries(widget) == ["only"]
    widget._parameterNode.task = "second"  # a task chosen before (a saved scene) is restored
    widget.ui.modelPathLineEdit.currentPath = str(writeModel(tmp_path / "three"))
    assert widget.ui.taskComboBox.currentText == "second"
    server = ModelInfo.fromServer({"name": "m", "tasks": {t: {"labels": [{"name": "organ", "value": 1}]}
                                                          for t in ("first", "second")}}, "https://gpu.example")
    widget.segmentPanel.useModel(server)  # a server's predict answers the engine's report in a header
    assert _entries(widget) == ["Automatic", "first", "second"]


def _apply(widget, model: Path, report):
    widget.ui.modelPathLineEdit.currentPath = str(model)
    widget.ui.applyButton.click()
    args = widget.fakeJob.args
    assert args[2:4] == ["--task", "auto"] and widget.fakeJob.work.request()["task"] == "auto"  # worker request too
    out = Path(args[args.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    if report is not None:
        (out / "volume.prediction.json").write_text(json.dumps(report))
    labels = np.zeros((3, 4, 5), dtype=np.uint8)
    labels[1, 1:3, 1:4] = 1
    writeEngineResult(args[4], str(out / "volume.seg.nrrd"), labels, ModelInfo.load(model).task("second").labels)
    widget.fakeJob.finish(0)


def test_the_recognised_task_its_score_and_the_warning_are_shown_and_the_result_kept(widget, tmp_path):
    model = writeModel(tmp_path / "model")
    _apply(widget, model, {"task": "second", "recognition": {"score": 0.934, "scores": {"first": 0.066, "second": 0.934},
                                                             "relative_distance": 0.4},
                           "familiarity": {"confidence": 0.71, "familiar": False, "warning": WARNING}})
    widget.slicer.util.errorDisplay.assert_not_called()  # a warning never blocks the result
    assert widget.ui.statusLabel.text == ("Segmentation: done. Task: second (recognised, score 0.93; confidence 0.71). "
                                          f"Warning: {WARNING}")
    result = widget._parameterNode.outputSegmentation
    assert result.GetName() == "CT second" and widget.segmentPanel.taskOfResult() == "second"
    assert widget.segmentPanel.taskLabels() == {"organ": 1}  # Export and Add to task use the recognised task


def test_automatic_without_the_engines_report_is_a_clear_error(widget, tmp_path):
    _apply(widget, writeModel(tmp_path / "model"), report=None)
    assert "recognised a task but wrote no readable volume.prediction.json" in \
        widget.slicer.util.errorDisplay.call_args[0][0]
