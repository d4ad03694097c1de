"""``add-case``: a corrected case joins a task's dataset folder, checked as training checks it, or nothing changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from labelsharing.data import add_case, read_task_dataset
from labelsharing.demo import make_demo_datasets
from labelsharing.errors import LabelSharingError


@pytest.fixture
def demo(tmp_path: Path) -> dict[str, Path]:
    """Two demo tasks of 2 cases each in ``tasks/``, and other cases of the same tasks in ``more/``."""
    folders = make_demo_datasets(tmp_path / "tasks", cases=2, seed=0)
    more = make_demo_datasets(tmp_path / "more", cases=2, seed=5)
    return {"abdomen": folders[0], "knee": folders[2], "more_abdomen": more[0], "more_knee": more[2]}


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _source(folder: Path, case: str = "abdct_001", ending: str = ".nii.gz") -> tuple[Path, Path]:
    return folder / "imagesTr" / f"{case}_0000{ending}", folder / "labelsTr" / f"{case}{ending}"


def test_a_case_is_named_written_and_counted(demo):
    image, label = _source(demo["more_abdomen"])
    case = add_case(demo["abdomen"], image, label)
    assert case.case_id == "abdct_004"  # after the training cases 000-001 and the test cases 002-003
    task = read_task_dataset(demo["abdomen"])
    assert [c.case_id for c in task.training] == ["abdct_000", "abdct_001", "abdct_004"]
    assert json.loads((demo["abdomen"] / "dataset.json").read_text())["numTraining"] == 3
    for written, original in ((case.image, image), (case.label, label)):
        read_back, source = sitk.ReadImage(str(written)), sitk.ReadImage(str(original))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_back), sitk.GetArrayFromImage(source))
        assert read_back.GetSpacing() == pytest.approx(source.GetSpacing())
        assert read_back.GetOrigin() == pytest.approx(source.GetOrigin())


def test_a_chosen_case_id_is_used(demo):
    case = add_case(demo["abdomen"], *_source(demo["more_abdomen"]), case_id="corrected_1")
    assert case.image.name == "corrected_1_0000.nii.gz" and case.label.name == "corrected_1.nii.gz"


def _label_with(tmp_path: Path, label: Path, change) -> Path:
    """A copy of ``label`` with ``change(image)`` applied."""
    image = sitk.ReadImage(str(label))
    image = change(image) or image
    out = tmp_path / "changed" / label.name
    out.parent.mkdir(exist_ok=True)
    sitk.WriteImage(image, str(out))
    return out


def _unknown_value(image: sitk.Image) -> sitk.Image:
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = 9  # the abdomen task declares 1-4
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(image)
    return changed


@pytest.mark.parametrize("change, message", [
    (lambda image: image.SetSpacing([2 * s for s in image.GetSpacing()]), "does not match its image"),
    (lambda image: image.SetOrigin([o + 10 for o in image.GetOrigin()]), "does not match its image"),
    (_unknown_value, "label value.*9.*not declared"),
])
def test_a_label_that_training_would_refuse_is_refused_and_nothing_changes(demo, tmp_path, change, message):
    image, label = _source(demo["more_abdomen"])
    before = _listing(demo["abdomen"])
    with pytest.raises(LabelSharingError, match=message):
        add_case(demo["abdomen"], image, _label_with(tmp_path, label, change))
    assert _listing(demo["abdomen"]) == before


def test_a_2d_case_is_refused_by_a_3d_task(demo):
    before = _listing(demo["abdomen"])
    with pytest.raises(LabelSharingError, match="mixes 2D and 3D"):
        add_case(demo["abdomen"], *_source(demo["more_knee"], "kneexr_001"))
    assert _listing(demo["abdomen"]) == before


@pytest.mark.parametrize("case_id", ["abdct_000", "abdct_002", "../escape", ".hidden"])
def test_an_existing_or_unsafe_case_id_is_refused(demo, case_id):
    """abdct_000 is a training case, abdct_002 a test case; the others are not file names."""
    before = _listing(demo["abdomen"])
    with pytest.raises(LabelSharingError, match="already exists|not a plain file name"):
        add_case(demo["abdomen"], *_source(demo["more_abdomen"]), case_id=case_id)
    assert _listing(demo["abdomen"]) == before


def test_a_leftover_label_file_is_never_replaced(demo):
    """A label of that name without its image (an interrupted copy, a file put there by hand) is kept."""
    leftover = demo["abdomen"] / "labelsTr" / "abdct_004.seg.nrrd"
    leftover.write_bytes(b"keep me")
    with pytest.raises(LabelSharingError, match="without an image.*abdct_004"):  # the folder is refused as it is
        add_case(demo["abdomen"], *_source(demo["more_abdomen"]), case_id="abdct_004")
    assert leftover.read_bytes() == b"keep me"


def test_a_killed_writers_temporary_file_does_not_break_the_dataset(demo):
    """write_atomically's hidden temporaries end in the dataset's ending; a kill can leave one behind."""
    (demo["abdomen"] / "imagesTr" / ".abdct_004_0000.tmp-99999-abcdef.nii.gz").write_bytes(b"partial")
    (demo["abdomen"] / "labelsTr" / ".abdct_004.tmp-99999-abcdef.nii.gz").write_bytes(b"partial")
    assert [c.case_id for c in read_task_dataset(demo["abdomen"]).training] == ["abdct_000", "abdct_001"]


def test_the_command_adds_a_case_and_refuses_a_taken_id(demo, capsys):
    from labelsharing.cli.main import main

    image, label = _source(demo["more_abdomen"])
    assert main(["add-case", str(demo["abdomen"]), str(image), str(label), "--case-id", "fixed_01"]) == 0
    assert "added case fixed_01" in capsys.readouterr().out
    assert main(["add-case", str(demo["abdomen"]), str(image), str(label), "--case-id", "fixed_01"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert json.loads((demo["abdomen"] / "dataset.json").read_text())["numTraining"] == 3
