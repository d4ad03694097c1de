"""Slicer's own process stays light and never outlives its engine jobs (issue 10, items 1 and 9).

FAKE slicer/qt surface (fakes*.py, widget_harness.py); real child processes for the job tests.
"""

from __future__ import annotations

import importlib.abc
import subprocess
import sys
import types

import psutil
import pytest

from LabelSharingSegLib.EngineJob import EngineJob

from .fakes import FakeSegmentationNode
from .test_slicer_widget_actions import _segmentationFromFile, _volume
from .widget_harness import buildWidget, loadModuleFile, writeModel

#: torch, MONAI and the engine's training/inference code: only the engine subprocess may import them
HEAVY = ("torch", "monai", "labelsharing.train.trainer", "labelsharing.train.task_data", "labelsharing.train.incremental",
         "labelsharing.model.network", "labelsharing.infer.predictor", "labelsharing.data.datasets", "labelsharing.train.checkpoint",
         "labelsharing.train.distributed", "labelsharing.infer.evaluation")


def _heavy(name: str) -> bool:
    return any(name == h or name.startswith(h + ".") for h in HEAVY)


class _FakePyTorchUtilsLogic:
    """PyTorchUtils.PyTorchUtilsLogic (fepegar/SlicerPyTorch PyTorchUtils/PyTorchUtils.py, e1c85cc,
    lines 157-170): torchInstalled() reads the metadata, then imports torch."""

    @staticmethod
    def torchInstalled():
        import torch  # noqa: F401  (as the original does)

        return True


class _Forbid(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if _heavy(name):
            raise AssertionError(f"Slicer's process imported {name}")
        return None


def test_the_panels_actions_never_import_torch_monai_or_the_training_code(fakeSlicerModules, tmp_path):
    """Every action of the panel, with the real dependency check (importlib.metadata)."""
    for name in [n for n in sys.modules if _heavy(n)]:
        del sys.modules[name]  # restored by fakeSlicerModules
    guard = _Forbid()
    sys.meta_path.insert(0, guard)
    try:
        slicer = fakeSlicerModules["slicer"]
        slicer.app.temporaryPath = str(tmp_path)
        sys.modules["qt"].QTimer.singleShot = lambda ms, function: function()
        sys.modules["PyTorchUtils"] = types.SimpleNamespace(PyTorchUtilsLogic=_FakePyTorchUtilsLogic)
        widget = buildWidget(loadModuleFile(), slicer)
        ui, node = widget.ui, widget._parameterNode
        ui.checkDependenciesButton.click()
        source = _volume(slicer, "source")
        segmentation = _segmentationFromFile(slicer, source)
        node.taskName, node.datasetFolder, node.modelsFolder = "abdomen", tmp_path, tmp_path
        node.inputVolume, node.exportFolder, node.exportSegmentation = source, tmp_path / "out", segmentation
        ui.modelPathLineEdit.currentPath = str(writeModel(tmp_path / "base"))
        ui.taskSegmentationsSelector.check([segmentation])
        for button in (ui.computeGroupingButton, ui.exportDatasetButton,
                       ui.applyButton, ui.exportButton, ui.addTaskButton, ui.trainButton):
            button.click()
            if widget.fakeJob.isRunning:
                widget.logic.segmenter.load = lambda request: FakeSegmentationNode("result")
                widget.fakeJob.finish(0)
        slicer.util.errorDisplay.assert_not_called()
        assert widget.fakeJob.args[0] == "train"  # the last engine run
    finally:
        sys.meta_path.remove(guard)
    assert not [name for name in sys.modules if _heavy(name)]


def test_the_engine_defaults_do_not_import_torch():
    code = "import sys, labelsharing.cli as c; c.training_defaults(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----------------------------------------------------------------------------- item 1
def _startLauncherJob(widget, monkeypatch, tmp_path):
    """A stand-in for PythonSlicer: a launcher process whose child is the 'engine' (Slicer's
    AppLauncher starts the real interpreter as a child and waits for it)."""
    pidFile = tmp_path / "engine.pid"
    engine = f"import os, time; open({str(pidFile)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    launcher = f"import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', {engine!r}]))"
    monkeypatch.setattr(EngineJob, "command", lambda self, args: ([sys.executable, "-c", launcher], None))
    job = EngineJob("unused", sys.modules["slicer"], sys.modules["qt"])
    widget.jobs._job = job
    finished = []
    widget.jobs.run("Segmentation", ["predict"], widget.ui.applyButton, onSuccess=lambda: finished.append("ok"),
                    onEnd=lambda: finished.append("end"))
    while not pidFile.exists() or not pidFile.read_text():
        psutil.wait_procs([], timeout=0.05)
    return job, psutil.Process(int(pidFile.read_text())), finished


@pytest.mark.parametrize("event", ["cleanup", "scene close"])
def test_module_cleanup_and_scene_close_end_the_engine_tree(fakeSlicerModules, tmp_path, monkeypatch, event):
    slicer = fakeSlicerModules["slicer"]
    widget = buildWidget(loadModuleFile(), slicer)
    job, engine, finished = _startLauncherJob(widget, monkeypatch, tmp_path)
    if event == "cleanup":
        widget.cleanup()
    else:
        widget.onSceneStartClose(None, None)
    gone, alive = psutil.wait_procs([engine], timeout=5)
    assert not alive, f"the engine outlived the {event}"
    if event == "cleanup":  # the widgets are going: the timer stops and nothing is reported
        job._timer.stop.assert_called()
        job._poll()
        assert finished == [] and not job.isRunning
    else:  # the scene closes, the module stays: the end is reported as a cancel
        while job.isRunning:
            job._poll()
        assert finished == ["end"] and widget.ui.statusLabel.text == "Segmentation: cancelled."
