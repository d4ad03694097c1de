"""Dice scores and model evaluation.

``evaluate_model`` is run with ``IntensityNetwork`` in place of a trained UNet (see
``tiny_model.py``): images written by ``conftest.write_task`` have intensity ``100 * label``,
normalised by 100, so TaskA (task values = shared labels) is predicted perfectly while TaskB
(whose two labels swap shared labels) is predicted swapped, i.e. Dice 0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_task
from monai.metrics import DiceMetric, compute_dice
from monai.networks.utils import one_hot
from tiny_model import make_model

from labelsharing.data import read_task_dataset
from labelsharing.errors import LabelSharingError
from labelsharing.infer import Predictor
from labelsharing.infer.evaluation import DiceAccumulator, dice_per_label, evaluate_model, evaluation_table


def _monai_dice(prediction: np.ndarray, reference: np.ndarray, n_classes: int) -> np.ndarray:
    pred = one_hot(torch.from_numpy(prediction)[None, None].long(), n_classes)
    ref = one_hot(torch.from_numpy(reference)[None, None].long(), n_classes)
    return compute_dice(pred, ref, include_background=False, ignore_empty=True)[0].numpy()


@pytest.mark.parametrize("seed, shape, absent", [(0, (17, 23), None), (1, (4, 9, 11), None), (2, (64,), None),
                                                 (3, (12, 12), 2), (4, (5, 7, 3), 3)])
def test_dice_matches_monai(seed: int, shape, absent):
    rng = np.random.default_rng(seed)
    prediction, reference = rng.integers(0, 4, shape), rng.integers(0, 4, shape)
    if absent is not None:  # a label in neither map: not scored (NaN), as MONAI's ignore_empty=True
        prediction[prediction == absent], reference[reference == absent] = 0, 0
    ours = dice_per_label(prediction, reference, {"a": 1, "b": 2, "c": 3})
    np.testing.assert_allclose(list(ours.values()), _monai_dice(prediction, reference, 4), rtol=1e-6)


def test_dice_edge_cases():
    """nnU-Net's rule: absent from both maps -> no Dice (NaN); absent from one -> 0."""
    empty = np.zeros((5, 5), dtype=np.uint8)
    one = empty.copy()
    one[1, 1] = 1
    assert np.isnan(dice_per_label(empty, empty, {"a": 1})["a"])
    assert np.isnan(_monai_dice(empty, empty, 2)).all()
    assert dice_per_label(one, empty, {"a": 1}) == {"a": 0.0}  # a false positive on an empty reference
    assert dice_per_label(empty, one, {"a": 1}) == {"a": 0.0}
    with pytest.raises(ValueError, match="shape"):
        dice_per_label(empty, empty[:4], {"a": 1})


def test_accumulator_mean_over_cases_matches_monai_metric():
    rng = np.random.default_rng(5)
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    accumulator = DiceAccumulator({"a": 1, "b": 2})
    for case in range(4):
        prediction, reference = rng.integers(0, 3, (12, 12)), rng.integers(0, 3, (12, 12))
        if case % 2:  # label b absent from both maps in half the cases: left out of b's mean
            prediction[prediction == 2], reference[reference == 2] = 0, 0
        accumulator.add(prediction, reference)
        metric(one_hot(torch.from_numpy(prediction)[None, None], 3), one_hot(torch.from_numpy(reference)[None, None], 3))
    np.testing.assert_allclose(list(accumulator.mean_dice().values()), metric.aggregate().numpy(), rtol=1e-6)
    large = np.zeros(100, int)
    pooled = DiceAccumulator({"a": 1})
    pooled.add(np.array([1, 0, 0, 0]), np.array([0, 1, 0, 0]))  # Dice 0 on a tiny case
    large[:50] = 1
    pooled.add(large, large)  # Dice 1 on a large case
    assert pooled.mean_dice() == {"a": 0.5}
    assert pooled.global_dice()["a"] == pytest.approx(100 / 102)


