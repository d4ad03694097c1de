"""LabelSharingSeg: one network for many segmentation tasks, by label sharing, in 3D Slicer.

This file holds the module metadata, the parameter node, a thin widget, the logic facade (usable
from the Python console) and the in-Slicer self-test. The work is done by the helpers in
``LabelSharingSegLib/`` and by the engine (``labelsharing``, bundled next to this file), which
runs in a ``PythonSlicer`` subprocess. Importing this file or building the widget never imports
torch, installs anything or touches the network.

No ``from __future__ import annotations`` here on purpose: ``parameterNodeWrapper`` resolves the
field annotations with ``typing.get_type_hints``; plain annotations (valid on Python 3.9) keep that
independent of how Slicer registers the module.
"""

import os
import pathlib
import shutil
from typing import Annotated, Any, List, Optional, Sequence

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from LabelSharingSegLib.CorrectionPanel import CorrectionPanel
from LabelSharingSegLib.DemoData import DemoFolder, DemoSamples
from LabelSharingSegLib.Dependencies import Dependencies
from LabelSharingSegLib.EngineCommands import DEVICES, addCaseArgs, isSetPath, trainArgs, updateArgs
from LabelSharingSegLib.EngineDefaults import sessionTrainingDefaults
from LabelSharingSegLib.EngineJob import EngineJob
from LabelSharingSegLib.EnginePanel import EnginePanel
from LabelSharingSegLib.Export import EXPORT_FORMATS, SegmentationExporter
from LabelSharingSegLib.ExportPanel import ExportPanel
from LabelSharingSegLib.JobPanel import JobPanel
from LabelSharingSegLib.ModelInfo import ModelInfo
from LabelSharingSegLib.ModelLibrary import ModelLibrary
from LabelSharingSegLib.ModelLibraryPanel import ModelLibraryPanel
from LabelSharingSegLib.ModelOutput import defaultModelsFolder, freeModelName
from LabelSharingSegLib.ModuleError import ModuleError
from LabelSharingSegLib.RemoteEngine import RoutingEngine
from LabelSharingSegLib.ResultPanel import ResultPanel
from LabelSharingSegLib.SceneIO import SceneIO
from LabelSharingSegLib.SegmentPanel import SegmentPanel
from LabelSharingSegLib.Segmenter import Segmenter
from LabelSharingSegLib.ServerClient import EngineSettings
from LabelSharingSegLib.TaskCases import TaskDatasetFolders, checkDatasetFolder, writeCase
from LabelSharingSegLib.TaskDefinition import MODALITIES, TaskDefinition, uniqueCaseIds
from LabelSharingSegLib.TaskPanel import TaskPanel
from LabelSharingSegLib.TrainPanel import TrainPanel
from LabelSharingSegLib.WarmEngine import WarmEngine

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))


class LabelSharingSeg(ScriptedLoadableModule):
    """Module metadata (title, category, help)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LabelSharingSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LabelSharingSeg contributors"]
        self.parent.helpText = _("""
Segment volumes with one network trained on many independent tasks (label sharing, Anand et al.,
MICCAI ADSMI 2024); define new tasks from segmentations in the scene, train or extend models in the
background, and export segmentations. Sample data: the LabelSharingSeg category of the Sample Data
module. See the <a href="https://github.com/labelsharingseg/SlicerLabelSharingSeg#using-it-in-3d-slicer">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Method: Anand et al., "Label Sharing Incremental Learning Framework for Independent Multi-Label
Segmentation Tasks". Built on 3D Slicer, PyTorch and MONAI.
""")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Add the demo cases to the Sample Data module (category LabelSharingSeg; ``LabelSharingSegLib/DemoData.py``)."""
    import SampleData

    samples = DemoSamples(DemoFolder.forUser(slicer.app.slicerUserSettingsFilePath), EngineJob(MODULE_DIR))
    samples.register(SampleData.SampleDataLogic, os.path.join(MODULE_DIR, "Resources", "Icons"))


