"""Fit the small-island removal (``model.json`` ``small_islands``) at the end of training.

Called by ``train``, ``add-task``, ``update`` and ``add-case`` once the weights to write are
loaded (:mod:`labelsharing.infer.small_islands` states the rule): each task's training cases
(at most :data:`~labelsharing.train.familiarity_fit.MAX_VOLUMES`, evenly chosen) give every
label's median size, hence its candidate minimum island size; the task's held-out cases,
predicted without removal, drop a label's candidate where removing its smaller islands lowers
the label's Dice. A task without held-out cases keeps every candidate (nothing shows harm).
The check depends on the network, so every fit replaces the previous one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from labelsharing.data import read_label
from labelsharing.infer import DiceAccumulator, Predictor, candidate_min_sizes, choose_min_sizes, remove_small_islands
from labelsharing.model import SegmentationModel
from labelsharing.train.familiarity_fit import MAX_VOLUMES, chosen
from labelsharing.train.options import Log
from labelsharing.train.task_data import PreparedTask

__all__ = ["fit_small_islands"]


def fit_small_islands(model: SegmentationModel, tasks: Sequence[PreparedTask], device, log: Log = print) -> dict:
    """The ``small_islands`` entry of ``model.json`` for ``tasks``: task -> label name -> smallest
    island kept (mm³, mm² for 2D images); tasks and labels without a kept rule are left out. The
    model's other tasks (``add-task`` without their data) keep the rules they have."""
    predictor = Predictor(model, device, remove_islands=False)
    fitted = {task.name for task in tasks}
    result = {name: rules for name, rules in model.config.get("small_islands", {}).items() if name not in fitted}
    lines = []
    for task in tasks:
        values = {name: int(entry["value"]) for name, entry in model.config["tasks"][task.name]["labels"].items()}
        held_out = set(task.validation_ids)
        sizes: dict[str, list[float]] = {name: [] for name in values}
        for case in chosen([c for c in task.dataset.training if c.case_id not in held_out], MAX_VOLUMES):
            label = read_label(case.label, task.dataset.labels, skip=task.dataset.other_labels)  # sizes: no image
            counts = np.bincount(sitk.GetArrayViewFromImage(label).ravel(), minlength=max(values.values()) + 1)
            voxel = float(np.prod(label.GetSpacing()))
            for name, value in values.items():
                sizes[name].append(float(counts[value]) * voxel)
        candidates = candidate_min_sizes(sizes)
        by_value = {values[name]: size for name, size in candidates.items()}
        raw, removed = DiceAccumulator(values), DiceAccumulator(values)
        for image, truth in task.load_validation():
            prediction = predictor.predict_image(image, task.name)
            raw.add(prediction, truth)
            remove_small_islands(prediction, image.GetSpacing(), by_value)
            removed.add(prediction, truth)
        before, after = (raw.mean_dice(), removed.mean_dice()) if raw.cases else ({}, {})  # no held-out case
        kept = choose_min_sizes(candidates, before, after)
        if kept:
            result[task.name] = kept
        changed = [f"{name} {before[name]:.3f}->" + (f"{after[name]:.3f}" if name in after else "none (only specks)")
                   for name in kept if after.get(name) != before.get(name)]
        lines.append(f"{task.name}: {len(kept)} of {len(candidates)} labels"
                     + (f" (held-out Dice: {', '.join(changed)})" if changed else ""))
    log("small islands removed after prediction: " + ("; ".join(lines) or "no task measured"))
    return result
