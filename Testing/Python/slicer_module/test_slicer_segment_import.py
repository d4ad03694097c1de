"""Segment creation and the Segment flow, against a FAKE of the Slicer calls they make (fakes.py); the engine's
result is written by the engine's own writer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .fakes import FakeSegmentationNode, FakeVolumeNode, fakeSlicer, fakeVtk
from .fakes_files import writeEngineResult
from LabelSharingSegLib.ModelInfo import ModelInfo
from LabelSharingSegLib.ModuleError import ModuleError
from LabelSharingSegLib.SceneIO import SceneIO
from LabelSharingSegLib.SegmentImport import SegmentImporter, SegmentSpec
from LabelSharingSegLib.Segmenter import Segmenter

TERM = "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~~^^~^^"


def test_segments_are_created_in_task_order_then_filled_by_one_import():
    slicer, vtk = fakeSlicer(), fakeVtk()
    volume = FakeVolumeNode(np.zeros((2, 2, 2)), np.eye(4))
    segmentationNode = FakeSegmentationNode("out")
    segmentationNode.segmentation.AddEmptySegment("old", "old")
    specs = [
        SegmentSpec("liver", 1, (0.8, 0.4, 0.2), TERM),
        SegmentSpec("kidney", 4, (0.1, 0.6, 0.3)),  # a gap: values 2 and 3 unused
    ]
    labelmap = object()
    ids = SegmentImporter(slicer, vtk).importLabelmap(labelmap, segmentationNode, specs, volume)
    segmentation = segmentationNode.GetSegmentation()
    assert [segmentation.GetSegment(i).GetName() for i in ids] == ["liver", "kidney"]
    assert segmentation.GetNumberOfSegments() == 2  # the old segment is replaced
    assert segmentation.GetSegment(ids[0]).GetColor() == (0.8, 0.4, 0.2)
    assert segmentation.GetSegment(ids[0]).tags == {"TerminologyEntry": TERM}
    assert segmentation.GetSegment(ids[1]).tags == {}
    [(importedLabelmap, target, idsByValue)] = slicer.segmentationsLogic.imports
    assert importedLabelmap is labelmap and target is segmentationNode
    assert idsByValue == [ids[0], "", "", ids[1]]  # label value v -> idsByValue[v - 1]
    assert segmentationNode.referenceVolume is volume
    assert slicer.hierarchy.parents[segmentationNode] == "scene"  # the volume's parent item


def test_refused_import_is_a_readable_error():
    slicer = fakeSlicer()
    slicer.segmentationsLogic.succeed = False
    with pytest.raises(ModuleError, match="could not import"):
        SegmentImporter(slicer, fakeVtk()).importLabelmap(
            object(), FakeSegmentationNode(), [SegmentSpec("a", 1, (1, 0, 0))], FakeVolumeNode(np.zeros((1, 1, 1)), np.eye(4))
        )


def test_duplicate_label_values_are_a_programming_error():
    with pytest.raises(ValueError):
        SegmentImporter(fakeSlicer(), fakeVtk()).importLabelmap(
            object(), FakeSegmentationNode(), [SegmentSpec("a", 1, (1, 0, 0)), SegmentSpec("b", 1, (0, 1, 0))], None
        )


def _model(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "model.json").write_text(json.dumps({
        "format_version": 1, "plan": {"n_shared": 2, "tasks": {}},
        "tasks": {"abdomen": {"modality": "CT", "labels": {
            "kidney": {"value": 2, "shared": 2, "color": [0.1, 0.6, 0.3]},
            "liver": {"value": 1, "shared": 1, "color": [0.8, 0.4, 0.2], "terminology": TERM},
        }}},
    }))
    return ModelInfo.load(folder)


def test_segmenter_prepares_predict_and_loads_the_result(tmp_path):
    """FAKE slicer: volume -> temp file (Slicer's writer) -> engine's .seg.nrrd (the engine's writer)
    -> Slicer's reader -> named segments with the voxels and grid of the input."""
    slicer, vtk = fakeSlicer(str(tmp_path)), fakeVtk()
    ijkToRas = np.diag([-0.8, -0.8, 2.0, 1.0])
    ijkToRas[:3, 3] = [12.25, -7.5, 30.0]
    volume = FakeVolumeNode(np.zeros((3, 4, 5), dtype=np.int16), ijkToRas, "CT")
    volume.transformNodeId = "T1"
    segmenter = Segmenter(SceneIO(slicer, vtk), SegmentImporter(slicer, vtk), slicer)
    model = _model(tmp_path)
    request = segmenter.prepare(volume, model, "abdomen", "cpu")
    assert request.args[:4] == ["predict", str(tmp_path / "model"), "--task", "abdomen"]
    assert request.args[-4:] == ["--format", "seg.nrrd", "--device", "cpu"]
    assert (request.workDir / "input" / "volume.nrrd").is_file()
    labels = np.zeros((3, 4, 5), dtype=np.uint8)
    labels[1, 1:3, 1:4] = 1
    labels[2, 0, 0] = 2
    writeEngineResult(request.call.inputFile, request.resultFile, labels, model.task("abdomen").labels)
    nodesBefore = list(slicer.mrmlScene.nodes)
    segmentationNode = segmenter.load(request)
    segmentation = segmentationNode.segmentation
    names = [segmentation.GetSegment(i).GetName() for i in segmentation.segments]
    assert names == ["liver", "kidney"]  # task label order (by value)
    tags = [segmentation.GetSegment(i).tags for i in segmentation.segments]
    assert tags == [{"TerminologyEntry": TERM}, {}]  # model.json terminology -> the segment's tag
    colors = [segmentation.GetSegment(i).GetColor() for i in segmentation.segments]
    np.testing.assert_allclose(colors, [(0.8, 0.4, 0.2), (0.1, 0.6, 0.3)])
    assert segmentationNode.name == "CT abdomen" and segmentationNode.displayNodesCreated
    assert segmentationNode.transformNodeId == "T1"
    for segmentId, value in zip(segmentation.segments, (1, 2)):
        np.testing.assert_array_equal(segmentation.masks[segmentId], labels == value)
    np.testing.assert_allclose(segmentation.labelmapIjkToRas, ijkToRas, atol=1e-12)  # the input's grid
    assert segmentationNode.referenceVolume is volume
    assert slicer.mrmlScene.nodes == nodesBefore + [segmentationNode]  # the loaded node and its nodes removed
    assert not request.workDir.exists()  # temporary folder removed


def test_a_result_without_a_task_label_or_unreadable_is_a_readable_error(tmp_path):
    slicer, vtk = fakeSlicer(str(tmp_path)), fakeVtk()
    volume = FakeVolumeNode(np.zeros((2, 3, 4), dtype=np.int16), np.eye(4))
    importer = SegmentImporter(slicer, vtk)
    SceneIO(slicer, vtk).writeVolume(volume, tmp_path / "volume.nrrd")
    model = _model(tmp_path)
    result = writeEngineResult(tmp_path / "volume.nrrd", tmp_path / "volume.seg.nrrd", np.zeros((2, 3, 4), np.uint8),
                               model.task("abdomen").labels[:1])
    with pytest.raises(ModuleError, match="no segment 'kidney'"):
        importer.importSegmentationFile(result, FakeSegmentationNode(), ["liver", "kidney"], volume)
    (tmp_path / "broken.seg.nrrd").write_text("not a nrrd file\n")
    with pytest.raises(ModuleError, match="could not read the segmentation result") as caught:
        importer.importSegmentationFile(tmp_path / "broken.seg.nrrd", FakeSegmentationNode(), ["liver"], volume)
    assert "broken.seg.nrrd" in caught.value.details


def test_segmenter_reports_a_missing_result(tmp_path):
    slicer, vtk = fakeSlicer(str(tmp_path)), fakeVtk()
    volume = FakeVolumeNode(np.zeros((1, 2, 2), dtype=np.int16), np.eye(4))
    segmenter = Segmenter(SceneIO(slicer, vtk), SegmentImporter(slicer, vtk), slicer)
    request = segmenter.prepare(volume, _model(tmp_path), "abdomen", "auto")
    with pytest.raises(ModuleError, match="wrote no result"):
        segmenter.load(request)
    with pytest.raises(ModuleError, match="no task 'brain'"):
        segmenter.prepare(volume, _model(tmp_path), "brain", "auto")
