"""Render the module panel with a real Qt: ``Resources/Screenshots/panel.png``.

No Slicer runs on our build machines, so this draws ``LabelSharingSeg/Resources/UI/LabelSharingSeg.ui``
with PyQt5's ``uic`` (Qt 5.15, the Qt of Slicer 5.8) on Qt's offscreen platform, without a display.
The CTK and MRML widgets of the ``.ui`` are not in PyQt5, so each is drawn by a small stand-in
built on the Qt class it derives from, showing what Slicer would show:

- ``qMRMLWidget`` -> ``QWidget``;
- ``qMRMLNodeComboBox`` / ``qMRMLCheckableNodeComboBox`` -> ``QComboBox`` showing a node name
  (or the ``noneDisplay`` text);
- ``ctkPathLineEdit`` -> a ``QComboBox`` (editable) and a browse ``QToolButton``, as CTK lays it out;
- ``ctkCollapsibleButton`` -> a ``QWidget`` with a flat header button (arrow and title) over a
  framed body, hidden when ``collapsed`` is set in the ``.ui``.

The "Model library" section, which the module builds in code after the Segment section
(``LabelSharingSegLib/ModelLibraryPanel.py``), is added the same way here, with the same widgets:
a two-column ``QTreeWidget`` and three buttons. The sample state (volume, model, task names) is
what a user sees after loading the demo case "Demo abdomen CT" and training the demo model.

Run it in a throwaway environment, not the project's::

    python3 -m venv /tmp/qtvenv && /tmp/qtvenv/bin/pip install PyQt5
    QT_QPA_PLATFORM=offscreen /tmp/qtvenv/bin/python Resources/Scripts/render_panel_screenshot.py
"""

from __future__ import annotations

import io
import os
import sys
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PyQt5 import QtCore, QtGui, QtWidgets, uic  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
UI_FILE = REPO / "LabelSharingSeg" / "Resources" / "UI" / "LabelSharingSeg.ui"
OUT = REPO / "Resources" / "Screenshots" / "panel.png"
WIDTH = 520  # about the width of Slicer's module panel
MODELS = "~/.config/slicer.org/LabelSharingSeg"
#: what the panel shows in the sample state (widget name -> text)
SAMPLE = {
    "inputVolumeSelector": "LabelSharingSegDemo_AbdomenCT",
    "modelPathLineEdit": f"{MODELS}/demo/model",
    "modelInfoLabel": "4 task(s), 4 shared label(s).",
    "taskComboBox": "AbdomenCT",
    "torchInfoLabel": "Engine device: cpu",
    "taskSegmentationsSelector": "",
    "modelsFolderPathLineEdit": f"{MODELS}/models",
    "datasetFolderPathLineEdit": "~/tasks",
    "modelTargetLabel": f"The model will be written to {MODELS}/models/model",
    "statusLabel": "Segmentation: done.",
}
LIBRARY = [
    ("model", "demo", [("AbdomenCT (CT)", "liver, spleen, left_kidney, aorta"),
                       ("BrainMR (MR)", "brain, white_matter, ventricles"),
                       ("KneeXR (XR)", "femur, tibia, fibula, patella"),
                       ("ChestXR (XR)", "right_lung, left_lung, heart")]),
    ("abdomen_v1", "trained", [("abdomen_ct (CT)", "liver, spleen, kidneys")]),
]


class _KeepsOtherProperties:
    """Accepts the ``.ui`` properties a stand-in does not draw (``nodeTypes``, ``settingKey``, ...):
    uic sets each through ``set<Name>(value)``."""

    def __getattr__(self, name: str):
        if name.startswith("set") and len(name) > 3:
            return lambda value: setattr(self, f"_{name[3:]}", value)
        raise AttributeError(name)


class qMRMLWidget(QtWidgets.QWidget):
    def setMRMLScene(self, scene) -> None:
        return None


