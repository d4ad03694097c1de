"""Fit the tasks' familiarity references (``model.json`` ``familiarity``) at the end of training.

Called by ``train`` and ``add-task`` once the best weights are loaded: each task's training
volumes (at most :data:`MAX_VOLUMES`, evenly chosen) give the reference, and its held-out
volumes, with them, the limits (:func:`labelsharing.infer.familiarity.reference_entry`), which
up to :data:`FOREIGN_VOLUMES` training volumes of every other task, prepared as this task, lower
when they lie clearly apart (negatives). The
references describe the network they were measured with, so ``add-task`` fits them again for
every task whose data it can read; a task whose dataset folder is gone gets none (``--task auto``
then names it among the tasks it cannot score).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from labelsharing.data import read_image
from labelsharing.infer import GRID, QUANTILES, SAMPLED_SLICES, reference_entry, volume_signature
from labelsharing.model import SegmentationModel
from labelsharing.train.options import Log
from labelsharing.train.task_data import PreparedTask

__all__ = ["MAX_VOLUMES", "FOREIGN_VOLUMES", "fit_familiarity"]

#: Training volumes read per task for its reference (bounds the cost on large datasets).
MAX_VOLUMES = 40
#: Volumes of each other task measured as a task's negatives (they calibrate its limits).
FOREIGN_VOLUMES = 8


def chosen(items, count: int) -> list:
    """Up to ``count`` evenly spaced items of ``items``."""
    items = list(items)
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, min(len(items), count)).round().astype(int))]


def _same_dimension(other: PreparedTask, entry, model: SegmentationModel) -> bool:
    """Whether ``other``'s images can be scored for the task of ``entry`` (2D and 3D tasks never are)."""
    other_entry = model.config["tasks"][other.name]
    if "plane" not in entry or "plane" not in other_entry:
        return True
    return (entry["plane"] is None) == (other_entry["plane"] is None)


def fit_familiarity(model: SegmentationModel, tasks: Sequence[PreparedTask], device, log: Log = print) -> dict:
    """The ``familiarity`` entry of ``model.json`` for ``tasks``, measured with ``model``'s network.

    Returns:
        ``{"slices", "grid", "quantiles", "tasks": {task: reference}}``.
    """
    network = model.network
    was_training = network.training
    network.eval()
    references = {}
    try:
        for task in tasks:
            entry = model.config["tasks"][task.name]
            held_out = set(task.validation_ids)
            training = [case for case in task.dataset.training if case.case_id not in held_out]
            if not training:
                continue

            def measure(case):
                return volume_signature(network, read_image(case.image), entry, model.input_size, device)

            foreign = {other.name: [measure(case) for case in chosen(other.dataset.training, FOREIGN_VOLUMES)]
                       for other in tasks if other is not task and _same_dimension(other, entry, model)}
            references[task.name] = reference_entry([measure(case) for case in chosen(training, MAX_VOLUMES)],
                                                    [measure(case) for case in task.validation], foreign,
                                                    fixed_scale=entry["normalization"]["scheme"] == "ct")
    finally:
        network.train(was_training)
    log(f"task references for --task auto and the unfamiliar-image warning: {', '.join(references) or 'none'}")
    return {"slices": SAMPLED_SLICES, "grid": GRID, "quantiles": list(QUANTILES), "tasks": references}
