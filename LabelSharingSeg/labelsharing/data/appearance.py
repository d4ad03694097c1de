"""Do the tasks look different enough for one shared-label network to tell them apart?

Label sharing has no task input: the network must recognise which task an image belongs to
from the image alone, because shared label 1 means "liver" on an abdominal CT and "femur" on a
knee X-ray. If two tasks' images look alike, the shared channels become ambiguous.

The check: every case is brought to one anatomical orientation (LPS), cut along its slicing
axis, each slice clipped to the case's 0.5-99.5 percentiles and shrunk to a z-scored 16 x 16
thumbnail (nearly uniform slices, e.g. air above a head, are left out). Each thumbnail's
nearest neighbour is looked for among all thumbnails **except those of its own case**: leaving
out only the slice itself would find the adjacent slice of the same volume, so a 3D task would
always look most like itself. ``confusion[i, j]`` is the fraction of task i's slices whose
nearest neighbour belongs to task j. Two tasks drawn from one distribution score about
``n_j / (n_i - n_case + n_j)`` (near 0.5 for equal sizes); unrelated modalities score 0.

Calibration (score = the larger direction): the real brain MR tasks ``mr_brain_aal`` (Colin27 +
AAL) and ``mr_brain_icbm`` (ICBM152 2009a) of ``benchmarks/real_data.py`` 0.19, its two trunk CTs
0.28, two synthetic brain MR tasks from one generator 0.58; the demo CT / MR / X-ray tasks and
real CT abdomen vs brain MR (or vs abdominal MR) 0.00. A limit: when a task's cases are slabs of
one subject, the other slabs of that subject stay in the search and pull the nearest neighbour
towards the own task, so such tasks score lower than independent subjects would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["THUMBNAIL", "CONFUSION_WARNING", "Appearance", "case_thumbnails", "task_confusion",
           "compare_tasks", "compare_datasets"]

THUMBNAIL = 16
#: Tasks look alike when more than this fraction of one's slices look most like the other's
#: (calibrated: 0.19 for two real brain MR sources cut into slabs, 0.00 across modalities).
CONFUSION_WARNING = 0.1
#: Slices whose intensity spread is below this fraction of the case's range carry no appearance.
_FLAT = 0.02


def case_thumbnails(image) -> np.ndarray:
    """The thumbnails of one case's slices.

    Args:
        image: a 2D or 3D SimpleITK image (one channel).

    Returns:
        (n, 256) float32 z-scored 16 x 16 thumbnails, one per slice that is not nearly uniform
        (n may be 0).
    """
    import SimpleITK as sitk

    from labelsharing.data.preprocessing import choose_slice_axis, to_slices

    if image.GetDimension() == 3:
        image = sitk.DICOMOrient(image, "LPS")
    slices = to_slices(sitk.GetArrayFromImage(image).astype(np.float32),
                       choose_slice_axis(image.GetSpacing(), image.GetSize()))
    lo, hi = np.percentile(slices, [0.5, 99.5])
    slices = np.clip(slices, lo, hi)
    n, height, width = slices.shape
    side = max(height, width)
    square = np.full((n, side, side), lo, np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[:, top:top + height, left:left + width] = slices
    if side < THUMBNAIL:  # small images: repeat pixels so that every thumbnail cell has some
        factor = -(-THUMBNAIL // side)
        square, side = square.repeat(factor, axis=1).repeat(factor, axis=2), side * factor
    edges = np.linspace(0, side, THUMBNAIL + 1).astype(int)[:-1]
    sums = np.add.reduceat(np.add.reduceat(square, edges, axis=1), edges, axis=2)
    counts = np.diff(np.append(edges, side))
    small = (sums / np.outer(counts, counts)).reshape(n, -1)
    spread = small.std(axis=1)
    small = small[spread > _FLAT * max(float(hi - lo), 1e-6)]
    small -= small.mean(axis=1, keepdims=True)
    return small / small.std(axis=1, keepdims=True)


def task_confusion(thumbnails: Sequence[Sequence[np.ndarray]], per_task: int = 300, seed: int = 0) -> np.ndarray:
    """Leave-one-case-out nearest-neighbour confusion between tasks.

    Args:
        thumbnails: per task, per case, its (n, 256) thumbnails (see :func:`case_thumbnails`).
        per_task: slices sampled per task (bounds the cost); equal for all tasks so that a large
            task does not attract the neighbours by its size alone.
        seed: fixes the sample.

    Returns:
        (T, T) array: row i, column j = fraction of task i's sampled slices whose nearest slice
        outside their own case belongs to task j (rows sum to 1). The row of a task with fewer
        than two cases is NaN: with its only case left out it could only look like the others.
    """
    rng = np.random.default_rng(seed)
    rows, owners, cases = [], [], []
    for task, per_case in enumerate(thumbnails):
        stacked = [np.asarray(t, np.float32).reshape(-1, THUMBNAIL * THUMBNAIL) for t in per_case]
        case_of = np.concatenate([np.full(len(t), c) for c, t in enumerate(stacked)] or [np.zeros(0, int)])
        pool = np.concatenate(stacked) if stacked else np.zeros((0, THUMBNAIL * THUMBNAIL), np.float32)
        keep = np.sort(rng.choice(len(pool), per_task, replace=False)) if len(pool) > per_task else slice(None)
        rows.append(pool[keep])
        owners.append(np.full(len(pool[keep]), task))
        cases.append(case_of[keep] + 1_000_000 * task)
    stacked, owner, case = np.concatenate(rows), np.concatenate(owners), np.concatenate(cases)
    squared = (stacked ** 2).sum(axis=1)
    distances = squared[:, None] + squared[None, :] - 2.0 * stacked @ stacked.T
    distances[case[:, None] == case[None, :]] = np.inf
    nearest = owner[np.argmin(distances, axis=1)]
    confusion = np.full((len(thumbnails), len(thumbnails)), np.nan)
    for i in range(len(thumbnails)):
        mine = nearest[owner == i]
        if len(np.unique(case[owner == i])) > 1:
            confusion[i] = np.bincount(mine, minlength=len(thumbnails)) / len(mine)
    return confusion


@dataclass(frozen=True)
class Appearance:
    """The look-alike check's result: task names and their (T, T) confusion matrix."""

    tasks: tuple[str, ...]
    confusion: np.ndarray

    def score(self, a: str, b: str) -> float:
        """How alike two tasks look: the larger of the two directions' confusion."""
        i, j = self.tasks.index(a), self.tasks.index(b)
        both = [v for v in (self.confusion[i, j], self.confusion[j, i]) if np.isfinite(v)]
        return float(max(both, default=0.0))

    def look_alike_pairs(self, involving: str | None = None) -> list[tuple[str, str]]:
        """Task pairs scoring above :data:`CONFUSION_WARNING` (only those with ``involving`` if given)."""
        return [(a, b) for k, a in enumerate(self.tasks) for b in self.tasks[k + 1:]
                if self.score(a, b) > CONFUSION_WARNING and involving in (None, a, b)]

    def groups(self) -> list[list[str]]:
        """Look-alike groups: tasks connected by look-alike pairs (groups of two or more)."""
        group_of = {task: {task} for task in self.tasks}
        for a, b in self.look_alike_pairs():
            merged = group_of[a] | group_of[b]
            for task in merged:
                group_of[task] = merged
        unique = {frozenset(g) for g in group_of.values() if len(g) > 1}
        return sorted(sorted(g, key=self.tasks.index) for g in unique)

    def warnings(self, involving: str | None = None) -> list[str]:
        """One warning per look-alike pair (see the module docstring)."""
        return [
            f"'{a}' and '{b}' look alike ({self.score(a, b):.0%} of one's slices look most like the other's, "
            f"above {CONFUSION_WARNING:.0%}): the network may not tell these tasks apart, so a shared label must "
            f"mean the same structure in both. Labels with one name or terminology code are pinned together "
            f"automatically; see the plan's notes on the others. --keep-look-alikes-apart puts the others on "
            f"shared labels of their own, each left out of the other task's softmax."
            for a, b in self.look_alike_pairs(involving)
        ]

    def to_dict(self) -> dict:
        """``{"tasks": [...], "confusion": [[...]]}`` (the ``appearance`` entry of ``model.json``;
        null for the row of a task with fewer than two cases)."""
        return {"tasks": list(self.tasks),
                "confusion": [[round(float(v), 4) if np.isfinite(v) else None for v in row] for row in self.confusion]}


def compare_tasks(cases: Mapping[str, Iterable], per_task: int = 300, seed: int = 0) -> Appearance:
    """Run the look-alike check on loaded images.

    Args:
        cases: task name -> its training images (SimpleITK, one per case); iterated once, so a
            generator that loads one case at a time keeps memory small.
    """
    names = list(cases)
    thumbnails = [[case_thumbnails(image) for image in images] for images in cases.values()]
    return Appearance(tuple(names), task_confusion(thumbnails, per_task, seed))


def compare_datasets(datasets: Sequence, thumbnails: Mapping[str, Sequence[np.ndarray]] | None = None) -> Appearance:
    """Run the look-alike check on task datasets, reading each case's image one at a time.

    Args:
        datasets: ``TaskDataset`` objects.
        thumbnails: task name -> its training cases' thumbnails (:func:`case_thumbnails`),
            computed while the cases were read for planning, to skip reading them again.
    """
    from labelsharing.data.image_io import read_image

    thumbnails = thumbnails or {}
    per_task = {d.name: list(thumbnails.get(d.name) or [case_thumbnails(read_image(c.image)) for c in d.training])
                for d in datasets}
    return Appearance(tuple(per_task), task_confusion(list(per_task.values())))
