"""Segment terminology from the scene to the task dataset and the exported files, against a FAKE of
the Slicer calls it makes (fakes.py: vtkSegment.GetTag with a vtk.reference)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .fakes import FakeSegmentationNode, FakeVolumeNode, fakeSlicer, fakeVtk
from LabelSharingSegLib.Export import SegmentationExporter
from LabelSharingSegLib.ModuleError import ModuleError
from LabelSharingSegLib.SceneIO import SceneIO
from LabelSharingSegLib.TaskDefinition import TaskDefinition

_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^"
LIVER = _ANATOMY + "10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"
KIDNEY = _ANATOMY + "64033007^Kidney~^^~Anatomic codes - DICOM master list~SCT^64033007^Kidney~SCT^7771000^Left"


def _segmentation(name="case 1", terminology=None):
    """A segmentation with liver (tagged with ``terminology``) and tumour (untagged) on its volume."""
    volume = FakeVolumeNode(np.zeros((2, 3, 4), dtype=np.int16), np.diag([-1.0, -1.0, 2.0, 1.0]), "CT")
    node = FakeSegmentationNode(name, volume)
    liver = np.zeros((2, 3, 4), dtype=bool)
    liver[0] = True
    liverId = node.addSegment("liver", liver, (0.8, 0.2, 0.1))
    if terminology:
        node.segmentation.GetSegment(liverId).SetTag("TerminologyEntry", terminology)
    tumour = np.zeros((2, 3, 4), dtype=bool)
    tumour[1, 0, 0] = True
    node.addSegment("tumour", tumour, (0.2, 0.2, 0.9))
    return node


def test_segment_properties_read_colour_and_terminology_tag():
    node = _segmentation(terminology=LIVER)
    node.segmentation.GetSegment(node.segmentation.GetNthSegmentID(1)).SetTag("TerminologyEntry", "")
    properties = SceneIO(fakeSlicer(), fakeVtk()).segmentProperties(node)
    assert list(properties) == ["liver", "tumour"]
    assert properties["liver"].color == (0.8, 0.2, 0.1) and properties["liver"].terminology == LIVER
    assert properties["tumour"].terminology is None  # an empty tag is no terminology


def test_task_dataset_carries_the_segments_terminology_to_the_engine(tmp_path):
    """dataset.json ``terminology`` as the engine reads it (labelsharing.data.datasets.read_task_dataset)."""
    from labelsharing.data.datasets import read_task_dataset

    sceneIO = SceneIO(fakeSlicer(), fakeVtk())
    node = _segmentation(terminology=LIVER)
    definition = TaskDefinition("abdomen", "CT", [sceneIO.caseFromSegmentation(node, "case_1")])
    properties = sceneIO.segmentProperties(node)
    folder = definition.writeDataset(
        tmp_path / "abdomen", {name: p.color for name, p in properties.items()},
        {name: p.terminology for name, p in properties.items() if p.terminology},
    )
    assert json.loads((folder / "dataset.json").read_text())["terminology"] == {"liver": LIVER}
    assert read_task_dataset(folder).terminology == {"liver": LIVER}


def test_label_map_export_sidecar_keeps_the_terminology(tmp_path):
    slicer = fakeSlicer()
    SegmentationExporter(SceneIO(slicer, fakeVtk()), slicer).export(_segmentation(terminology=KIDNEY), tmp_path, "nrrd")
    sidecar = json.loads((tmp_path / "case_1.labels.json").read_text())
    assert sidecar["terminology"] == {"liver": KIDNEY}
    assert sidecar["colors"] == {"liver": [0.8, 0.2, 0.1], "tumour": [0.2, 0.2, 0.9]}


def test_a_terminology_the_engine_would_refuse_stops_the_export_naming_the_segment(tmp_path):
    node = _segmentation(terminology="liver")  # a name where Slicer writes a coded entry
    sceneIO = SceneIO(fakeSlicer(), fakeVtk())
    definition = TaskDefinition("abdomen", "CT", [sceneIO.caseFromSegmentation(node, "case_1")])
    with pytest.raises(ModuleError, match="'liver'.*7 parts"):
        definition.writeDataset(tmp_path / "abdomen", terminology={"liver": "liver"})
    assert not (tmp_path / "abdomen").exists()  # refused before anything is written
