"""The demo: cases registered with the Sample Data module and written by the engine's own generator,
and the demo model trained on first use through the engine command line (FAKE slicer/qt surface,
fakes.py; FakeSampleDataLogic below imitates Slicer's SampleData module; the engine runs for real
where a test says so)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from LabelSharingSegLib.DemoData import DEMO_CASES, DEMO_TASKS, DEMO_TRAINING, DemoFolder, DemoSamples
from LabelSharingSegLib.EngineProcess import EngineResult

from .fakes import MODULE_DIR, FakeVolumeNode
from .widget_harness import buildWidget, loadModuleFile, writeModel

ICONS = MODULE_DIR / "Resources" / "Icons"


class FakeSampleDataLogic:
    """SampleData.SampleDataLogic (Modules/Scripted/SampleData/SampleData.py, 5.8.0): the static
    ``registerCustomSampleDataSource`` with its exact keywords, and ``SampleDataSource``'s rule that a
    string ``uris`` makes every field a one-item list and all fields have the same length.
    ``registerCustomSampleDataCategory(category, title)`` exists only in main (``withCategories``)."""

    def __init__(self, withCategories: bool = False) -> None:
        self.sources, self.categories = [], []
        if withCategories:
            self.registerCustomSampleDataCategory = lambda category, title: self.categories.append((category, title))

    def registerCustomSampleDataSource(self, category="Custom", sampleName=None, uris=None, fileNames=None,
                                       nodeNames=None, customDownloader=None, thumbnailFileName=None,
                                       loadFileTypes=None, loadFiles=None, loadFileProperties={}, checksums=None,
                                       loadFileType=None):
        if isinstance(uris, str):
            uris, fileNames, nodeNames, loadFileTypes = [uris], [fileNames], [nodeNames], [loadFileTypes]
        assert len(uris) == len(fileNames) == len(nodeNames) == len(loadFileTypes)
        self.sources.append(types.SimpleNamespace(category=category, sampleName=sampleName, uris=uris,
                                                  fileNames=fileNames, nodeNames=nodeNames, loadFileTypes=loadFileTypes,
                                                  thumbnailFileName=thumbnailFileName,
                                                  customDownloader=customDownloader))


class EngineCli:
    """Stands in for EngineJob.runBlocking: runs ``python -m labelsharing <args>`` for real."""

    def __init__(self, succeed: bool = True) -> None:
        self.calls, self.succeed = [], succeed

    def runBlocking(self, args, onLog=None) -> EngineResult:
        self.calls.append(list(args))
        if not self.succeed:
            return EngineResult(1, False, "disk full", "log text")
        result = subprocess.run([sys.executable, "-m", "labelsharing", *args], capture_output=True, text=True,
                                timeout=300)
        return EngineResult(result.returncode, False, result.stderr[-200:], result.stdout + result.stderr)


def test_demo_settings_are_the_engines_quick_demo_and_its_work_folder():
    from labelsharing.train.checkpoint import work_folder_for
    from labelsharing.demo.run import DemoSettings

    quick = DemoSettings.quick()
    assert DEMO_CASES == quick.cases
    assert dict(DEMO_TRAINING) == {"--epochs": str(quick.epochs), "--steps-per-epoch": str(quick.steps_per_epoch),
                                   "--input-size": str(quick.input_size)}
    folder = DemoFolder("/data/demo")
    assert folder.workFolder == work_folder_for(folder.model)


def test_the_engine_writes_the_files_the_samples_name(tmp_path):
    """``labelsharing demo-data`` (numpy + SimpleITK only) writes every registered file; ``train`` accepts the
    demo training arguments."""
    from labelsharing.cli import build_parser

    folder = DemoFolder(tmp_path / "demo")
    assert not folder.hasData()
    result = EngineCli().runBlocking(folder.dataArgs())
    assert result.succeeded, result.log
    assert folder.hasData() and not folder.hasModel()
    for task in DEMO_TASKS:
        image, label = folder.sampleFiles(task)
        assert image.is_file() and label.is_file(), task
        specs = folder.segmentSpecs(task)
        assert [s.value for s in specs] == sorted(s.value for s in specs) and len(specs) >= 3
    assert [s.name for s in folder.segmentSpecs(DEMO_TASKS[2])] == ["femur", "tibia", "patella", "fibula"]
    args = build_parser().parse_args(folder.trainArgs("cpu"))
    assert args.datasets == [str(f) for f in folder.taskFolders()] and args.epochs == 12 and args.input_size == 64
    assert not args.resume
    folder.workFolder.mkdir()
    assert build_parser().parse_args(folder.trainArgs("cpu")).resume  # a cancelled run is continued


@pytest.mark.parametrize("withCategories", [False, True], ids=["5.8", "main"])
def test_each_demo_task_is_a_sample_with_its_thumbnail(fakeSlicerModules, tmp_path, withCategories):
    logic = FakeSampleDataLogic(withCategories)
    folder = DemoFolder(tmp_path / "demo")
    DemoSamples(folder, EngineCli(), fakeSlicerModules["slicer"]).register(logic, ICONS)
    assert [s.sampleName for s in logic.sources] == ["Demo abdomen CT", "Demo brain MR", "Demo knee X-ray",
                                                     "Demo chest X-ray"]
    assert logic.categories == ([("LabelSharingSeg", "LabelSharingSeg")] if withCategories else [])
    for source, task in zip(logic.sources, DEMO_TASKS):
        assert source.category == "LabelSharingSeg" and source.loadFileTypes == ["VolumeFile"]
        assert source.uris == [folder.sampleFiles(task)[0].as_uri()] and source.uris[0].startswith("file://")
        assert source.nodeNames == [task.nodeName] and Path(source.thumbnailFileName).is_file()


def test_clicking_a_sample_writes_the_data_once_and_loads_image_and_named_reference(fakeSlicerModules, tmp_path):
    slicer = fakeSlicerModules["slicer"]
    logic, engine = FakeSampleDataLogic(), EngineCli()
    folder = DemoFolder(tmp_path / "demo")
    DemoSamples(folder, engine, slicer).register(logic, ICONS)
    knee = logic.sources[2]
    volume, reference = knee.customDownloader(knee)  # what the Sample Data button calls
    assert [call[0] for call in engine.calls] == ["demo-data"]
    assert volume.GetName() == "LabelSharingSegDemo_KneeXR" and volume.voxels.ndim == 2
    segments = reference.GetSegmentation().segments
    assert [s.GetName() for s in segments.values()] == ["femur", "tibia", "patella", "fibula"]
    [(labelmap, target, ids)] = slicer.segmentationsLogic.imports
    assert target is reference and ids == list(segments)  # label value v -> the segment of value v
    assert labelmap.className == "vtkMRMLLabelMapVolumeNode" and labelmap not in slicer.mrmlScene.nodes
    assert reference.referenceVolume is volume
    defaultColors = [s.GetColor() for s in segments.values()]
    writeModel(folder.model, ("KneeXR",))  # once the demo model exists its colours are used
    _, reference = knee.customDownloader(knee)
    assert [(s.GetName(), s.GetColor()) for s in reference.GetSegmentation().segments.values()] == [
        ("organ", (1.0, 0.0, 0.0))]
    chest = logic.sources[3]
    _, reference = chest.customDownloader(chest)  # a task the model lacks: default colours, no error
    assert [s.GetName() for s in reference.GetSegmentation().segments.values()] == ["left_lung", "right_lung", "heart"]
    (folder.model / "model.json").write_text("{")
    _, reference = knee.customDownloader(knee)  # an unreadable model: default colours, no error
    assert [s.GetColor() for s in reference.GetSegmentation().segments.values()] == defaultColors
    slicer.util.errorDisplay.assert_not_called()
    assert len(engine.calls) == 1  # the data was written once


def test_a_failing_engine_is_shown_as_an_error(fakeSlicerModules, tmp_path):
    slicer = fakeSlicerModules["slicer"]
    logic = FakeSampleDataLogic()
    DemoSamples(DemoFolder(tmp_path / "demo"), EngineCli(succeed=False), slicer).register(logic, ICONS)
    assert logic.sources[0].customDownloader(logic.sources[0]) is None
    assert slicer.util.errorDisplay.call_args[0][0] == "Writing the demo data failed: disk full"
    assert slicer.util.errorDisplay.call_args[1]["detailedText"] == "log text"


def test_the_module_registers_the_samples_when_slicer_has_started(fakeSlicerModules, monkeypatch):
    """The template's ``slicer.app.connect("startupCompleted()", registerSampleData)``."""
    slicer = fakeSlicerModules["slicer"]
    module = loadModuleFile()
    module.LabelSharingSeg(types.SimpleNamespace())
    [(signal, slot)] = slicer.app.connections
    assert signal == "startupCompleted()" and slot is module.registerSampleData
    logic = FakeSampleDataLogic()
    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(SampleDataLogic=logic))
    slot()
    assert len(logic.sources) == 4
    expected = DemoFolder.forUser(slicer.app.slicerUserSettingsFilePath).sampleFiles(DEMO_TASKS[0])[0]
    assert logic.sources[0].uris == [expected.as_uri()]


