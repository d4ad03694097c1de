"""Overlapping segments: a task whose ``.seg.nrrd`` labels are layered is split into sub-tasks
``TASK/1``, ``TASK/2`` ..., planned and trained as label-sharing tasks, and predicted back into one
layered ``.seg.nrrd``. Data: the overlapping segmentation slicerio ships (``SegmentationOverlapping.seg.nrrd``,
7 chest segments in layer 0 and an "overlapping sphere" in layer 1) on its CT (``CTChest4.nrrd``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from labelsharing.errors import LabelSharingError
from labelsharing.plan import summarise_tasks

CHEST = ["ribs", "cervical vertebral column", "thoracic vertebral column", "lumbar vertebral column", "right lung",
         "left lung", "tissue"]
SPHERE = "overlapping sphere"


def write_overlapping_task(root: Path, cases: int = 2, name: str = "Chest") -> Path:
    """A task folder of ``cases`` copies of slicerio's CT and its overlapping segmentation."""
    image = sitk.ReadImage(slicerio.get_testdata_file("CTChest4.nrrd"))
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for index in range(cases):
        sitk.WriteImage(image, str(root / "imagesTr" / f"case{index}_0000.nii.gz"))
        shutil.copy(slicerio.get_testdata_file("SegmentationOverlapping.seg.nrrd"),
                    root / "labelsTr" / f"case{index}.seg.nrrd")
    labels = {"background": 0, **{label: value for value, label in enumerate(CHEST + [SPHERE], start=1)}}
    (root / "dataset.json").write_text(json.dumps({"name": name, "channel_names": {"0": "CT"}, "labels": labels,
                                                   "numTraining": cases, "file_ending": ".nii.gz"}))
    return root


@pytest.fixture(scope="module")
def chest(tmp_path_factory) -> Path:
    return write_overlapping_task(tmp_path_factory.mktemp("overlap") / "Chest", cases=3)


def test_an_overlapping_task_is_split_into_one_sub_task_per_layer(chest):
    summaries = summarise_tasks([chest])
    assert [s.task.name for s in summaries] == ["Chest/1", "Chest/2"]
    assert list(summaries[0].task.labels) == CHEST and list(summaries[1].task.labels) == [SPHERE]
    assert {s.task.parent for s in summaries} == {"Chest"}
    sphere = summaries[1].stats[SPHERE]
    assert sphere.presence == 1.0 and sphere.relative_size == pytest.approx(19139 / (128 * 128 * 34))
    tissue = summaries[0].stats["tissue"]  # overlapped by the sphere in the file, whole in its own layer
    assert tissue.relative_size == pytest.approx(154589 / (128 * 128 * 34))


def test_layer_groups_are_the_layers_and_deterministic():
    from labelsharing.plan import group_layers

    assert group_layers(["a", "b", "c"], [{"a": 0, "b": 0, "c": 0}]) == [["a", "b", "c"]]
    assert group_layers(["a", "b", "c"], [{"a": 0, "b": 1, "c": 0}]) == [["a", "c"], ["b"]]
    # two files layering differently: b and c share no layer in the second, so all three are apart
    assert group_layers(["a", "b", "c"], [{"a": 0, "b": 1, "c": 1}, {"a": 0, "b": 0, "c": 1}]) == [["a"], ["b"], ["c"]]
    # a label missing from a file has no conflict there; names that are not labels are ignored
    assert group_layers(["a", "b"], [{"a": 0, "x": 1}, {"b": 0}]) == [["a", "b"]]


def test_the_plan_keeps_sub_tasks_apart_and_ranks_the_parent_as_one_task(chest):
    from labelsharing.plan import SharedLabelPlan, plan_table, plan_tasks

    summaries = summarise_tasks([chest])
    plan = plan_tasks(summaries, pins={"Chest": {"ribs": 8}})  # a pin may name the parent
    assert plan.n_shared == 8 and plan.splits == {"Chest": ["Chest/1", "Chest/2"]}
    first, second = plan.labels("Chest/1"), plan.labels("Chest/2")
    assert not {a.shared for a in first.values()} & {a.shared for a in second.values()}
    assert first["ribs"].shared == 8 and first["tissue"].shared == 1  # tissue is the largest of all 8 labels
    assert second[SPHERE].shared == 4  # rank 4 of the parent (tissue, right lung, left lung, sphere, ...)
    assert plan.left_out("Chest/2") == sorted(a.shared for a in first.values())
    assert SharedLabelPlan.from_dict(plan.to_dict()) == plan
    table = plan_table(plan)
    assert "Chest/2 [layer 2]" in table and "[layer] Chest has overlapping segments" in table
    moved = plan_tasks(summaries, pins={"Chest/2": {SPHERE: 1}})  # the others make way for a pin
    assert moved.labels("Chest/2")[SPHERE].shared == 1 and moved.labels("Chest/1")["tissue"].shared == 2
    with pytest.raises(LabelSharingError, match="share shared label 1"):
        plan_tasks(summaries, pins={"Chest": {"tissue": 1, SPHERE: 1}})


def test_a_sub_task_reads_its_own_layer_and_skips_its_siblings_segments(chest):
    from labelsharing.data import load_case, read_task_dataset, split_overlapping_task

    first, second = split_overlapping_task(read_task_dataset(chest))
    stored = slicerio.read_segmentation(str(chest / "labelsTr" / "case0.seg.nrrd"))["voxels"]  # (layer, i, j, k)
    for task, layer, values in ((first, 0, range(1, 8)), (second, 1, [8])):
        _, label = load_case(task, task.training[0])
        array = np.transpose(sitk.GetArrayFromImage(label), (2, 1, 0))
        assert sorted(np.unique(array).tolist()) == [0, *values]
        np.testing.assert_array_equal(array > 0, stored[layer] > 0)
    assert second.other_labels == {name: value for value, name in enumerate(CHEST, start=1)}


