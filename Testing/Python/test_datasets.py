"""Reading and validating task datasets, including Slicer .seg.nrrd label files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from conftest import boxes, write_image, write_task

from labelsharing.data import case_id_from_path, inspect_task_dataset, load_case, read_image, read_label, \
    read_task_dataset, write_label
from labelsharing.errors import LabelSharingError

OBLIQUE = tuple(np.array([[0.0, -1.0, 0.0], [0.8, 0.0, 0.6], [-0.6, 0.0, 0.8]]).ravel())


def test_read_task_dataset_pairs_cases_and_finds_modality(two_tasks):
    task = read_task_dataset(two_tasks[0])
    assert task.name == "TaskA" and task.modality == "CT" and task.file_ending == ".nii.gz"
    assert task.labels == {"big": 1, "mid": 2, "small": 3}
    assert [c.case_id for c in task.training] == ["case000", "case001"]
    assert task.test == ()


def test_inspect_measures_sizes_and_dimension(two_tasks):
    summary = inspect_task_dataset(read_task_dataset(two_tasks[1]))
    assert summary.dimension == 3
    assert summary.stats["large"].relative_size == pytest.approx(30 / 100)
    assert summary.stats["tiny"].relative_size == pytest.approx(5 / 100)


@pytest.mark.parametrize(
    "case_name, expected",
    [("imagesTr/liver_003_0000.nii.gz", "liver_003"), ("labelsTr/liver_003.seg.nrrd", "liver_003"),
     ("x/knee_12_0000.png", "knee_12"), ("x/a_b.mha", "a_b")],
)
def test_case_id_from_path(case_name, expected):
    assert case_id_from_path(case_name) == expected


def _break(root: Path, how: str) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    if how == "no_json":
        (root / "dataset.json").unlink()
    elif how == "missing_label":
        (root / "labelsTr" / "case001.nii.gz").unlink()
    elif how == "orphan_label":
        (root / "imagesTr" / "case001_0000.nii.gz").unlink()
    elif how == "two_channels":
        meta["channel_names"] = {"0": "T1", "1": "T2"}
    elif how == "no_background":
        del meta["labels"]["background"]
    elif how == "no_ending":
        del meta["file_ending"]
    elif how == "empty":
        for f in (root / "imagesTr").iterdir():
            f.unlink()
        for f in (root / "labelsTr").iterdir():
            f.unlink()
    elif how == "bad_modality":
        meta["modality"] = "PET"
    (root / "dataset.json").write_text(json.dumps(meta)) if how != "no_json" else None


@pytest.mark.parametrize(
    "how, message",
    [
        ("no_json", "has no dataset.json"),
        ("missing_label", "have no label in labelsTr: case001"),
        ("orphan_label", "without an image in imagesTr: case001"),
        ("two_channels", "Only single-channel tasks"),
        ("no_background", '"background": 0'),
        ("no_ending", "file_ending"),
        ("empty", "no training cases"),
        ("bad_modality", "must be one of CT, MR, XR, other"),
    ],
)
def test_invalid_dataset_structure(two_tasks, how, message):
    _break(two_tasks[0], how)
    with pytest.raises(LabelSharingError, match=message):
        read_task_dataset(two_tasks[0])


def test_invalid_label_contents(tmp_path):
    root = write_task(tmp_path / "T", {"a": 1}, [boxes((6, 6), {1: 4, 2: 3})])
    with pytest.raises(LabelSharingError, match=r"value\(s\) \[2\] not declared"):
        inspect_task_dataset(read_task_dataset(root))
    write_image(np.zeros((6, 7), np.uint8), root / "labelsTr" / "case000.nii.gz")
    with pytest.raises(LabelSharingError, match="does not match its image.*size"):
        inspect_task_dataset(read_task_dataset(root))
    write_image(np.zeros((6, 6), np.uint8), root / "labelsTr" / "case000.nii.gz", spacing=[1.0, 2.0])
    with pytest.raises(LabelSharingError, match="spacing"):
        inspect_task_dataset(read_task_dataset(root))
    write_image(np.full((6, 6), 0.5, np.float32), root / "labelsTr" / "case000.nii.gz")
    with pytest.raises(LabelSharingError, match="non-integer"):
        inspect_task_dataset(read_task_dataset(root))


def test_label_never_present_is_a_warning(tmp_path):
    root = write_task(tmp_path / "T", {"a": 1, "ghost": 2}, [boxes((6, 6), {1: 4})])
    summary = inspect_task_dataset(read_task_dataset(root))
    assert summary.stats["ghost"].presence == 0
    assert any("ghost" in w and "never occurs" in w for w in summary.warnings)


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
def test_geometry_is_read_exactly(tmp_path, ending):
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    path = tmp_path / f"img{ending}"
    write_image(array, path, spacing=[0.7, 0.8, 2.5], origin=[-10.5, 20.25, 3.0], direction=OBLIQUE)
    image = read_image(path)
    np.testing.assert_allclose(image.GetSpacing(), [0.7, 0.8, 2.5], rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), [-10.5, 20.25, 3.0], atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), OBLIQUE, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)


def _seg_nrrd(path: Path, reference: sitk.Image, masks: dict[str, np.ndarray]) -> None:
    """Write a .seg.nrrd as Slicer would: segments in creation order, label values 1, 2, ..."""
    values = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8)
    segments = []
    for index, (name, mask) in enumerate(masks.items(), start=1):
        values[mask] = index
        segments.append((name, index, (0.5, 0.5, 0.5)))
    write_label(values, reference, path, segments)


def test_seg_nrrd_labels_map_by_segment_name_with_geometry(tmp_path):
    root = write_task(tmp_path / "T", {"liver": 2, "spleen": 1}, [boxes((3, 4, 5), {2: 20, 1: 6})],
                      spacing=[0.8, 0.9, 3.0])
    image_path = root / "imagesTr" / "case000_0000.nii.gz"
    image = sitk.ReadImage(str(image_path))
    image.SetDirection(OBLIQUE)
    image.SetOrigin([5.0, -7.0, 11.0])
    sitk.WriteImage(image, str(image_path))
    truth = boxes((3, 4, 5), {2: 20, 1: 6})
    (root / "labelsTr" / "case000.nii.gz").unlink()
    # spleen created first -> stored value 1; liver -> 2 ... then swap to prove names win
    _seg_nrrd(root / "labelsTr" / "case000.seg.nrrd", image, {"liver": truth == 2, "spleen": truth == 1})
    stored = slicerio.read_segmentation(str(root / "labelsTr" / "case000.seg.nrrd"))
    assert {s["name"]: s["labelValue"] for s in stored["segments"]} == {"liver": 1, "spleen": 2}
    task = read_task_dataset(root)
    _, label = load_case(task, task.training[0])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), truth)
    np.testing.assert_allclose(label.GetDirection(), OBLIQUE, atol=1e-6)
    np.testing.assert_allclose(label.GetOrigin(), [5.0, -7.0, 11.0], atol=1e-6)


def test_seg_nrrd_unknown_segment_and_overlap_errors(tmp_path):
    reference = write_image(np.zeros((2, 4, 4), np.float32), tmp_path / "img.nii.gz")
    _seg_nrrd(tmp_path / "bad.seg.nrrd", reference, {"kidney": np.ones((2, 4, 4), bool)})
    with pytest.raises(LabelSharingError, match="segment 'kidney' is not a label"):
        read_label(tmp_path / "bad.seg.nrrd", {"liver": 1}, reference)
    seg = slicerio.create_segmentation((4, 4, 2), np.eye(4))
    slicerio.add_segment(seg, np.ones((4, 4, 2), bool), {"name": "liver"})
    slicerio.add_segment(seg, np.ones((4, 4, 2), bool), {"name": "spleen"})
    slicerio.write_segmentation(str(tmp_path / "overlap.seg.nrrd"), seg)
    with pytest.raises(LabelSharingError, match="overlapping segments"):
        read_label(tmp_path / "overlap.seg.nrrd", {"liver": 1, "spleen": 2}, reference)


def test_cropped_seg_nrrd_is_placed_on_the_image_grid(tmp_path):
    reference = write_image(np.zeros((3, 6, 8), np.float32), tmp_path / "img.nii.gz", spacing=[1.0, 1.0, 2.0])
    seg = slicerio.create_segmentation((2, 2, 1), np.array([[1, 0, 0, 3], [0, 1, 0, 2], [0, 0, 2, 2], [0, 0, 0, 1.0]]))
    slicerio.add_segment(seg, np.ones((2, 2, 1), bool), {"name": "lesion"})
    slicerio.write_segmentation(str(tmp_path / "crop.seg.nrrd"), seg)
    label = sitk.GetArrayFromImage(read_label(tmp_path / "crop.seg.nrrd", {"lesion": 4}, reference))
    assert label.shape == (3, 6, 8)
    assert label.sum() == 4 * 4 and (label[1, 2:4, 3:5] == 4).all()


def test_optional_colors_and_terminology(tmp_path):
    entry = "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"
    root = write_task(tmp_path / "T", {"liver": 1}, [boxes((4, 4), {1: 3})],
                      extra={"colors": {"liver": [255, 0, 0]}, "terminology": {"liver": entry}})
    task = read_task_dataset(root)
    assert task.colors == {"liver": (1.0, 0.0, 0.0)} and task.terminology == {"liver": entry}
    meta = json.loads((root / "dataset.json").read_text())
    meta["terminology"] = {"kidney": entry}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(LabelSharingError, match="terminology"):
        read_task_dataset(root)


LIVER = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
         "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^")


@pytest.mark.parametrize("entry, message", [
    ("liver", "7 parts"),                                                 # a name, not an entry
    (LIVER.rsplit("~", 1)[0], "7 parts"),                                 # a part missing
    ("~" + LIVER.split("~", 1)[1], "context name"),                       # no terminology context
    (LIVER.replace("SCT^10200004^Liver", "SCT^10200004"), "type"),        # a code without its meaning
    (LIVER.replace("SCT^123037004^Anatomical Structure", "^^"), "category"),
    (LIVER.replace("Liver", "Liver|left"), "'|'"),                       # would split the .seg.nrrd tag list
    (LIVER.replace("Liver", "Liver\nx"), "line break"),                  # would end the NRRD header line
])
def test_malformed_terminology_entries_are_refused(tmp_path, entry, message):
    """Entries Slicer could not read (vtkSlicerTerminologiesModuleLogic::DeserializeTerminologyEntry:
    7 '~' parts, a context name, category and type as scheme^value^meaning, a category) or that
    would break a .seg.nrrd header are refused when the dataset is read, naming the label."""
    root = write_task(tmp_path / "T", {"liver": 1}, [boxes((4, 4), {1: 3})], extra={"terminology": {"liver": entry}})
    with pytest.raises(LabelSharingError, match="liver") as error:
        read_task_dataset(root)
    assert message in str(error.value)


def _test_split(root: Path, labelled: int, unlabelled: int) -> None:
    """Copy training cases into imagesTs (and the first ``labelled`` labels into labelsTs)."""
    (root / "imagesTs").mkdir()
    (root / "labelsTs").mkdir(exist_ok=labelled == 0)
    for index in range(labelled + unlabelled):
        source = root / "imagesTr" / f"case{index % 2:03d}_0000.nii.gz"
        (root / "imagesTs" / f"test{index:03d}_0000.nii.gz").write_bytes(source.read_bytes())
        if index < labelled:
            label = root / "labelsTr" / f"case{index % 2:03d}.nii.gz"
            (root / "labelsTs" / f"test{index:03d}.nii.gz").write_bytes(label.read_bytes())


@pytest.mark.parametrize("labelled, unlabelled", [(0, 2), (1, 2), (2, 0)])
def test_test_images_without_labels_are_accepted(two_tasks, labelled, unlabelled):
    _test_split(two_tasks[0], labelled, unlabelled)
    if labelled == 0:
        (two_tasks[0] / "labelsTs").rmdir()  # the standard nnU-Net layout has no labelsTs at all
    task = read_task_dataset(two_tasks[0])
    assert [c.case_id for c in task.test] == [f"test{i:03d}" for i in range(labelled)]
    assert [c.case_id for c in task.unlabelled_test] == [f"test{i:03d}" for i in range(labelled, labelled + unlabelled)]
    assert all(c.label is None for c in task.unlabelled_test)


def test_test_label_without_image_is_still_refused(two_tasks):
    _test_split(two_tasks[0], 1, 0)
    (two_tasks[0] / "imagesTs" / "test000_0000.nii.gz").unlink()
    with pytest.raises(LabelSharingError, match="label\\(s\\) in labelsTs without an image in imagesTs: test000"):
        read_task_dataset(two_tasks[0])


def test_plan_train_and_evaluate_a_task_with_unlabelled_test_images(two_tasks, tmp_path, capsys):
    from labelsharing.cli import main

    root = two_tasks[0]
    _test_split(root, 0, 2)
    (root / "labelsTs").rmdir()
    assert main(["--progress", "none", "plan", str(root)]) == 0
    model = tmp_path / "model"
    assert main(["--progress", "none", "train", str(root), "--out", str(model), "--epochs", "1", "--batch-size", "8",
                 "--input-size", "32", "--features", "4", "--device", "cpu"]) == 0
    capsys.readouterr()
    dice = tmp_path / "dice.json"
    assert main(["--progress", "none", "evaluate", str(model), str(root), "--json", str(dice), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "TaskA: its 2 test image(s) in imagesTs have no labels in labelsTs; evaluating on its TRAINING cases" in err
    assert json.loads(dice.read_text())["tasks"]["TaskA"]["split"] == "train"