# ----------------------------------------------------------------------------- the demo model button
@pytest.fixture
def env(fakeSlicerModules, tmp_path):
    slicer = fakeSlicerModules["slicer"]
    slicer.app.slicerUserSettingsFilePath = str(tmp_path / "settings" / "slicer.org" / "Slicer.ini")
    module = loadModuleFile()
    widget = buildWidget(module, slicer)
    widget.logic.dependencies._version = lambda name: "1.0"
    return module, widget, slicer


def test_the_demo_model_is_trained_once_then_used(env, tmp_path):
    module, widget, slicer = env
    panel = widget.libraryPanel
    demo = panel.demo
    assert demo.root == tmp_path / "settings" / "slicer.org" / "LabelSharingSeg" / "demo"
    assert panel.demoButton.text == "Train the demo model"
    widget._parameterNode.inputVolume = FakeVolumeNode(None, [[1]], "LabelSharingSegDemo_KneeXR_1")
    widget._parameterNode.device = "cpu"
    panel.demoButton.click()
    assert widget.fakeJob.args == demo.dataArgs() and panel.demoButton.text == "Cancel"
    widget.fakeJob.finish(0)
    assert widget.fakeJob.args == demo.trainArgs("cpu") and panel.demoButton.text == "Cancel"
    writeModel(demo.model, [task.task for task in DEMO_TASKS])  # what the engine writes
    widget.fakeJob.finish(0)
    assert [(e.name, e.source) for e in widget.library.entries()] == [("model", "demo")]
    assert widget.ui.modelPathLineEdit.currentPath == str(demo.model)
    assert widget.ui.taskComboBox.currentText == "KneeXR"  # the task of the loaded demo case
    assert panel.demoButton.text == "Use the demo model" and panel.demoButton.enabled
    widget.fakeJob.args = None
    widget.ui.modelPathLineEdit.currentPath = ""
    panel.demoButton.click()
    assert widget.fakeJob.args is None and widget.ui.modelPathLineEdit.currentPath == str(demo.model)


def test_a_cancelled_demo_training_is_continued_next_time(env):
    module, widget, slicer = env
    panel, demo = widget.libraryPanel, widget.libraryPanel.demo
    for task in demo.taskFolders():  # the data is there already: training starts at once
        task.mkdir(parents=True)
        (task / "dataset.json").write_text("{}")
    panel.demoButton.click()
    assert widget.fakeJob.args[0] == "train" and "--resume" not in widget.fakeJob.args
    demo.workFolder.mkdir()  # the engine's checkpoints
    panel.demoButton.click()  # Cancel
    assert widget.ui.statusLabel.text == "Training the demo model: cancelled." and panel.demoButton.enabled
    panel.demoButton.click()
    assert widget.fakeJob.args[-1] == "--resume"
