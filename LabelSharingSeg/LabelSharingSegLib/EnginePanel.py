"""The "Engine" section, built in code above the Segment section (no ``.ui`` change).

*Engine*: **This computer** (the engine runs here, as before) or **Server** (a ``labelsharing
serve``: its URL and access token, the token shown masked). The setting is kept in Slicer's
application settings (``EngineSettings``). **Connect** lists the server's models; the chosen one
becomes the Segment section's model (its tasks, labels and colours come from the server), and
Apply then segments on the server (``RoutingEngine``). Choosing **This computer** again gives
the Segment section back the model of its folder field. A connection or token problem is one
dialog saying what to check (``ServerClient``).

Qt calls (PythonQt, Qt 5 API): ``ctkCollapsibleButton`` (``text``), ``QFormLayout(parent)``,
``QFormLayout.addRow(label, widget)``, ``QComboBox`` (``addItem``, ``clear``, ``currentIndex``,
``setCurrentIndex``, signal ``currentIndexChanged(int)``), ``QLineEdit`` (``text``,
``placeholderText``, ``echoMode`` = ``QLineEdit.Password``, signal ``editingFinished()``),
``QPushButton`` (``clicked(bool)``), ``QBoxLayout.insertWidget(index, widget)``, ``QLayout.indexOf``.
"""

from __future__ import annotations

from typing import Any, Callable, List

from .JobPanel import userAction
from .ModelInfo import ModelInfo
from .ServerClient import LOCAL, SERVER, EngineSettings
from .Translation import tr as _

__all__ = ["EnginePanel"]

_ENGINES = (LOCAL, SERVER)
#: seconds to wait for the model list (the predict itself may take longer: ServerClient's default)
_LIST_TIMEOUT = 20.0


class EnginePanel:
    """Controller of the Engine section.

    Args:
        ui: the module's ``ui`` (``segmentCollapsibleButton``, ``modelPathLineEdit``, ``statusLabel``).
        settings: the Engine setting.
        segmentPanel: the Segment section (``useModel``, ``onModelFolderChanged``, ``model``).
        slicerModule, qtModule, ctkModule: the ``slicer``, ``qt`` and ``ctk`` modules.
    """

    def __init__(self, ui: Any, settings: EngineSettings, segmentPanel: Any, slicerModule: Any, qtModule: Any,
                 ctkModule: Any) -> None:
        self.ui, self.settings, self.segmentPanel, self.slicer = ui, settings, segmentPanel, slicerModule
        #: called after the server's models were listed (the model library shows them)
        self.onModelsListed: Callable[[], None] = lambda: None
        self.models: List[ModelInfo] = []
        self.section = ctkModule.ctkCollapsibleButton()
        self.section.text = _("Engine")
        layout = qtModule.QFormLayout(self.section)
        self.engineCombo = qtModule.QComboBox()
        self.engineCombo.addItem(_("This computer"))
        self.engineCombo.addItem(_("Server"))
        self.urlEdit = qtModule.QLineEdit()
        self.urlEdit.placeholderText = _("https://gpu.hospital.org")
        self.urlEdit.toolTip = _("The address 'labelsharing serve' printed, or the hospital TLS proxy in front of it.")
        self.tokenEdit = qtModule.QLineEdit()
        self.tokenEdit.echoMode = qtModule.QLineEdit.Password
        self.tokenEdit.toolTip = _("The server's access token (printed when it first started; kept in its token file).")
        self.connectButton = qtModule.QPushButton(_("Connect"))
        self.connectButton.toolTip = _("List the server's models; the chosen one is used by Segment.")
        self.modelCombo = qtModule.QComboBox()
        self.modelCombo.toolTip = _("The server's models; Apply segments on the server with the chosen one.")
        layout.addRow(_("Engine:"), self.engineCombo)
        layout.addRow(_("Server URL:"), self.urlEdit)
        layout.addRow(_("Access token:"), self.tokenEdit)
        layout.addRow(self.connectButton)
        layout.addRow(_("Server model:"), self.modelCombo)
        self.urlEdit.text, self.tokenEdit.text = settings.url, settings.token
        self.engineCombo.setCurrentIndex(_ENGINES.index(settings.engine))
        self._showEngine()
        self.engineCombo.connect("currentIndexChanged(int)", self.onEngineChanged)
        self.urlEdit.connect("editingFinished()", self.save)
        self.tokenEdit.connect("editingFinished()", self.save)
        self.connectButton.connect("clicked(bool)", self.onConnect)
        self.modelCombo.connect("currentIndexChanged(int)", self.onServerModelChosen)
        anchor = ui.segmentCollapsibleButton
        panelLayout = anchor.parentWidget().layout()
        panelLayout.insertWidget(panelLayout.indexOf(anchor), self.section)

    @property
    def engine(self) -> str:
        return _ENGINES[max(0, self.engineCombo.currentIndex)]

    def save(self) -> None:
        """Keep the fields in the application settings."""
        self.settings.save(self.engine, self.urlEdit.text, self.tokenEdit.text)

    def onEngineChanged(self, index: int = 0) -> None:
        self.save()
        self._showEngine()
        self.onModelsListed()
        if self.engine == LOCAL and self.segmentPanel.model is not None and self.segmentPanel.model.server:
            self.segmentPanel.onModelFolderChanged(self.ui.modelPathLineEdit.currentPath)  # back to the local model

    @userAction(_("Connecting to the server"))
    def onConnect(self, checked: bool = False) -> None:
        """List the server's models and use the first (or the one chosen before, if still there)."""
        self.save()
        client = self.settings.client()
        client.timeout = _LIST_TIMEOUT
        previous = self.modelCombo.currentText
        self.models = client.models()
        combo = self.modelCombo
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            for model in self.models:
                combo.addItem(model.name)
        finally:
            combo.blockSignals(wasBlocked)
        self.ui.statusLabel.text = _("{count} model(s) on {url}.").format(count=len(self.models), url=client.url)
        self.onModelsListed()
        if self.models:
            names = [model.name for model in self.models]
            combo.setCurrentIndex(names.index(previous) if previous in names else 0)
            self.onServerModelChosen(combo.currentIndex)

    def onServerModelWritten(self, name: str) -> None:
        """A server job wrote model ``name``: list the server's models again and choose it."""
        self.onConnect()
        names = [model.name for model in self.models]
        if name in names:
            self.modelCombo.setCurrentIndex(names.index(name))

    def onServerModelChosen(self, index: int = 0) -> None:
        if 0 <= index < len(self.models):
            self.segmentPanel.useModel(self.models[index])

    def chooseModel(self, model: ModelInfo) -> None:
        """Make ``model`` (one of :attr:`models`, clicked in the model library) the chosen server model."""
        names = [listed.name for listed in self.models]
        if model.name in names:
            self.modelCombo.setCurrentIndex(names.index(model.name))  # emits currentIndexChanged: useModel
            self.segmentPanel.useModel(model)

    def listedModels(self) -> List[ModelInfo]:
        """The server's models while the engine is a server, else none."""
        return list(self.models) if self.engine == SERVER else []

    def _showEngine(self) -> None:
        server = self.engine == SERVER
        for widget in (self.urlEdit, self.tokenEdit, self.connectButton, self.modelCombo):
            widget.enabled = server
