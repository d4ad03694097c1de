"""Dice scores of a model on its tasks' labelled cases.

Per-label Dice is computed per case and then averaged over cases (as nnU-Net and MONAI's
``DiceMetric`` report it); a label absent from both prediction and reference in a case counts
as 1.0 (MONAI's ``ignore_empty=False``). A task's mean Dice is the mean of its per-label Dice.
:class:`DiceAccumulator` also keeps the pooled ("global") Dice, summing intersections and sizes
over all cases, which weights large cases more; it is available but not reported by default.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from labelsharing.datasets import TaskDataset, load_case
from labelsharing.errors import LabelSharingError
from labelsharing.progress import SILENT, ProgressReporter
from labelsharing.tables import format_table

__all__ = ["dice_per_label", "DiceAccumulator", "evaluate_model", "evaluation_table", "split_warning"]


def _label_counts(prediction: np.ndarray, reference: np.ndarray, labels: Mapping[str, int]):
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} != reference shape {reference.shape}")
    counts = {}
    for name, value in labels.items():
        pred, ref = prediction == value, reference == value
        counts[name] = (int(np.count_nonzero(pred & ref)), int(np.count_nonzero(pred)), int(np.count_nonzero(ref)))
    return counts


def _dice(intersection: int, pred_size: int, ref_size: int) -> float:
    total = pred_size + ref_size
    return 1.0 if total == 0 else 2.0 * intersection / total


def dice_per_label(prediction: np.ndarray, reference: np.ndarray, labels: Mapping[str, int]) -> dict[str, float]:
    """Dice of each label between two label maps of the same shape.

    Args:
        prediction: integer label map, any shape.
        reference: integer label map, same shape.
        labels: label name -> value (background is not scored unless listed).

    Returns:
        label name -> Dice in 0..1; 1.0 if the label is absent from both maps.

    Example:
        >>> dice_per_label(np.array([1, 1, 0, 2]), np.array([1, 0, 0, 3]), {"a": 1, "b": 2, "c": 4})
        {'a': 0.6666666666666666, 'b': 0.0, 'c': 1.0}
    """
    return {name: _dice(*c) for name, c in _label_counts(prediction, reference, labels).items()}


class DiceAccumulator:
    """Collects Dice of one task's labels over cases.

    Example:
        >>> acc = DiceAccumulator({"a": 1})
        >>> acc.add(np.array([1, 1]), np.array([1, 0]))  # returns this case's scores
        {'a': 0.6666666666666666}
        >>> acc.add(np.array([0, 0]), np.array([0, 0]))  # absent from both: 1.0
        {'a': 1.0}
        >>> acc.mean_dice(), acc.global_dice()
        ({'a': 0.8333333333333333}, {'a': 0.6666666666666666})
    """

    def __init__(self, labels: Mapping[str, int]):
        self.labels = dict(labels)
        self.cases: list[dict[str, float]] = []
        self._sums = {name: np.zeros(3, dtype=np.int64) for name in self.labels}

    def add(self, prediction: np.ndarray, reference: np.ndarray) -> dict[str, float]:
        """Score one case; returns its per-label Dice."""
        counts = _label_counts(prediction, reference, self.labels)
        for name, c in counts.items():
            self._sums[name] += c
        scores = {name: _dice(*c) for name, c in counts.items()}
        self.cases.append(scores)
        return scores

    def mean_dice(self) -> dict[str, float]:
        """label -> Dice averaged over cases (the reported score)."""
        if not self.cases:
            raise ValueError("no cases added")
        return {name: float(np.mean([case[name] for case in self.cases])) for name in self.labels}

    def global_dice(self) -> dict[str, float]:
        """label -> Dice of intersections and sizes summed over all cases."""
        return {name: _dice(*(int(v) for v in s)) for name, s in self._sums.items()}


def evaluate_model(predictor, tasks: Sequence[TaskDataset], progress: ProgressReporter = SILENT) -> dict:
    """Dice of a model on the labelled cases of task datasets.

    Each dataset's test split is used; a dataset without one is scored on its training cases
    and marked ``"split": "train"`` (optimistic: the model has seen them; callers should warn).

    Args:
        predictor: a :class:`labelsharing.inference.Predictor`.
        tasks: datasets whose names are tasks of the model.
        progress: reports ``evaluating`` per case.

    Returns:
        ``{"tasks": {task: {"mean_dice": float, "labels": {label: {"dice": float}}, "cases": int,
        "split": "test" | "train"}}}``.

    Raises:
        LabelSharingError: a dataset that is not a task of the model, or whose labels differ
            from the model's; unreadable or mismatched case files.
    """
    model_tasks = list(predictor.model.config["tasks"])
    unknown = [t.name for t in tasks if t.name not in model_tasks]
    if unknown:
        raise LabelSharingError(
            f"Dataset(s) {', '.join(unknown)} are not tasks of this model; its tasks are: {', '.join(model_tasks)}."
        )
    plans = []
    for task in tasks:
        model_labels = {name: int(e["value"]) for name, e in predictor.model.config["tasks"][task.name]["labels"].items()}
        if model_labels != dict(task.labels):
            raise LabelSharingError(
                f"Task '{task.name}': the dataset's labels ({_labels_text(task.labels)}) differ from those the "
                f"model was trained with ({_labels_text(model_labels)}); evaluate with the matching dataset."
            )
        cases, split = (task.test, "test") if task.test else (task.training, "train")
        plans.append((task, model_labels, cases, split))

    result: dict = {"tasks": {}}
    with progress.track("evaluating", total=sum(len(p[2]) for p in plans), unit="case") as advance:
        for task, labels, cases, split in plans:
            accumulator = DiceAccumulator(labels)
            for case in cases:
                image, label = load_case(task, case)
                prediction = predictor.predict_image(image, task.name)
                scores = accumulator.add(prediction, sitk.GetArrayViewFromImage(label))
                advance(task=task.name, dice=float(np.mean(list(scores.values()))))
            per_label = accumulator.mean_dice()
            result["tasks"][task.name] = {
                "mean_dice": float(np.mean(list(per_label.values()))),
                "labels": {name: {"dice": dice} for name, dice in per_label.items()},
                "cases": len(cases),
                "split": split,
            }
    return result


def split_warning(task: TaskDataset) -> str | None:
    """Why ``task`` is scored on its training cases, or ``None`` if it has labelled test cases."""
    if task.test:
        return None
    if task.unlabelled_test:
        return (
            f"{task.name}: its {len(task.unlabelled_test)} test image(s) in imagesTs have no labels in labelsTs; "
            "evaluating on its TRAINING cases, which the model has seen. Add labelsTs/<case> files to score the "
            "test images."
        )
    return (
        f"{task.name} has no test split (imagesTs/labelsTs); evaluating on its TRAINING cases, which the model "
        "has seen."
    )


def evaluation_table(result: Mapping) -> str:
    """Plain-text table of :func:`evaluate_model`'s result: one row per task label, then the task mean."""
    rows = []
    for task, body in result["tasks"].items():
        for label, entry in body["labels"].items():
            rows.append([task, label, f"{entry['dice']:.3f}", "", ""])
        rows.append([task, "(mean)", f"{body['mean_dice']:.3f}", body["cases"], body["split"]])
    return format_table(["task", "label", "dice", "cases", "split"], rows)


def _labels_text(labels: Mapping[str, int]) -> str:
    return ", ".join(f"{name}={value}" for name, value in labels.items())
