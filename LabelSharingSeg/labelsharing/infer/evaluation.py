"""Dice scores of a model on its tasks' labelled cases.

Per-label Dice is computed per case and then averaged over cases (as nnU-Net and MONAI's
``DiceMetric`` report it). As in nnU-Net, a label absent from both prediction and reference in a
case has no Dice there (NaN) and is left out of that label's mean over cases; counting it as 1.0
would reward every case that lacks a structure and inflate the validation score that picks the
best epoch. A label absent from every case has no Dice at all (``None``/``null`` in the
evaluation JSON) and is left out of the task's mean Dice, the mean of its labels' Dice. A label
predicted where the reference has none scores 0.
:class:`DiceAccumulator` also keeps the pooled ("global") Dice, summing intersections and sizes
over all cases, which weights large cases more; it is available but not reported by default.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from labelsharing.data import TaskDataset, load_case
from labelsharing.errors import LabelSharingError
from labelsharing.utils import SILENT, ProgressReporter, format_table

__all__ = ["dice_per_label", "DiceAccumulator", "evaluate_model", "evaluation_table", "format_dice",
           "split_warning"]


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
    return float("nan") if total == 0 else 2.0 * intersection / total


def dice_per_label(prediction: np.ndarray, reference: np.ndarray, labels: Mapping[str, int]) -> dict[str, float]:
    """Dice of each label between two label maps of the same shape.

    Args:
        prediction: integer label map, any shape.
        reference: integer label map, same shape.
        labels: label name -> value (background is not scored unless listed).

    Returns:
        label name -> Dice in 0..1; NaN if the label is absent from both maps (not scored).

    Example:
        >>> dice_per_label(np.array([1, 1, 0, 2]), np.array([1, 0, 0, 3]), {"a": 1, "b": 2, "c": 4})
        {'a': 0.6666666666666666, 'b': 0.0, 'c': nan}
    """
    return {name: _dice(*c) for name, c in _label_counts(prediction, reference, labels).items()}


class DiceAccumulator:
    """Collects Dice of one task's labels over cases.

    Example:
        >>> acc = DiceAccumulator({"a": 1, "b": 2})
        >>> acc.add(np.array([1, 1]), np.array([1, 0]))  # returns this case's scores
        {'a': 0.6666666666666666, 'b': nan}
        >>> acc.add(np.array([0, 0]), np.array([1, 1]))  # 'a' missed; 'b' absent from both again
        {'a': 0.0, 'b': nan}
        >>> acc.mean_dice(), acc.global_dice()  # 'b' never occurred: it has no Dice
        ({'a': 0.3333333333333333}, {'a': 0.4})
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
        """label -> Dice averaged over the cases where the label occurs in prediction or
        reference (the reported score). Labels that occur in no case are left out."""
        if not self.cases:
            raise ValueError("no cases added")
        scored = {name: [case[name] for case in self.cases if not np.isnan(case[name])] for name in self.labels}
        return {name: float(np.mean(values)) for name, values in scored.items() if values}

    def global_dice(self) -> dict[str, float]:
        """label -> Dice of intersections and sizes summed over all cases; labels that occur in
        no case are left out."""
        scores = {name: _dice(*(int(v) for v in s)) for name, s in self._sums.items()}
        return {name: dice for name, dice in scores.items() if not np.isnan(dice)}


def evaluate_model(predictor, tasks: Sequence[TaskDataset], progress: ProgressReporter = SILENT) -> dict:
    """Dice of a model on the labelled cases of task datasets.

    Each dataset's test split is used; a dataset without one is scored on its training cases
    and marked ``"split": "train"`` (optimistic: the model has seen them; callers should warn).

    Args:
        predictor: a :class:`labelsharing.infer.predictor.Predictor`.
        tasks: datasets whose names are tasks of the model.
        progress: reports ``evaluating`` per case.

    Returns:
        ``{"tasks": {task: {"mean_dice": float, "labels": {label: {"dice": float}}, "cases": int,
        "split": "test" | "train"}}}``, plain JSON. A label absent from prediction and reference
        in every case has ``"dice": None`` and is left out of ``mean_dice`` (``None`` if no label
        has a Dice).

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
                scored = [dice for dice in scores.values() if not np.isnan(dice)]
                advance(task=task.name, dice=float(np.mean(scored)) if scored else "-")
            per_label = accumulator.mean_dice()
            result["tasks"][task.name] = {
                "mean_dice": float(np.mean(list(per_label.values()))) if per_label else None,
                "labels": {name: {"dice": per_label.get(name)} for name in labels},
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
    """Plain-text table of :func:`evaluate_model`'s result: one row per task label, then the task
    mean; ``-`` for a label without a Dice."""
    rows = []
    for task, body in result["tasks"].items():
        for label, entry in body["labels"].items():
            rows.append([task, label, format_dice(entry["dice"]), "", ""])
        rows.append([task, "(mean)", format_dice(body["mean_dice"]), body["cases"], body["split"]])
    return format_table(["task", "label", "dice", "cases", "split"], rows)


def format_dice(dice: float | None) -> str:
    """A Dice for tables: ``0.912``, or ``-`` for a label without one (``None``)."""
    return "-" if dice is None else f"{dice:.3f}"


def _labels_text(labels: Mapping[str, int]) -> str:
    return ", ".join(f"{name}={value}" for name, value in labels.items())
