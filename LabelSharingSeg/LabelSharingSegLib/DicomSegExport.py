"""DICOM SEG export of a segmentation whose reference volume was loaded from DICOM.

A DICOM SEG refers to the DICOM images it segments (each frame names its source image), so only
a segmentation drawn on a volume loaded through Slicer's DICOM module can be one. Two writers:

- **Slicer's own DICOM SEG exporter**, when it is there: ``DICOMSegmentationExporter`` of the
  ``DICOMSegmentationPlugin`` (the QuantitativeReporting extension for Slicer 5.8-5.10; Slicer core
  from April 2026, ``Modules/Scripted/DICOMPlugins/DICOMSegmentationPlugin.py``; both with
  ``__init__(segmentationNode, contentCreatorName=None)``, ``export(outputDirectory, segFileName,
  metadata, segmentIDs=None, skipEmpty=False)`` raising ``ValueError``/``RuntimeError``, and
  ``cleanup()``). It writes every segment on its own frames (overlaps kept), its terminology as
  the coded category/type/region, through dcmqi. The plugin class is found where the DICOM
  module looks for plugins, ``slicer.modules.dicomPlugins["DICOMSegmentationPlugin"]``, and the
  exporter class beside it in the plugin's Python module. We call the exporter rather than the
  plugin's ``examineForExport``, which offers only segmentations that carry the subject
  hierarchy attribute ``DICOM.ReferencedInstanceUIDs`` (set when a SEG is *loaded*, not for a
  segmentation made in Slicer).
- **The engine** otherwise (``labelsharing export-seg``, highdicom): the segmentation is written
  as a label map on the reference volume's grid with its ``.labels.json`` (names, colours,
  terminology; what the label-map export writes), the source files are gathered into a temporary
  folder, and the engine writes the SEG. Overlapping segments are flattened (the last wins), as
  in any label map.

Both write segments as MANUAL (made or corrected in Slicer), and a segment without terminology is
coded as the generic Tissue/Tissue, the entry Slicer's terminology gives an unspecified segment.

Where the source files are: a volume loaded from DICOM has the node attribute
``DICOM.instanceUIDs`` (SOP Instance UIDs, space separated; set by ``DICOMScalarVolumePlugin.load``
and read by ``DICOMSegmentationExporter.getDICOMFileList``), and ``slicer.dicomDatabase.fileForInstance(uid)``
(``ctkDICOMDatabase::fileForInstance``, CTK ``Libs/DICOM/Core/ctkDICOMDatabase.h``) gives each
file, or an empty string when the database no longer holds it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence

from labelsharing.plan import GENERIC_ENTRY

from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["DicomSegWriter", "dicomSourceFiles", "slicerSegExporterClass", "INSTANCE_UIDS_ATTRIBUTE"]

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
_PLUGIN = "DICOMSegmentationPlugin"


def dicomSourceFiles(volumeNode: Any, slicerModule: Any) -> Optional[List[str]]:
    """The DICOM files ``volumeNode`` was loaded from, in its instance order; ``None`` if it did not come from DICOM.

    Raises:
        ModuleError: the volume came from DICOM but Slicer's DICOM database no longer holds (all of) its files.
    """
    uids = (volumeNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        return None
    database = getattr(slicerModule, "dicomDatabase", None)
    files = [str(database.fileForInstance(uid) or "") if database is not None else "" for uid in uids]
    missing = sum(1 for path in files if not path or not os.path.isfile(path))
    if missing:
        raise ModuleError(
            _("{missing} of the {total} DICOM files of '{volume}' are no longer in Slicer's DICOM database, so a "
              "DICOM SEG cannot refer to them. Import the series again in the DICOM module (keeping the files where "
              "they are), or export as seg.nrrd, nii.gz or nrrd.").format(
                missing=missing, total=len(files), volume=volumeNode.GetName()))
    return files


def slicerSegExporterClass(slicerModule: Any) -> Optional[type]:
    """Slicer's ``DICOMSegmentationExporter`` class, or ``None`` when no DICOM SEG plugin is installed."""
    plugins = getattr(slicerModule.modules, "dicomPlugins", None) or {}
    pluginClass = plugins.get(_PLUGIN)
    if pluginClass is None:
        return None
    return getattr(sys.modules.get(pluginClass.__module__), "DICOMSegmentationExporter", None)


