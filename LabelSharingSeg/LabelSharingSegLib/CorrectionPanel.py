"""Teach the model from corrected results: "Add to task", the added-case count, "Update model", "Compare".

Under the embedded Segment Editor of "Correct the result" (issue 16). Everything the engine does runs
as the other engine commands do, through the panel's job runner (``JobPanel.run``: a ``labelsharing``
subprocess in the background, with progress and Cancel):

- **Add to task** writes the input volume and the corrected output segmentation (``TaskCases.writeCase``)
  and runs ``labelsharing add-case DATASET IMAGE LABEL`` into the task's dataset folder, asked once per
  model and task (``TaskCases.TaskDatasetFolders``) with ``qt.QFileDialog.getExistingDirectory(parent,
  caption, dir)`` (Qt 5 ``QFileDialog``; an empty string when the user cancels);
- the line under the buttons counts the cases added since the model was trained (``TaskCases.addedCases``);
- **Update model** runs ``labelsharing update MODEL --task NAME DATASET --out NEW_MODEL`` with the
  fine-tuning fields of *Train / add task* (epochs for Add task, replay), writes to
  ``<models folder>/<model>_2`` (the next free name), adds the new model to the library and makes it
  the chosen model, so the next Apply uses it;
- **Compare with previous model** segments the input volume with the chosen model's parent (the model
  it was updated from: ``model.json`` ``parent``) and with the chosen model, into two new segmentations
  (named with ``vtkMRMLNode::SetName``, ``Libs/MRML/Core/vtkMRMLNode.h``), and shows the Dice between
  them per segment, from their masks on the volume's grid (``SceneIO.segmentMasks``:
  ``slicer.util.arrayFromSegmentBinaryLabelmap``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

from .EngineCommands import addCaseArgs, updateArgs
from .JobPanel import JobPanel, userAction
from .ModelInfo import ModelInfo
from .ModelOutput import freeModelName, modelOutputFolder, nextModelName
from .ModuleError import ModuleError
from .TaskCases import TaskDatasetFolders, addedCases, checkDatasetFolder, datasetCaseIds, diceBySegment, writeCase
from .Translation import tr as _

__all__ = ["CorrectionPanel"]


class CorrectionPanel:
    """Controller of the teach-the-model buttons of the "Correct the result" section.

    Args:
        ui: the module's ``ui`` (``addToTaskButton``, ``chooseTaskDatasetButton``, ``updateModelButton``,
            ``compareModelsButton``, ``taskCasesLabel``, ``compareResultLabel``, ``modelPathLineEdit``).
        logic: the module logic (``sceneIO``, ``segmenter``, ``exporter``, ``dependencies``, ``loadModel``).
        jobs: the shared job runner.
        parameterNode: returns the current parameter node (or None).
        currentModel: returns the model chosen in the Segment section (or None).
        currentTask: returns the task of the result being corrected ("" when none).
        folders: where each model's task dataset folder is remembered.
        slicerModule, qtModule: the ``slicer`` and ``qt`` modules.
        onModelWritten: called with (folder, "updated") when an update wrote a model (the model library).
    """

    def __init__(self, ui: Any, logic: Any, jobs: JobPanel, parameterNode: Callable[[], Any],
                 currentModel: Callable[[], Optional[ModelInfo]], currentTask: Callable[[], str],
                 folders: TaskDatasetFolders, slicerModule: Any, qtModule: Any,
                 onModelWritten: Optional[Callable[[Path, str], None]] = None) -> None:
        self.ui, self.logic, self.jobs, self.slicer, self.qt = ui, logic, jobs, slicerModule, qtModule
        self.folders = folders
        self._parameterNode, self._currentModel, self._currentTask = parameterNode, currentModel, currentTask
        self._onModelWritten = onModelWritten
        self._shown: Optional[Tuple[str, str, str]] = None  # (model, task, folder) the case line describes
        ui.addToTaskButton.connect("clicked(bool)", self.onAddToTask)
        ui.chooseTaskDatasetButton.connect("clicked(bool)", self.onChooseTaskDataset)
        ui.updateModelButton.connect("clicked(bool)", self.onUpdateModel)
        ui.compareModelsButton.connect("clicked(bool)", self.onCompare)

    # ------------------------------------------------------------------ the case line
    def refresh(self, force: bool = False) -> None:
        """Say how many cases the task's dataset folder gained since the model was trained.

        Reads the folder only when the model, task or folder changed (or ``force``): the widget
        calls this on every parameter change.
        """
        model, task = self._currentModel(), self._currentTask()
        folder = self.folders.get(model, task) if model is not None and task and not model.server else None
        key = (str(model.folder) if model else "", task, str(folder or ""))
        if key == self._shown and not force:
            return
        self._shown = key
        self.ui.taskCasesLabel.text = self._describeCases(model, task, folder)

    def _describeCases(self, model: Optional[ModelInfo], task: str, folder: Optional[Path]) -> str:
        if model is None or not task:
            return _("Segment with a model first: the corrected result can then become a case of its task.")
        if model.server:
            return _("Add to task and Update model work with a model folder on this computer.")
        if folder is None:
            return _("Task '{task}': its dataset folder is asked at the first Add to task.").format(task=task)
        try:
            cases, added = datasetCaseIds(folder), addedCases(folder, model.task(task))
        except ModuleError as exc:
            return str(exc)
        if added is None:
            return _("Task '{task}' ({folder}): {cases} case(s). The model does not list the cases it was trained on "
                     "(written before update existed), so the number added since is unknown.").format(
                task=task, folder=folder, cases=len(cases))
        listed = ", ".join(added[:5]) + (" ..." if len(added) > 5 else "")
        return _("Task '{task}' ({folder}): {cases} case(s), {added} added since the model was trained{names}.").format(
            task=task, folder=folder, cases=len(cases), added=len(added), names=f" ({listed})" if added else "")

    # ------------------------------------------------------------------ the dataset folder
    def _localModelAndTask(self) -> Tuple[ModelInfo, str]:
        model, task = self._currentModel(), self._currentTask()
        if model is None or not task:
            raise ModuleError(_("Choose a model folder and a task in the Segment section, then Apply."))
        if model.server:
            raise ModuleError(_("Add to task and Update model need a model folder on this computer; the chosen "
                                "model is on a server (Engine section)."))
        return model, task

    def _datasetFolder(self, model: ModelInfo, task: str, ask: bool = False) -> Optional[Path]:
        """The task's remembered dataset folder; asked (and remembered) when there is none or ``ask``.

        Returns ``None`` when the user cancels the dialog.
        """
        folder = None if ask else self.folders.get(model, task)
        if folder is not None:
            return folder
        chosen = self.qt.QFileDialog.getExistingDirectory(
            None, _("Dataset folder of task '{task}' (holding dataset.json)").format(task=task),
            self.folders.suggestion(model, task))
        if not chosen:
            return None
        folder = checkDatasetFolder(chosen, model.task(task))
        self.folders.set(model, task, folder)
        self.refresh(force=True)
        return folder

    @userAction(_("Choosing the task's dataset folder"))
    def onChooseTaskDataset(self, checked: bool = False) -> None:
        """Choose (again) the dataset folder the corrected cases of the task go to."""
        model, task = self._localModelAndTask()
        self._datasetFolder(model, task, ask=True)

    # ------------------------------------------------------------------ actions
    @userAction(_("Adding the case to the task"))
    def onAddToTask(self, checked: bool = False) -> None:
        """Save the input volume and its corrected segmentation as a new case of the task (``add-case``)."""
        if self.jobs.cancelIfRunning(self.ui.addToTaskButton):
            return
        model, task = self._localModelAndTask()
        node = self._parameterNode()
        files = writeCase(self.logic.sceneIO, self.logic.exporter, node.inputVolume, node.outputSegmentation,
                          model.task(task), self.slicer.app.temporaryPath)  # names checked before asking a folder
        try:
            folder = self._datasetFolder(model, task)
            if folder is None:
                shutil.rmtree(files.workDir, ignore_errors=True)
                return
            self.jobs.installMissing(self.logic.dependencies)
        except BaseException:
            shutil.rmtree(files.workDir, ignore_errors=True)
            raise
        self.jobs.run(_("Adding the case to the task"), addCaseArgs(folder, files.image, files.label),
                      self.ui.addToTaskButton, onSuccess=lambda: self.refresh(force=True),
                      onEnd=lambda: shutil.rmtree(files.workDir, ignore_errors=True))

    @userAction(_("Updating the model"))
    def onUpdateModel(self, checked: bool = False) -> None:
        """Fine-tune the task on its grown dataset folder into a new model (``update``), then choose that model."""
        if self.jobs.cancelIfRunning(self.ui.updateModelButton):
            return
        model, task = self._localModelAndTask()
        node = self._parameterNode()
        folder = self._datasetFolder(model, task)
        if folder is None:
            return
        outFolder = modelOutputFolder(node.modelsFolder, freeModelName(node.modelsFolder, nextModelName(model.name)))
        args = updateArgs(model.folder, task, folder, outFolder, node.addTaskEpochs, node.replay, node.device)
        self.jobs.installMissing(self.logic.dependencies)
        outFolder.parent.mkdir(parents=True, exist_ok=True)  # the default per-user folder may not exist yet

        def succeeded() -> None:
            if self._onModelWritten is not None:
                self._onModelWritten(outFolder, "updated")
            self.folders.set(self.logic.loadModel(outFolder), task, folder)  # the new model's task: the same folder
            self.ui.modelPathLineEdit.currentPath = str(outFolder)  # the next Apply uses the updated model
            self.ui.modelPathLineEdit.addCurrentPathToHistory()
            self.ui.statusLabel.text = _("Updating the model: done. {name} is the chosen model; Compare with previous "
                                         "model shows both on the input volume.").format(name=outFolder.name)
            self.refresh(force=True)

        self.jobs.run(_("Updating the model"), args, self.ui.updateModelButton, onSuccess=succeeded)

    @userAction(_("Comparing the models"))
    def onCompare(self, checked: bool = False) -> None:
        """Segment the input volume with the previous model and the chosen one; show their Dice per segment."""
        if self.jobs.cancelIfRunning(self.ui.compareModelsButton):
            return
        model, task = self._localModelAndTask()
        node = self._parameterNode()
        if node.inputVolume is None:
            raise ModuleError(_("Choose the input volume."))
        if not model.parent:
            raise ModuleError(_("Model {name} was not made from another model by Update model or Add task, so there "
                                "is no previous model to compare with.").format(name=model.name))
        previous = self.logic.loadModel(model.parent)
        previous.task(task)
        self.jobs.installMissing(self.logic.dependencies)
        volume, results = node.inputVolume, []

        def segmentWith(current: ModelInfo, then: Callable[[], None]) -> None:
            request = self.logic.segmenter.prepare(volume, current, task, node.device)

            def loaded() -> None:
                segmentation = self.logic.segmenter.load(request)
                segmentation.SetName(f"{volume.GetName()} {task} ({current.name})")
                results.append(segmentation)
                then()

            self.jobs.run(_("Comparing the models: {name}").format(name=current.name), request.call,
                          self.ui.compareModelsButton, onSuccess=loaded,
                          onEnd=lambda: self.logic.segmenter.cleanup(request))

        segmentWith(previous, lambda: segmentWith(model, lambda: self._showDice(previous, model, volume, *results)))

    def _showDice(self, previous: ModelInfo, model: ModelInfo, volume: Any, old: Any, new: Any) -> None:
        dice = diceBySegment(self.logic.sceneIO.segmentMasks(old, volume), self.logic.sceneIO.segmentMasks(new, volume))
        text = _("Dice between {old} and {new} on {volume}: {values} (1: the same segment).").format(
            old=previous.name, new=model.name, volume=volume.GetName(),
            values=", ".join(f"{name} {value:.3f}" for name, value in dice.items()))
        self.ui.compareResultLabel.text = text
        self.ui.statusLabel.text = _("Comparing the models: done.")
