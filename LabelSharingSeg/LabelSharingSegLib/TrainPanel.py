"""The "Train / add task" section: task folders, where the new model goes, epochs, replay, and whether
look-alike tasks are kept apart (``keepLookAlikesApart``: ``--keep-look-alikes-apart``, or the server
job's ``keep_look_alikes_apart`` option).

The new model is written to ``<models folder>/<model name>`` (``ModelOutput``), shown under the
two fields before anything runs. Epochs (one field for Train, one for Add task) and replay take
their limits, and a new parameter node its values, from the engine (``EngineDefaults``, asked once
per session when the panel is first shown). If the engine cannot say, the panel still opens (the
Segment and Export sections do not need it): the status line says why, and the fields have no
limits, as the engine checks the values itself when it runs.

Qt calls (PythonQt, Qt 5 API): ``QListWidget.addItem/item/count/currentItem/takeItem/row/
setCurrentRow``; ``qt.QFileDialog.getExistingDirectory(parent, caption)``; ``QSpinBox.setRange(int, int)``
and ``QDoubleSpinBox.setRange(double, double)``, called after ``connectGui``: the parameter node's
spin box connectors set an unbounded range when the field has no ``WithinRange``
(``Base/Python/slicer/parameterNodeWrapper/guiConnectors.py``, ``QSliderOrSpinBoxToIntConnector``
and ``QDoubleSpinBoxCtkSliderWidgetToFloatIntConnector``, 5.8.0 and main).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, List, Optional

from .EngineCommands import ServerJobCall, addTaskArgs, trainArgs, writePins
from .EngineDefaults import TrainingDefaults
from .JobPanel import JobPanel, userAction
from .ModelOutput import freeModelName, modelOutputFolder, nextModelName
from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["TrainPanel"]


class TrainPanel:
    """Controller of the training section.

    Args:
        ui: the module's ``ui``.
        logic: the module logic (``dependencies``).
        jobs: the shared job runner.
        parameterNode: returns the current parameter node (or None).
        currentModel: returns the ``ModelInfo`` chosen in the Segment section (or None).
        pinsOfDefinedTask: returns ``(task name, pins)`` edited in the task table, or None.
        slicerModule, qtModule: the ``slicer`` and ``qt`` modules.
        onModelWritten: called with the new model's folder and ``"trained"`` or ``"added task"``
            when a run succeeds (the model library remembers it).
        engineDefaults: returns the engine's training defaults (``sessionTrainingDefaults``) or
            raises ``ModuleError``.
        serverUrl: returns the URL of the server of the Engine setting, or ``""`` for this computer:
            with a server, Train and Add task run there (``ServerJobCall``), the new model named by
            the Model name field.
        onServerModelWritten: called with the new model's name when a server job succeeds (the
            Engine section lists the server's models again and chooses it).
    """

    def __init__(self, ui: Any, logic: Any, jobs: JobPanel, parameterNode: Callable[[], Any],
                 currentModel: Callable[[], Any], pinsOfDefinedTask: Callable[[], Optional[tuple]],
                 slicerModule: Any, qtModule: Any, onModelWritten: Optional[Callable[[Path, str], None]] = None,
                 engineDefaults: Optional[Callable[[], TrainingDefaults]] = None,
                 serverUrl: Callable[[], str] = lambda: "",
                 onServerModelWritten: Optional[Callable[[str], None]] = None) -> None:
        self._serverUrl, self._onServerModelWritten = serverUrl, onServerModelWritten
        self.ui = ui
        self.logic = logic
        self.jobs = jobs
        self.slicer = slicerModule
        self.qt = qtModule
        self._parameterNode = parameterNode
        self._currentModel = currentModel
        self._pinsOfDefinedTask = pinsOfDefinedTask
        self._onModelWritten = onModelWritten
        self._engineDefaults = engineDefaults
        self._defaultsProblemShown = False
        ui.addDatasetButton.connect("clicked(bool)", self.onAddDataset)
        ui.removeDatasetButton.connect("clicked(bool)", self.onRemoveDataset)
        ui.trainButton.connect("clicked(bool)", self.onTrain)
        ui.addTaskButton.connect("clicked(bool)", self.onAddTask)

    def datasetFolders(self) -> List[str]:
        widget = self.ui.trainDatasetsListWidget
        return [widget.item(row).text() for row in range(widget.count)]

    def onAddDataset(self, checked: bool = False) -> None:
        folder = self.qt.QFileDialog.getExistingDirectory(None, _("Task dataset folder (holding dataset.json)"))
        if folder:
            self.addDatasetFolder(folder)

    def onRemoveDataset(self, checked: bool = False) -> None:
        widget = self.ui.trainDatasetsListWidget
        if widget.currentItem() is not None:
            widget.takeItem(widget.row(widget.currentItem()))

    def addDatasetFolder(self, folder: str) -> None:
        """Add a task folder to the list (once) and select it."""
        if folder not in self.datasetFolders():
            self.ui.trainDatasetsListWidget.addItem(folder)
        self.ui.trainDatasetsListWidget.setCurrentRow(self.datasetFolders().index(folder))

    def applyEngineDefaults(self) -> None:
        """Engine limits on the epochs and replay fields; engine defaults into a parameter node that has none yet.

        Call it after each ``connectGui`` (which resets the spin box ranges). A node keeps the
        values it has (a saved scene, the user's choice): ``trainingDefaultsSet`` records the fill-in.
        """
        node = self._parameterNode()
        if node is None or self._engineDefaults is None:
            return
        try:
            defaults = self._engineDefaults()
        except ModuleError as exc:
            if not self._defaultsProblemShown:
                self._defaultsProblemShown = True
                self.ui.statusLabel.text = str(exc)
                logging.warning("%s\n%s", exc, exc.details)
            return
        train, add = defaults["train"], defaults["add-task"]
        if not node.trainingDefaultsSet:
            node.trainEpochs, node.addTaskEpochs = int(train["epochs"].default), int(add["epochs"].default)
            node.replay, node.trainingDefaultsSet = float(add["replay"].default), True
        self.ui.trainEpochsSpinBox.setRange(*train["epochs"].spinBoxRange())
        self.ui.addTaskEpochsSpinBox.setRange(*add["epochs"].spinBoxRange())
        self.ui.replaySpinBox.setRange(*add["replay"].spinBoxRange(decimals=int(self.ui.replaySpinBox.decimals)))

    def updateTarget(self) -> None:
        """Show where the model will be written, or what is wrong with the two fields."""
        node = self._parameterNode()
        if node is None:
            return
        try:
            self.ui.modelTargetLabel.text = _("The model will be written to {folder}").format(
                folder=modelOutputFolder(node.modelsFolder, node.modelName))
        except ModuleError as exc:
            self.ui.modelTargetLabel.text = str(exc)

    @userAction(_("Training"))
    def onTrain(self, checked: bool = False) -> None:
        """Train a new model from the listed task folders (or cancel the running training)."""
        if self.jobs.cancelIfRunning(self.ui.trainButton):
            return
        node = self._parameterNode()
        if self._serverUrl():
            call = ServerJobCall("train", tuple(self.datasetFolders()), node.modelName, self._serverUrl(),
                                 _positive(epochs=node.trainEpochs) + _keepApart(node),
                                 pins=str(self._pinsFile("train") or ""))
            self._runOnServer(_("Training"), call, self.ui.trainButton)
            return
        outFolder = modelOutputFolder(node.modelsFolder, node.modelName)
        self.jobs.installMissing(self.logic.dependencies)
        args = trainArgs(self.datasetFolders(), outFolder, node.trainEpochs, node.device, self._pinsFile("train"),
                         node.keepLookAlikesApart)
        self._run(_("Training"), args, self.ui.trainButton, outFolder, "trained")

    @userAction(_("Adding the task"))
    def onAddTask(self, checked: bool = False) -> None:
        """Add the selected task folder to the chosen model, written as a new model folder."""
        if self.jobs.cancelIfRunning(self.ui.addTaskButton):
            return
        node = self._parameterNode()
        model = self._currentModel()
        if model is None:
            raise ModuleError(_("Choose the model to extend in the Segment section (model folder)."))
        if model.server != self._serverUrl():
            raise ModuleError(_("The model to extend must be where the Engine section runs the work: choose a server "
                                "model in the Engine section, or a model folder with Engine 'This computer'."))
        item = self.ui.trainDatasetsListWidget.currentItem()
        if item is None:
            raise ModuleError(_("Select the task dataset folder to add in the list."))
        if model.server:
            call = ServerJobCall("add-task", (item.text(),), node.modelName, model.server,
                                 _positive(epochs=node.addTaskEpochs) + (("replay", float(node.replay)),)
                                 + _keepApart(node),
                                 model=model.name, pins=str(self._pinsFile("add") or ""))
            self._runOnServer(_("Adding the task"), call, self.ui.addTaskButton)
            return
        outFolder = modelOutputFolder(node.modelsFolder, node.modelName)
        self.jobs.installMissing(self.logic.dependencies)
        args = addTaskArgs(model.folder, item.text(), outFolder, node.addTaskEpochs, node.replay, node.device,
                           self._pinsFile("add"), node.keepLookAlikesApart)
        self._run(_("Adding the task"), args, self.ui.addTaskButton, outFolder, "added task")

    def _run(self, title: str, args: List[str], button: Any, outFolder: Path, source: str) -> None:
        node = self._parameterNode()
        outFolder.parent.mkdir(parents=True, exist_ok=True)  # the default per-user folder may not exist yet

        def succeeded() -> None:
            if self._onModelWritten is not None:
                self._onModelWritten(outFolder, source)
            self.ui.modelsFolderPathLineEdit.addCurrentPathToHistory()
            self.ui.modelPathLineEdit.currentPath = str(outFolder)  # the new model becomes the chosen one
            self.ui.modelPathLineEdit.addCurrentPathToHistory()
            node.modelName = freeModelName(node.modelsFolder, node.modelName)  # the next run needs a new name

        self.jobs.run(title, args, button, onSuccess=succeeded)

    def _runOnServer(self, title: str, call: ServerJobCall, button: Any) -> None:
        node = self._parameterNode()

        def succeeded() -> None:
            if self._onServerModelWritten is not None:
                self._onServerModelWritten(call.name)
            node.modelName = nextModelName(call.name)  # the next run needs a new name (the server refuses a taken one)

        self.jobs.run(title, call, button, onSuccess=succeeded)

    def _pinsFile(self, prefix: str) -> Optional[Path]:
        pins = self._pinsOfDefinedTask()
        if pins is None:
            return None
        workDir = tempfile.mkdtemp(prefix=f"LabelSharingSeg-{prefix}-", dir=self.slicer.app.temporaryPath)
        return writePins(Path(workDir) / "pins.json", *pins)


def _positive(**options: float) -> tuple:
    """``((name, value), ...)`` of the options above 0 (0: the engine's defaults were not read; the server's apply)."""
    return tuple((name, int(value)) for name, value in options.items() if value and value > 0)


def _keepApart(node: Any) -> tuple:
    """``(("keep_look_alikes_apart", True),)`` when the checkbox is checked, else nothing (the server's default)."""
    return (("keep_look_alikes_apart", True),) if node.keepLookAlikesApart else ()
