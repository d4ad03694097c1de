"""The "Define a task" and "Train / add task" sections.

Qt calls (PythonQt, Qt 5 API): ``QTableWidget.setRowCount/setItem/item``, ``QTableWidgetItem``
with ``setFlags``/``setCheckState``, ``blockSignals``, the ``cellChanged(int,int)`` signal;
``QListWidget.addItem/currentItem/takeItem/row``; ``qt.QFileDialog.getExistingDirectory``.
``qMRMLCheckableNodeComboBox.checkedNodes()`` (``Libs/MRML/Widgets/qMRMLCheckableNodeComboBox.h``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .EngineCommands import addTaskArgs, isSetPath, trainArgs, writePins
from .JobPanel import JobPanel, reportErrors
from .ModuleError import ModuleError
from .TaskDefinition import Grouping, TaskDefinition, uniqueCaseIds

__all__ = ["TaskPanel", "COLUMNS"]

COLUMNS = ("Label", "Relative size", "Present in", "Shared label", "Pinned", "Same shared label in the model")
_SHARED, _PINNED = 3, 4


class TaskPanel:
    """Controller of the task-definition and training sections.

    Args:
        ui: the module's ``ui``.
        logic: the module logic (``sceneIO``).
        jobs: the shared job runner.
        parameterNode: returns the current parameter node (or None).
        currentModel: returns the ``ModelInfo`` chosen in the Segment section (or None).
        slicerModule, qtModule: the ``slicer`` and ``qt`` modules.
    """

    def __init__(self, ui: Any, logic: Any, jobs: JobPanel, parameterNode: Callable[[], Any],
                 currentModel: Callable[[], Any], slicerModule: Any, qtModule: Any) -> None:
        self.ui = ui
        self.logic = logic
        self.jobs = jobs
        self.slicer = slicerModule
        self.qt = qtModule
        self._parameterNode = parameterNode
        self._currentModel = currentModel
        self.definition: Optional[TaskDefinition] = None
        self.grouping: Optional[Grouping] = None
        self.pins: Dict[str, int] = {}
        ui.groupingTableWidget.setColumnCount(len(COLUMNS))
        ui.groupingTableWidget.setHorizontalHeaderLabels(list(COLUMNS))
        ui.computeGroupingButton.connect("clicked(bool)", self.onComputeGrouping)
        ui.groupingTableWidget.connect("cellChanged(int,int)", self.onCellChanged)
        ui.exportDatasetButton.connect("clicked(bool)", self.onExportDataset)
        ui.addDatasetButton.connect("clicked(bool)", self.onAddDataset)
        ui.removeDatasetButton.connect("clicked(bool)", self.onRemoveDataset)
        ui.trainButton.connect("clicked(bool)", self.onTrain)
        ui.addTaskButton.connect("clicked(bool)", self.onAddTask)

    # ----------------------------------------------------------------- define a task
    def defineTask(self) -> TaskDefinition:
        """A ``TaskDefinition`` from the checked segmentations, task name and modality."""
        node = self._parameterNode()
        segmentations = list(self.ui.taskSegmentationsSelector.checkedNodes())
        caseIds = uniqueCaseIds(s.GetName() for s in segmentations)
        cases = [self.logic.sceneIO.caseFromSegmentation(s, c) for s, c in zip(segmentations, caseIds)]
        return TaskDefinition(node.taskName, node.modality, cases)

    @reportErrors
    def onComputeGrouping(self, checked: bool = False) -> None:
        """Measure label sizes and show the grouping against the chosen model's tasks."""
        with self.slicer.util.WaitCursor():
            self.definition = self.defineTask()
            self.pins = {}
            self.refreshGrouping()

    def refreshGrouping(self) -> None:
        """Recompute the grouping with the current pins and fill the table."""
        model = self._currentModel()
        self.grouping = self.definition.grouping(model.plan if model is not None else None, self.pins)
        table = self.ui.groupingTableWidget
        table.blockSignals(True)
        table.setRowCount(len(self.grouping.rows))
        for row, entry in enumerate(self.grouping.rows):
            cells = [
                entry.label, f"{100 * entry.relativeSize:.3g} %", f"{100 * entry.presence:.0f} % of cases",
                str(entry.shared), "", "; ".join(entry.others) or "-",
            ]
            for column, text in enumerate(cells):
                item = self.qt.QTableWidgetItem(text)
                if column == _PINNED:
                    item.setFlags(self.qt.Qt.ItemIsEnabled | self.qt.Qt.ItemIsUserCheckable)
                    item.setCheckState(self.qt.Qt.Checked if entry.label in self.pins else self.qt.Qt.Unchecked)
                elif column != _SHARED:
                    item.setFlags(self.qt.Qt.ItemIsEnabled | self.qt.Qt.ItemIsSelectable)
                table.setItem(row, column, item)
        table.blockSignals(False)
        table.resizeColumnsToContents()
        warnings = list(self.grouping.warnings)
        self.ui.taskWarningsLabel.text = "\n".join(f"Warning: {w}" for w in warnings) if warnings else "No warnings."

    @reportErrors
    def onCellChanged(self, row: int, column: int) -> None:
        """Editing a shared label pins it; unticking "Pinned" releases it."""
        table = self.ui.groupingTableWidget
        label = table.item(row, 0).text()
        previous = dict(self.pins)
        if column == _SHARED:
            text = table.item(row, _SHARED).text().strip()
            if not text.isdigit() or int(text) < 1:
                self.refreshGrouping()
                raise ModuleError(f"The shared label of '{label}' must be a whole number from 1.")
            self.pins[label] = int(text)
        elif column == _PINNED:
            if table.item(row, _PINNED).checkState() == self.qt.Qt.Checked:
                self.pins[label] = int(table.item(row, _SHARED).text())
            else:
                self.pins.pop(label, None)
        else:
            return
        try:
            self.refreshGrouping()
        except ModuleError:
            self.pins = previous
            self.refreshGrouping()
            raise

    @reportErrors
    def onExportDataset(self, checked: bool = False) -> None:
        """Write the task as ``<dataset folder>/<task name>/`` and add it to the training list."""
        node = self._parameterNode()
        if not isSetPath(node.datasetFolder):
            raise ModuleError("Choose the folder the task dataset is written into.")
        definition = self.defineTask()
        folder = Path(node.datasetFolder) / definition.name
        overwrite = (folder / "dataset.json").exists() and self.slicer.util.confirmOkCancelDisplay(
            f"{folder} already holds a dataset. Replace its dataset.json and files of the same cases?"
        )
        colors = self._segmentColors()
        self.logic.dependencies.ensurePackages(["nrrd"])  # NrrdIO writes through pynrrd
        with self.slicer.util.WaitCursor():
            definition.writeDataset(folder, colors, overwrite=overwrite)
        self._addDatasetFolder(str(folder))
        self.ui.statusLabel.text = f"Task dataset written to {folder}."

    def _segmentColors(self) -> Dict[str, List[float]]:
        colors: Dict[str, List[float]] = {}
        for segmentationNode in self.ui.taskSegmentationsSelector.checkedNodes():
            segmentation = segmentationNode.GetSegmentation()
            for index in range(segmentation.GetNumberOfSegments()):
                segment = segmentation.GetSegment(segmentation.GetNthSegmentID(index))
                colors.setdefault(segment.GetName(), list(segment.GetColor()))
        return colors

    # ----------------------------------------------------------------- train / add task
    def datasetFolders(self) -> List[str]:
        widget = self.ui.trainDatasetsListWidget
        return [widget.item(row).text() for row in range(widget.count)]

    def onAddDataset(self, checked: bool = False) -> None:
        folder = self.qt.QFileDialog.getExistingDirectory(None, "Task dataset folder (holding dataset.json)")
        if folder:
            self._addDatasetFolder(folder)

    def onRemoveDataset(self, checked: bool = False) -> None:
        widget = self.ui.trainDatasetsListWidget
        if widget.currentItem() is not None:
            widget.takeItem(widget.row(widget.currentItem()))

    def _addDatasetFolder(self, folder: str) -> None:
        if folder not in self.datasetFolders():
            self.ui.trainDatasetsListWidget.addItem(folder)
        widget = self.ui.trainDatasetsListWidget
        widget.setCurrentRow(self.datasetFolders().index(folder))

    def _pinsFile(self, workDir: str) -> Optional[Path]:
        if self.definition is None or not self.pins:
            return None
        return writePins(Path(workDir) / "pins.json", self.definition.name, self.pins)

    @reportErrors
    def onTrain(self, checked: bool = False) -> None:
        """Train a new model from the listed task folders (or cancel the running training)."""
        if self.jobs.cancelIfRunning(self.ui.trainButton):
            return
        node = self._parameterNode()
        self.logic.dependencies.ensureInstalled()
        workDir = tempfile.mkdtemp(prefix="LabelSharingSeg-train-", dir=self.slicer.app.temporaryPath)
        args = trainArgs(self.datasetFolders(), node.newModelFolder, node.epochs, node.device, self._pinsFile(workDir))
        self.jobs.run("Training", args, self.ui.trainButton, onSuccess=lambda: self._selectModel(node.newModelFolder))

    @reportErrors
    def onAddTask(self, checked: bool = False) -> None:
        """Add the selected task folder to the chosen model, written as a new model folder."""
        if self.jobs.cancelIfRunning(self.ui.addTaskButton):
            return
        node = self._parameterNode()
        model = self._currentModel()
        if model is None:
            raise ModuleError("Choose the model to extend in the Segment section (model folder).")
        item = self.ui.trainDatasetsListWidget.currentItem()
        if item is None:
            raise ModuleError("Select the task dataset folder to add in the list.")
        self.logic.dependencies.ensureInstalled()
        workDir = tempfile.mkdtemp(prefix="LabelSharingSeg-add-", dir=self.slicer.app.temporaryPath)
        args = addTaskArgs(model.folder, item.text(), node.newModelFolder, node.epochs, node.replay, node.device,
                           self._pinsFile(workDir))
        self.jobs.run("Adding the task", args, self.ui.addTaskButton,
                      onSuccess=lambda: self._selectModel(node.newModelFolder))

    def _selectModel(self, folder: Any) -> None:
        """Make a freshly written model the chosen one (and remember it in the recent list)."""
        self.ui.modelPathLineEdit.currentPath = str(folder)
        self.ui.modelPathLineEdit.addCurrentPathToHistory()
