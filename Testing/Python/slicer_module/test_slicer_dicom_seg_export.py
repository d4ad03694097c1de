"""DICOM SEG export from the module, against FAKES of the Slicer calls it makes (fakes.py).

Faked here: Slicer's DICOM SEG exporter, ``DICOMSegmentationExporter`` of
``DICOMSegmentationPlugin.py`` (QuantitativeReporting ``DICOMPlugins/``; Slicer core main
``Modules/Scripted/DICOMPlugins/``): ``__init__(segmentationNode, contentCreatorName=None)``,
``export(outputDirectory, segFileName, metadata, segmentIDs=None, skipEmpty=False)`` raising
``ValueError`` (``checkTerminologyOfSegments``: a segment without terminology), ``cleanup()``; the
plugin class registered as ``slicer.modules.dicomPlugins["DICOMSegmentationPlugin"]`` in its Python
module. The engine path runs the real engine (``labelsharing export-seg``) on a real DICOM series
(``dicom_data.write_ct_series``) and reads the SEG back with highdicom.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from .fakes import FakeDicomDatabase, FakeSegmentationNode, FakeVolumeNode, fakeSlicer, fakeVtk
from LabelSharingSegLib.DicomSegExport import INSTANCE_UIDS_ATTRIBUTE, slicerSegExporterClass
from LabelSharingSegLib.EngineProcess import EngineResult
from LabelSharingSegLib.Export import BatchExport, SegmentationExporter
from LabelSharingSegLib.ModuleError import ModuleError
from LabelSharingSegLib.SceneIO import SceneIO

from labelsharing.plan import EXAMPLE_ENTRY, GENERIC_ENTRY

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


class FakeDICOMSegmentationExporter:
    """DICOMSegmentationExporter: records its calls, writes a placeholder file, and refuses a segment
    without terminology as ``checkTerminologyOfSegments`` does."""

    calls: list = []

    def __init__(self, segmentationNode, contentCreatorName=None) -> None:
        self.segmentationNode = segmentationNode
        self.cleaned = False

    def export(self, outputDirectory, segFileName, metadata, segmentIDs=None, skipEmpty=False):
        segmentation = self.segmentationNode.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetSegment(segmentation.GetNthSegmentID(index))
            if "TerminologyEntry" not in segment.tags:
                raise ValueError(f"Segment {segment.GetName()} has missing attributes. Make sure to set terminology.")
        Path(outputDirectory, segFileName).write_bytes(b"DICM")
        FakeDICOMSegmentationExporter.calls.append((self, outputDirectory, segFileName, metadata, skipEmpty))
        return True

    def cleanup(self) -> None:
        self.cleaned = True


@pytest.fixture
def segPlugin(monkeypatch):
    """Install the fake plugin module as Slicer's DICOM module would find it."""
    module = types.ModuleType("DICOMSegmentationPlugin")
    module.DICOMSegmentationPluginClass = type("DICOMSegmentationPluginClass", (), {"__module__": module.__name__})
    module.DICOMSegmentationExporter = FakeDICOMSegmentationExporter
    monkeypatch.setitem(sys.modules, module.__name__, module)
    FakeDICOMSegmentationExporter.calls = []
    return module


def _slicer(plugin=None, files=None):
    slicer = fakeSlicer()
    if plugin is not None:
        slicer.modules.dicomPlugins = {"DICOMSegmentationPlugin": plugin.DICOMSegmentationPluginClass}
    slicer.dicomDatabase = FakeDicomDatabase(files)
    return slicer


def _segmentation(volume):
    node = FakeSegmentationNode("case 7", volume)
    shape = np.shape(volume.voxels)
    liver = np.zeros(shape, dtype=bool)
    liver[2:6, 20:40, 30:50] = True
    lesion = np.zeros(shape, dtype=bool)
    lesion[5:9, 50:70, 40:60] = True
    node.addSegment("liver", liver, (0.8, 0.3, 0.2))
    node.GetSegmentation().GetSegment(node.GetSegmentation().GetNthSegmentID(0)).SetTag("TerminologyEntry",
                                                                                        EXAMPLE_ENTRY)
    node.addSegment("lesion", lesion, (0.1, 0.9, 0.1))
    return node


def _plainVolume():
    return FakeVolumeNode(np.zeros((13, 96, 96), dtype=np.int16), np.diag([-0.8, -0.8, 3.5, 1.0]), "CT")