class DicomSegWriter:
    """Writes one segmentation as ``<folder>/<stem>.dcm``, by Slicer's exporter or by the engine.

    Args:
        sceneIO: for the reference volume and segment properties.
        slicerModule: the ``slicer`` module.
        writeLabelmap: ``(segmentationNode, folder, stem, taskLabels) -> path`` writes the label map
            and its ``.labels.json`` on the reference volume's grid (``SegmentationExporter``).
        runEngine: runs engine arguments to their end and returns an ``EngineResult``
            (``EngineJob.runBlocking``).
    """

    def __init__(self, sceneIO: Any, slicerModule: Any, writeLabelmap: Callable[..., Path],
                 runEngine: Callable[[Sequence[str]], Any]) -> None:
        self._sceneIO = sceneIO
        self._slicer = slicerModule
        self._writeLabelmap = writeLabelmap
        self._runEngine = runEngine

    def route(self, segmentationNode: Any) -> str:
        """How the segmentation would be written, for the panel's note (a sentence)."""
        volume = self._sceneIO.referenceVolume(segmentationNode) if segmentationNode is not None else None
        if volume is None or not (volume.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").strip():
            return _("A DICOM SEG refers to the DICOM images it segments: it needs a segmentation whose source volume "
                     "was loaded with the DICOM module. Other volumes: export as seg.nrrd, nii.gz or nrrd.")
        if slicerSegExporterClass(self._slicer) is not None:
            return _("Written by Slicer's DICOM SEG exporter (overlapping segments kept).")
        return _("Written by the LabelSharingSeg engine (Slicer's DICOM SEG exporter, from the QuantitativeReporting "
                 "extension, is not installed); overlapping segments are flattened.")

    def write(self, segmentationNode: Any, folder: Path, stem: str,
              taskLabels: Optional[Mapping[str, int]] = None) -> Path:
        """Write ``folder/<stem>.dcm``.

        Raises:
            ModuleError: no reference volume, a volume not loaded from DICOM, source files gone,
                an existing output file, or the writer's failure (its message).
        """
        name = segmentationNode.GetName()
        volume = self._sceneIO.referenceVolume(segmentationNode)
        if volume is None:
            raise ModuleError(_("Segmentation '{name}' has no source volume, so there are no DICOM images for a DICOM "
                                "SEG to refer to. Set its source volume in the Segment Editor.").format(name=name))
        files = dicomSourceFiles(volume, self._slicer)
        if files is None:
            raise ModuleError(
                _("The source volume of '{name}', '{volume}', was not loaded from DICOM, and a DICOM SEG must refer to "
                  "the DICOM images it segments. Load the series with the DICOM module, or export as seg.nrrd, nii.gz "
                  "or nrrd.").format(name=name, volume=volume.GetName()))
        path = Path(folder) / f"{stem}.dcm"
        if path.exists():
            raise ModuleError(_("{path} already exists; nothing was replaced. Move it away or choose another "
                                "folder.").format(path=path))
        self._codeUnnamedSegments(segmentationNode)
        exporterClass = slicerSegExporterClass(self._slicer)
        if exporterClass is not None:
            self._writeWithSlicer(exporterClass, segmentationNode, path)
        else:
            self._writeWithEngine(segmentationNode, files, path, stem, taskLabels)
        return path

    def _codeUnnamedSegments(self, segmentationNode: Any) -> None:
        """Give segments without terminology the generic entry (Slicer's exporter needs a category and type)."""
        segmentation = segmentationNode.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetSegment(segmentation.GetNthSegmentID(index))
            entry = self._sceneIO.segmentTerminology(segment)
            if not entry:
                segment.SetTag(segment.GetTerminologyEntryTagName(), GENERIC_ENTRY)

    def _writeWithSlicer(self, exporterClass: type, segmentationNode: Any, path: Path) -> None:
        exporter = exporterClass(segmentationNode)
        try:
            exporter.export(str(path.parent), path.name, {"SeriesDescription": segmentationNode.GetName()},
                            skipEmpty=True)
        except (ValueError, RuntimeError) as exc:  # what DICOMSegmentationExporter.export raises
            raise ModuleError(_("Slicer's DICOM SEG exporter could not write '{name}': {reason}").format(
                name=segmentationNode.GetName(), reason=exc)) from exc
        finally:
            exporter.cleanup()
        if not path.is_file():
            raise ModuleError(_("Slicer's DICOM SEG exporter wrote no file for '{name}'; see the Python "
                                "console.").format(name=segmentationNode.GetName()))

    def _writeWithEngine(self, segmentationNode: Any, files: Sequence[str], path: Path, stem: str,
                         taskLabels: Optional[Mapping[str, int]]) -> None:
        with tempfile.TemporaryDirectory(prefix="labelsharing-seg-") as temporary:
            labelFile = self._writeLabelmap(segmentationNode, Path(temporary) / "labels", stem, taskLabels)
            series = Path(temporary) / "series"
            series.mkdir()
            for index, source in enumerate(files):
                _linkOrCopy(Path(source), series / f"{index:05d}.dcm")
            result = self._runEngine(["export-seg", str(labelFile), str(series), "--out", str(path)])
        if not result.succeeded:
            raise ModuleError(_("The engine could not write '{name}' as a DICOM SEG: {reason}").format(
                name=segmentationNode.GetName(), reason=result.errorMessage or _("see the log")))


def _linkOrCopy(source: Path, target: Path) -> None:
    """A hard link when the file system allows it (no copy of a large series), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
