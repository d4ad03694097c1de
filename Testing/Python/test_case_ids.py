"""Case ids: the ``_0000`` channel suffix is an image-file thing; case names may end in digits.

nnU-Net names images ``<case>_0000<ending>`` and labels ``<case><ending>``; AMOS-style case
ids (``amos_0001``) end in four digits themselves, so only an image's ``_0000`` may be removed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import boxes, write_image
from tiny_model import make_model

from labelsharing.data import case_id_from_path, inspect_task_dataset, load_case, read_task_dataset
from labelsharing.errors import LabelSharingError
from labelsharing.infer import Predictor


@pytest.mark.parametrize(
    "path, is_label, expected",
    [
        ("imagesTr/amos_0001_0000.nii.gz", False, "amos_0001"),
        ("labelsTr/amos_0001.nii.gz", True, "amos_0001"),
        ("labelsTr/case_0000.seg.nrrd", True, "case_0000"),  # a label's stem is its whole case id
        ("imagesTr/case_0000_0000.nii.gz", False, "case_0000"),
        ("in/a_0001.nii.gz", False, "a_0001"),  # not the channel suffix we support: kept
        ("in/ct_0000.nrrd", False, "ct"),
        ("in/ct.mha", False, "ct"),
    ],
)
def test_case_id_from_path(path: str, is_label: bool, expected: str):
    assert case_id_from_path(path, is_label=is_label) == expected


def _write_amos_like(root: Path, train_ids, test_ids=(), orphan: str | None = None) -> Path:
    label = boxes((3, 6, 6), {1: 30, 2: 12})
    for folder, ids in (("Tr", train_ids), ("Ts", test_ids)):
        for case in ids:
            write_image(label.astype(np.float32) * 100, root / f"images{folder}" / f"{case}_0000.nii.gz")
            write_image(label, root / f"labels{folder}" / f"{case}.nii.gz")
    if orphan:
        write_image(label, root / "labelsTr" / f"{orphan}.nii.gz")
    meta = {"name": "Dataset999_AMOSlike", "channel_names": {"0": "CT"}, "numTraining": len(train_ids),
            "labels": {"background": 0, "liver": 1, "spleen": 2}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_amos_named_task_is_read_end_to_end(tmp_path: Path):
    root = _write_amos_like(tmp_path / "amos", ["amos_0001", "amos_0002", "amos_0010"], ["amos_0005"])
    task = read_task_dataset(root)
    assert [c.case_id for c in task.training] == ["amos_0001", "amos_0002", "amos_0010"]
    assert [c.label.name for c in task.training] == ["amos_0001.nii.gz", "amos_0002.nii.gz", "amos_0010.nii.gz"]
    assert [c.case_id for c in task.test] == ["amos_0005"]
    image, label = load_case(task, task.training[2])
    assert sitk.GetArrayViewFromImage(label).max() == 2 and image.GetSize() == label.GetSize()
    summary = inspect_task_dataset(task)
    assert summary.dimension == 3 and summary.warnings == []


def test_amos_named_orphan_label_is_reported_by_its_full_name(tmp_path: Path):
    root = _write_amos_like(tmp_path / "amos", ["amos_0001"], orphan="amos_0002")
    with pytest.raises(LabelSharingError, match="without an image in imagesTr: amos_0002"):
        read_task_dataset(root)


@pytest.fixture
def predictor() -> Predictor:
    return Predictor(make_model(fake=True), "cpu", batch_size=4)


def _write_inputs(folder: Path, names) -> list[Path]:
    image = sitk.GetImageFromArray(np.zeros((16, 16), np.float32))
    paths = [folder / name for name in names]
    for path in paths:
        sitk.WriteImage(image, str(path))
    return paths


def test_predict_keeps_case_names_that_end_in_digits(predictor: Predictor, tmp_path: Path):
    inputs = _write_inputs(tmp_path, ["a_0001.nii.gz", "a_0002.nii.gz", "amos_0003_0000.nii.gz"])
    written = predictor.predict_files(inputs, "TaskA", tmp_path / "out")
    assert [p.name for p in written] == ["a_0001.nii.gz", "a_0002.nii.gz", "amos_0003.nii.gz"]


def test_predict_refuses_two_inputs_with_one_output_name(predictor: Predictor, tmp_path: Path):
    inputs = _write_inputs(tmp_path, ["a_0000.nii.gz", "a.nii.gz"])
    with pytest.raises(LabelSharingError, match=r"same output \(a\)"):
        predictor.predict_files(inputs, "TaskA", tmp_path / "out")
    assert not (tmp_path / "out").exists()