@parameterNodeWrapper
class LabelSharingSegParameterNode:
    """Settings of the panel, saved with the scene. Names match ``SlicerParameterName`` in the .ui."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelFolder: pathlib.Path = pathlib.Path.home()
    task: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    taskName: str = ""
    modality: Annotated[str, Choice(list(MODALITIES))] = "CT"
    datasetFolder: pathlib.Path = pathlib.Path.home()
    modelsFolder: pathlib.Path  # "" until setup fills in the per-user default (ModelOutput)
    modelName: str = ""
    # defaults and limits from the engine (``labelsharing defaults``, asked when the panel is first shown:
    # TrainPanel.applyEngineDefaults), filled into a node once, which trainingDefaultsSet records
    trainEpochs: int = 0
    addTaskEpochs: int = 0
    replay: float = 0.0
    trainingDefaultsSet: bool = False
    keepLookAlikesApart: bool = False  # train / add-task --keep-look-alikes-apart (opt-in in the engine too)
    exportSegmentation: vtkMRMLSegmentationNode
    exportAll: bool = False
    exportFolder: pathlib.Path = pathlib.Path.home()
    exportFormat: Annotated[str, Choice(list(EXPORT_FORMATS))] = "seg.nrrd"


class LabelSharingSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin widget: loads the .ui, binds it to the parameter node, delegates to the panels."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LabelSharingSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LabelSharingSegLogic()
        ui = self.ui
        buttons = [ui.applyButton, ui.checkDependenciesButton, ui.computeGroupingButton, ui.exportDatasetButton,
                   ui.trainButton, ui.addTaskButton, ui.exportButton, ui.addToTaskButton, ui.chooseTaskDatasetButton,
                   ui.updateModelButton, ui.compareModelsButton]
        job = EngineJob(MODULE_DIR)
        self.engineSettings = EngineSettings(qt.QSettings())  # this computer, or a server (issue 13)
        self.engine = WarmEngine(job)  # Apply reuses one engine process (issue 11)
        # a server's model is segmented on its server (issue 13), everything else by the engine here
        self.jobs = JobPanel(ui, RoutingEngine(self.engine, self.engineSettings.client), buttons, slicer)
        node = lambda: self._parameterNode  # noqa: E731
        self.segmentPanel = SegmentPanel(ui, self.logic, self.jobs, node, slicer)
        self.resultPanel = ResultPanel(ui, slicer)
        model = lambda: self.segmentPanel.model  # noqa: E731
        self.library = ModelLibrary(qt.QSettings())  # the application settings (slicer.util.settingsValue)
        self.trainPanel = TrainPanel(ui, self.logic, self.jobs, node, model, lambda: self.taskPanel.pinsOfDefinedTask(),
                                     slicer, qt, onModelWritten=self.library.add,
                                     engineDefaults=lambda: sessionTrainingDefaults(MODULE_DIR, job.command),
                                     serverUrl=self.engineSettings.serverUrl,
                                     onServerModelWritten=lambda name: self.enginePanel.onServerModelWritten(name))
        self.correctionPanel = CorrectionPanel(ui, self.logic, self.jobs, node, model,
                                               self.segmentPanel.taskOfResult,
                                               TaskDatasetFolders(qt.QSettings()), slicer, qt,
                                               onModelWritten=self.library.add)
        self.taskPanel = TaskPanel(ui, self.logic, self.jobs, node, model, self.trainPanel.addDatasetFolder, slicer, qt)
        self.exportPanel = ExportPanel(ui, self.logic, self.jobs, node, self.segmentPanel.taskLabels, slicer, qt)
        self.enginePanel = EnginePanel(ui, self.engineSettings, self.segmentPanel, slicer, qt, ctk)
        self.libraryPanel = ModelLibraryPanel(ui, self.library, DemoFolder.forUser(slicer.app.slicerUserSettingsFilePath),
                                              self.logic, self.jobs, node, model, slicer, qt, ctk,
                                              serverModels=self.enginePanel.listedModels,
                                              useServerModel=self.enginePanel.chooseModel)
        self.enginePanel.onModelsListed = self.libraryPanel.refresh
        self.jobs.onIdle = self._checkCanApply
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.segmentPanel.onModelFolderChanged(str(self._parameterNode.modelFolder))

    def cleanup(self) -> None:
        """The module is going away (application exit, reload): end running work and the warm engine, reporting nothing."""
        self.jobs.stop()
        self.exportPanel.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.resultPanel.enter()

    def exit(self) -> None:
        self.resultPanel.exit()
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        """The nodes a running job reads or fills are going: cancel it (and an export batch); end the warm engine."""
        self.jobs.cancel()
        self.engine.endWorker()
        self.exportPanel.stop()
        self.resultPanel.onSceneStartClose()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.resultPanel.onSceneEndClose()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        node = self._parameterNode
        if not node.inputVolume:
            node.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not isSetPath(node.modelsFolder):
            node.modelsFolder = defaultModelsFolder(slicer.app.slicerUserSettingsFilePath)
        if not node.modelName.strip():
            node.modelName = freeModelName(node.modelsFolder)

    def setParameterNode(self, parameterNode: Optional[LabelSharingSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.trainPanel.applyEngineDefaults()  # after connectGui, which resets the spin box ranges
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        self.trainPanel.updateTarget()
        if self._parameterNode:
            self.resultPanel.follow(self._parameterNode.outputSegmentation, self._parameterNode.inputVolume)
        self.correctionPanel.refresh()
        if self.jobs.isBusy:
            return
        ok, reason = self.segmentPanel.canApply()
        self.ui.applyButton.enabled = ok
        self.ui.applyButton.toolTip = reason


class LabelSharingSegLogic(ScriptedLoadableModuleLogic):
    """Facade for scripts and the widget; see the helpers it holds for details.

    Example (Python console)::

        logic = slicer.util.getModuleLogic("LabelSharingSeg")
        seg = logic.segment(slicer.util.getNode("CTChest"), "/models/abdomen", "abdomen_ct")
    """

    def __init__(self, sceneIO: Optional[SceneIO] = None, segmenter: Optional[Segmenter] = None,
                 dependencies: Optional[Dependencies] = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.sceneIO = sceneIO or SceneIO(slicer, vtk)
        self.segmenter = segmenter or Segmenter(self.sceneIO, slicerModule=slicer)
        self.dependencies = dependencies or Dependencies(slicer)
        self.exporter = SegmentationExporter(self.sceneIO, slicer,
                                             runEngine=lambda args: EngineJob(MODULE_DIR).runBlocking(args))

    def getParameterNode(self) -> LabelSharingSegParameterNode:
        return LabelSharingSegParameterNode(super().getParameterNode())

    @staticmethod
    def loadModel(folder: Any) -> ModelInfo:
        """The tasks, labels and colours of a model folder (reads model.json only)."""
        return ModelInfo.load(folder)

    def defineTask(self, name: str, modality: str, segmentationNodes: Sequence[Any]) -> TaskDefinition:
        """A task from segmentation nodes (each with its reference volume)."""
        caseIds = uniqueCaseIds(node.GetName() for node in segmentationNodes)
        cases = [self.sceneIO.caseFromSegmentation(n, c) for n, c in zip(segmentationNodes, caseIds)]
        return TaskDefinition(name, modality, cases)

    def segment(self, inputVolume: Any, modelFolder: Any, task: str, device: str = "auto",
                outputSegmentation: Any = None) -> Any:
        """Segment a volume and wait for the result (blocking; the UI uses the background path)."""
        self.dependencies.ensureInstalled()  # before writing the input: the engine run needs them
        request = self.segmenter.prepare(inputVolume, self.loadModel(modelFolder), task, device, outputSegmentation)
        self._runEngine(request.args)
        return self.segmenter.load(request)

    def train(self, datasets: List[Any], outFolder: Any, epochs: Optional[int] = None,
              device: str = "auto") -> ModelInfo:
        """Train a new model from task dataset folders into a new folder and wait for it (blocking).

        ``epochs``: ``None`` leaves the engine's default (``labelsharing defaults``).
        """
        self._runEngine(trainArgs(datasets, outFolder, epochs, device))
        return self.loadModel(outFolder)

    def addCase(self, inputVolume: Any, segmentation: Any, modelFolder: Any, task: str, datasetFolder: Any) -> None:
        """Add a volume and its (corrected) segmentation as a new case of the task's dataset folder (blocking)."""
        model = self.loadModel(modelFolder)
        folder = checkDatasetFolder(datasetFolder, model.task(task))
        files = writeCase(self.sceneIO, self.exporter, inputVolume, segmentation, model.task(task),
                          slicer.app.temporaryPath)
        try:
            self._runEngine(addCaseArgs(folder, files.image, files.label))
        finally:
            shutil.rmtree(files.workDir, ignore_errors=True)

    def update(self, modelFolder: Any, task: str, datasetFolder: Any, outFolder: Any, epochs: Optional[int] = None,
               replay: float = 0.5, device: str = "auto") -> ModelInfo:
        """Fine-tune a task on its grown dataset folder into a new model folder and wait for it (blocking)."""
        self._runEngine(updateArgs(modelFolder, task, datasetFolder, outFolder, epochs or 0, replay, device))
        return self.loadModel(outFolder)

    def _runEngine(self, args: List[str]) -> None:
        self.dependencies.ensureInstalled()
        result = EngineJob(MODULE_DIR).runBlocking(args)
        if not result.succeeded:
            raise ModuleError(result.errorMessage, result.log)


class LabelSharingSegTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test: segment import from a known label map, the engine's training defaults, a
    real engine run whose ``.seg.nrrd`` result Slicer's reader loads, that result added to the task as a
    corrected case and the model updated on it, and the DICOM SEG export's refusal of a volume not
    loaded from DICOM."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_importKnownLabelmap()
        self.setUp()
        self.test_engineDefaults()
        self.setUp()
        self.test_segmentWithTinyModel()
        self.setUp()
        self.test_dicomSegNeedsDicomSource()

    def _boxVolume(self):
        import numpy as np

        voxels = np.zeros((8, 32, 32), dtype=np.int16)
        voxels[2:6, 8:24, 8:20] = 200  # "organ"
        voxels[3:5, 12:16, 10:14] = 400  # "lesion" inside it
        ijkToRas = np.diag([-0.8, -0.7, 2.5, 1.0])
        return slicer.util.addVolumeFromArray(voxels, ijkToRas, "box"), voxels

    def test_importKnownLabelmap(self):
        """Segments get the task's names, colours, terminology and exactly the label map's voxels."""
        import numpy as np

        from labelsharing.plan import EXAMPLE_ENTRY
        from LabelSharingSegLib.SegmentImport import SegmentImporter, SegmentSpec

        volume, voxels = self._boxVolume()
        labels = (voxels == 200).astype(np.uint8) + 2 * (voxels == 400).astype(np.uint8)
        labelmap = SceneIO().addLabelmapFromArray(labels, SceneIO().ijkToRas(volume), "known")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        specs = [SegmentSpec("organ", 1, (0.9, 0.5, 0.1), EXAMPLE_ENTRY), SegmentSpec("lesion", 2, (0.1, 0.2, 0.9))]
        ids = SegmentImporter().importLabelmap(labelmap, segmentation, specs, volume)
        properties = SceneIO().segmentProperties(segmentation)
        for spec, segmentId in zip(specs, ids):
            segment = segmentation.GetSegmentation().GetSegment(segmentId)
            self.assertEqual(segment.GetName(), spec.name)
            np.testing.assert_allclose(segment.GetColor(), spec.color, atol=1e-6)
            self.assertEqual(properties[spec.name].terminology, spec.terminology)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
            np.testing.assert_array_equal(mask > 0, labels == spec.value)

    def test_dicomSegNeedsDicomSource(self):
        """A volume not loaded from DICOM has no DICOM images to refer to: DICOM SEG export says so, writes nothing."""
        import tempfile

        from LabelSharingSegLib.ModuleError import ModuleError

        volume, voxels = self._boxVolume()
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "box_seg")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentation.GetSegmentation().AddEmptySegment("organ", "organ")
        exporter = LabelSharingSegLogic().exporter
        self.assertIn("DICOM module", exporter.dicom.route(segmentation))
        folder = tempfile.mkdtemp(dir=slicer.app.temporaryPath)
        with self.assertRaises(ModuleError):
            exporter.export(segmentation, folder, "dcm")
        self.assertEqual(os.listdir(folder), [])

    def test_engineDefaults(self):
        """The engine answers ``labelsharing defaults --json`` under PythonSlicer: epochs at least 1, replay in [0, 1)."""
        defaults = sessionTrainingDefaults(MODULE_DIR, EngineJob(MODULE_DIR).command)
        self.assertEqual(defaults["train"]["epochs"].spinBoxRange()[0], 1)
        self.assertEqual(defaults["add-task"]["replay"].spinBoxRange(decimals=2), (0.0, 0.99))

    def test_segmentWithTinyModel(self):
        """Train a tiny model on the box task in a subprocess, then segment with it."""
        import importlib.util
        import tempfile

        if importlib.util.find_spec("torch") is None:
            self.delayDisplay("torch is not installed: skipping the engine run")
            return
        from LabelSharingSegLib.SegmentImport import SegmentImporter, SegmentSpec

        volume, voxels = self._boxVolume()
        labels = (voxels >= 200).astype("uint8") + (voxels == 400).astype("uint8")
        labelmap = SceneIO().addLabelmapFromArray(labels, SceneIO().ijkToRas(volume), "train")
        training = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "box_case")
        specs = [SegmentSpec("organ", 1, (0.9, 0.5, 0.1)), SegmentSpec("lesion", 2, (0.1, 0.2, 0.9))]
        SegmentImporter().importLabelmap(labelmap, training, specs, volume)
        logic = LabelSharingSegLogic()
        logic.dependencies.ensureInstalled()  # writeDataset needs pynrrd
        work = tempfile.mkdtemp(dir=slicer.app.temporaryPath)
        logic.defineTask("box", "CT", [training]).writeDataset(os.path.join(work, "box"))
        model = logic.train([os.path.join(work, "box")], os.path.join(work, "model"), epochs=2, device="cpu")
        result = logic.segment(volume, model.folder, "box", device="cpu")
        task = model.task("box")
        names = [result.GetSegmentation().GetNthSegment(i).GetName() for i in range(len(task.labels))]
        self.assertEqual(names, [label.name for label in task.labels])
        values = [result.GetSegmentation().GetNthSegment(i).GetLabelValue() for i in range(len(task.labels))]
        self.assertEqual(values, [label.value for label in task.labels])  # read from the .seg.nrrd by Slicer
        first = result.GetSegmentation().GetNthSegment(0)
        self.assertEqual(tuple(round(c, 4) for c in first.GetColor()), tuple(round(c, 4) for c in task.labels[0].color))
        self.assertIsNone(result.GetStorageNode())  # nothing points at the deleted temporary file
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 2)  # training + result
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(result, result.GetSegmentation().GetNthSegmentID(0), volume)
        self.assertEqual(mask.shape, voxels.shape)
        # correct and teach: the result (taken as corrected) becomes a case, and the model learns it
        logic.addCase(volume, result, model.folder, "box", os.path.join(work, "box"))
        self.assertEqual(sorted(os.listdir(os.path.join(work, "box", "labelsTr"))), ["box_case.nrrd", "case_000.nrrd"])
        updated = logic.update(model.folder, "box", os.path.join(work, "box"), os.path.join(work, "model_2"),
                               epochs=1, device="cpu")
        self.assertEqual(updated.parent, str(pathlib.Path(model.folder).resolve()))
        self.assertIn("case_000", updated.task("box").trainingCases)