def test_a_command_that_reads_the_task_whole_names_the_overlap(chest):
    from labelsharing.data import load_case, read_task_dataset

    task = read_task_dataset(chest)
    with pytest.raises(LabelSharingError, match="overlapping segments .*layer 1: overlapping sphere.*split such a task"):
        load_case(task, task.training[0])


def test_a_task_without_overlaps_is_not_split(tmp_path):
    from labelsharing.data import read_task_dataset, split_overlapping_task

    root = write_overlapping_task(tmp_path / "Flat", cases=1, name="Flat")
    shutil.copy(slicerio.get_testdata_file("Segmentation.seg.nrrd"), root / "labelsTr" / "case0.seg.nrrd")
    meta = json.loads((root / "dataset.json").read_text())
    del meta["labels"][SPHERE]
    (root / "dataset.json").write_text(json.dumps(meta))
    task = read_task_dataset(root)
    assert split_overlapping_task(task) == (task,)
    assert [s.task.name for s in summarise_tasks([root])] == ["Flat"]


@pytest.fixture(scope="module")
def trained(chest, tmp_path_factory) -> Path:
    """A tiny model of the split chest task (a few steps on 64 x 64 slices)."""
    from labelsharing.cli import main

    terminology = {SPHERE: "Segmentation category and type - DICOM master list~SCT^260787004^Physical object~"
                           "SCT^19227008^Foreign body~^^~Anatomic codes - DICOM master list~^^~^^"}
    meta = json.loads((chest / "dataset.json").read_text())
    (chest / "dataset.json").write_text(json.dumps({**meta, "colors": {SPHERE: [255, 0, 128]},
                                                    "terminology": terminology}))
    model = tmp_path_factory.mktemp("model") / "model"
    assert main(["--progress", "none", "train", str(chest), "--out", str(model), "--epochs", "4", "--steps-per-epoch",
                 "20", "--batch-size", "8", "--input-size", "64", "--features", "8", "--device", "cpu"]) == 0
    return model


def test_predict_writes_one_layered_seg_nrrd_with_every_segment_and_the_overlap(chest, trained, tmp_path, capsys):
    from labelsharing.cli import main

    image = chest / "imagesTr" / "case0_0000.nii.gz"
    assert main(["--progress", "none", "predict", str(trained), str(image), "--task", "Chest", "--out", str(tmp_path),
                 "--format", "seg.nrrd", "--device", "cpu"]) == 0
    written = slicerio.read_segmentation(str(tmp_path / "case0.seg.nrrd"))
    segments = {s["name"]: s for s in written["segments"]}
    assert sorted(segments) == sorted(CHEST + [SPHERE])
    assert {s["layer"] for n, s in segments.items() if n != SPHERE} == {0} and segments[SPHERE]["layer"] == 1
    assert segments[SPHERE]["color"] == pytest.approx([1.0, 0.0, 128 / 255])
    assert segments[SPHERE]["terminology"]["type"] == ["SCT", "19227008", "Foreign body"]
    voxels = written["voxels"]
    assert voxels.shape == (2, 128, 128, 34)
    truth = slicerio.read_segmentation(str(chest / "labelsTr" / "case0.seg.nrrd"))["voxels"]
    sphere, tissue = voxels[1] == segments[SPHERE]["labelValue"], voxels[0] == segments["tissue"]["labelValue"]
    overlap, true_overlap = sphere & tissue, (truth[1] == 1) & (truth[0] == 7)
    # the model learns the overlap: most of the true overlap is predicted as both segments at once
    assert (overlap & true_overlap).sum() > 0.5 * true_overlap.sum()
    # each layer is its sub-task's prediction, unchanged
    from labelsharing.infer import Predictor

    layers = Predictor.from_model_dir(trained, device="cpu").predict_layers(sitk.ReadImage(str(image)), "Chest")
    for layer, expected in zip(voxels, layers):
        np.testing.assert_array_equal(layer, np.transpose(expected, (2, 1, 0)))

    assert main(["predict", str(trained), str(image), "--task", "Chest", "--out", str(tmp_path / "nii"),
                 "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "overlapping segments" in error and "--format seg.nrrd" in error
    assert not (tmp_path / "nii").exists()


def test_info_evaluate_and_auto_see_the_split_task(chest, trained, tmp_path, capsys):
    from labelsharing.cli import main

    assert main(["info", str(trained)]) == 0
    info = capsys.readouterr().out
    assert "overlapping segments in 2 layers" in info and "Chest/2 [layer 2]" in info
    dice = tmp_path / "dice.json"
    assert main(["--progress", "none", "evaluate", str(trained), str(chest), "--json", str(dice),
                 "--device", "cpu"]) == 0
    result = json.loads(dice.read_text())["tasks"]
    assert set(result) == {"Chest/1", "Chest/2"} and set(result["Chest/2"]["labels"]) == {SPHERE}
    assert result["Chest/2"]["mean_dice"] > 0.3
    image = chest / "imagesTr" / "case1_0000.nii.gz"
    assert main(["--progress", "none", "predict", str(trained), str(image), "--task", "auto", "--out", str(tmp_path),
                 "--format", "seg.nrrd", "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "case1.prediction.json").read_text())
    assert record["task"] == "Chest" and set(record["recognition"]["scores"]) == {"Chest"}
    assert len(slicerio.read_segmentation(str(tmp_path / "case1.seg.nrrd"))["segments"]) == 8
