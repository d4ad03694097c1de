"""Fill a segmentation node from the engine's ``.seg.nrrd`` result, or from a label map and its segment list.

The engine's result is read by Slicer's own segmentation reader: the file carries each segment's
name, colour, label value and terminology, as the engine wrote them from the model
(``labelsharing.data.seg_nrrd``).

The segmentations logic's ``LoadSegmentationFromFile`` is called rather than ``slicer.util.loadSegmentation`` (issue 17), which ends in it: through the IO manager every temporary result would be added to File > Recent (``qSlicerMainWindow::onNewFileLoaded``) and flash a progress dialog.

Kept for plain label maps (issue 17): :meth:`SegmentImporter.importLabelmap` serves the demo data, whose label files carry no names, colours or terminology (they are in ``dataset.json``), so ``loadSegmentation`` alone cannot name their segments.

Slicer calls used and where their signatures come from:

- ``vtkSlicerSegmentationsModuleLogic.LoadSegmentationFromFile(filename, autoOpacities, nodeName,
  colorTableNode, userMessages)`` -> a new segmentation node with a storage and a display node, or
  ``None`` after adding the reason to ``userMessages`` (a ``vtkMRMLMessageCollection``;
  ``GetAllMessagesAsString()``) (``Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentationsModuleLogic.cxx``,
  5.8.0 and main; ``qSlicerSegmentationsReader`` calls it for ``loadSegmentation``). Its storage
  node's ``.seg.nrrd`` reader (``Libs/MRML/Core/vtkMRMLSegmentationStorageNode.cxx``,
  ``ReadBinaryLabelmapRepresentation``) reads ``SegmentN_ID``, ``_Name``, ``_Color``, ``_LabelValue``,
  ``_Layer`` and ``_Tags`` (``key:value|...``: the ``TerminologyEntry`` tag) and crops each layer to
  the union of its segments' ``_Extent``, on the file's own grid;
- ``vtkSegmentation.DeepCopy(segmentation)`` (replaces all segments, keeps shared labelmap layers,
  segment IDs, tags and label values), ``GetSegmentIdBySegmentName(name)`` ("" when absent) and
  ``SetSegmentIndex(segmentId, index)``; ``vtkMRMLDisplayableNode.GetDisplayNode()`` and
  ``vtkMRMLStorableNode.GetStorageNode()``, removed with the temporary node because
  ``vtkMRMLScene::RemoveNode`` does not remove them (``Libs/MRML/Core/vtkMRMLScene.cxx``);
- ``vtkSegmentation.RemoveAllSegments()``, ``AddEmptySegment(segmentId, segmentName, color[3])``
  -> the ID actually used, ``GetSegment(id)`` (``Libs/vtkSegmentationCore/vtkSegmentation.h``);
- ``vtkSegment.SetColor(r, g, b)``, ``SetTag(tag, value)``, ``GetTerminologyEntryTagName()``
  (``Libs/vtkSegmentationCore/vtkSegment.h``);
- ``vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmapNode,
  segmentationNode, vtkStringArray updatedSegmentIDs)``: label value v goes to the segment
  ``updatedSegmentIDs[v - 1]``; empty IDs are skipped
  (``Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentationsModuleLogic.{h,cxx}``);
- ``vtkMRMLSegmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)`` (also
  sets the reference-geometry node reference, needed for DICOM SEG export);
- ``vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)``, ``GetItemByDataNode(node)``,
  ``GetItemParent(item)``, ``SetItemParent(item, parent)``
  (``Libs/MRML/Core/vtkMRMLSubjectHierarchyNode.h``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["SegmentSpec", "SegmentImporter"]


@dataclass(frozen=True)
class SegmentSpec:
    """A segment to create: name, label value in the result file, colour (0..1 RGB), terminology."""

    name: str
    value: int
    color: Tuple[float, float, float]
    terminology: Optional[str] = None


class SegmentImporter:
    """Creates segments from a labelmap node.

    Args:
        slicerModule: the ``slicer`` module (injected by tests; imported when omitted).
        vtkModule: the ``vtk`` module (injected by tests; imported when omitted).
    """

    def __init__(self, slicerModule: Any = None, vtkModule: Any = None) -> None:
        if slicerModule is None:
            import slicer as slicerModule
        if vtkModule is None:
            import vtk as vtkModule
        self._slicer = slicerModule
        self._vtk = vtkModule

    def importLabelmap(
        self,
        labelmapNode: Any,
        segmentationNode: Any,
        segments: Sequence[SegmentSpec],
        referenceVolume: Any,
    ) -> List[str]:
        """Replace the segments of ``segmentationNode`` with one segment per ``SegmentSpec``.

        Segments are created first (so names, colours and order are the task's), then the
        labelmap is imported in one call, then the reference geometry is set from the input
        volume and the segmentation is placed under the volume's study.

        Returns:
            the segment IDs, in the order of ``segments``.

        Raises:
            ModuleError: if Slicer refuses the import.
        """
        values = [spec.value for spec in segments]
        if len(set(values)) != len(values) or any(value < 1 for value in values):
            raise ValueError(f"segment label values must be unique and >= 1, got {values}")
        segmentation = segmentationNode.GetSegmentation()
        segmentation.RemoveAllSegments()
        segmentIds = []
        for spec in segments:
            segmentId = segmentation.AddEmptySegment(spec.name, spec.name, list(spec.color))
            segment = segmentation.GetSegment(segmentId)
            segment.SetColor(*spec.color)
            if spec.terminology:
                segment.SetTag(segment.GetTerminologyEntryTagName(), spec.terminology)
            segmentIds.append(segmentId)
        idsByValue = self._vtk.vtkStringArray()
        byValue = dict(zip(values, segmentIds))
        for value in range(1, max(values, default=0) + 1):
            idsByValue.InsertNextValue(byValue.get(value, ""))
        logic = self._slicer.modules.segmentations.logic()
        if not logic.ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode, idsByValue):
            raise ModuleError(_("Slicer could not import the segmentation result (see the application log)."))
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
        self.placeUnderStudyOf(segmentationNode, referenceVolume)
        return segmentIds

    def importSegmentationFile(
        self, path: Any, segmentationNode: Any, segmentNames: Sequence[str], referenceVolume: Any,
    ) -> List[str]:
        """Replace the segments of ``segmentationNode`` with those of a ``.seg.nrrd`` file.

        The file is loaded into a temporary node (removed afterwards, so nothing in the scene
        points at the file), its segments are copied over, ordered as ``segmentNames``, then the
        reference geometry is set from ``referenceVolume`` (whose grid the file shares) and the
        segmentation is placed under the volume's study.

        Returns:
            the segment IDs, in the order of ``segmentNames``.

        Raises:
            ModuleError: Slicer cannot read the file, or it lacks one of ``segmentNames``.
        """
        messages = self._slicer.vtkMRMLMessageCollection()
        loaded = self._slicer.modules.segmentations.logic().LoadSegmentationFromFile(
            str(path), False, "LabelSharingSeg result", None, messages)
        if loaded is None:
            raise ModuleError(_("Slicer could not read the segmentation result (see the details)."),
                              f"{path}\n{messages.GetAllMessagesAsString()}")
        segmentation = segmentationNode.GetSegmentation()
        try:
            segmentation.DeepCopy(loaded.GetSegmentation())
        finally:
            for node in (loaded.GetDisplayNode(), loaded.GetStorageNode(), loaded):
                if node is not None:
                    self._slicer.mrmlScene.RemoveNode(node)
        segmentIds = []
        for index, name in enumerate(segmentNames):
            segmentId = segmentation.GetSegmentIdBySegmentName(name)
            if not segmentId:
                raise ModuleError(_("The engine's result has no segment '{name}'. The model folder may have changed "
                                    "while it ran; segment again.").format(name=name))
            segmentation.SetSegmentIndex(segmentId, index)
            segmentIds.append(segmentId)
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
        self.placeUnderStudyOf(segmentationNode, referenceVolume)
        return segmentIds

    def placeUnderStudyOf(self, node: Any, volumeNode: Any) -> None:
        """Put ``node`` in the subject hierarchy next to ``volumeNode`` (under its study)."""
        shNode = self._slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self._slicer.mrmlScene)
        volumeItem = shNode.GetItemByDataNode(volumeNode)
        shNode.SetItemParent(shNode.GetItemByDataNode(node), shNode.GetItemParent(volumeItem))
