"""Label sizes: the statistic label sharing ranks a task's labels by (Anand et al., MICCAI ADSMI 2024).

Needs numpy only (the Slicer module measures a task being defined with it).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from labelsharing.errors import LabelSharingError
from labelsharing.plan.shared_labels import BACKGROUND, LabelStats

__all__ = ["measure_label_sizes"]


def measure_label_sizes(label_arrays: Iterable[np.ndarray], labels: Mapping[str, int]) -> dict[str, LabelStats]:
    """Average relative size and presence of each label over a task's label maps.

    Args:
        label_arrays: integer label maps of any shape ((H, W) or (D, H, W)); one per image.
        labels: label name -> value; a ``background``/0 entry is ignored.

    Returns:
        label name -> ``LabelStats``, in the order of ``labels``.

    Raises:
        LabelSharingError: if ``label_arrays`` is empty.

    Example:
        >>> measure_label_sizes([np.array([[0, 1], [1, 2]])], {"a": 1, "b": 2})["a"].relative_size
        0.5
    """
    wanted = {name: int(value) for name, value in labels.items() if int(value) != BACKGROUND}
    max_value = max(wanted.values(), default=0)
    fractions = []
    for array in label_arrays:
        array = np.asarray(array)
        if array.size == 0:
            continue
        counts = np.bincount(array.ravel().astype(np.int64), minlength=max_value + 1)
        fractions.append(counts[: max_value + 1] / array.size)
    if not fractions:
        raise LabelSharingError("No label maps to measure: the task has no (non-empty) training labels.")
    table = np.stack(fractions)  # (images, max_value + 1)
    return {
        name: LabelStats(
            value=value,
            relative_size=float(table[:, value].mean()),
            presence=float((table[:, value] > 0).mean()),
        )
        for name, value in wanted.items()
    }
