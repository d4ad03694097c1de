"""The "Segment" section: input volume, model folder, task, device, output, Apply/Cancel.

Slicer/CTK calls: ``ctkPathLineEdit.currentPath`` / ``addCurrentPathToHistory()`` (the
"recently used" list kept under the widget's ``settingKey``), ``connect("currentPathChanged(QString)", f)``;
``QComboBox.clear()/addItem()/findText()/setCurrentIndex()``, ``QObject.blockSignals(bool)``.

- ``addCurrentPathToHistory()`` is called only after a successful action, never from the
  ``currentPathChanged`` slot: it re-inserts the path into the widget's combo box with its
  signals *un*blocked (``ctkPathLineEdit.cpp``, ``addCurrentPathToHistory``: ``blockSignals(false)``
  before ``insertItem``/``setCurrentIndex``), which can emit ``currentPathChanged`` again.
- Filling the empty task combo box makes its first item current and emits
  ``currentIndexChanged`` (Qt's ``QComboBox`` selects the first item inserted into an empty
  box), which would overwrite the saved task; signals are blocked while filling.

A model of several tasks offers **Automatic** first, the default: the engine recognises the
volume's task (``predict --task auto``; the warm worker and a server's predict take the same task
value). After Apply, the status line says which task was used, the recognition's score, the
confidence and any unfamiliar-image warning the engine wrote beside the result (``PredictionReport``;
a server sends it in a header, ``ServerClient.predict`` writes it beside the result); the result is
loaded either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from .EngineCommands import isSetPath
from .JobPanel import JobPanel, userAction
from .ModelInfo import ModelInfo
from .ModuleError import ModuleError
from .PredictionReport import AUTO_TASK
from .Translation import tr as _

__all__ = ["SegmentPanel"]


class SegmentPanel:
    """Controller of the Segment section (widgets in ``ui``, work in ``logic``).

    Args:
        ui: the module's ``ui``.
        logic: the module logic (``loadModel``, ``segmenter``, ``dependencies``).
        jobs: the shared job runner.
        parameterNode: returns the current parameter node (or None).
        slicerModule: the ``slicer`` module.
    """

    def __init__(self, ui: Any, logic: Any, jobs: JobPanel, parameterNode: Callable[[], Any], slicerModule: Any) -> None:
        self.ui = ui
        self.logic = logic
        self.jobs = jobs
        self.slicer = slicerModule
        self._parameterNode = parameterNode
        self.model: Optional[ModelInfo] = None
        #: the task the last result was segmented with (the recognised one for Automatic), "" before
        self.resultTask = ""
        self.automatic = _("Automatic")  # the task list's entry for "auto"
        ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelFolderChanged)
        ui.taskComboBox.connect("currentIndexChanged(int)", self.onTaskChanged)
        ui.applyButton.connect("clicked(bool)", self.onApply)
        ui.checkDependenciesButton.connect("clicked(bool)", self.onCheckDependencies)

    def chosenTask(self) -> str:
        """The task value Apply passes: a task's name, ``"auto"`` for Automatic, "" without a model."""
        text = self.ui.taskComboBox.currentText
        return AUTO_TASK if text and text == self.automatic else text

    def taskOfResult(self) -> str:
        """The task of the result being corrected: the chosen one, or for Automatic the one recognised at Apply."""
        task = self.chosenTask()
        if task != AUTO_TASK:
            return task
        return self.resultTask if self.model is not None and self.resultTask in self.model.tasks else ""

    def taskLabels(self) -> Dict[str, int]:
        """label name -> value of the result's task (empty without a model or before Automatic has chosen one)."""
        task = self.taskOfResult()
        if self.model is None or not task:
            return {}
        return {label.name: label.value for label in self.model.task(task).labels}

    def canApply(self) -> Tuple[bool, str]:
        """Whether Apply may run, and the tooltip saying why not."""
        node = self._parameterNode()
        if node is None or node.inputVolume is None:
            return False, _("Choose the input volume.")
        if self.model is None:
            return False, _("Choose a model folder (one holding model.json).")
        if not self.ui.taskComboBox.currentText:
            return False, _("Choose the task.")
        return True, _("Segment the input volume with the chosen task.")

    def onModelFolderChanged(self, path: str = "") -> None:
        """Read the model's tasks into the task list (silently empty for a non-model folder)."""
        self.model = None
        self.ui.taskComboBox.clear()
        if not isSetPath(path) or not (Path(path) / "model.json").is_file():
            self.ui.modelInfoLabel.text = _("Choose a model folder (one holding model.json).")
            return
        try:
            model = self.logic.loadModel(path)
        except ModuleError as exc:
            self.ui.modelInfoLabel.text = str(exc)
            return
        self.useModel(model)

    def useModel(self, model: ModelInfo) -> None:
        """Make ``model`` (read from a folder, or listed by a server: the Engine section) the one Apply uses."""
        node = self._parameterNode()
        self.model = model  # resultTask stays: the same result, and a model updated from this one has its task
        automatic = len(model.tasks) > 1
        combo = self.ui.taskComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            for name in ([self.automatic] if automatic else []) + self.model.taskNames:
                combo.addItem(name)
            saved = node.task if node is not None and node.task in self.model.tasks else ""
            if not saved:
                saved = self.automatic if automatic else self.model.taskNames[0]
            combo.setCurrentIndex(combo.findText(saved))
        finally:
            combo.blockSignals(wasBlocked)
        self.onTaskChanged()
        shared = self.model.plan.get("n_shared", "?")
        text = _("{tasks} task(s), {shared} shared label(s).").format(tasks=len(self.model.tasks), shared=shared)
        if model.server:
            text += " " + _("Model {name} on {url}.").format(name=model.name, url=model.server)
        self.ui.modelInfoLabel.text = text

    def onTaskChanged(self, index: int = 0) -> None:
        node = self._parameterNode()
        if node is not None and self.ui.taskComboBox.currentText:
            node.task = self.chosenTask()
        if self.model is not None and self.chosenTask() == AUTO_TASK:
            self.ui.taskComboBox.toolTip = _("Recognise the volume's task among {tasks}; the status line says which "
                                             "was used.").format(tasks=", ".join(self.model.taskNames))
        elif self.model is not None and self.ui.taskComboBox.currentText:
            task = self.model.task(self.ui.taskComboBox.currentText)
            labels = ", ".join(label.name for label in task.labels)
            self.ui.taskComboBox.toolTip = f"{task.modality}: {labels}"

    @userAction(_("Checking the Python packages"))
    def onCheckDependencies(self, checked: bool = False) -> None:
        """Install missing packages (after asking) and show the installed torch and MONAI versions."""
        self.jobs.installMissing(self.logic.dependencies)
        self.ui.torchInfoLabel.text = self.logic.dependencies.describe()

    @userAction(_("Segmentation"))
    def onApply(self, checked: bool = False) -> None:
        """Start segmenting (or cancel the running segmentation)."""
        if self.jobs.cancelIfRunning(self.ui.applyButton):
            return
        ok, reason = self.canApply()
        if not ok:
            raise ModuleError(reason)
        node = self._parameterNode()
        if not self.model.server:  # a server's model needs nothing installed here
            self.jobs.installMissing(self.logic.dependencies)
        request = self.logic.segmenter.prepare(
            node.inputVolume, self.model, self.chosenTask(), node.device, node.outputSegmentation
        )

        def loaded() -> None:
            segmentation = self.logic.segmenter.load(request)
            self.resultTask = request.report.task if request.report is not None else request.task
            node.outputSegmentation = segmentation
            if request.report is not None:  # the task used, its score and confidence, a warning: never blocking
                self.ui.statusLabel.text = _("Segmentation: done.") + " " + request.report.describe()
            if not request.model.server:
                self.ui.modelPathLineEdit.addCurrentPathToHistory()  # a model that worked joins the recent list

        self.jobs.run(
            _("Segmentation"), request.call, self.ui.applyButton, onSuccess=loaded,
            onEnd=lambda: self.logic.segmenter.cleanup(request),
        )