def _dicomVolume(tmp_path, uids=("1.2.3.1", "1.2.3.2")):
    volume = _plainVolume()
    volume.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(uids))
    files = {}
    for index, uid in enumerate(uids):
        files[uid] = str(tmp_path / "db" / f"{index}.dcm")
        Path(files[uid]).parent.mkdir(exist_ok=True)
        Path(files[uid]).write_bytes(b"DICM")
    return volume, files


def test_a_volume_not_from_dicom_is_explained_and_other_formats_still_export(tmp_path):
    slicer = _slicer()
    exporter = SegmentationExporter(SceneIO(slicer, fakeVtk()), slicer)
    node = _segmentation(_plainVolume())
    assert "loaded with the DICOM module" in exporter.dicom.route(node)
    batch = BatchExport(exporter, [node], tmp_path, "dcm")
    batch.exportNext()
    [(name, message)] = batch.errors
    assert name == "case 7" and "was not loaded from DICOM" in message and "seg.nrrd" in message
    assert not list(tmp_path.glob("*.dcm"))
    assert exporter.export(node, tmp_path, "nrrd") == tmp_path / "case_7.nrrd"


def test_slicer_exporter_is_used_when_installed_and_uncoded_segments_get_the_generic_entry(tmp_path, segPlugin):
    volume, files = _dicomVolume(tmp_path)
    slicer = _slicer(segPlugin, files)
    assert slicerSegExporterClass(slicer) is FakeDICOMSegmentationExporter
    exporter = SegmentationExporter(SceneIO(slicer, fakeVtk()), slicer, runEngine=pytest.fail)
    node = _segmentation(volume)
    assert "Slicer's DICOM SEG exporter" in exporter.dicom.route(node)
    path = exporter.export(node, tmp_path / "out", "dcm")
    assert path == tmp_path / "out" / "case_7.dcm" and path.is_file()
    [(instance, directory, name, metadata, skipEmpty)] = FakeDICOMSegmentationExporter.calls
    assert (directory, name, metadata, skipEmpty) == (str(tmp_path / "out"), "case_7.dcm",
                                                      {"SeriesDescription": "case 7"}, True)
    assert instance.cleaned and instance.segmentationNode is node
    segmentation = node.GetSegmentation()
    segments = [segmentation.GetSegment(segmentation.GetNthSegmentID(i)) for i in range(2)]
    tags = {segment.GetName(): segment.tags["TerminologyEntry"] for segment in segments}
    assert tags == {"liver": EXAMPLE_ENTRY, "lesion": GENERIC_ENTRY}  # the liver's own codes kept
    with pytest.raises(ModuleError, match="already exists; nothing was replaced"):
        exporter.export(node, tmp_path / "out", "dcm")


def test_files_gone_from_the_dicom_database_are_refused(tmp_path, segPlugin):
    volume, files = _dicomVolume(tmp_path)
    files.popitem()
    slicer = _slicer(segPlugin, files)
    exporter = SegmentationExporter(SceneIO(slicer, fakeVtk()), slicer)
    with pytest.raises(ModuleError, match="1 of the 2 DICOM files of 'CT' are no longer in Slicer's DICOM database"):
        exporter.export(_segmentation(volume), tmp_path, "dcm")


def test_engine_failure_is_reported_with_its_message(tmp_path):
    volume, files = _dicomVolume(tmp_path)
    slicer = _slicer(files=files)
    exporter = SegmentationExporter(SceneIO(slicer, fakeVtk()), slicer,
                                    runEngine=lambda args: EngineResult(2, False, "not on the grid", ""))
    assert "engine" in exporter.dicom.route(_segmentation(volume))
    with pytest.raises(ModuleError, match="could not write 'case 7' as a DICOM SEG: not on the grid"):
        exporter.export(_segmentation(volume), tmp_path, "dcm")


