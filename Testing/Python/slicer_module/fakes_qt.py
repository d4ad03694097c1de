"""FAKES of the Qt/CTK/MRML widgets whose behaviour the module's fixes depend on; not real Qt.

Only the behaviour a test needs, each with the source it imitates:

- signals: ``connect("signal(args)", slot)`` as PythonQt does; ``QObject::blockSignals(bool)``
  returns the previous state and silences the object's signals;
- ``QComboBox``: inserting into an empty box makes item 0 current and emits
  ``currentIndexChanged`` (qtbase ``src/widgets/widgets/qcombobox.cpp``,
  ``QComboBoxPrivate::rowsInserted``: "set current index if combo was previously empty");
- ``ctkPathLineEdit`` (CTK ``Libs/Widgets/ctkPathLineEdit.cpp``, commit 868d56c):
  ``setCurrentPath`` sets the line edit's text, whose ``textChanged`` runs ``updateHasValidInput``,
  which emits ``currentPathChanged`` (lines 295-298, 731-745); ``addCurrentPathToHistory``
  calls ``blockSignals(false)`` on its combo box before ``insertItem``/``setCurrentIndex``
  (lines 641-670), so the line edit's text is set again and ``currentPathChanged`` is emitted again;
- ``qMRMLNodeComboBox`` (Slicer ``Libs/MRML/Widgets/qMRMLNodeComboBox.h``): properties
  ``nodeTypes``, ``noneEnabled``, ``addEnabled``, ``removeEnabled``, ``showChildNodeTypes``;
  ``setMRMLScene``, ``setCurrentNode``, ``currentNode()``;
- ``qMRMLCheckableNodeComboBox.checkedNodes()`` (``Libs/MRML/Widgets/qMRMLCheckableNodeComboBox.h``);
- ``ctkCollapsibleButton`` (CTK ``Libs/Widgets/ctkCollapsibleButton.h``): property ``collapsed``,
  whose change emits ``contentsCollapsed(bool)``;
- ``qMRMLSegmentationShow3DButton.setSegmentationNode`` / ``segmentationNode()`` and
  ``qMRMLSegmentEditorWidget`` (Slicer ``Modules/Loadable/Segmentations/Widgets/``, 5.8.0 and main):
  see the classes.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional
from unittest import mock


class FakeSignals:
    """PythonQt-style ``connect`` / ``blockSignals`` and an ``emit`` for the fakes."""

    def __init__(self) -> None:
        self.slots: Dict[str, List[Callable]] = {}
        self.signalsBlocked = False

    def connect(self, signal: str, slot: Callable) -> None:
        self.slots.setdefault(signal, []).append(slot)

    def blockSignals(self, block: bool) -> bool:
        previous, self.signalsBlocked = self.signalsBlocked, bool(block)
        return previous

    def emit(self, signal: str, *args: Any) -> None:
        if not self.signalsBlocked:
            for slot in list(self.slots.get(signal, [])):
                slot(*args)


class FakeButton(FakeSignals):
    """QPushButton: ``text``, ``enabled``, ``toolTip``; ``click()`` emits ``clicked(bool)``."""

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self.text, self.enabled, self.toolTip = text, True, ""

    def click(self) -> None:
        self.emit("clicked(bool)", False)


class FakeComboBox(FakeSignals):
    """QComboBox with the first-item-becomes-current rule of ``QComboBoxPrivate::rowsInserted``."""

    def __init__(self) -> None:
        super().__init__()
        self.items: List[str] = []
        self.currentIndex = -1
        self.toolTip = ""

    @property
    def currentText(self) -> str:
        return self.items[self.currentIndex] if 0 <= self.currentIndex < len(self.items) else ""

    @property
    def count(self) -> int:
        return len(self.items)

    def clear(self) -> None:
        self.items = []
        self.setCurrentIndex(-1)

    def addItem(self, text: str) -> None:
        self.items.append(text)
        if len(self.items) == 1 and self.currentIndex == -1:
            self.setCurrentIndex(0)

    def findText(self, text: str) -> int:
        return self.items.index(text) if text in self.items else -1

    def setCurrentIndex(self, index: int) -> None:
        if index != self.currentIndex:
            self.currentIndex = index
            self.emit("currentIndexChanged(int)", index)


class FakeLineEdit(FakeSignals):
    """QLineEdit (qtbase ``src/widgets/widgets/qlineedit.h``): ``text``, ``placeholderText``, ``toolTip``,
    ``enabled``, ``echoMode`` (``QLineEdit.Password`` = 2, enum ``EchoMode``); ``finishEditing()`` emits
    ``editingFinished()`` as Qt does when the user presses Return or leaves the field."""

    Normal, NoEcho, Password = 0, 1, 2

    def __init__(self) -> None:
        super().__init__()
        self.text, self.placeholderText, self.toolTip, self.enabled, self.echoMode = "", "", "", True, self.Normal

    def finishEditing(self) -> None:
        self.emit("editingFinished()")


class FakePathLineEdit(FakeSignals):
    """ctkPathLineEdit: ``currentPath`` emits ``currentPathChanged(QString)``; so does
    ``addCurrentPathToHistory()`` (its combo box's signals are unblocked); ``history`` records it."""

    def __init__(self, path: str = "") -> None:
        super().__init__()
        self._path = path
        self.history: List[str] = []
        self.depth = 0

    @property
    def currentPath(self) -> str:
        return self._path

    @currentPath.setter
    def currentPath(self, path: str) -> None:
        self._path = str(path)
        self.emit("currentPathChanged(QString)", self._path)

    def addCurrentPathToHistory(self) -> None:
        self.depth += 1
        try:
            if self.depth > 1:
                raise RecursionError("addCurrentPathToHistory re-entered from a currentPathChanged slot")
            self.history.insert(0, self._path)
            self.emit("currentPathChanged(QString)", self._path)
        finally:
            self.depth -= 1


class FakeNodeComboBox(FakeSignals):
    """qMRMLNodeComboBox: a node selector."""

    def __init__(self) -> None:
        super().__init__()
        self.nodeTypes: List[str] = []
        self.noneEnabled = self.addEnabled = self.removeEnabled = self.showChildNodeTypes = False
        self.scene: Any = None
        self._node: Any = None

    def setMRMLScene(self, scene: Any) -> None:
        self.scene = scene

    def setCurrentNode(self, node: Any) -> None:
        self._node = node

    def currentNode(self) -> Any:
        return self._node


class FakeCheckableNodeComboBox(FakeSignals):
    """qMRMLCheckableNodeComboBox: ``checkedNodes()``; ``check(nodes)`` emits ``checkedNodesChanged()``."""

    def __init__(self) -> None:
        super().__init__()
        self._checked: List[Any] = []

    def checkedNodes(self) -> List[Any]:
        return list(self._checked)

    def check(self, nodes: List[Any]) -> None:
        self._checked = list(nodes)
        self.emit("checkedNodesChanged()")


class FakeTableWidget(FakeSignals):
    """QTableWidget: items and cell widgets by (row, column)."""

    def __init__(self) -> None:
        super().__init__()
        self.rowCount = 0
        self.items: Dict[tuple, Any] = {}
        self.cellWidgets: Dict[tuple, Any] = {}

    def setColumnCount(self, count: int) -> None:
        self.columnCount = count

    def setHorizontalHeaderLabels(self, labels: List[str]) -> None:
        self.headers = list(labels)

    def setRowCount(self, rows: int) -> None:
        self.rowCount = rows

    def setItem(self, row: int, column: int, item: Any) -> None:
        self.items[(row, column)] = item

    def item(self, row: int, column: int) -> Optional[Any]:
        return self.items.get((row, column))

    def setCellWidget(self, row: int, column: int, widget: Any) -> None:
        self.cellWidgets[(row, column)] = widget

    def cellWidget(self, row: int, column: int) -> Optional[Any]:
        return self.cellWidgets.get((row, column))

    def resizeColumnsToContents(self) -> None:
        return None


class FakeListWidget(FakeSignals):
    """QListWidget of text items: ``addItem``, ``item(row).text()``, ``count``, ``currentItem``,
    ``setCurrentRow``, ``row``, ``takeItem``."""

    class Item:
        def __init__(self, text: str) -> None:
            self._text = text

        def text(self) -> str:
            return self._text

    def __init__(self) -> None:
        super().__init__()
        self._items: List["FakeListWidget.Item"] = []
        self._current = -1

    @property
    def count(self) -> int:
        return len(self._items)

    def addItem(self, text: str) -> None:
        self._items.append(self.Item(text))

    def item(self, row: int) -> "FakeListWidget.Item":
        return self._items[row]

    def setCurrentRow(self, row: int) -> None:
        self._current = row

    def currentItem(self) -> Optional["FakeListWidget.Item"]:
        return self._items[self._current] if 0 <= self._current < len(self._items) else None

    def row(self, item: "FakeListWidget.Item") -> int:
        return self._items.index(item)

    def takeItem(self, row: int) -> "FakeListWidget.Item":
        self._current = -1
        return self._items.pop(row)


class FakeTreeWidgetItem:
    """QTreeWidgetItem: ``setText/text``, ``setToolTip/toolTip``, ``setData/data`` per (column, role) (``data``
    of an unset role is an invalid QVariant, ``None`` in PythonQt), ``addChild``, ``childCount``, ``child``,
    ``parent``."""

    def __init__(self) -> None:
        self.texts: Dict[int, str] = {}
        self.toolTips: Dict[int, str] = {}
        self.values: Dict[tuple, Any] = {}
        self.children: List["FakeTreeWidgetItem"] = []
        self._parent: Optional["FakeTreeWidgetItem"] = None

    def setText(self, column: int, text: str) -> None:
        self.texts[column] = text

    def text(self, column: int) -> str:
        return self.texts.get(column, "")

    def setToolTip(self, column: int, text: str) -> None:
        self.toolTips[column] = text

    def toolTip(self, column: int) -> str:
        return self.toolTips.get(column, "")

    def setData(self, column: int, role: Any, value: Any) -> None:
        self.values[(column, role)] = value

    def data(self, column: int, role: Any) -> Any:
        return self.values.get((column, role))

    def addChild(self, child: "FakeTreeWidgetItem") -> None:
        child._parent = self
        self.children.append(child)

    def childCount(self) -> int:
        return len(self.children)

    def child(self, index: int) -> "FakeTreeWidgetItem":
        return self.children[index]

    def parent(self) -> Optional["FakeTreeWidgetItem"]:
        return self._parent


class FakeTreeWidget(FakeSignals):
    """QTreeWidget: top-level items, the current item; ``click(item)`` emits ``itemClicked(QTreeWidgetItem*,int)``
    as a user click does (``setCurrentItem`` does not emit it: qtreewidget.cpp emits itemClicked from the view's
    ``clicked`` signal only)."""

    def __init__(self) -> None:
        super().__init__()
        self.items: List[FakeTreeWidgetItem] = []
        self._current: Optional[FakeTreeWidgetItem] = None
        self.headers: List[str] = []

    def setColumnCount(self, count: int) -> None:
        self.columnCount = count

    def setHeaderLabels(self, labels: List[str]) -> None:
        self.headers = list(labels)

    def clear(self) -> None:
        self.items, self._current = [], None

    def addTopLevelItem(self, item: FakeTreeWidgetItem) -> None:
        self.items.append(item)

    def topLevelItemCount(self) -> int:
        return len(self.items)

    def topLevelItem(self, index: int) -> FakeTreeWidgetItem:
        return self.items[index]

    def setCurrentItem(self, item: FakeTreeWidgetItem) -> None:
        self._current = item

    def currentItem(self) -> Optional[FakeTreeWidgetItem]:
        return self._current

    def expandAll(self) -> None:
        return None

    def click(self, item: FakeTreeWidgetItem, column: int = 0) -> None:
        self._current = item
        self.emit("itemClicked(QTreeWidgetItem*,int)", item, column)


def fakeSettingsClass() -> type:
    """QSettings (qtbase ``src/corelib/io/qsettings.h``): every instance made with the default constructor
    reads and writes the same application settings; ``value(key, defaultValue)`` gives the default for a
    missing key; ``setValue``, ``contains``. The returned class has its own empty store."""

    class FakeSettings:
        store: Dict[str, Any] = {}

        def value(self, key: str, defaultValue: Any = None) -> Any:
            return self.store.get(key, defaultValue)

        def setValue(self, key: str, value: Any) -> None:
            self.store[key] = value

        def contains(self, key: str) -> bool:
            return key in self.store

    FakeSettings.store = {}
    return FakeSettings


class FakeShow3DButton(FakeSignals):
    """qMRMLSegmentationShow3DButton (``qMRMLSegmentationShow3DButton.h``): ``setSegmentationNode(node)``
    (a slot; the button then shows or hides the node's closed-surface representation) and
    ``segmentationNode()``."""

    def __init__(self) -> None:
        super().__init__()
        self.node: Any = None

    def setSegmentationNode(self, node: Any) -> None:
        self.node = node

    def segmentationNode(self) -> Any:
        return self.node


class FakeSegmentEditorWidget(FakeSignals):
    """qMRMLSegmentEditorWidget (``qMRMLSegmentEditorWidget.{h,cxx}``, 5.8.0 and main).

    The segmentation and source volume live in the editor's parameter node. As in the .cxx,
    ``setSegmentationNode`` needs the parameter node first and ``setSourceVolumeNode`` needs the
    parameter node and a segmentation; otherwise a non-null node is not set and a ``qCritical``
    is logged (recorded in ``criticals``). Changing the segmentation deactivates the active
    effect. Shortcuts and view observations are flags; ``setActiveEffect(None)`` deactivates.
    """

    def __init__(self) -> None:
        super().__init__()
        self.editorNode: Any = None
        self.criticals: List[str] = []
        self.activeEffect: Any = None
        self.shortcutsInstalled = False
        self.viewsObserved = False

    def setMRMLSegmentEditorNode(self, node: Any) -> None:
        self.editorNode = node

    def mrmlSegmentEditorNode(self) -> Any:
        return self.editorNode

    def setSegmentationNode(self, node: Any) -> None:
        if self.editorNode is None:
            if node is not None:
                self.criticals.append("setSegmentationNode failed: need to set segment editor node first")
            return
        if self.editorNode.segmentationNode is node:
            return
        self.activeEffect = None
        self.editorNode.segmentationNode = node

    def segmentationNode(self) -> Any:
        return self.editorNode.segmentationNode if self.editorNode is not None else None

    def setSourceVolumeNode(self, node: Any) -> None:
        if self.editorNode is None or self.segmentationNode() is None:
            if node is not None:
                self.criticals.append(
                    "setSourceVolumeNode failed: need to set segment editor and segmentation nodes first")
            return
        self.editorNode.sourceVolumeNode = node

    def sourceVolumeNode(self) -> Any:
        return self.editorNode.sourceVolumeNode if self.editorNode is not None else None

    def setActiveEffect(self, effect: Any) -> None:
        self.activeEffect = effect
        self.viewsObserved = effect is not None  # setActiveEffect sets up / removes view observations

    def installKeyboardShortcuts(self, parent: Any = None) -> None:
        self.shortcutsInstalled = True

    def uninstallKeyboardShortcuts(self) -> None:
        self.shortcutsInstalled = False

    def removeViewObservations(self) -> None:
        self.viewsObserved = False


class FakeCollapsibleButton(FakeSignals):
    """ctkCollapsibleButton: setting ``collapsed`` to a new value emits ``contentsCollapsed(bool)``;
    ``parentWidget()`` (QWidget, qwidget.h) is the module panel, a recording mock whose ``layout()``
    takes ``indexOf``/``insertWidget`` (QBoxLayout) calls."""

    def __init__(self) -> None:
        super().__init__()
        self._collapsed = False
        self._parent = mock.MagicMock(name="modulePanel")

    def parentWidget(self) -> Any:
        return self._parent

    @property
    def collapsed(self) -> bool:
        return self._collapsed

    @collapsed.setter
    def collapsed(self, value: bool) -> None:
        if bool(value) != self._collapsed:
            self._collapsed = bool(value)
            self.emit("contentsCollapsed(bool)", self._collapsed)