def test_label_absent_from_both_maps_does_not_raise_the_mean():
    accumulator = DiceAccumulator({"a": 1, "b": 2})
    accumulator.add(np.array([1, 1, 2, 0]), np.array([1, 0, 2, 0]))  # a: 2/3, b: 1
    accumulator.add(np.array([0, 1, 0, 0]), np.array([0, 1, 0, 0]))  # a: 1, b absent from both
    accumulator.add(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 0]))  # both absent
    assert accumulator.mean_dice() == pytest.approx({"a": (2 / 3 + 1) / 2, "b": 1.0})
    never = DiceAccumulator({"a": 1, "gone": 5})
    never.add(np.array([1, 0]), np.array([1, 1]))
    assert never.mean_dice() == pytest.approx({"a": 2 / 3})  # a label that never occurs has no Dice
    assert never.global_dice() == pytest.approx({"a": 2 / 3})


@pytest.fixture
def tasks(tmp_path: Path):
    shape = (32, 32)
    a_label = np.zeros(shape, np.int64)
    a_label[2:18, 2:30], a_label[20:26, 4:20], a_label[27:30, 10:14] = 1, 2, 3
    b_label = np.zeros(shape, np.int64)
    b_label[4:8, 4:8], b_label[10:30, 5:30] = 1, 2
    a = write_task(tmp_path / "a", {"big": 1, "mid": 2, "small": 3}, [a_label] * 2, name="TaskA")
    b = write_task(tmp_path / "b", {"tiny": 1, "large": 2}, [b_label] * 3, name="TaskB")
    shutil.copytree(a / "imagesTr", a / "imagesTs")  # TaskA gets a test split, TaskB does not
    shutil.copytree(a / "labelsTr", a / "labelsTs")
    return [read_task_dataset(a), read_task_dataset(b)]


@pytest.fixture
def predictor() -> Predictor:
    return Predictor(make_model(fake=True, std=100.0), "cpu")


def test_evaluate_model_shape_and_split(predictor: Predictor, tasks):
    result = evaluate_model(predictor, tasks)
    json.dumps(result)  # plain JSON
    assert result == {
        "tasks": {
            "TaskA": {"mean_dice": 1.0, "labels": {"big": {"dice": 1.0}, "mid": {"dice": 1.0}, "small": {"dice": 1.0}},
                      "cases": 2, "split": "test"},
            "TaskB": {"mean_dice": 0.0, "labels": {"tiny": {"dice": 0.0}, "large": {"dice": 0.0}},
                      "cases": 3, "split": "train"},
        }
    }
    table = evaluation_table(result)
    lines = table.splitlines()
    assert lines[0].split() == ["task", "label", "dice", "cases", "split"]
    assert len(lines) == 2 + 4 + 3
    assert any(line.split() == ["TaskB", "(mean)", "0.000", "3", "train"] for line in lines)


def test_evaluate_model_rejects_foreign_datasets(predictor: Predictor, tasks, tmp_path: Path):
    other = read_task_dataset(write_task(tmp_path / "c", {"x": 1}, [np.ones((8, 8), np.uint8)], name="TaskC"))
    with pytest.raises(LabelSharingError, match="its tasks are: TaskA, TaskB"):
        evaluate_model(predictor, [tasks[0], other])
    relabelled = read_task_dataset(write_task(tmp_path / "d", {"tiny": 2, "large": 1}, [np.ones((8, 8), np.uint8)],
                                              name="TaskB"))
    with pytest.raises(LabelSharingError, match="differ from those the model was trained with"):
        evaluate_model(predictor, [relabelled])


def test_label_absent_from_every_case_has_no_dice(predictor: Predictor, tmp_path: Path):
    label = np.zeros((32, 32), np.int64)
    label[2:18, 2:30], label[20:26, 4:20] = 1, 2  # "small" (3) occurs nowhere
    task = read_task_dataset(write_task(tmp_path / "a", {"big": 1, "mid": 2, "small": 3}, [label] * 2, name="TaskA"))
    result = evaluate_model(predictor, [task])
    body = result["tasks"]["TaskA"]
    assert body["labels"] == {"big": {"dice": 1.0}, "mid": {"dice": 1.0}, "small": {"dice": None}}
    assert body["mean_dice"] == 1.0  # the mean of the labels that have a Dice
    assert json.loads(json.dumps(result, allow_nan=False)) == result  # null, never a NaN literal
    small = next(line.split() for line in evaluation_table(result).splitlines() if "small" in line)
    assert small == ["TaskA", "small", "-"]
