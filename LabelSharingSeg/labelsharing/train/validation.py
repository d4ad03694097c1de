"""Validation during training: Dice on the held-out cases, and how often to measure it.

Validation predicts every slice of every held-out case with the
:class:`~labelsharing.infer.predictor.Predictor` that inference uses, so its cost grows with the
held-out cases while an epoch's training cost is fixed (``steps_per_epoch x batch_size``
slices): on a large set it would dominate short epochs. :func:`validation_interval` therefore
validates every N-th epoch when the held-out slices outnumber what an epoch trains on.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from labelsharing.infer import Predictor
    from labelsharing.train.options import TrainingOptions
    from labelsharing.train.task_data import PreparedTask

__all__ = ["VALIDATION_SLICES_PER_TRAINED", "validation_interval", "validation_dice"]


#: Validation may predict, averaged over the epochs, this many held-out slices per slice trained
#: on (see :func:`validation_interval`). A held-out slice costs about 0.3 of a trained one
#: (4.9 vs 16.5 ms on 2 CPU cores at 96 x 96, ``benchmarks/training_throughput.py``), so
#: validation takes at most about 15 % of the training time.
VALIDATION_SLICES_PER_TRAINED = 0.5


def validation_interval(tasks: Sequence[PreparedTask], options: TrainingOptions) -> int:
    """Validate every this many epochs (and always the first and the last).

    ``options.val_every`` if given; otherwise the smallest interval at which validation
    predicts, averaged over the epochs, at most ``VALIDATION_SLICES_PER_TRAINED`` held-out
    slices per slice an epoch trains on (``steps_per_epoch x batch_size``). Counted from the
    data, not timed, so a run is repeatable: 1 (every epoch) on the demo, every few epochs when
    thousands of held-out CT slices would otherwise dominate short epochs.

    Example:
        >>> from labelsharing.train import TrainingOptions
        >>> from types import SimpleNamespace as Task
        >>> validation_interval([Task(validation_slices=1200)], TrainingOptions(steps_per_epoch=50, batch_size=16))
        3
    """
    if options.val_every is not None:
        return options.val_every
    held_out = sum(task.validation_slices for task in tasks)
    budget = VALIDATION_SLICES_PER_TRAINED * options.steps_per_epoch * options.batch_size
    return max(1, math.ceil(held_out / budget))


def validation_dice(predictor: Predictor, tasks: Sequence[PreparedTask]) -> dict[str, dict]:
    """Dice per task and label on each task's held-out cases (mean over cases), predicted by
    ``predictor`` (the :class:`~labelsharing.infer.predictor.Predictor` of the model being trained).

    Returns:
        ``{task: {"mean": m, "labels": {label: dice}}}`` for tasks that have validation cases in
        which at least one of their labels occurs.
    """
    from labelsharing.infer import DiceAccumulator

    result = {}
    for task in tasks:
        if not task.validation:
            continue
        labels = {name: entry["value"] for name, entry in predictor.model.config["tasks"][task.name]["labels"].items()}
        accumulator = DiceAccumulator(labels)
        for image, truth in task.load_validation():
            accumulator.add(predictor.predict_image(image, task.name), truth)
        per_label = accumulator.mean_dice()  # labels absent from every case have no Dice and are left out
        if per_label:
            result[task.name] = {"mean": float(np.mean(list(per_label.values()))), "labels": per_label}
    return result
