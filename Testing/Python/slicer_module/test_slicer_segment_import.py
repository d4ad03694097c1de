"""Segment creation and the Segment flow, against a FAKE of the Slicer calls they make (fakes.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .fakes import FakeSegmentationNode, FakeVolumeNode, fakeSlicer, fakeVtk
from LabelSharingSegLib.ModelInfo import ModelInfo
from LabelSharingSegLib.ModuleError import ModuleError
from LabelSharingSegLib.NrrdIO import writeNrrd
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
    """FAKE slicer: volume -> temp file -> (engine output written by the test) -> named segments."""
    slicer, vtk = fakeSlicer(str(tmp_path)), fakeVtk()
    ijkToRas = np.diag([-0.8, -0.8, 2.0, 1.0])
    volume = FakeVolumeNode(np.zeros((3, 4, 5), dtype=np.int16), ijkToRas, "CT")
    volume.transformNodeId = "T1"
    segmenter = Segmenter(SceneIO(slicer, vtk), SegmentImporter(slicer, vtk), slicer)
    request = segmenter.prepare(volume, _model(tmp_path), "abdomen", "cpu")
    assert request.args[:4] == ["predict", str(tmp_path / "model"), "--task", "abdomen"]
    assert request.args[-4:] == ["--format", "nrrd", "--device", "cpu"]
    assert (request.workDir / "input" / "volume.nrrd").is_file()
    labels = np.zeros((3, 4, 5), dtype=np.uint8)
    labels[1, 1:3, 1:4] = 1
    labels[2, 0, 0] = 2
    writeNrrd(request.resultFile, labels, ijkToRas)  # stands in for the engine
    segmentationNode = segmenter.load(request)
    names = [segmentationNode.segmentation.GetSegment(i).GetName() for i in segmentationNode.segmentation.segments]
    assert names == ["liver", "kidney"]  # task label order (by value)
    tags = [segmentationNode.segmentation.GetSegment(i).tags for i in segmentationNode.segmentation.segments]
    assert tags == [{"TerminologyEntry": TERM}, {}]  # model.json terminology -> the segment's tag
    assert segmentationNode.name == "CT abdomen" and segmentationNode.displayNodesCreated
    assert segmentationNode.transformNodeId == "T1"
    [(labelmap, _, idsByValue)] = slicer.segmentationsLogic.imports
    np.testing.assert_array_equal(labelmap.voxels, labels)
    np.testing.assert_allclose(labelmap.ijkToRasArray, ijkToRas)
    assert idsByValue == ["liver", "kidney"]
    assert labelmap not in slicer.mrmlScene.nodes  # temporary labelmap removed
    assert not request.workDir.exists()  # temporary folder removed


def test_segmenter_reports_a_missing_result(tmp_path):
    slicer, vtk = fakeSlicer(str(tmp_path)), fakeVtk()
    volume = FakeVolumeNode(np.zeros((1, 2, 2), dtype=np.int16), np.eye(4))
    segmenter = Segmenter(SceneIO(slicer, vtk), SegmentImporter(slicer, vtk), slicer)
    request = segmenter.prepare(volume, _model(tmp_path), "abdomen", "auto")
    with pytest.raises(ModuleError, match="wrote no result"):
        segmenter.load(request)
    with pytest.raises(ModuleError, match="no task 'brain'"):
        segmenter.prepare(volume, _model(tmp_path), "brain", "auto")
