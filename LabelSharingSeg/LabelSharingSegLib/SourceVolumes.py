"""The source volume of each segmentation of a task, chosen by the user with a sensible default.

A segmentation loaded from a ``.seg.nrrd`` file has a reference *geometry* but no reference
*volume* node: the node reference ``referenceImageGeometryRef`` is set only by
``vtkMRMLSegmentationNode::SetReferenceImageGeometryParameterFromVolumeNode(volume)``
(``Libs/MRML/Core/vtkMRMLSegmentationNode.{h,cxx}``, 5.8 and main), which the Segment Editor
calls when a source volume is picked. So the panel lists the ticked segmentations, each with a
volume selector; the default is the referenced volume, else a volume whose grid is the
segmentation's reference geometry, and the choice is written back with that call.

Slicer/VTK calls: ``vtkSegmentation.GetConversionParameter(name)`` with
``slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()`` ("Reference image
geometry": 16 row-major IJK->RAS matrix elements then the 6 extent values, ``;``-separated;
``vtkSegmentationConverter::SerializeImageGeometry``, ``Libs/vtkSegmentationCore/
vtkSegmentationConverter.cxx``); ``vtkImageData.GetDimensions()`` (i, j, k);
``qMRMLNodeComboBox`` properties ``nodeTypes``, ``noneEnabled``, ``addEnabled``, ``removeEnabled``,
``showChildNodeTypes``, slots ``setMRMLScene``, ``setCurrentNode`` and ``currentNode()``
(``Libs/MRML/Widgets/qMRMLNodeComboBox.h``); ``QTableWidget.setCellWidget/cellWidget``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .Translation import tr as _

__all__ = ["parseImageGeometry", "sameGeometry", "defaultSourceVolume", "SourceVolumeTable"]

_VOLUME_CLASS = "vtkMRMLScalarVolumeNode"
_LABELMAP_CLASS = "vtkMRMLLabelMapVolumeNode"


def parseImageGeometry(text: str) -> Optional[Tuple[np.ndarray, Tuple[int, ...]]]:
    """The (4x4 IJK->RAS, extent of 6) of a serialized image geometry; ``None`` if empty or malformed.

    Example:
        >>> matrix, extent = parseImageGeometry("2;0;0;0;0;2;0;0;0;0;3;0;0;0;0;1;0;9;0;9;0;4;")
        >>> float(matrix[2, 2]), extent
        (3.0, (0, 9, 0, 9, 0, 4))
    """
    values = [v for v in (text or "").split(";") if v.strip()]
    if len(values) != 22:
        return None
    try:
        matrix = np.array([float(v) for v in values[:16]]).reshape(4, 4)
        extent = tuple(int(float(v)) for v in values[16:])
    except ValueError:
        return None
    return matrix, extent


def sameGeometry(segmentationNode: Any, volumeNode: Any, ijkToRas: np.ndarray, converter: Any) -> bool:
    """Whether the segmentation's reference geometry is the volume's voxel grid (matrix and size)."""
    text = segmentationNode.GetSegmentation().GetConversionParameter(
        converter.GetReferenceImageGeometryParameterName()
    )
    geometry = parseImageGeometry(text)
    imageData = volumeNode.GetImageData()
    if geometry is None or imageData is None:
        return False
    matrix, extent = geometry
    size = tuple(extent[2 * axis + 1] - extent[2 * axis] + 1 for axis in range(3))
    return size == tuple(imageData.GetDimensions()) and np.allclose(matrix, ijkToRas, atol=1e-4)


def defaultSourceVolume(segmentationNode: Any, volumes: Sequence[Any], sceneIO: Any, converter: Any) -> Any:
    """The referenced volume, else the first of ``volumes`` on the segmentation's grid, else ``None``."""
    referenced = sceneIO.referenceVolume(segmentationNode)
    if referenced is not None:
        return referenced
    for volume in volumes:
        if sameGeometry(segmentationNode, volume, sceneIO.ijkToRas(volume), converter):
            return volume
    return None


class SourceVolumeTable:
    """Rows "segmentation | source volume selector" for the ticked segmentations.

    Args:
        table: the ``QTableWidget`` (2 columns).
        sceneIO: ``referenceVolume`` and ``ijkToRas``.
        slicerModule, qtModule: the ``slicer`` and ``qt`` modules.
    """

    def __init__(self, table: Any, sceneIO: Any, slicerModule: Any, qtModule: Any) -> None:
        self.table = table
        self.sceneIO = sceneIO
        self.slicer = slicerModule
        self.qt = qtModule
        self._rows: List[Tuple[Any, Any]] = []  # (segmentation, selector)
        table.setColumnCount(2)
        table.setHorizontalHeaderLabels([_("Segmentation"), _("Source volume")])

    def refresh(self, segmentations: Sequence[Any]) -> None:
        """One row per segmentation, keeping the volumes already chosen for those still listed."""
        chosen: Dict[str, Any] = {s.GetID(): selector.currentNode() for s, selector in self._rows}
        # getNodesByClass lists subclasses too (Base/Python/slicer/util.py); label maps are no source
        volumes = [v for v in self.slicer.util.getNodesByClass(_VOLUME_CLASS) if not v.IsA(_LABELMAP_CLASS)]
        converter = self.slicer.vtkSegmentationConverter
        self._rows = []
        self.table.setRowCount(len(segmentations))
        for row, segmentation in enumerate(segmentations):
            selector = self.slicer.qMRMLNodeComboBox()
            selector.nodeTypes = [_VOLUME_CLASS]
            selector.showChildNodeTypes = False
            selector.noneEnabled = True
            selector.addEnabled = False
            selector.removeEnabled = False
            selector.setMRMLScene(self.slicer.mrmlScene)
            volume = chosen.get(segmentation.GetID()) or defaultSourceVolume(segmentation, volumes, self.sceneIO, converter)
            selector.setCurrentNode(volume)
            item = self.qt.QTableWidgetItem(segmentation.GetName())
            item.setFlags(self.qt.Qt.ItemIsEnabled | self.qt.Qt.ItemIsSelectable)
            self.table.setItem(row, 0, item)
            self.table.setCellWidget(row, 1, selector)
            self._rows.append((segmentation, selector))

    def sourceVolume(self, segmentationNode: Any) -> Any:
        """The volume chosen for a listed segmentation (``None`` when none is chosen or it is not listed)."""
        for segmentation, selector in self._rows:
            if segmentation is segmentationNode:
                return selector.currentNode()
        return None
