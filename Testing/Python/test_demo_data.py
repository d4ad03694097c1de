"""Tests for labelsharing.demo.data: the built-in synthetic tasks."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from labelsharing.demo import DEMO_TASK_NAMES, make_demo_datasets
from labelsharing.errors import LabelSharingError

CASES = 2
N_TEST = max(2, CASES // 4)
DIMENSION = {"Dataset001_AbdomenCT": 3, "Dataset002_BrainMR": 3, "Dataset003_KneeXR": 2, "Dataset004_ChestXR": 2}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_demo_datasets(root, cases=CASES, seed=0)
    return root


def _meta(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text(encoding="utf-8"))


def _pairs(folder: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) paths of one split ("Tr" or "Ts")."""
    ending = _meta(folder)["file_ending"]
    images = sorted((folder / f"images{split}").iterdir())
    return [(image, folder / f"labels{split}" / image.name.replace(f"_0000{ending}", ending)) for image in images]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writes_four_task_folders_in_order(tmp_path: Path) -> None:
    folders = make_demo_datasets(tmp_path, cases=1, seed=3)
    assert [f.name for f in folders] == list(DEMO_TASK_NAMES)
    assert all(f.parent == tmp_path and f.is_dir() for f in folders)


@pytest.mark.parametrize("task", DEMO_TASK_NAMES)
def test_dataset_json_is_valid(demo_root: Path, task: str) -> None:
    folder = demo_root / task
    meta = _meta(folder)
    assert meta["name"] == task.split("_", 1)[1]  # folder Dataset001_AbdomenCT -> task AbdomenCT
    assert meta["labels"]["background"] == 0
    assert sorted(meta["labels"].values()) == list(range(len(meta["labels"])))
    assert meta["modality"] in ("CT", "MR", "XR")
    assert set(meta["channel_names"]) == {"0"}
    assert meta["description"]
    ending = meta["file_ending"]
    assert meta["numTraining"] == CASES
    assert len(_pairs(folder, "Tr")) == CASES == len(list((folder / "labelsTr").iterdir()))
    assert len(_pairs(folder, "Ts")) == N_TEST == len(list((folder / "labelsTs").iterdir()))
    for split in ("Tr", "Ts"):
        for image, label in _pairs(folder, split):
            assert image.name.endswith(f"_0000{ending}") and label.is_file()


@pytest.mark.parametrize("task", DEMO_TASK_NAMES)
def test_image_label_pairs_and_labels(demo_root: Path, task: str) -> None:
    folder = demo_root / task
    meta = _meta(folder)
    declared = set(meta["labels"].values())
    for split in ("Tr", "Ts"):
        for image_path, label_path in _pairs(folder, split):
            image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
            assert image.GetDimension() == label.GetDimension() == DIMENSION[task]
            assert image.GetSize() == label.GetSize()
            np.testing.assert_allclose(image.GetSpacing(), label.GetSpacing())
            np.testing.assert_allclose(image.GetOrigin(), label.GetOrigin())
            np.testing.assert_allclose(image.GetDirection(), label.GetDirection())
            assert label.GetPixelID() == sitk.sitkUInt8
            expected_type = sitk.sitkInt16 if meta["modality"] == "CT" else sitk.sitkFloat32
            assert image.GetPixelID() == expected_type
            values = set(np.unique(sitk.GetArrayViewFromImage(label)).tolist())
            assert values == declared, f"{label_path.name}: found {values}, declared {declared}"


def test_geometry_is_anisotropic_for_volumes(demo_root: Path) -> None:
    ct = sitk.ReadImage(str(_pairs(demo_root / DEMO_TASK_NAMES[0], "Tr")[0][0]))
    x, y, z = ct.GetSpacing()
    assert x == pytest.approx(y) and z > 2 * x
    assert any(abs(o) > 1 for o in ct.GetOrigin())
    assert ct.GetSize()[:2] == (96, 96) and 12 <= ct.GetSize()[2] <= 16


def test_same_seed_gives_identical_files(tmp_path: Path, demo_root: Path) -> None:
    make_demo_datasets(tmp_path, cases=CASES, seed=0)
    first, second = _files(demo_root), _files(tmp_path)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_other_seed_gives_other_images(tmp_path: Path, demo_root: Path) -> None:
    make_demo_datasets(tmp_path, cases=CASES, seed=1)
    first, other = _files(demo_root), _files(tmp_path)
    assert first.keys() == other.keys()
    changed = [name for name in first if first[name] != other[name]]
    assert len(changed) == len([name for name in first if not name.endswith("dataset.json")])


def test_tasks_have_distinct_intensities(demo_root: Path) -> None:
    stats = {}
    for task in DEMO_TASK_NAMES:
        arrays = [sitk.GetArrayFromImage(sitk.ReadImage(str(image))).astype(np.float64)
                  for image, _ in _pairs(demo_root / task, "Tr")]
        values = np.concatenate([a.ravel() for a in arrays])
        stats[task] = (values.mean(), np.percentile(values, 99) - np.percentile(values, 1))
    for a, b in combinations(DEMO_TASK_NAMES, 2):
        (mean_a, range_a), (mean_b, range_b) = stats[a], stats[b]
        assert abs(mean_a - mean_b) > 50 or abs(range_a - range_b) > 0.2 * max(range_a, range_b), (a, b, stats)


def test_rerun_replaces_own_folders(tmp_path: Path) -> None:
    make_demo_datasets(tmp_path, cases=3)
    make_demo_datasets(tmp_path, cases=1)
    folder = tmp_path / DEMO_TASK_NAMES[0]
    assert _meta(folder)["numTraining"] == 1 and len(list((folder / "imagesTr").iterdir())) == 1


def test_refuses_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / DEMO_TASK_NAMES[0]).mkdir()
    (tmp_path / DEMO_TASK_NAMES[0] / "notes.txt").write_text("mine")
    with pytest.raises(LabelSharingError, match="does not hold LabelSharingSeg demo data"):
        make_demo_datasets(tmp_path, cases=1)
    assert (tmp_path / DEMO_TASK_NAMES[0] / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kwargs, message", [({"cases": 0}, "cases"), ({"seed": -1}, "seed")])
def test_invalid_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_demo_datasets(tmp_path, **kwargs)
