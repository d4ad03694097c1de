"""Small islands removed after prediction (labelsharing.infer.small_islands, train.island_fit)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import write_task
from tiny_model import make_model

from labelsharing.cli.parser import build_parser
from labelsharing.data import load_case, read_task_dataset
from labelsharing.infer import ISLAND_FRACTION, Predictor, remove_small_islands
from labelsharing.model import describe_model
from labelsharing.train import fit_small_islands, island_fit


# ----------------------------------------------------------------------------- removal
def _volume_with_islands() -> np.ndarray:
    """(z, y, x) = (6, 10, 10): label 1 as an 18-voxel block, a 2-voxel island, a voxel touching the
    block's corner only, and one voxel on each of two edges of the image; label 2 as one voxel."""
    labels = np.zeros((6, 10, 10), np.uint8)
    labels[1:3, 1:4, 1:4] = 1
    labels[4, 7, 6:8] = 1
    labels[3, 4, 4] = 1  # diagonal to the block's corner (2, 3, 3): an island of its own
    labels[0, 5, 5] = 1  # on the first slice: cut by the field of view, whatever its size
    labels[3, 9, 5] = 1  # on the last row
    labels[4, 2, 7] = 2
    return labels


def test_islands_are_measured_in_physical_size_not_voxels():
    labels = _volume_with_islands()
    spacing = (1.0, 1.0, 3.0)  # x, y, z: a voxel is 3 mm³; the 2-voxel island is 6 mm³
    kept = labels.copy()
    assert remove_small_islands(kept, spacing, {1: 5.0}) == 1  # only the 3 mm³ corner voxel is under 5 mm³
    expected = labels.copy()
    expected[3, 4, 4] = 0
    np.testing.assert_array_equal(kept, expected)
    assert remove_small_islands(labels, spacing, {1: 10.0}) == 3
    expected[4, 7, 6:8] = 0
    np.testing.assert_array_equal(labels, expected)  # the block, the edge voxels and the unlisted label 2 stay


def test_islands_on_the_image_edge_stay_whatever_their_size():
    labels = np.zeros((5, 5, 5), np.uint8)
    for corner in [(0, 2, 2), (4, 2, 2), (2, 0, 2), (2, 4, 2), (2, 2, 0), (2, 2, 4)]:
        labels[corner] = 1  # one voxel on each face
    labels[2, 2, 2] = 1  # and one inside
    assert remove_small_islands(labels, (1.0, 1.0, 1.0), {1: 100.0}) == 1
    assert labels[2, 2, 2] == 0 and np.count_nonzero(labels) == 6


def test_a_2d_image_and_large_label_values():
    labels = np.zeros((8, 8), np.uint16)
    labels[1:4, 1:4] = 300
    labels[6, 6] = 300
    labels[6, 1] = 7
    assert remove_small_islands(labels, (0.5, 0.5), {300: 0.5, 7: 0.1}) == 1  # 0.25 mm² < 0.5; label 7 kept
    assert labels[6, 6] == 0 and labels[1, 1] == 300 and labels[6, 1] == 7


def test_nothing_listed_nothing_changed():
    labels = _volume_with_islands()
    before = labels.copy()
    assert remove_small_islands(labels, (1.0, 1.0, 1.0), {}) == 0
    assert remove_small_islands(labels, (1.0, 1.0, 1.0), {9: 100.0}) == 0  # a label the map does not hold
    np.testing.assert_array_equal(labels, before)


# ----------------------------------------------------------------------------- prediction
def _speckled_image() -> sitk.Image:
    """A (3, 32, 32) image that the intensity network reads as TaskA 'big' (value 1) in a block and one speck."""
    array = np.zeros((3, 32, 32), np.float32)
    array[:, 4:20, 4:20] = 1.0
    array[1, 28, 28] = 1.0
    return sitk.GetImageFromArray(array)


def test_prediction_removes_the_islands_model_json_lists():
    model = make_model(fake=True)
    model.config["small_islands"] = {"TaskA": {"big": 2.0}}  # mm³; a voxel is 1 mm³
    raw = Predictor(model, "cpu", remove_islands=False).predict_image(_speckled_image(), "TaskA")
    assert raw[1, 28, 28] == 1 and np.count_nonzero(raw == 1) == 3 * 16 * 16 + 1
    cleaned = Predictor(model, "cpu").predict_image(_speckled_image(), "TaskA")
    expected = raw.copy()
    expected[1, 28, 28] = 0
    np.testing.assert_array_equal(cleaned, expected)
    model.config["small_islands"] = {"TaskB": {"large": 2.0}}  # another task's rule does not apply
    np.testing.assert_array_equal(Predictor(model, "cpu").predict_image(_speckled_image(), "TaskA"), raw)


