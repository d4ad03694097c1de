"""Scene <-> files and arrays: volumes and segmentations to arrays, nodes to files through Slicer's writers.

Only the main thread may call these methods (they touch MRML). The Slicer calls used, and
where their signatures come from (Slicer ``Base/Python/slicer/util.py`` unless noted):

- ``slicer.util.exportNode(node, filename, properties={}, world=False)``: writes a node with
  Slicer's own writer (a scalar volume to ``.nrrd`` in LPS, through ITK's NRRD writer, which
  prints the geometry with 17 significant digits: ``%.17g`` in NrrdIO's ``_nrrdStrcatSpaceVector``),
  without changing the node's storage node. It fills ``properties`` in, so a new dict is passed
  each time; it returns False when the writer fails and raises ``ValueError`` when no writer
  knows the file name's extension;
- ``vtkMRMLVolumeNode.GetIJKToRASMatrix(vtkMatrix4x4)`` (``Libs/MRML/Core/vtkMRMLVolumeNode.h``)
  and ``slicer.util.arrayFromVTKMatrix(vmatrix)``;
- ``slicer.util.arrayFromVolume(volumeNode)`` -> (k, j, i) view of the voxels;
- ``slicer.util.addVolumeFromArray(narray, ijkToRAS, name, nodeClassName)``;
- ``slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode)``,
  which raises ``RuntimeError`` when Slicer cannot export the segment;
- ``vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()``,
  ``SetReferenceImageGeometryParameterFromVolumeNode(volume)`` and
  ``vtkMRMLNode.GetNodeReference(role)`` (``Libs/MRML/Core/vtkMRMLSegmentationNode.h``);
- ``vtkSegmentation.GetNumberOfSegments()`` / ``GetNthSegmentID(i)`` / ``GetSegment(id)``
  (``Libs/vtkSegmentationCore/vtkSegmentation.h``);
- ``vtkSegment.GetColor()``, ``GetTerminologyEntryTagName()`` and ``bool GetTag(std::string tag,
  std::string& value)`` (``Libs/vtkSegmentationCore/vtkSegment.h``, 5.8.0 and main), whose value
  comes back through a ``vtk.reference`` (VTK ``Wrapping/PythonCore/PyVTKReference.cxx``), as
  Slicer's ``DICOMSegmentationPlugin.getDeserializedTerminologyEntry`` reads it. Slicer 5.10 added
  ``vtkSegment.GetTerminology()``, a shortcut for the same tag; the tag works on 5.8 too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from .ModuleError import ModuleError
from .TaskDefinition import TaskCase
from .Translation import tr as _

__all__ = ["SceneIO", "SegmentProperties"]


@dataclass(frozen=True)
class SegmentProperties:
    """What a segment says about its label besides the voxels: 0..1 RGB colour and the Slicer
    terminology entry string (``None`` when the segment has none)."""

    color: Tuple[float, float, float]
    terminology: Optional[str] = None


class SceneIO:
    """Conversions between MRML nodes and files/arrays.

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

    def ijkToRas(self, volumeNode: Any) -> np.ndarray:
        """The volume's 4x4 IJK->RAS matrix as a numpy array (parent transforms not applied)."""
        matrix = self._vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return np.asarray(self._slicer.util.arrayFromVTKMatrix(matrix), dtype=float)

    def writeVolume(self, volumeNode: Any, path: Union[str, Path]) -> Path:
        """Write a scalar volume as a ``.nrrd`` file the engine reads (Slicer's writer; parent transforms not applied)."""
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ModuleError(_("The input volume has no image data."))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.exportNode(volumeNode, path)
        return path

    def exportNode(self, node: Any, path: Path) -> None:
        """Write ``node`` to ``path`` with Slicer's writer for the file name's extension.

        Raises:
            ModuleError: no writer knows the extension, or the writer failed.
        """
        try:
            written = self._slicer.util.exportNode(node, str(path), {})
        except ValueError as exc:
            raise ModuleError(_("Slicer has no writer for {file}: {reason}").format(file=path.name, reason=exc)) from exc
        if not written:
            raise ModuleError(_("Could not write {path} (see the application log for Slicer's message).").format(path=path))

    def addLabelmapFromArray(self, voxels: np.ndarray, ijkToRas: np.ndarray, name: str) -> Any:
        """A new labelmap volume node holding ``voxels`` (k, j, i) on the given grid."""
        return self._slicer.util.addVolumeFromArray(voxels, ijkToRas, name, "vtkMRMLLabelMapVolumeNode")

    def removeNode(self, node: Any) -> None:
        """Remove a temporary node from the scene."""
        if node is not None:
            self._slicer.mrmlScene.RemoveNode(node)

    def referenceVolume(self, segmentationNode: Any) -> Any:
        """The volume whose grid the segmentation was drawn on, or ``None``."""
        role = segmentationNode.GetReferenceImageGeometryReferenceRole()
        return segmentationNode.GetNodeReference(role)

    def segmentMasks(self, segmentationNode: Any, referenceVolume: Any) -> Dict[str, np.ndarray]:
        """segment name -> binary mask (k, j, i) on the reference volume's grid."""
        segmentation = segmentationNode.GetSegmentation()
        masks: Dict[str, np.ndarray] = {}
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            name = segmentation.GetSegment(segmentId).GetName()
            try:
                mask = self._slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolume)
            except RuntimeError as exc:
                raise ModuleError(
                    _("Slicer could not read segment '{segment}' of '{segmentation}' on the grid of '{volume}' "
                      "({reason}). Check that the segment is not empty and that the source volume is the right "
                      "one.").format(segment=name, segmentation=segmentationNode.GetName(),
                                      volume=referenceVolume.GetName(), reason=exc)
                ) from exc
            masks[name] = np.asarray(mask) > 0 if name not in masks else masks[name] | (np.asarray(mask) > 0)
        return masks

    def segmentProperties(self, segmentationNode: Any) -> Dict[str, SegmentProperties]:
        """segment name -> colour and terminology, in segment order (the first segment of a name wins)."""
        segmentation = segmentationNode.GetSegmentation()
        properties: Dict[str, SegmentProperties] = {}
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetSegment(segmentation.GetNthSegmentID(index))
            color = tuple(float(c) for c in segment.GetColor())
            properties.setdefault(segment.GetName(), SegmentProperties(color, self.segmentTerminology(segment)))
        return properties

    def segmentTerminology(self, segment: Any) -> Optional[str]:
        """A segment's terminology entry string, ``None`` when it has none."""
        entry = self._vtk.reference("")
        segment.GetTag(segment.GetTerminologyEntryTagName(), entry)
        return str(entry.get()) or None

    def caseFromSegmentation(self, segmentationNode: Any, caseId: str, sourceVolume: Any = None) -> TaskCase:
        """A ``TaskCase`` (image, geometry, masks) from a segmentation and its source volume.

        Args:
            sourceVolume: the volume the segmentation was drawn on; when given and not yet the
                segmentation's reference volume, it becomes its reference (as the Segment Editor
                does when a source volume is picked). Default: the current reference volume.

        Raises:
            ModuleError: if there is no source volume, or it has no image data.
        """
        if sourceVolume is not None and sourceVolume is not self.referenceVolume(segmentationNode):
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(sourceVolume)
        volume = sourceVolume if sourceVolume is not None else self.referenceVolume(segmentationNode)
        if volume is None or volume.GetImageData() is None:
            raise ModuleError(
                _("Segmentation '{name}' has no source volume. Choose the volume it was drawn on in the "
                  "'Source volume' column of the task's segmentation list, then try again.").format(
                    name=segmentationNode.GetName())
            )
        image = np.array(self._slicer.util.arrayFromVolume(volume))
        return TaskCase(caseId, image, self.ijkToRas(volume), self.segmentMasks(segmentationNode, volume))
