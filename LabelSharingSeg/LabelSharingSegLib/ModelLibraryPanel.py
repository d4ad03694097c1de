"""The "Model library" section, built in code right after the Segment section (no ``.ui`` change).

A tree lists the remembered models (``ModelLibrary``), each with its tasks and their labels, then
the models of the server the Engine section connected to, marked "(server)";
clicking a model (or one of its tasks) makes it the model of the Segment section, which is how the
library is wired into the model selector. Models join the list when the Segment section loads one
(opened), when Train / Add task write one, and when the demo model is trained. *Open model
folder...* reads a model folder from disk (offline: nothing is downloaded), *Forget* drops the
selected entry (never its files), *Train the demo model* / *Use the demo model* (``DemoData``).

Qt calls (PythonQt, Qt 5 API): ``ctkCollapsibleButton`` (``text``), ``QVBoxLayout(parent)``,
``QHBoxLayout()``, ``QLayout.addWidget/addLayout``, ``QBoxLayout.insertWidget(index, widget)``,
``QLayout.indexOf(widget)``, ``QWidget.parentWidget()``, ``QWidget.layout()``; ``QTreeWidget``:
``setColumnCount``, ``setHeaderLabels``, ``clear``, ``addTopLevelItem``, ``setCurrentItem``,
``currentItem``, ``expandAll``, signal ``itemClicked(QTreeWidgetItem*,int)`` (user clicks only, so
filling the tree never re-enters); ``QTreeWidgetItem``: ``setText``, ``setToolTip``,
``setData(column, Qt.UserRole, value)`` / ``data(column, Qt.UserRole)``, ``addChild``;
``qt.QFileDialog.getExistingDirectory(parent, caption)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional

from .DemoData import DemoFolder
from .JobPanel import JobPanel, userAction
from .ModelLibrary import LibraryEntry, ModelLibrary, folderKey
from .Translation import tr as _

__all__ = ["ModelLibraryPanel"]

_FOLDER, _TASK = 0, 1  # columns whose Qt.UserRole data hold the model folder and the task name


class ModelLibraryPanel:
    """Controller of the Model library section.

    Args:
        ui: the module's ``ui`` (``modelPathLineEdit``, ``taskComboBox``, ``statusLabel``, ``segmentCollapsibleButton``).
        library: the remembered models.
        demo: where the demo model is trained.
        logic: the module logic (``dependencies``).
        jobs: the shared job runner (the demo training runs through it).
        parameterNode: returns the current parameter node (or None).
        currentModel: returns the ``ModelInfo`` loaded by the Segment section (or None).
        slicerModule, qtModule, ctkModule: the ``slicer``, ``qt`` and ``ctk`` modules.
        serverModels: the models the Engine section listed from its server (``ModelInfo`` with ``server``),
            shown after the local ones, marked with the server.
        useServerModel: makes a server model the Segment section's (the Engine section chooses it).
    """

    def __init__(self, ui: Any, library: ModelLibrary, demo: DemoFolder, logic: Any, jobs: JobPanel,
                 parameterNode: Callable[[], Any], currentModel: Callable[[], Any],
                 slicerModule: Any, qtModule: Any, ctkModule: Any,
                 serverModels: Callable[[], List[Any]] = list,
                 useServerModel: Optional[Callable[[Any], None]] = None) -> None:
        self.ui = ui
        self.library = library
        self.demo = demo
        self.logic = logic
        self.jobs = jobs
        self.slicer = slicerModule
        self.qt = qtModule
        self._parameterNode = parameterNode
        self._currentModel = currentModel
        self._serverModels, self._useServerModel = serverModels, useServerModel
        self.section = ctkModule.ctkCollapsibleButton()
        self.section.text = _("Model library")
        layout = qtModule.QVBoxLayout(self.section)
        self.tree = qtModule.QTreeWidget()
        self.tree.setColumnCount(2)
        self.tree.setHeaderLabels([_("Model / task"), _("Labels, or why the model cannot be used")])
        layout.addWidget(self.tree)
        buttons = qtModule.QHBoxLayout()
        self.openButton = qtModule.QPushButton(_("Open model folder..."))
        self.forgetButton = qtModule.QPushButton(_("Forget"))
        self.demoButton = qtModule.QPushButton()
        for button in (self.openButton, self.forgetButton, self.demoButton):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.openButton.toolTip = _("Add a model folder (holding model.json) from disk to the library and use it.")
        self.forgetButton.toolTip = _("Remove the selected model from the library; its files stay where they are.")
        self.tree.connect("itemClicked(QTreeWidgetItem*,int)", self.onItemClicked)
        self.openButton.connect("clicked(bool)", self.onOpen)
        self.forgetButton.connect("clicked(bool)", self.onForget)
        self.demoButton.connect("clicked(bool)", self.onDemoModel)
        ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelFolderChanged)
        jobs.addActionButtons([self.demoButton])
        self._placeAfter(ui.segmentCollapsibleButton)
        self.refresh()

    def _placeAfter(self, anchor: Any) -> None:
        layout = anchor.parentWidget().layout()
        layout.insertWidget(layout.indexOf(anchor) + 1, self.section)

    def refresh(self) -> None:
        """Fill the tree from the library; the model chosen in the Segment section is selected."""
        self.tree.clear()
        chosen = self.ui.modelPathLineEdit.currentPath
        for entry in self.library.entries():
            item = self._modelItem(entry)
            self.tree.addTopLevelItem(item)
            if chosen and folderKey(entry.folder) == folderKey(chosen):
                self.tree.setCurrentItem(item)
        for model in self._serverModels():
            self.tree.addTopLevelItem(self._serverItem(model))
        self.tree.expandAll()
        hasDemo = self.demo.hasModel()
        self.demoButton.text = _("Use the demo model") if hasDemo else _("Train the demo model")
        self.demoButton.toolTip = (
            _("Choose the demo model (four built-in demo tasks); load a case from the Sample Data module, "
              "LabelSharingSeg category.") if hasDemo else
            _("Train a small model on the four built-in demo tasks (about 2 minutes on a CPU), once; then "
              "load a case from the Sample Data module, LabelSharingSeg category, and click Apply."))

    def _modelItem(self, entry: LibraryEntry) -> Any:
        qt = self.qt
        item = qt.QTreeWidgetItem()
        item.setText(0, entry.name if entry.available else _("{name} (unavailable)").format(name=entry.name))
        item.setText(1, _("{count} task(s)").format(count=len(entry.model.tasks)) if entry.available else entry.problem)
        item.setToolTip(0, _("{folder}\nJoined the library: {source}").format(folder=entry.folder, source=entry.source))
        item.setToolTip(1, entry.problem)
        item.setData(_FOLDER, qt.Qt.UserRole, str(entry.folder))
        for task, line in zip(entry.model.tasks.values() if entry.available else [], entry.taskLines()):
            child = qt.QTreeWidgetItem()
            child.setText(0, f"{task.name} ({task.modality})")
            child.setText(1, ", ".join(label.name for label in task.labels))
            child.setToolTip(1, line)
            child.setData(_FOLDER, qt.Qt.UserRole, str(entry.folder))
            child.setData(_TASK, qt.Qt.UserRole, task.name)
            item.addChild(child)
        return item

    def _serverItem(self, model: Any) -> Any:
        qt = self.qt
        item = qt.QTreeWidgetItem()
        item.setText(0, _("{name} (server)").format(name=model.name))
        item.setText(1, _("{count} task(s) on {url}").format(count=len(model.tasks), url=model.server))
        item.setData(_FOLDER, qt.Qt.UserRole, _serverKey(model))
        for task in model.tasks.values():
            child = qt.QTreeWidgetItem()
            child.setText(0, f"{task.name} ({task.modality})")
            child.setText(1, ", ".join(label.name for label in task.labels))
            child.setData(_FOLDER, qt.Qt.UserRole, _serverKey(model))
            child.setData(_TASK, qt.Qt.UserRole, task.name)
            item.addChild(child)
        return item

    def onItemClicked(self, item: Any, column: int = 0) -> None:
        """Use the clicked model (and the clicked task) in the Segment section."""
        folder, task = item.data(_FOLDER, self.qt.Qt.UserRole), item.data(_TASK, self.qt.Qt.UserRole)
        server = next((m for m in self._serverModels() if _serverKey(m) == folder), None)
        if server is not None and self._useServerModel is not None:
            self._useServerModel(server)
            combo = self.ui.taskComboBox
            if task and combo.findText(task) >= 0:
                combo.setCurrentIndex(combo.findText(task))
            return
        entry = next((e for e in self.library.entries() if folderKey(e.folder) == folderKey(folder)), None)
        if entry is None or not entry.available:
            self.ui.statusLabel.text = entry.problem if entry is not None else ""
            return
        self.useModel(entry.folder, task or None)

    def useModel(self, folder: Path, task: Optional[str] = None) -> None:
        """Make ``folder`` the Segment section's model and, if given, ``task`` its task."""
        if folderKey(self.ui.modelPathLineEdit.currentPath or ".") != folderKey(folder):
            self.ui.modelPathLineEdit.currentPath = str(folder)  # the Segment section loads it
        combo = self.ui.taskComboBox
        if task and combo.findText(task) >= 0:
            combo.setCurrentIndex(combo.findText(task))

    def onModelFolderChanged(self, path: str = "") -> None:
        """A model the Segment section loaded joins the library (connected after the Segment section's slot)."""
        model = self._currentModel()
        if model is not None and path and folderKey(model.folder) == folderKey(path):
            self.library.add(model.folder, "opened")
        self.refresh()

    @userAction(_("Opening a model folder"))
    def onOpen(self, checked: bool = False) -> None:
        folder = self.qt.QFileDialog.getExistingDirectory(None, _("Model folder (holding model.json)"))
        if folder:
            self.library.open(folder)  # ModuleError (shown) for a folder without a readable model
            self.useModel(Path(folder))

    def onForget(self, checked: bool = False) -> None:
        item = self.tree.currentItem()
        if item is not None:
            self.library.forget(item.data(_FOLDER, self.qt.Qt.UserRole))
            self.refresh()

    @userAction(_("Demo model"))
    def onDemoModel(self, checked: bool = False) -> None:
        """Use the demo model, training it first if needed (or cancel the running training)."""
        if self.jobs.cancelIfRunning(self.demoButton):
            return
        if self.demo.hasModel():
            self._useDemoModel()
            return
        node = self._parameterNode()
        self.jobs.installMissing(self.logic.dependencies)
        self.demo.root.mkdir(parents=True, exist_ok=True)
        train = lambda: self.jobs.run(  # noqa: E731
            _("Training the demo model"), self.demo.trainArgs(node.device), self.demoButton, onSuccess=self._useDemoModel)
        if self.demo.hasData():
            train()
        else:
            self.jobs.run(_("Writing the demo data"), self.demo.dataArgs(), self.demoButton, onSuccess=train)

    def _useDemoModel(self) -> None:
        self.library.add(self.demo.model, "demo")
        node = self._parameterNode()
        volume = node.inputVolume if node is not None else None
        self.useModel(self.demo.model, DemoFolder.taskOfVolume(volume.GetName()) if volume is not None else None)
        self.refresh()


def _serverKey(model: Any) -> str:
    """What a server model's tree items hold in place of a folder: ``<server URL>#<name>`` (never a folder path)."""
    return f"{model.server}#{model.name}"
