"""Do the tasks look different enough for one shared-label network to tell them apart?

Label sharing has no task input: the network must recognise which task an image belongs to
from the image alone, because shared label 1 means "liver" on an abdominal CT and "femur" on a
knee X-ray. If two tasks' images look alike, the shared channels become ambiguous. This check
runs before training: every training slice (already normalised and square-fitted) is shrunk to
a 16 x 16 thumbnail, and each thumbnail's nearest neighbour among the other tasks' and its own
task's thumbnails (leave-one-out) is found. A task whose slices often find their nearest
neighbour in another task looks like that task.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["THUMBNAIL", "CONFUSION_WARNING", "task_confusion", "similar_task_warnings"]

THUMBNAIL = 16
#: Warn when more than this fraction of a task's slices look most like another task's.
CONFUSION_WARNING = 0.2


def _thumbnails(images: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """(n, S, S) slices -> (min(n, limit), 16*16) z-scored thumbnails (S a multiple of 16)."""
    if len(images) > limit:
        images = images[np.sort(rng.choice(len(images), limit, replace=False))]
    n, size, _ = images.shape
    block = size // THUMBNAIL
    small = images[:, : block * THUMBNAIL, : block * THUMBNAIL].astype(np.float32)
    small = small.reshape(n, THUMBNAIL, block, THUMBNAIL, block).mean(axis=(2, 4)).reshape(n, -1)
    small -= small.mean(axis=1, keepdims=True)
    return small / np.maximum(small.std(axis=1, keepdims=True), 1e-6)


def task_confusion(names: Sequence[str], images: Sequence[np.ndarray], per_task: int = 200,
                   seed: int = 0) -> np.ndarray:
    """Leave-one-out nearest-neighbour confusion between tasks.

    Args:
        names: task names.
        images: per task, its (n, S, S) normalised square slices.
        per_task: slices sampled per task (bounds the cost).

    Returns:
        (T, T) array: row i, column j = fraction of task i's slices whose nearest other slice
        belongs to task j (rows sum to 1).
    """
    rng = np.random.default_rng(seed)
    thumbs = [_thumbnails(np.asarray(x), per_task, rng) for x in images]
    owner = np.concatenate([np.full(len(t), i) for i, t in enumerate(thumbs)])
    stacked = np.concatenate(thumbs)
    squared = (stacked ** 2).sum(axis=1)
    distances = squared[:, None] + squared[None, :] - 2.0 * stacked @ stacked.T
    np.fill_diagonal(distances, np.inf)
    nearest = owner[np.argmin(distances, axis=1)]
    confusion = np.zeros((len(names), len(names)))
    for i in range(len(names)):
        mine = nearest[owner == i]
        if len(mine):
            confusion[i] = np.bincount(mine, minlength=len(names)) / len(mine)
    return confusion


def similar_task_warnings(names: Sequence[str], images: Sequence[np.ndarray], involving: str | None = None) -> list[str]:
    """Warnings for task pairs whose images look alike (see the module docstring).

    ``involving`` keeps only the pairs that include this task (e.g. a task being added, whose
    old partners were checked when the model was trained).
    """
    if len(names) < 2:
        return []
    confusion = task_confusion(names, images)
    warnings = []
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if involving is not None and involving not in (a, b):
                continue
            if i != j and confusion[i, j] > CONFUSION_WARNING:
                warnings.append(
                    f"{confusion[i, j]:.0%} of '{a}' slices look most like '{b}' slices: the network may not tell "
                    f"these tasks apart, and their shared labels would then be ambiguous. Pin their labels so "
                    f"that each shared label means the same structure in both, or merge them into one task."
                )
    return warnings