def test_engine_writes_the_seg_on_the_source_series_without_slicers_exporter(tmp_path):
    """No DICOM SEG plugin: label map + .labels.json written like Slicer, then the real engine on a real series."""
    pydicom = pytest.importorskip("pydicom")
    highdicom = pytest.importorskip("highdicom")
    import SimpleITK as sitk
    from dicom_data import demo_ct, write_ct_series

    from labelsharing.cli import main

    ct = demo_ct(tmp_path / "demo")
    sources = write_ct_series(ct, tmp_path / "pacs")
    uids = [str(pydicom.dcmread(path).SOPInstanceUID) for path in sources]
    direction = np.asarray(ct.GetDirection()).reshape(3, 3) * np.asarray(ct.GetSpacing())
    ijkToLps = np.eye(4)
    ijkToLps[:3, :3], ijkToLps[:3, 3] = direction, ct.GetOrigin()
    volume = FakeVolumeNode(sitk.GetArrayFromImage(ct), _LPS @ ijkToLps, "CT")
    volume.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(uids))
    slicer = _slicer(files=dict(zip(uids, map(str, sources))))
    seen = {}

    def runEngine(args):
        labelFile, series = Path(args[1]), Path(args[2])
        seen["sidecar"] = json.loads(labelFile.with_name("case_7.labels.json").read_text())
        seen["series"] = sorted(p.name for p in series.iterdir())
        return EngineResult(main(["--progress", "none", *args]), False, "", "")

    exporter = SegmentationExporter(SceneIO(slicer, fakeVtk()), slicer, runEngine=runEngine)
    node = _segmentation(volume)
    path = exporter.export(node, tmp_path / "out", "dcm", {"lesion": 4})
    assert seen["sidecar"]["labels"] == {"background": 0, "liver": 5, "lesion": 4}
    assert seen["sidecar"]["terminology"]["liver"] == EXAMPLE_ENTRY
    assert len(seen["series"]) == len(sources)
    seg = pydicom.dcmread(path)
    items = {item.SegmentLabel: item for item in seg.SegmentSequence}
    assert set(items) == {"liver", "lesion"}
    assert items["liver"].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    assert items["lesion"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # generic Tissue
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(sources[0]).SeriesInstanceUID
    volumeOut = highdicom.seg.segread(path).get_volume(combine_segments=True, relabel=True)
    counts = sorted(int(np.count_nonzero(volumeOut.array == value)) for value in (1, 2))
    assert counts == sorted(int(m.sum()) for m in node.masks.values())


def test_export_panel_note_follows_format_and_segmentation(tmp_path, segPlugin):
    """The note under the format: hidden for file formats; for dcm, the route or why there is none."""
    from unittest import mock

    from .fakes_qt import FakeButton, FakeComboBox, FakeNodeComboBox
    from LabelSharingSegLib.ExportPanel import ExportPanel

    volume, files = _dicomVolume(tmp_path)
    slicer = _slicer(None, files)
    ui = types.SimpleNamespace(exportButton=FakeButton(), exportFormatComboBox=FakeComboBox(),
                               exportSegmentationSelector=FakeNodeComboBox(), exportNoteLabel=mock.MagicMock())
    for name in ("seg.nrrd", "dcm"):
        ui.exportFormatComboBox.addItem(name)
    logic = types.SimpleNamespace(exporter=SegmentationExporter(SceneIO(slicer, fakeVtk()), slicer))
    ExportPanel(ui, logic, mock.MagicMock(), lambda: None, dict, slicer, mock.MagicMock())
    ui.exportFormatComboBox.setCurrentIndex(0)
    ui.exportFormatComboBox.emit("currentIndexChanged(int)", 0)
    ui.exportNoteLabel.setVisible.assert_called_with(False)
    ui.exportFormatComboBox.setCurrentIndex(1)
    ui.exportFormatComboBox.emit("currentIndexChanged(int)", 1)
    ui.exportNoteLabel.setVisible.assert_called_with(True)
    assert "loaded with the DICOM module" in ui.exportNoteLabel.setText.call_args[0][0]  # no segmentation chosen
    node = _segmentation(volume)
    ui.exportSegmentationSelector.setCurrentNode(node)
    ui.exportSegmentationSelector.emit("currentNodeChanged(vtkMRMLNode*)", node)
    assert "LabelSharingSeg engine" in ui.exportNoteLabel.setText.call_args[0][0]
    slicer.modules.dicomPlugins = {"DICOMSegmentationPlugin": segPlugin.DICOMSegmentationPluginClass}
    ui.exportSegmentationSelector.emit("currentNodeChanged(vtkMRMLNode*)", node)
    assert "Slicer's DICOM SEG exporter" in ui.exportNoteLabel.setText.call_args[0][0]
