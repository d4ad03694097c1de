"""Defining a task: names, sizes (engine code), grouping, dataset folder; FAKE slicer for SceneIO."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .fakes import FakeSegmentationNode, FakeVolumeNode, fakeSlicer, fakeVtk
from .fakes_files import readAsTheEngineDoes
from LabelSharingSegLib.ModuleError import ModuleError
from LabelSharingSegLib.SceneIO import SceneIO
from LabelSharingSegLib.TaskDefinition import TaskCase, TaskDefinition, unionOfSegmentNames, uniqueCaseIds


def _case(caseId, **segments):
    shape = (2, 4, 5)
    masks, start = {}, 0
    for name, count in segments.items():  # consecutive, disjoint voxel ranges
        mask = np.zeros(shape, dtype=bool)
        mask.ravel()[start:start + count] = True
        masks[name] = mask
        start += count
    return TaskCase(caseId, np.zeros(shape, dtype=np.int16), np.diag([1.0, 1.0, 2.0, 1.0]), masks)


def test_union_of_names_warns_on_partial_names():
    names, warnings = unionOfSegmentNames({"a": ["liver", "kidney"], "b": ["liver", "spleen"]})
    assert names == ["liver", "kidney", "spleen"]
    assert warnings == ["'kidney' is in 1 of 2 cases (missing in: b).", "'spleen' is in 1 of 2 cases (missing in: a)."]


def test_unique_case_ids_are_file_safe():
    assert uniqueCaseIds(["CT 1", "CT 1", "x_0000", "/"]) == ["CT_1", "CT_1_2", "x_0000_case", "case"]


def test_sizes_and_grouping_come_from_the_engine_plan():
    definition = TaskDefinition("knee", "XR", [_case("a", femur=20, tibia=10), _case("b", femur=30, tibia=4)])
    stats = definition.measure()
    assert stats["femur"].relative_size == pytest.approx((20 + 30) / 2 / 40)
    grouping = definition.grouping()
    assert [(row.label, row.shared) for row in grouping.rows] == [("femur", 1), ("tibia", 2)]
    pinned = definition.grouping(pins={"tibia": 1})
    assert [(row.label, row.shared) for row in pinned.rows] == [("tibia", 1), ("femur", 2)]


def test_grouping_against_an_existing_model_lists_the_other_tasks():
    modelPlan = {"n_shared": 2, "tasks": {"abdomen": {"labels": {
        "liver": {"value": 1, "relative_size": 0.2, "presence": 1.0, "shared": 1},
        "kidney": {"value": 2, "relative_size": 0.05, "presence": 1.0, "shared": 2}}}}}
    definition = TaskDefinition("knee", "XR", [_case("a", femur=20, tibia=10)])
    rows = definition.grouping(modelPlan).rows
    assert rows[0].label == "femur" and rows[0].others == ("abdomen: liver",)
    with pytest.raises(ModuleError):
        TaskDefinition("abdomen", "CT", [_case("a", liver=3)]).grouping(modelPlan)


def test_invalid_definitions_are_readable_errors():
    with pytest.raises(ModuleError, match="name"):
        TaskDefinition("  ", "CT", [_case("a", x=1)])
    with pytest.raises(ModuleError, match="Modality"):
        TaskDefinition("t", "PET", [_case("a", x=1)])
    with pytest.raises(ModuleError, match="at least one"):
        TaskDefinition("t", "CT", [])


def test_dataset_folder_is_the_engine_layout(tmp_path):
    definition = TaskDefinition("knee", "XR", [_case("a", femur=20, tibia=10), _case("b", femur=5)])
    folder = definition.writeDataset(tmp_path / "knee", {"femur": [1, 0, 0], "tibia": [0, 1, 0]})
    description = json.loads((folder / "dataset.json").read_text())
    assert description["labels"] == {"background": 0, "femur": 1, "tibia": 2}
    assert description["file_ending"] == ".nrrd" and description["numTraining"] == 2
    assert description["colors"]["tibia"] == [0.0, 1.0, 0.0] and description["modality"] == "XR"
    labels, ijkToRas = readAsTheEngineDoes(folder / "labelsTr" / "a.nrrd")
    assert np.count_nonzero(labels == 1) == 20 and np.count_nonzero(labels == 2) == 10
    np.testing.assert_allclose(ijkToRas, np.diag([1.0, 1.0, 2.0, 1.0]))
    assert (folder / "imagesTr" / "b_0000.nrrd").is_file()
    with pytest.raises(ModuleError, match="already holds"):
        definition.writeDataset(folder)


def test_case_from_segmentation_uses_the_reference_volume_using_a_fake_slicer():
    """FAKE slicer: masks come from arrayFromSegmentBinaryLabelmap on the reference grid."""
    slicer = fakeSlicer()
    volume = FakeVolumeNode(np.ones((2, 3, 4), dtype=np.int16), np.diag([0.5, 0.5, 3.0, 1.0]))
    node = FakeSegmentationNode("case 1", volume)
    mask = np.zeros((2, 3, 4), dtype=bool)
    mask[0, 0, :2] = True
    node.addSegment("liver", mask)
    case = SceneIO(slicer, fakeVtk()).caseFromSegmentation(node, "case_1")
    np.testing.assert_array_equal(case.segments["liver"], mask)
    np.testing.assert_allclose(case.ijkToRas, np.diag([0.5, 0.5, 3.0, 1.0]))
    with pytest.raises(ModuleError, match="no source volume"):
        SceneIO(slicer, fakeVtk()).caseFromSegmentation(FakeSegmentationNode("orphan"), "x")


def test_overlapping_segments_show_the_split_the_engine_trains():
    shape = (2, 4, 5)
    lung, lobe, heart = (np.zeros(shape, dtype=bool) for _ in range(3))
    lung.ravel()[:20], lobe.ravel()[:8], heart.ravel()[30:34] = True, True, True  # the lobe lies inside the lung
    case = TaskCase("a", np.zeros(shape, dtype=np.int16), np.eye(4), {"lung": lung, "lobe": lobe, "heart": heart})
    definition = TaskDefinition("chest", "CT", [case])
    grouping = definition.grouping()
    assert grouping.layers == (("lung", "heart"), ("lobe",))
    assert [(row.label, row.shared, row.subtask) for row in grouping.rows] == [
        ("lung", 1, "chest/1"), ("lobe", 2, "chest/2"), ("heart", 3, "chest/1")]
    assert grouping.plan.splits == {"chest": ["chest/1", "chest/2"]}
    assert grouping.warnings[0].startswith("Segments overlap: the task is split into 2 sub-tasks")
    assert definition.grouping(pins={"lobe": 1}).rows[0].label == "lobe"  # pins name the task, as before
    modelPlan = {"n_shared": 1, "tasks": {"knee": {"labels": {"femur": {"value": 1, "shared": 1}}}}}
    with pytest.raises(ModuleError, match="Segments overlap.*train a new model"):
        definition.grouping(modelPlan)
    with pytest.raises(ModuleError, match="would lose the overlap"):
        definition.writeDataset("unused")
