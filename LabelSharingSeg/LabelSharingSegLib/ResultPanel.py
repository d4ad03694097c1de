"""The result of a segmentation: the Show 3D button and an embedded Segment Editor to correct it.

Both follow the Segment section: the output segmentation (the result, once Apply has run) and the
input volume (the editor's source volume), so a clinician corrects the prediction without leaving
the module. The segments already carry the task's names, colours and terminology
(``SegmentImport``); the 3D view shows them in those colours.

Slicer calls (``Modules/Loadable/Segmentations/Widgets/``, the same in 5.8.0 and main):

- ``qMRMLSegmentationShow3DButton.setSegmentationNode(node)``: a slot; the button then creates
  or removes the closed-surface representation and is disabled while the node has no segment
  (``qMRMLSegmentationShow3DButton.cxx``, ``onToggled``/``updateWidgetFromMRML``), as
  SlicerTotalSegmentator uses it next to its output selector;
- ``qMRMLSegmentEditorWidget``: ``setMRMLSegmentEditorNode(node)`` first, then
  ``setSegmentationNode(node)``, then ``setSourceVolumeNode(node)``: without the earlier ones a
  later one sets nothing and logs a ``qCritical`` (``qMRMLSegmentEditorWidget.cxx``); both setters
  return early for the node already set. When the editor is hidden (module left, or its section
  collapsed: ``ctkCollapsibleButton`` signal ``contentsCollapsed(bool)``) ``setActiveEffect(None)``,
  ``uninstallKeyboardShortcuts()`` and ``removeViewObservations()``; when it is shown
  ``installKeyboardShortcuts()``, as Slicer's Segment Editor module does on ``exit``/``enter``
  (``Modules/Scripted/SegmentEditor/SegmentEditor.py``), so no hidden effect acts on the views. Its own node
  selectors are hidden in the .ui (``segmentationNodeSelectorVisible``,
  ``sourceVolumeNodeSelectorVisible``), its scene comes from the .ui's ``mrmlSceneChanged`` connection;
- the editor's parameter node is a ``vtkMRMLSegmentEditorNode`` singleton of its own tag, made as
  ``SegmentEditor.py`` makes its ``"SegmentEditor"`` one (``vtkMRMLScene.GetSingletonNode``,
  ``CreateNodeByClass``, ``UnRegister(None)``, ``vtkMRMLNode.SetSingletonTag``, ``AddNode``), so
  this editor and the Segment Editor module do not switch each other's segmentation.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ResultPanel", "EDITOR_NODE_TAG"]

#: singleton tag of the embedded editor's vtkMRMLSegmentEditorNode
EDITOR_NODE_TAG = "LabelSharingSeg"


class ResultPanel:
    """Controller of the Show 3D button and the embedded Segment Editor.

    Args:
        ui: the module's ``ui`` (``segmentationShow3DButton``, ``segmentEditorWidget`` in
            ``resultEditorCollapsibleButton``).
        slicerModule: the ``slicer`` module.
    """

    def __init__(self, ui: Any, slicerModule: Any) -> None:
        self.ui = ui
        self.slicer = slicerModule
        self._entered = False
        self.selectEditorNode()
        ui.resultEditorCollapsibleButton.connect("contentsCollapsed(bool)", self.onEditorCollapsed)

    @property
    def editor(self) -> Any:
        return self.ui.segmentEditorWidget

    def selectEditorNode(self) -> None:
        """Give the editor its parameter node: this module's singleton, created once per scene."""
        scene = self.slicer.mrmlScene
        node = scene.GetSingletonNode(EDITOR_NODE_TAG, "vtkMRMLSegmentEditorNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)  # CreateNodeByClass hands over a reference; the scene keeps its own
            node.SetSingletonTag(EDITOR_NODE_TAG)
            node = scene.AddNode(node)
        self.editor.setMRMLSegmentEditorNode(node)

    def follow(self, segmentation: Any, volume: Any) -> None:
        """Show and edit ``segmentation`` (or nothing) with ``volume`` as the editor's source volume."""
        self.ui.segmentationShow3DButton.setSegmentationNode(segmentation)
        self.editor.setSegmentationNode(segmentation)
        if segmentation is not None:
            self.editor.setSourceVolumeNode(volume)

    def enter(self) -> None:
        """The module is shown: the editor works if its section is expanded."""
        self._entered = True
        self._setActive(not self.ui.resultEditorCollapsibleButton.collapsed)

    def exit(self) -> None:
        """The module is left: no effect stays active in the views, no shortcut stays installed."""
        self._entered = False
        self._setActive(False)

    def onEditorCollapsed(self, collapsed: bool) -> None:
        self._setActive(self._entered and not collapsed)

    def _setActive(self, active: bool) -> None:
        """Keyboard shortcuts (effects 1..0, z/y undo/redo, ...) while shown; no effect while hidden."""
        if active:
            self.editor.installKeyboardShortcuts()
            return
        self.editor.setActiveEffect(None)
        self.editor.uninstallKeyboardShortcuts()
        self.editor.removeViewObservations()

    def onSceneStartClose(self) -> None:
        """The scene is closing: let go of its nodes."""
        self.follow(None, None)
        self.editor.removeViewObservations()

    def onSceneEndClose(self) -> None:
        """The scene was cleared: make sure the editor has a parameter node in it."""
        self.selectEditorNode()
