"""The "Define a task" section: segmentations and their source volumes, grouping, dataset folder.

Qt calls (PythonQt, Qt 5 API): ``QTableWidget.setRowCount/setItem/item``, ``QTableWidgetItem``
with ``setFlags``/``setCheckState``, ``blockSignals``, the ``cellChanged(int,int)`` signal.
``qMRMLCheckableNodeComboBox.checkedNodes()`` and its ``checkedNodesChanged()`` signal
(``Libs/MRML/Widgets/qMRMLCheckableNodeComboBox.h``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

from .EngineCommands import isSetPath
from .JobPanel import JobPanel, userAction
from .ModuleError import ModuleError
from .SceneIO import SegmentProperties
from .SourceVolumes import SourceVolumeTable
from .TaskDefinition import Grouping, TaskDefinition, uniqueCaseIds
from .Translation import tr as _

__all__ = ["TaskPanel", "COLUMNS"]

COLUMNS = (_("Label"), _("Relative size"), _("Present in"), _("Shared label"), _("Pinned"),
           _("Same shared label in the model"), _("Sub-task (overlapping segments)"))
_SHARED, _PINNED = 3, 4


class TaskPanel:
    """Controller of the task-definition section.

    Args:
        ui: the module's ``ui``.
        logic: the module logic (``sceneIO``, ``dependencies``).
        jobs: the shared job runner.
        parameterNode: returns the current parameter node (or None).
        currentModel: returns the ``ModelInfo`` chosen in the Segment section (or None).
        addDatasetFolder: adds a written dataset folder to the training list.
        slicerModule, qtModule: the ``slicer`` and ``qt`` modules.
    """

    def __init__(self, ui: Any, logic: Any, jobs: JobPanel, parameterNode: Callable[[], Any],
                 currentModel: Callable[[], Any], addDatasetFolder: Callable[[str], None],
                 slicerModule: Any, qtModule: Any) -> None:
        self.ui = ui
        self.logic = logic
        self.jobs = jobs
        self.slicer = slicerModule
        self.qt = qtModule
        self._parameterNode = parameterNode
        self._currentModel = currentModel
        self._addDatasetFolder = addDatasetFolder
        self.sourceVolumes = SourceVolumeTable(ui.sourceVolumesTableWidget, logic.sceneIO, slicerModule, qtModule)
        self.definition: Optional[TaskDefinition] = None
        self.grouping: Optional[Grouping] = None
        self.pins: Dict[str, int] = {}
        ui.groupingTableWidget.setColumnCount(len(COLUMNS))
        ui.groupingTableWidget.setHorizontalHeaderLabels(list(COLUMNS))
        ui.computeGroupingButton.connect("clicked(bool)", self.onComputeGrouping)
        ui.groupingTableWidget.connect("cellChanged(int,int)", self.onCellChanged)
        ui.exportDatasetButton.connect("clicked(bool)", self.onExportDataset)
        ui.taskSegmentationsSelector.connect("checkedNodesChanged()", self.onSegmentationsChanged)

    def onSegmentationsChanged(self) -> None:
        """List the ticked segmentations with a source-volume selector each."""
        self.sourceVolumes.refresh(list(self.ui.taskSegmentationsSelector.checkedNodes()))

    def defineTask(self, step: Optional[Callable[[int, int, str], None]] = None) -> TaskDefinition:
        """A ``TaskDefinition`` from the ticked segmentations (with their source volumes), name and modality.

        ``step(done, total, text)`` is called before reading each case.
        """
        node = self._parameterNode()
        segmentations = list(self.ui.taskSegmentationsSelector.checkedNodes())
        caseIds = uniqueCaseIds(s.GetName() for s in segmentations)
        cases = []
        for done, (segmentation, caseId) in enumerate(zip(segmentations, caseIds)):
            if step is not None:
                step(done, len(segmentations), _("Reading {name} ({number} of {total})...").format(
                    name=segmentation.GetName(), number=done + 1, total=len(segmentations)))
            volume = self.sourceVolumes.sourceVolume(segmentation)
            cases.append(self.logic.sceneIO.caseFromSegmentation(segmentation, caseId, volume))
        return TaskDefinition(node.taskName, node.modality, cases)

    @userAction(_("Computing the grouping"))
    def onComputeGrouping(self, checked: bool = False) -> None:
        """Measure label sizes and show the grouping against the chosen model's tasks."""
        with self.jobs.busy(_("Measuring the labels")) as step:
            self.definition = self.defineTask(step)
            self.pins = {}
            self.refreshGrouping()

    def pinsOfDefinedTask(self) -> Optional[tuple]:
        """``(task name, {label: shared label})`` of the pins edited in the table, or ``None``."""
        if self.definition is None or not self.pins:
            return None
        return self.definition.name, dict(self.pins)

    def refreshGrouping(self) -> None:
        """Recompute the grouping with the current pins and fill the table."""
        model = self._currentModel()
        self.grouping = self.definition.grouping(model.plan if model is not None else None, self.pins)
        table = self.ui.groupingTableWidget
        table.blockSignals(True)
        table.setRowCount(len(self.grouping.rows))
        for row, entry in enumerate(self.grouping.rows):
            cells = [
                entry.label, f"{100 * entry.relativeSize:.3g} %",
                _("{percent} % of cases").format(percent=f"{100 * entry.presence:.0f}"),
                str(entry.shared), "", "; ".join(entry.others) or "-",
                entry.subtask or "-",
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
        self.ui.taskWarningsLabel.text = (
            "\n".join(_("Warning: {warning}").format(warning=w) for w in warnings) if warnings else _("No warnings."))

    @userAction(_("Pinning a shared label"))
    def onCellChanged(self, row: int, column: int) -> None:
        """Editing a shared label pins it; unticking "Pinned" releases it."""
        table = self.ui.groupingTableWidget
        label = table.item(row, 0).text()
        previous = dict(self.pins)
        if column == _SHARED:
            text = table.item(row, _SHARED).text().strip()
            if not text.isdigit() or int(text) < 1:
                self.refreshGrouping()
                raise ModuleError(_("The shared label of '{label}' must be a whole number from 1.").format(label=label))
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

    @userAction(_("Writing the task dataset"))
    def onExportDataset(self, checked: bool = False) -> None:
        """Write the task as ``<dataset folder>/<task name>/`` and add it to the training list."""
        node = self._parameterNode()
        if not isSetPath(node.datasetFolder):
            raise ModuleError(_("Choose the folder the task dataset is written into."))
        if not node.taskName.strip():
            raise ModuleError(_("Give the task a name (for example 'abdomen_ct'); it names the dataset's folder."))
        folder = Path(node.datasetFolder) / node.taskName.strip()
        overwrite = (folder / "dataset.json").exists() and self.slicer.util.confirmOkCancelDisplay(
            _("{folder} already holds a dataset. Replace its dataset.json and files of the same cases?").format(folder=folder)
        )
        self.jobs.installMissing(self.logic.dependencies, ["pynrrd"])  # NrrdIO writes through pynrrd
        with self.jobs.busy(_("Writing the task dataset")) as step:
            definition = self.defineTask(step)
            properties = self._segmentProperties()
            colors = {name: p.color for name, p in properties.items()}
            terminology = {name: p.terminology for name, p in properties.items() if p.terminology}
            definition.writeDataset(folder, colors, terminology, overwrite=overwrite, onCase=step)
        self._addDatasetFolder(str(folder))
        self.ui.datasetFolderPathLineEdit.addCurrentPathToHistory()
        self.ui.statusLabel.text = _("Task dataset written to {folder}.").format(folder=folder)

    def _segmentProperties(self) -> Dict[str, SegmentProperties]:
        """Colour and terminology of each label, from the first ticked segmentation that has it."""
        properties: Dict[str, SegmentProperties] = {}
        for segmentationNode in self.ui.taskSegmentationsSelector.checkedNodes():
            for name, found in self.logic.sceneIO.segmentProperties(segmentationNode).items():
                properties.setdefault(name, found)
        return properties
