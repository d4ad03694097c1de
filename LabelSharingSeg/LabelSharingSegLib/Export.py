"""Export segmentations as ``.seg.nrrd``, as label maps in a task's label values, or as DICOM SEG.

A batch is exported one segmentation per call of :meth:`BatchExport.exportNext`, which the
widget calls from a ``qt.QTimer`` so the UI stays responsive for large batches (MRML must be
used from the main thread, so this is chunking, not threading).

Files are written by Slicer's writers, through ``SceneIO.exportNode`` (``slicer.util.exportNode``,
which does not change the node's storage node); DICOM SEG by Slicer's DICOM SEG exporter or the
engine (``DicomSegExport``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .DicomSegExport import DicomSegWriter
from .ModuleError import ModuleError
from .SceneIO import SceneIO
from .Translation import tr as _

__all__ = ["EXPORT_FORMATS", "SegmentationExporter", "BatchExport", "labelValuesFor"]

EXPORT_FORMATS = ("seg.nrrd", "nii.gz", "nrrd", "dcm")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def labelValuesFor(segmentNames: Sequence[str], taskLabels: Optional[Mapping[str, int]] = None) -> Dict[str, int]:
    """Label value of each segment: the task's value when the name is a task label, else the next free one.

    Example:
        >>> labelValuesFor(["kidney", "tumour", "liver"], {"liver": 1, "kidney": 2})
        {'kidney': 2, 'tumour': 3, 'liver': 1}
    """
    taskLabels = dict(taskLabels or {})
    values: Dict[str, int] = {}
    nextFree = max(taskLabels.values(), default=0) + 1
    for name in segmentNames:
        if name in taskLabels:
            values[name] = int(taskLabels[name])
        else:
            values[name] = nextFree
            nextFree += 1
    return values


class SegmentationExporter:
    """Writes one segmentation node to a file.

    Args:
        sceneIO: node <-> array conversions (a default ``SceneIO`` when omitted).
        slicerModule: the ``slicer`` module (injected by tests; imported when omitted).
        runEngine: runs engine arguments to their end, returning an ``EngineResult``
            (``EngineJob.runBlocking``); the DICOM SEG export needs it when Slicer has no DICOM SEG exporter.
    """

    def __init__(self, sceneIO: Optional[SceneIO] = None, slicerModule: Any = None,
                 runEngine: Optional[Callable[[Sequence[str]], Any]] = None) -> None:
        if slicerModule is None:
            import slicer as slicerModule
        self._sceneIO = sceneIO or SceneIO(slicerModule)
        self.dicom = DicomSegWriter(self._sceneIO, slicerModule, self.writeLabelmap, runEngine or _noEngine)

    def export(
        self, segmentationNode: Any, folder: Union[str, Path], fileFormat: str,
        taskLabels: Optional[Mapping[str, int]] = None,
    ) -> Path:
        """Export to ``folder/<node name>.<fileFormat>``; label maps also get ``<name>.labels.json``
        (``labels``, ``colors`` and ``terminology`` as in a task's ``dataset.json``); ``dcm`` is a
        DICOM SEG of the DICOM series the reference volume was loaded from (``DicomSegExport``).

        Raises:
            ModuleError: unknown format, no reference volume (label maps, DICOM SEG), a reference
                volume not loaded from DICOM (DICOM SEG), or a failed write.
        """
        if fileFormat not in EXPORT_FORMATS:
            raise ModuleError(_("Unknown export format '{format}'; choose one of {formats}.").format(
                format=fileFormat, formats=", ".join(EXPORT_FORMATS)))
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = _UNSAFE.sub("_", segmentationNode.GetName()).strip("_") or "segmentation"
        if fileFormat == "seg.nrrd":
            path = folder / f"{stem}.{fileFormat}"
            self._sceneIO.exportNode(segmentationNode, path)
            return path
        if fileFormat == "dcm":
            return self.dicom.write(segmentationNode, folder, stem, taskLabels)
        return self.writeLabelmap(segmentationNode, folder, stem, taskLabels, fileFormat)

    def writeLabelmap(self, segmentationNode: Any, folder: Path, stem: str,
                      taskLabels: Optional[Mapping[str, int]] = None, fileFormat: str = "nrrd") -> Path:
        """Write ``folder/<stem>.<fileFormat>`` (a label map on the reference volume's grid) and ``<stem>.labels.json``.

        Raises:
            ModuleError: no reference volume, or a failed write.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stem}.{fileFormat}"
        volume = self._sceneIO.referenceVolume(segmentationNode)
        if volume is None:
            raise ModuleError(
                _("Segmentation '{name}' has no reference volume, so it has no grid to write a label map on. "
                  "Export it as .seg.nrrd, or set its source volume in the Segment Editor.").format(
                    name=segmentationNode.GetName())
            )
        masks = self._sceneIO.segmentMasks(segmentationNode, volume)
        values = labelValuesFor(list(masks), taskLabels)
        labelArray = np.zeros(np.shape(next(iter(masks.values()))) if masks else (1, 1, 1), dtype=np.uint16)
        for name, mask in masks.items():
            labelArray[mask] = values[name]
        if labelArray.max(initial=0) < 256:
            labelArray = labelArray.astype(np.uint8)
        node = self._sceneIO.addLabelmapFromArray(labelArray, self._sceneIO.ijkToRas(volume), f"{stem}_labels")
        try:
            self._sceneIO.exportNode(node, path)
        finally:
            self._sceneIO.removeNode(node)
        properties = self._sceneIO.segmentProperties(segmentationNode)
        sidecar = folder / f"{stem}.labels.json"
        sidecar.write_text(json.dumps({
            "labels": {"background": 0, **values},
            "colors": {name: [round(c, 4) for c in p.color] for name, p in properties.items()},
            "terminology": {name: p.terminology for name, p in properties.items() if p.terminology},
        }, indent=2) + "\n", encoding="utf-8")
        return path


def _noEngine(args: Sequence[str]) -> Any:
    raise ModuleError(_("Writing a DICOM SEG without Slicer's DICOM SEG exporter needs the LabelSharingSeg engine, "
                        "which this exporter was not given."))


@dataclass
class BatchExport:
    """Export several segmentations, one per :meth:`exportNext` call.

    ``written`` collects the written paths, ``errors`` the (node name, message) of failures; a
    failure does not stop the batch.
    """

    exporter: SegmentationExporter
    nodes: Sequence[Any]
    folder: Union[str, Path]
    fileFormat: str
    taskLabels: Optional[Mapping[str, int]] = None
    written: List[Path] = field(default_factory=list)
    errors: List[Tuple[str, str]] = field(default_factory=list)
    _next: int = 0

    @property
    def done(self) -> bool:
        return self._next >= len(self.nodes)

    @property
    def percent(self) -> float:
        return 100.0 * self._next / max(1, len(self.nodes))

    def exportNext(self) -> bool:
        """Export the next segmentation; return True while more remain."""
        if self.done:
            return False
        node = self.nodes[self._next]
        self._next += 1
        try:
            self.written.append(self.exporter.export(node, self.folder, self.fileFormat, self.taskLabels))
        except ModuleError as exc:
            self.errors.append((node.GetName(), str(exc)))
        return not self.done
