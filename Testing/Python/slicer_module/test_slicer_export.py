"""Export of segmentations, against a FAKE of the Slicer calls it makes (fakes.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .fakes import FakeSegmentationNode, FakeVolumeNode, fakeSlicer, fakeVtk
from LabelSharingSegLib.Export import BatchExport, SegmentationExporter, labelValuesFor
from LabelSharingSegLib.ModuleError import ModuleError
from LabelSharingSegLib.SceneIO import SceneIO


def test_label_values_follow_the_task_then_the_next_free_value():
    assert labelValuesFor(["tumour", "liver"], {"liver": 3}) == {"tumour": 4, "liver": 3}
    assert labelValuesFor(["a", "b"]) == {"a": 1, "b": 2}


def _segmentation():
    volume = FakeVolumeNode(np.zeros((2, 3, 4), dtype=np.int16), np.diag([-1.0, -1.0, 2.0, 1.0]))
    node = FakeSegmentationNode("case 7", volume)
    liver = np.zeros((2, 3, 4), dtype=bool)
    liver[0] = True
    node.addSegment("liver", liver, (0.8, 0.2, 0.1))
    tumour = np.zeros((2, 3, 4), dtype=bool)
    tumour[1, 0, 0] = True
    node.addSegment("tumour", tumour, (0.2, 0.2, 0.9))
    return node


def test_label_map_export_uses_task_values_and_keeps_names_and_colours(tmp_path):
    slicer = fakeSlicer()
    exporter = SegmentationExporter(SceneIO(slicer, fakeVtk()), slicer)
    path = exporter.export(_segmentation(), tmp_path, "nii.gz", {"liver": 2})
    assert path == tmp_path / "case_7.nii.gz"
    [((node, filename, properties), _)] = slicer.util.exportNode.call_args_list
    assert filename == str(path) and properties == {}
    assert node.className == "vtkMRMLLabelMapVolumeNode"
    assert np.count_nonzero(node.voxels == 2) == 12 and np.count_nonzero(node.voxels == 3) == 1
    assert node not in slicer.mrmlScene.nodes  # temporary node removed
    sidecar = json.loads((tmp_path / "case_7.labels.json").read_text())
    assert sidecar["labels"] == {"background": 0, "liver": 2, "tumour": 3}
    assert sidecar["colors"]["tumour"] == [0.2, 0.2, 0.9]


def test_seg_nrrd_export_writes_the_segmentation_node(tmp_path):
    slicer = fakeSlicer()
    node = _segmentation()
    SegmentationExporter(SceneIO(slicer, fakeVtk()), slicer).export(node, tmp_path, "seg.nrrd")
    assert slicer.util.exportNode.call_args[0][:2] == (node, str(tmp_path / "case_7.seg.nrrd"))


def test_batch_continues_after_a_failure(tmp_path):
    slicer = fakeSlicer()
    exporter = SegmentationExporter(SceneIO(slicer, fakeVtk()), slicer)
    nodes = [FakeSegmentationNode("no reference"), _segmentation()]
    batch = BatchExport(exporter, nodes, tmp_path, "nrrd")
    assert batch.exportNext() is True and batch.percent == 50.0
    assert batch.exportNext() is False and batch.done
    assert [name for name, _ in batch.errors] == ["no reference"]
    assert batch.written == [tmp_path / "case_7.nrrd"]
    with pytest.raises(ModuleError, match="Unknown export format"):
        exporter.export(nodes[1], tmp_path, "png")