def test_predict_and_evaluate_remove_islands_unless_asked_to_keep_them():
    parser = build_parser()
    for command in (["predict", "M", "x.nii.gz", "--task", "T", "--out", "o"], ["evaluate", "M", "D"]):
        assert parser.parse_args(command).remove_islands is True
        assert parser.parse_args([*command, "--keep-small-islands"]).remove_islands is False


def test_info_lists_the_rules(tmp_path):
    model = make_model(fake=False)
    model.config["small_islands"] = {"TaskA": {"big": 123.4}}
    text = describe_model(model.save(tmp_path / "model"))
    assert "Small islands removed after prediction" in text
    assert any(line.split()[:3] == ["TaskA", "big", "123.4"] and "mm³" in line for line in text.splitlines())


# ----------------------------------------------------------------------------- fitting on held-out cases
class _PerfectNetworkWithSpeck:
    """Stands in for the Predictor in ``island_fit``: reads the label back from the image the task
    folder holds (``label * 100 + noise``, conftest.write_task), exactly, and adds a 2-voxel (4 mm³)
    speck of label 1 inside the image where no label lies."""

    def __init__(self, model, device, remove_islands: bool):
        assert remove_islands is False  # the fit must see the network's own islands

    def predict_image(self, image: sitk.Image, task: str) -> np.ndarray:
        labels = np.rint(sitk.GetArrayFromImage(image) / 100).astype(np.uint8)
        labels[2, 9, 6:8] = 1
        return labels


def _task_with_true_small_islands(root):
    """Labels a (1), b (2), c (3) on (7, 12, 12) volumes, spacing 2 mm in z (a voxel is 2 mm³).
    Training: a is 300 voxels (1 % = 6 mm³), b 200 (4 mm³), c 4 (0.08 mm³). The held-out case holds
    a's and b's blocks, a true 1-voxel (2 mm³) island of b inside the image, and no c."""
    training = []
    for _ in range(3):
        labels = np.zeros((7, 12, 12), np.uint8)
        labels[1:4, 1:11, 1:11] = 1
        labels[4:6, 1:11, 1:11] = 2
        labels[6, 1:3, 1:3] = 3
        training.append(labels)
    held_out = np.zeros((7, 12, 12), np.uint8)
    held_out[1:2, 1:6, 1:6] = 1
    held_out[4:5, 1:6, 1:6] = 2
    held_out[5, 9, 9] = 2
    folder = write_task(root, {"a": 1, "b": 2, "c": 3}, [*training, held_out], spacing=[1.0, 1.0, 2.0])
    dataset = read_task_dataset(folder)
    validation = [case for case in dataset.training if case.case_id == "case003"]
    return SimpleNamespace(
        name=dataset.name, dataset=dataset, validation=validation, validation_ids=("case003",),
        load_validation=lambda: ((image, sitk.GetArrayFromImage(label))
                                 for image, label in (load_case(dataset, case) for case in validation)))


def test_the_fit_keeps_a_rule_unless_it_lowers_held_out_dice(tmp_path, monkeypatch):
    monkeypatch.setattr(island_fit, "Predictor", _PerfectNetworkWithSpeck)
    task = _task_with_true_small_islands(tmp_path / "T")
    model = SimpleNamespace(config={
        "tasks": {"T": {"labels": {"a": {"value": 1}, "b": {"value": 2}, "c": {"value": 3}}}},
        "small_islands": {"T": {"b": 99.0}, "Other": {"x": 5.0}}})  # a parent's rules (add-task)
    lines: list[str] = []
    rules = fit_small_islands(model, [task], "cpu", log=lines.append)
    voxel = 2.0
    assert rules["T"] == pytest.approx({"a": ISLAND_FRACTION * 300 * voxel,  # removes the 4 mm³ speck: Dice up
                                        "c": ISLAND_FRACTION * 4 * voxel})  # not in the held-out case: unchecked
    assert "b" not in rules["T"]  # it would remove b's true 2 mm³ island: Dice down
    assert rules["Other"] == {"x": 5.0}  # a task not fitted (its data not here) keeps its rule
    assert "T: 2 of 3 labels (held-out Dice: a 0.962->1.000)" in lines[-1]


def test_a_task_without_held_out_cases_keeps_every_rule(tmp_path, monkeypatch):
    monkeypatch.setattr(island_fit, "Predictor", _PerfectNetworkWithSpeck)
    task = _task_with_true_small_islands(tmp_path / "T")
    task.validation, task.validation_ids, task.load_validation = [], (), lambda: iter(())
    model = SimpleNamespace(config={"tasks": {"T": {"labels": {"a": {"value": 1}, "b": {"value": 2}, "c": {"value": 3}}}}})
    rules = fit_small_islands(model, [task], "cpu", log=lambda line: None)
    assert set(rules["T"]) == {"a", "b", "c"}  # four training cases now: b's median is still 200 voxels
    assert rules["T"]["b"] == pytest.approx(ISLAND_FRACTION * 200 * 2.0)
