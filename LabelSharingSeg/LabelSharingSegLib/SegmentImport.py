"""Turn the engine's multi-label result into named, coloured segments of a segmentation node.

Slicer calls used and where their signatures come from:

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

    def placeUnderStudyOf(self, node: Any, volumeNode: Any) -> None:
        """Put ``node`` in the subject hierarchy next to ``volumeNode`` (under its study)."""
        shNode = self._slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self._slicer.mrmlScene)
        volumeItem = shNode.GetItemByDataNode(volumeNode)
        shNode.SetItemParent(shNode.GetItemByDataNode(node), shNode.GetItemParent(volumeItem))