class qMRMLNodeComboBox(_KeepsOtherProperties, QtWidgets.QComboBox):
    """Shows one node name, or the ``noneDisplay`` text (``Libs/MRML/Widgets/qMRMLNodeComboBox.h``)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.addItem("")

    def setNoneDisplay(self, text: str) -> None:
        self.setItemText(0, text)

    def setMRMLScene(self, scene) -> None:
        return None


class qMRMLCheckableNodeComboBox(qMRMLNodeComboBox):
    pass


class ctkPathLineEdit(_KeepsOtherProperties, QtWidgets.QWidget):
    """An editable combo box with the path and a browse button (CTK ``Libs/Widgets/ctkPathLineEdit.cpp``)."""

    # the flags the .ui names (ctkPathLineEdit::Filter / Option); their values do not matter here
    Dirs, Drives, NoDot, NoDotDot, Readable, ShowDirsOnly = 1, 2, 4, 8, 16, 32

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        self.comboBox = QtWidgets.QComboBox(self)
        self.comboBox.setEditable(True)
        self.comboBox.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        button = QtWidgets.QToolButton(self)
        button.setIcon(self.style().standardIcon(QtWidgets.QStyle.SP_DirOpenIcon))
        layout.addWidget(self.comboBox)
        layout.addWidget(button)

    def setCurrentPath(self, path: str) -> None:
        self.comboBox.setEditText(path)


class ctkCollapsibleButton(_KeepsOtherProperties, QtWidgets.QWidget):
    """A flat header button (arrow + bold title) over a framed body (CTK ``Libs/Widgets/ctkCollapsibleButton.cpp``);
    a collapsed one shows its header only."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._header = QtWidgets.QToolButton(self)
        self._header.setToolButtonStyle(QtCore.Qt.ToolButtonTextBesideIcon)
        self._header.setArrowType(QtCore.Qt.DownArrow)
        font = self._header.font()
        font.setBold(True)
        self._header.setFont(font)
        self._collapsed = False

    def headerHeight(self) -> int:
        return self._header.sizeHint().height()

    def setText(self, text: str) -> None:
        self._header.setText(text)

    def setCollapsed(self, collapsed: bool) -> None:
        self._collapsed = collapsed
        self._header.setArrowType(QtCore.Qt.RightArrow if collapsed else QtCore.Qt.DownArrow)

    def finish(self) -> None:
        """Leave room for the header above the body's layout (uic made it ``QFormLayout(self)``); fold if collapsed."""
        layout = self.layout() or QtWidgets.QFormLayout(self)
        margins = layout.contentsMargins()
        layout.setContentsMargins(margins.left() + 4, self.headerHeight() + 8, margins.right() + 4, margins.bottom() + 4)
        body = [w for w in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly)
                if w is not self._header]
        for widget in body:
            widget.setVisible(not self._collapsed)
        if self._collapsed:
            self.setFixedHeight(self.headerHeight())

    def resizeEvent(self, event) -> None:
        self._header.setGeometry(0, 0, self.width(), self.headerHeight())
        super().resizeEvent(event)

    def paintEvent(self, event) -> None:
        if not self._collapsed:
            painter = QtGui.QPainter(self)
            painter.setPen(self.palette().color(QtGui.QPalette.Mid))
            painter.drawRect(0, self.headerHeight() // 2, self.width() - 1, self.height() - self.headerHeight() // 2 - 1)


class qMRMLSegmentationShow3DButton(_KeepsOtherProperties, QtWidgets.QPushButton):
    """A push button reading "Show 3D" (``Modules/Loadable/Segmentations/Widgets/qMRMLSegmentationShow3DButton.cxx``
    sets that text; it is a ``ctkMenuButton``, a push button with a menu arrow)."""

    def __init__(self, parent=None) -> None:
        super().__init__("Show 3D", parent)

    def setMRMLScene(self, scene) -> None:
        return None


class qMRMLSegmentEditorWidget(_KeepsOtherProperties, QtWidgets.QLabel):
    """Stands in for the Segment Editor (``qMRMLSegmentEditorWidget``), drawn only when its section is
    expanded; the screenshot shows that section folded."""

    def setMRMLScene(self, scene) -> None:
        return None


def installStandIns() -> None:
    """Make ``import qMRMLNodeComboBox`` (what uic does for ``<header>qMRMLNodeComboBox.h</header>``) find them."""
    for cls in (qMRMLWidget, qMRMLNodeComboBox, qMRMLCheckableNodeComboBox, ctkPathLineEdit, ctkCollapsibleButton,
                qMRMLSegmentationShow3DButton, qMRMLSegmentEditorWidget):
        module = types.ModuleType(cls.__name__)
        setattr(module, cls.__name__, cls)
        sys.modules[cls.__name__] = module


def fillParameterWidgets(panel: QtWidgets.QWidget) -> None:
    """What parameterNodeWrapper shows in Slicer: the choices and defaults of LabelSharingSeg.py's parameter
    node, spin box limits and defaults from the engine (``labelsharing.cli.training_defaults``, imports argparse only)."""
    sys.path.insert(0, str(REPO / "LabelSharingSeg"))
    from labelsharing.cli import training_defaults

    engine = training_defaults()
    for name, choices in (("deviceComboBox", ["auto", "cpu", "cuda", "mps"]), ("modalityComboBox", ["CT", "MR", "XR", "other"]),
                          ("exportFormatComboBox", ["seg.nrrd", "nii.gz", "nrrd"])):
        panel.findChild(QtWidgets.QComboBox, name).addItems(choices)
    for name, entry in (("trainEpochsSpinBox", engine["train"]["epochs"]), ("addTaskEpochsSpinBox", engine["add-task"]["epochs"])):
        spinBox = panel.findChild(QtWidgets.QSpinBox, name)
        spinBox.setMaximum(10**6)
        spinBox.setValue(int(entry["default"]))
    panel.findChild(QtWidgets.QDoubleSpinBox, "replaySpinBox").setValue(float(engine["add-task"]["replay"]["default"]))
    panel.findChild(QtWidgets.QLineEdit, "modelNameLineEdit").setText("model")


def uiWithoutSceneConnections() -> io.StringIO:
    """The .ui without its ``<connections>``: they pass the MRML scene (``mrmlSceneChanged(vtkMRMLScene*)``
    -> ``setMRMLScene(vtkMRMLScene*)``), a C++ type PyQt5 cannot connect, and there is no scene here."""
    root = ElementTree.parse(UI_FILE).getroot()
    for connections in root.findall("connections"):
        root.remove(connections)
    return io.StringIO(ElementTree.tostring(root, encoding="unicode"))


def libraryTreeSection() -> ctkCollapsibleButton:
    """The Model library section, with the widgets ModelLibraryPanel builds."""
    section = ctkCollapsibleButton()
    section.setText("Model library")
    layout = QtWidgets.QVBoxLayout(section)
    tree = QtWidgets.QTreeWidget()
    tree.setColumnCount(2)
    tree.setHeaderLabels(["Model / task", "Labels, or why the model cannot be used"])
    for name, _, tasks in LIBRARY:
        item = QtWidgets.QTreeWidgetItem([name, f"{len(tasks)} task(s)"])
        for task, labels in tasks:
            item.addChild(QtWidgets.QTreeWidgetItem([task, labels]))
        tree.addTopLevelItem(item)
    tree.expandAll()
    tree.setCurrentItem(tree.topLevelItem(0))
    tree.resizeColumnToContents(0)
    tree.setFixedHeight(170)
    layout.addWidget(tree)
    buttons = QtWidgets.QHBoxLayout()
    for text in ("Open model folder...", "Forget", "Use the demo model"):
        buttons.addWidget(QtWidgets.QPushButton(text))
    layout.addLayout(buttons)
    section.finish()
    return section


def main() -> int:
    installStandIns()
    app = QtWidgets.QApplication(sys.argv)
    app.setStyle("Fusion")
    panel = uic.loadUi(uiWithoutSceneConnections())
    for name, text in SAMPLE.items():
        widget = panel.findChild(QtWidgets.QWidget, name)
        if isinstance(widget, ctkPathLineEdit):
            widget.setCurrentPath(text)
        elif isinstance(widget, QtWidgets.QComboBox):
            widget.setItemText(0, text) if widget.count() else widget.addItem(text)
            widget.setCurrentIndex(widget.findText(text))
        elif isinstance(widget, QtWidgets.QLabel):
            widget.setText(text)
    fillParameterWidgets(panel)
    panel.findChild(QtWidgets.QProgressBar, "progressBar").setValue(100)
    panel.findChild(QtWidgets.QPushButton, "applyButton").setEnabled(True)  # input, model and task are chosen
    for name in ("taskCollapsibleButton", "trainCollapsibleButton"):  # shown folded, to keep the picture short
        panel.findChild(ctkCollapsibleButton, name).setCollapsed(True)
    for section in panel.findChildren(ctkCollapsibleButton):
        section.finish()
    segment = panel.findChild(ctkCollapsibleButton, "segmentCollapsibleButton")
    panel.layout().insertWidget(panel.layout().indexOf(segment) + 1, libraryTreeSection())
    panel.resize(WIDTH, 100)
    panel.adjustSize()
    panel.resize(WIDTH, panel.sizeHint().height())
    picture = panel.grab()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    picture.save(str(OUT), "PNG")
    print(f"wrote {OUT.relative_to(REPO)} ({picture.width()} x {picture.height()}), Qt {QtCore.QT_VERSION_STR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
