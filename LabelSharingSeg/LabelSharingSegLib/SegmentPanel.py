"""The "Segment" section: input volume, model folder, task, device, output, Apply/Cancel.

Slicer/CTK calls: ``ctkPathLineEdit.currentPath`` / ``addCurrentPathToHistory()`` (the
"recently used" list kept under the widget's ``settingKey``; used the same way in Slicer's
``Modules/Scripted/DICOMPatcher/DICOMPatcher.py``), ``QComboBox.clear()/addItem()/findText()``,
``connect("currentPathChanged(QString)", f)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from .EngineCommands import isSetPath
from .JobPanel import JobPanel, reportErrors
from .ModelInfo import ModelInfo
from .ModuleError import ModuleError

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
        ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelFolderChanged)
        ui.taskComboBox.connect("currentIndexChanged(int)", self.onTaskChanged)
        ui.applyButton.connect("clicked(bool)", self.onApply)
        ui.checkDependenciesButton.connect("clicked(bool)", self.onCheckDependencies)

    def taskLabels(self) -> Dict[str, int]:
        """label name -> value of the chosen task (empty without a model)."""
        if self.model is None or not self.ui.taskComboBox.currentText:
            return {}
        return {label.name: label.value for label in self.model.task(self.ui.taskComboBox.currentText).labels}

    def canApply(self) -> Tuple[bool, str]:
        """Whether Apply may run, and the tooltip saying why not."""
        node = self._parameterNode()
        if node is None or node.inputVolume is None:
            return False, "Choose the input volume."
        if self.model is None:
            return False, "Choose a model folder (one holding model.json)."
        if not self.ui.taskComboBox.currentText:
            return False, "Choose the task."
        return True, "Segment the input volume with the chosen task."

    def onModelFolderChanged(self, path: str = "") -> None:
        """Read the model's tasks into the task list (silently empty for a non-model folder)."""
        node = self._parameterNode()
        self.model = None
        self.ui.taskComboBox.clear()
        if not isSetPath(path) or not (Path(path) / "model.json").is_file():
            self.ui.modelInfoLabel.text = "Choose a model folder (one holding model.json)."
            return
        try:
            self.model = self.logic.loadModel(path)
        except ModuleError as exc:
            self.ui.modelInfoLabel.text = str(exc)
            return
        for name in self.model.taskNames:
            self.ui.taskComboBox.addItem(name)
        if node is not None and node.task in self.model.tasks:
            self.ui.taskComboBox.setCurrentIndex(self.ui.taskComboBox.findText(node.task))
        shared = self.model.plan.get("n_shared", "?")
        self.ui.modelInfoLabel.text = f"{len(self.model.tasks)} task(s), {shared} shared label(s)."
        self.ui.modelPathLineEdit.addCurrentPathToHistory()

    def onTaskChanged(self, index: int = 0) -> None:
        node = self._parameterNode()
        if node is not None and self.ui.taskComboBox.currentText:
            node.task = self.ui.taskComboBox.currentText
        if self.model is not None and self.ui.taskComboBox.currentText:
            task = self.model.task(self.ui.taskComboBox.currentText)
            labels = ", ".join(label.name for label in task.labels)
            self.ui.taskComboBox.toolTip = f"{task.modality}: {labels}"

    @reportErrors
    def onCheckDependencies(self, checked: bool = False) -> None:
        """Install missing packages (after asking) and show the torch version and device."""
        with self.slicer.util.WaitCursor():
            self.ui.torchInfoLabel.text = str(self.logic.dependencies.ensureInstalled())

    @reportErrors
    def onApply(self, checked: bool = False) -> None:
        """Start segmenting (or cancel the running segmentation)."""
        if self.jobs.cancelIfRunning(self.ui.applyButton):
            return
        node = self._parameterNode()
        self.ui.torchInfoLabel.text = str(self.logic.dependencies.ensureInstalled())
        request = self.logic.segmenter.prepare(
            node.inputVolume, self.model, self.ui.taskComboBox.currentText, node.device, node.outputSegmentation
        )

        def loaded() -> None:
            segmentation = self.logic.segmenter.load(request)
            node.outputSegmentation = segmentation

        self.jobs.run(
            "Segmentation", request.args, self.ui.applyButton, onSuccess=loaded,
            onEnd=lambda: self.logic.segmenter.cleanup(request),
        )
