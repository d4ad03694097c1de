"""Detecting tasks whose images look alike (the method's known weak spot), case by case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import write_image

from labelsharing.data.appearance import CONFUSION_WARNING, case_thumbnails, compare_tasks, task_confusion

SIDE, SLICES = 32, 24


def _head(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A T1-like head of random size with thin (1 mm) slices: skull rim, brain, white matter.

    Returns (image, label) arrays (z, y, x); labels 1 = brain, 2 = white matter.
    """
    zz, yy, xx = np.mgrid[:SLICES, :SIDE, :SIDE].astype(float)
    a, b, c = rng.uniform(11, 14), rng.uniform(12, 15), rng.uniform(9, 11)
    r = np.sqrt(((yy - 16) / b) ** 2 + ((xx - 16) / a) ** 2 + ((zz - 12) / c) ** 2)
    image = np.where(r < 1.0, 300.0, 0.0) + np.where(r < 0.85, 300.0, 0.0) + np.where(r < 0.5, 250.0, 0.0)
    label = np.where(r < 0.85, 1, 0) + np.where(r < 0.5, 1, 0)
    return (image + rng.normal(0, 10, image.shape)).astype(np.float32), label.astype(np.uint8)


def _trunk(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like trunk: a wide body with a bright spine at the back; label 1 = spine, 2 = body."""
    zz, yy, xx = np.mgrid[:SLICES, :SIDE, :SIDE].astype(float)
    body = ((yy - 16) / rng.uniform(8, 10)) ** 2 + ((xx - 16) / 15) ** 2 < 1
    spine = np.hypot(yy - 22, xx - 16) < 3
    image = np.where(body, 40.0, -1000.0) + np.where(spine, 600.0, 0.0) + 20 * np.sin(zz / 2)
    label = np.where(spine, 1, np.where(body, 2, 0))
    return (image + rng.normal(0, 10, image.shape)).astype(np.float32), label.astype(np.uint8)


def _images(make, seed: int, cases: int = 4) -> list[sitk.Image]:
    rng = np.random.default_rng(seed)
    return [sitk.GetImageFromArray(make(rng)[0]) for _ in range(cases)]


def write_volume_task(root: Path, make, seed: int, labels: dict, cases: int = 4, extra: dict | None = None,
                      channel: str = "T1") -> Path:
    """A 3D task folder of ``cases`` volumes drawn by ``make``."""
    rng = np.random.default_rng(seed)
    for index in range(cases):
        image, label = make(rng)
        write_image(image, root / "imagesTr" / f"case{index:03d}_0000.nii.gz")
        write_image(label, root / "labelsTr" / f"case{index:03d}.nii.gz")
    meta = {"name": root.name, "channel_names": {"0": channel}, "labels": {"background": 0, **labels},
            "numTraining": cases, "file_ending": ".nii.gz", **(extra or {})}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_thumbnails_are_z_scored_and_skip_uniform_slices():
    image, _ = _head(np.random.default_rng(0))
    thumbs = case_thumbnails(sitk.GetImageFromArray(np.concatenate([np.zeros((3, SIDE, SIDE), np.float32), image])))
    assert thumbs.shape[1] == 256 and len(thumbs) <= SLICES  # the 3 empty slices are left out
    np.testing.assert_allclose(thumbs.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(thumbs.std(axis=1), 1, atol=1e-3)
    assert case_thumbnails(sitk.GetImageFromArray(np.arange(20, dtype=np.float32).reshape(4, 5))).shape == (1, 256)


def test_case_level_check_fires_for_look_alike_3d_tasks_and_not_across_modalities():
    """Two head MR tasks from one generator (different draws) look alike; a trunk CT does not.

    With thin slices, leaving out only the slice itself finds the adjacent slice of the same
    volume, so the old check could not fire here; leaving out the case can.
    """
    result = compare_tasks({"HeadA": _images(_head, 1), "HeadB": _images(_head, 2), "Trunk": _images(_trunk, 3)})
    np.testing.assert_allclose(result.confusion.sum(axis=1), 1.0)
    assert result.score("HeadA", "HeadB") > 2 * CONFUSION_WARNING
    assert result.score("HeadA", "Trunk") == 0 and result.score("HeadB", "Trunk") == 0
    assert result.look_alike_pairs() == [("HeadA", "HeadB")]
    assert result.groups() == [["HeadA", "HeadB"]]
    assert result.look_alike_pairs(involving="Trunk") == []
    assert "'HeadA' and 'HeadB' look alike" in result.warnings()[0]


def test_a_task_with_one_case_is_not_counted_as_looking_like_the_others():
    confusion = task_confusion([[np.eye(3, 256)], [np.eye(3, 256, 5), np.eye(3, 256, 9)]])
    assert np.isnan(confusion[0]).all() and np.isfinite(confusion[1]).all()
    result = compare_tasks({"One": _images(_head, 1, cases=1), "Trunk": _images(_trunk, 3)})
    assert result.look_alike_pairs() == [] and result.to_dict()["confusion"][0] == [None, None]


def test_plan_cli_prints_the_look_alike_warning_and_conflict(tmp_path):
    a = write_volume_task(tmp_path / "HeadA", _head, 1, {"brain": 1, "white_matter": 2})
    b = write_volume_task(tmp_path / "HeadB", _head, 2, {"lobes": 1, "White Matter": 2})
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "LabelSharingSeg"), "PATH": ""}
    done = subprocess.run([sys.executable, "-m", "labelsharing", "--progress", "none", "plan", str(a), str(b)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "warning: 'HeadA' and 'HeadB' look alike" in done.stderr
    assert "[auto]" in done.stdout and "HeadB/White Matter -> shared" in done.stdout
    assert "shared 1 = HeadA/brain / HeadB/lobes" in done.stderr and "one merged task" in done.stderr


def test_plan_cli_stays_silent_across_modalities(tmp_path):
    a = write_volume_task(tmp_path / "Head", _head, 1, {"brain": 1, "white_matter": 2})
    b = write_volume_task(tmp_path / "Trunk", _trunk, 3, {"spine": 1, "body": 2}, channel="CT")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "LabelSharingSeg"), "PATH": ""}
    done = subprocess.run([sys.executable, "-m", "labelsharing", "--progress", "none", "plan", str(a), str(b)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "look alike" not in done.stderr and "[auto]" not in done.stdout


@pytest.mark.slow
def test_training_records_the_matrix_in_model_json(tmp_path):
    from labelsharing.model import read_model_config
    from labelsharing.train import TrainingOptions, train

    a = write_volume_task(tmp_path / "HeadA", _head, 1, {"brain": 1, "white_matter": 2})
    b = write_volume_task(tmp_path / "HeadB", _head, 2, {"white-matter": 1, "brain": 2})
    messages: list[str] = []
    train([a, b], tmp_path / "model", TrainingOptions(epochs=1, batch_size=8, input_size=32, features=4,
                                                      device="cpu"), log=messages.append)
    config = read_model_config(tmp_path / "model")
    assert config["appearance"]["tasks"] == ["HeadA", "HeadB"]
    matrix = np.array(config["appearance"]["confusion"])
    assert matrix.shape == (2, 2) and matrix[0, 1] > CONFUSION_WARNING
    assert any("'HeadA' and 'HeadB' look alike" in m for m in messages)
    labels = config["plan"]["tasks"]
    assert labels["HeadA"]["labels"]["white_matter"]["shared"] == labels["HeadB"]["labels"]["white-matter"]["shared"]
    assert labels["HeadB"]["labels"]["white-matter"]["pin"] == "same name as HeadA/white_matter"


def test_model_json_schema_checks_the_matrix():
    from tiny_model import make_config

    from labelsharing.errors import LabelSharingError
    from labelsharing.model.schema import validate_model_config

    config = make_config()
    config["appearance"] = {"tasks": ["TaskA", "TaskB"], "confusion": [[0.9, 0.1], [None, None]]}
    validate_model_config(config)
    config["appearance"]["confusion"] = [[0.9, 0.1]]
    with pytest.raises(LabelSharingError, match="appearance.confusion"):
        validate_model_config(config)
    config["appearance"] = {"tasks": ["TaskA", "Nope"], "confusion": [[1, 0], [0, 1]]}
    with pytest.raises(LabelSharingError, match="appearance.tasks"):
        validate_model_config(config)
