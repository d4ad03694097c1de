"""The "Export" section: one or all segmentations to a folder, without blocking the UI.

One segmentation is written per timer tick (``qt.QTimer.singleShot(0, f)``, as Slicer's own
``slicer.util`` process polling does), so the progress bar moves and the UI stays responsive.
The actions stay disabled until the last tick, which restores them whatever happens.
``slicer.util.getNodesByClass(className)`` lists the segmentations (``Base/Python/slicer/util.py``).
With the ``dcm`` format a note under the format says how the DICOM SEG will be written, or why it
cannot be (``DicomSegWriter.route``); it follows the format combo box (``QComboBox``
``currentIndexChanged(int)``), the segmentation selector (``qMRMLNodeComboBox``
``currentNodeChanged(vtkMRMLNode*)``) and the Export button (a DICOM series may have been loaded since).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from .EngineCommands import isSetPath
from .Export import BatchExport, SegmentationExporter
from .JobPanel import JobPanel, runAction, userAction
from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["ExportPanel"]

_TITLE = _("Export")


class ExportPanel:
    """Controller of the Export section.

    Args:
        ui: the module's ``ui``.
        logic: the module logic (``exporter``).
        jobs: the shared job runner (busy state, progress).
        parameterNode: returns the current parameter node (or None).
        taskLabels: returns the chosen task's label values (for label-map export).
        slicerModule, qtModule: the ``slicer`` and ``qt`` modules.
    """

    def __init__(self, ui: Any, logic: Any, jobs: JobPanel, parameterNode: Callable[[], Any],
                 taskLabels: Callable[[], Dict[str, int]], slicerModule: Any, qtModule: Any) -> None:
        self.ui = ui
        self.logic = logic
        self.jobs = jobs
        self.slicer = slicerModule
        self.qt = qtModule
        self._parameterNode = parameterNode
        self._taskLabels = taskLabels
        self.batch: Optional[BatchExport] = None
        ui.exportButton.connect("clicked(bool)", self.onExport)
        ui.exportFormatComboBox.connect("currentIndexChanged(int)", lambda index: self.updateNote())
        ui.exportSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node: self.updateNote())

    def updateNote(self) -> None:
        """Show, for the ``dcm`` format, how the chosen segmentation's DICOM SEG would be written (or why not)."""
        dicom = self.ui.exportFormatComboBox.currentText == "dcm"
        if dicom:
            segmentation = self.ui.exportSegmentationSelector.currentNode()
            self.ui.exportNoteLabel.setText(self.logic.exporter.dicom.route(segmentation))
        self.ui.exportNoteLabel.setVisible(dicom)

    @userAction(_TITLE)
    def onExport(self, checked: bool = False) -> None:
        """Start exporting the chosen segmentation, or all of them."""
        self.updateNote()
        node = self._parameterNode()
        if not isSetPath(node.exportFolder):
            raise ModuleError(_("Choose the folder to export into."))
        if node.exportAll:
            nodes = list(self.slicer.util.getNodesByClass("vtkMRMLSegmentationNode"))
        else:
            nodes = [node.exportSegmentation] if node.exportSegmentation is not None else []
        if not nodes:
            raise ModuleError(_("There is no segmentation to export."))
        exporter: SegmentationExporter = self.logic.exporter
        batch = BatchExport(exporter, nodes, node.exportFolder, node.exportFormat, self._taskLabels())
        self.jobs.enterBusy(_("Exporting"))
        self.batch = batch
        self.qt.QTimer.singleShot(0, self._exportNext)

    def stop(self) -> None:
        """Drop the running batch (module cleanup, scene close: its nodes are going)."""
        if self.batch is not None:
            self.batch = None
            self.jobs.leaveBusy()

    def _exportNext(self) -> None:
        batch = self.batch
        if batch is None:  # stopped
            return
        more = False
        try:
            more = bool(runAction(self.slicer, _TITLE, batch.exportNext))
            self.jobs.step(len(batch.written) + len(batch.errors), len(batch.nodes),
                           _("Exported {done} of {total} segmentation(s).").format(
                               done=len(batch.written), total=len(batch.nodes)))
        finally:
            if more:
                self.qt.QTimer.singleShot(0, self._exportNext)
            else:
                self.batch = None
                self.jobs.leaveBusy()
        if not more and batch.errors:
            details = "\n".join(f"{name}: {message}" for name, message in batch.errors)
            self.slicer.util.errorDisplay(
                _("{failed} of {total} segmentation(s) could not be exported.").format(
                    failed=len(batch.errors), total=len(batch.nodes)),
                detailedText=details,
            )
        elif not more:
            self.ui.exportFolderPathLineEdit.addCurrentPathToHistory()
