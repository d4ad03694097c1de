"""Which epoch's weights a run keeps, and what the run records about itself.

The best epoch is chosen on the smoothed curve of the mean validation Dice over the selectable
tasks (:data:`SELECTION_SMOOTHING`), not on its raw maximum; a run whose curve still rose
steeply at the end says it is probably under-trained (:data:`STILL_IMPROVING`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping, Sequence

import numpy as np

__all__ = ["SELECTION_SMOOTHING", "STILL_IMPROVING", "FitResult"]

#: Weight of the newest epoch in the smoothed validation score that picks the written epoch. A
#: validation split of one or two cases swings by 0.2-0.5 Dice between epochs (issue 9's real-data
#: check), so the raw maximum is often one lucky early epoch; nnU-Net v2 picks its best checkpoint
#: on the same exponential moving average (0.9 old + 0.1 new) of its validation Dice.
SELECTION_SMOOTHING = 0.1

#: Gain of mean validation Dice, last fifth of the epochs over the fifth before, that counts as
#: "still rising steeply" at the end of a run.
STILL_IMPROVING = 0.01


@dataclass
class FitResult:
    """What a :class:`~labelsharing.train.trainer.Trainer` learnt: the best weights and the per-epoch log.

    ``epochs`` holds one record per epoch: ``{"epoch", "steps", "images", "loss", "val_dice":
    {task: {"mean", "labels"}}, "val_smoothed", "seconds"}`` (``val_dice`` empty on epochs that
    were not validated).
    """

    best_state: dict
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_dice: float = float("nan")
    seconds: float = 0.0
    planned_epochs: int = 0
    recent_gain: float | None = None

    def smoothed_score(self, dice: Mapping[str, dict], selectable: Sequence[str]) -> float | None:
        """Exponential moving average of the selectable tasks' mean validation Dice over the
        recorded epochs and ``dice`` (this epoch's); ``None`` if this epoch has no score."""
        scores = [dice[task]["mean"] for task in selectable if task in dice]
        if not scores:
            return None
        previous = next((e["val_smoothed"] for e in reversed(self.epochs) if e.get("val_smoothed") is not None), None)
        score = float(np.mean(scores))
        return score if previous is None else (1 - SELECTION_SMOOTHING) * previous + SELECTION_SMOOTHING * score

    def keep_if_best(self, network, dice: Mapping[str, dict], selectable: Sequence[str], smoothed: float | None,
                     epoch: int) -> bool:
        """Keep ``network``'s weights if the smoothed validation score beats every recorded epoch's
        (this one not yet recorded); the recorded ``best_dice`` is that epoch's own mean validation
        Dice of the selectable tasks."""
        earlier = [e["val_smoothed"] for e in self.epochs if e.get("val_smoothed") is not None]
        if smoothed is None or smoothed <= max(earlier, default=-math.inf):
            return False
        self.best_epoch = epoch
        self.best_dice = float(np.mean([dice[task]["mean"] for task in selectable if task in dice]))
        self.best_state = copy.deepcopy(network.state_dict())
        return True

    def measure_recent_gain(self, selectable: Sequence[str]) -> float | None:
        """Mean validation Dice of the last fifth of the validated epochs minus that of the fifth
        before it (``None`` with fewer than 4 validated epochs); stored in :attr:`recent_gain`."""
        curve = [float(np.mean([e["val_dice"][t]["mean"] for t in selectable if t in e["val_dice"]]))
                 for e in self.epochs if any(t in e["val_dice"] for t in selectable)]
        self.recent_gain = None
        if len(curve) >= 4:
            window = max(1, len(curve) // 5)
            self.recent_gain = float(np.mean(curve[-window:]) - np.mean(curve[-2 * window:-window]))
        return self.recent_gain

    @property
    def still_improving(self) -> bool:
        return self.recent_gain is not None and self.recent_gain > STILL_IMPROVING

    def history_entry(self, kind: str, options, device, tasks: Sequence[str], processes: int = 1) -> dict:
        """The ``model.json`` history record of this run (``options``: its ``TrainingOptions``;
        ``processes``: the torchrun world size)."""
        steps = self.planned_epochs * options.steps_per_epoch
        return {
            "kind": kind, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "tasks": list(tasks),
            "device": str(device), "processes": processes, "seconds": round(self.seconds, 1),
            "best_epoch": self.best_epoch, "best_mean_dice": self.best_dice, "options": dict(vars(options)),
            "steps": steps, "images": steps * options.batch_size * processes,
            "still_improving": self.still_improving, "recent_gain": self.recent_gain,
            "epochs": self.epochs,
        }
