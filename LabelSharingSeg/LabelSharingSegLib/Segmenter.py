"""Segment a volume with a model: export it, run ``labelsharing predict``, load the ``.seg.nrrd`` result.

The run is split in three steps so the widget can run the middle one in the background:
:meth:`Segmenter.prepare` (main thread, writes the input), the engine process, and
:meth:`Segmenter.load` (main thread, creates the segments).

Slicer calls: ``slicer.mrmlScene.AddNewNodeByClass(className, name)``,
``vtkMRMLSegmentationNode.CreateDefaultDisplayNodes()``,
``vtkMRMLTransformableNode.GetTransformNodeID()`` / ``SetAndObserveTransformNodeID(id)``
(``Libs/MRML/Core``), ``slicer.app.temporaryPath`` (used by ``slicer.util.tempDirectory``).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from .EngineCommands import PredictCall
from .ModelInfo import ModelInfo
from .ModuleError import ModuleError
from .PredictionReport import AUTO_TASK, PredictionReport
from .SceneIO import SceneIO
from .SegmentImport import SegmentImporter
from .Translation import tr as _

__all__ = ["SegmentationRequest", "Segmenter"]

_CASE = "volume"


@dataclass
class SegmentationRequest:
    """One segmentation run: inputs, the engine call and its temporary folder.

    ``task`` is a task of the model or ``"auto"`` (the engine recognises it); ``report`` is what the
    engine wrote beside the result (the task it used, the recognition's score, a warning), once loaded.
    """

    inputVolume: Any
    model: ModelInfo
    task: str
    outputSegmentation: Any
    workDir: Path
    call: PredictCall
    report: Optional[PredictionReport] = None

    @property
    def args(self) -> List[str]:
        """The one-shot ``predict`` command line of :attr:`call`."""
        return self.call.args

    @property
    def resultFile(self) -> Path:
        return self.workDir / "output" / f"{_CASE}.seg.nrrd"

    @property
    def reportFile(self) -> Path:
        return self.workDir / "output" / f"{_CASE}.prediction.json"


class Segmenter:
    """Prepares engine runs and turns their results into segments.

    Args:
        sceneIO: node <-> file conversions.
        importer: segment creation.
        slicerModule: the ``slicer`` module (injected by tests; imported when omitted).
    """

    def __init__(self, sceneIO: Optional[SceneIO] = None, importer: Optional[SegmentImporter] = None,
                 slicerModule: Any = None) -> None:
        if slicerModule is None:
            import slicer as slicerModule
        self._slicer = slicerModule
        self._sceneIO = sceneIO or SceneIO(slicerModule)
        self._importer = importer or SegmentImporter(slicerModule)

    def prepare(self, inputVolume: Any, model: ModelInfo, task: str, device: str,
                outputSegmentation: Any = None) -> SegmentationRequest:
        """Write the input volume to a temporary folder and build the ``predict`` call (``task`` may be ``"auto"``)."""
        if inputVolume is None:
            raise ModuleError(_("Choose the input volume."))
        if task != AUTO_TASK:
            model.task(task)
        workDir = Path(tempfile.mkdtemp(prefix="LabelSharingSeg-", dir=self._slicer.app.temporaryPath))
        inputFile = self._sceneIO.writeVolume(inputVolume, workDir / "input" / f"{_CASE}.nrrd")
        call = PredictCall(str(model.folder), task, str(inputFile), str(workDir / "output"), device, model.server)
        return SegmentationRequest(inputVolume, model, task, outputSegmentation, workDir, call)

    def load(self, request: SegmentationRequest) -> Any:
        """Create (or fill) the output segmentation from the engine's result, then clean up.

        Returns:
            the segmentation node, one segment per task label (in the task's order), with the name,
            colour, label value and terminology the engine wrote from the model.
        """
        try:
            if not request.resultFile.is_file():
                raise ModuleError(_("The engine finished but wrote no result ({file}).").format(
                    file=request.resultFile.name))
            request.report = PredictionReport.read(request.reportFile)
            task = request.task
            if task == AUTO_TASK:
                if request.report is None:
                    raise ModuleError(_("The engine recognised a task but wrote no readable {file}.").format(
                        file=request.reportFile.name))
                task = request.report.task
            volume = request.inputVolume
            segmentation = request.outputSegmentation
            if segmentation is None:
                segmentation = self._slicer.mrmlScene.AddNewNodeByClass(
                    "vtkMRMLSegmentationNode", f"{volume.GetName()} {task}"
                )
                segmentation.CreateDefaultDisplayNodes()
            segmentation.SetAndObserveTransformNodeID(volume.GetTransformNodeID())  # the file is in its frame
            names = [label.name for label in request.model.task(task).labels]
            self._importer.importSegmentationFile(request.resultFile, segmentation, names, volume)
            return segmentation
        finally:
            self.cleanup(request)

    @staticmethod
    def cleanup(request: SegmentationRequest) -> None:
        """Delete the temporary folder of a run."""
        shutil.rmtree(request.workDir, ignore_errors=True)
