"""Fit the tasks' familiarity references (``model.json`` ``familiarity``) at the end of training.

Called by ``train`` and ``add-task`` once the best weights are loaded: each task's training
volumes (at most :data:`MAX_VOLUMES`, evenly chosen) give the reference, and its held-out
volumes, with them, the limits (:func:`labelsharing.infer.familiarity.reference_entry`). The
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

__all__ = ["MAX_VOLUMES", "fit_familiarity"]

#: Training volumes read per task for its reference (bounds the cost on large datasets).
MAX_VOLUMES = 40


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
            keep = np.unique(np.linspace(0, len(training) - 1, min(len(training), MAX_VOLUMES)).round().astype(int))

            def measure(case):
                return volume_signature(network, read_image(case.image), entry, model.input_size, device)

            references[task.name] = reference_entry([measure(training[i]) for i in keep],
                                                    [measure(case) for case in task.validation])
    finally:
        network.train(was_training)
    log(f"task references for --task auto and the unfamiliar-image warning: {', '.join(references) or 'none'}")
    return {"slices": SAMPLED_SLICES, "grid": GRID, "quantiles": list(QUANTILES), "tasks": references}
