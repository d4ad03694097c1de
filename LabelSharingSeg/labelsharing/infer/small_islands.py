"""Small islands: specks of a label far smaller than the structure, removed after prediction.

On the real CT check (``benchmarks/README.md``, issue 9) the largest gap between methods came
from islands of 1-250 voxels painted in a volume that holds none of the structure: under the
nnU-Net scoring convention such a speck scores that case 0 for the label, halving the label's
Dice over three test volumes, and a clinician has to find and erase it. Slicer's Segment
Editor offers the same repair by hand (Islands effect, "Remove small islands").

The rule, fixed before it was measured: a predicted island (face-connected voxels; Slicer's
Islands effect uses the same ITK connected-component and relabel filters) smaller than
:data:`ISLAND_FRACTION` of the label's median size in the training cases that hold it is
removed (set to background), unless it touches the image's edge: a structure cut by the field
of view can be any size there (the real check's reference maps hold 1-25 voxel fragments of
organs at their slabs' cut faces). Sizes are physical (mm³ for volumes, mm² for 2D images), so a
model serves scans of other resolutions. As nnU-Net checks its post-processing on held-out
cases, a label's rule is dropped where it lowers the label's Dice on the task's held-out cases
(:func:`choose_min_sizes`): a label made of small true islands keeps them. A label the held-out
cases cannot score (absent from them and not predicted there) keeps the rule: a speck under 1 %
of the structure is an error far more often than a finding, and one held-out case (common on
small tasks) scores only the labels it holds.
``model.json`` stores the kept rules as ``small_islands`` (task -> label -> smallest size kept);
``predict --keep-small-islands`` turns the removal off.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

__all__ = ["ISLAND_FRACTION", "candidate_min_sizes", "choose_min_sizes", "remove_small_islands"]

#: An island under this fraction of the label's median size in the training cases is a speck.
ISLAND_FRACTION = 0.01


def remove_small_islands(labels: np.ndarray, spacing: Sequence[float], min_sizes: Mapping[int, float]) -> int:
    """Set to background, in place, every island of a listed label smaller than its minimum size
    that does not touch the edge of the image.

    Args:
        labels: integer label map, (z, y, x) or (y, x) as ``sitk.GetArrayFromImage`` lays it out.
        spacing: the image's spacing in SimpleITK order (x, y[, z]), in mm.
        min_sizes: label value -> smallest island kept, in mm³ (mm² for 2D images).

    Returns:
        the number of voxels set to background.

    Example:
        >>> labels = np.zeros((3, 4, 6), np.uint8); labels[1, :2, :2] = 1; labels[1, 2, 4] = 1; labels[1, 3, 0] = 1
        >>> remove_small_islands(labels, (1.0, 1.0, 2.0), {1: 4.0}), int(labels.sum())  # a 2 mm³ speck goes...
        (1, 5)
        >>> int(labels[1, 3, 0])  # ...but one as small on the image's edge stays
        1
    """
    wanted = {int(value): float(size) for value, size in min_sizes.items() if size > 0}
    if not wanted:
        return 0
    voxel = float(np.prod(spacing))
    image = sitk.GetImageFromArray(labels)
    shapes = sitk.LabelShapeStatisticsImageFilter()  # every label's bounding box in one pass
    shapes.ComputePerimeterOff()
    shapes.Execute(image)
    removed = 0
    for value in set(shapes.GetLabels()) & set(wanted):
        box = shapes.GetBoundingBox(value)  # (x, y[, z]) start, then sizes
        half = len(box) // 2
        crop = labels[tuple(slice(start, start + size) for start, size in zip(box[:half][::-1], box[half:][::-1]))]
        mask = crop == value
        relabel = sitk.RelabelComponentImageFilter()  # drops islands under the size, in voxels (count * voxel < size)
        relabel.SetMinimumObjectSize(math.ceil(wanted[value] / voxel))
        kept = relabel.Execute(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.view(np.uint8))))
        if relabel.GetNumberOfObjects() < relabel.GetOriginalNumberOfObjects():
            speck = mask & (sitk.GetArrayViewFromImage(kept) == 0)  # a view: ``kept`` outlives it
            _spare_the_edge(speck, box, labels.shape)
            removed += int(np.count_nonzero(speck))
            crop[speck] = 0
    return removed


def _spare_the_edge(speck: np.ndarray, box: Sequence[int], shape: Sequence[int]) -> None:
    """Clear, in place, the islands of ``speck`` (a crop at SimpleITK bounding ``box`` of an image of
    array ``shape``) that touch the image's edge."""
    half = len(box) // 2
    starts, sizes = box[:half][::-1], box[half:][::-1]  # array (z, y, x) order
    edge = np.zeros(speck.shape, bool)
    for axis, (start, size) in enumerate(zip(starts, sizes)):
        index = [slice(None)] * speck.ndim
        if start == 0:
            index[axis] = 0
            edge[tuple(index)] = True
        if start + size == shape[axis]:
            index[axis] = -1
            edge[tuple(index)] = True
    if not (speck & edge).any():
        return
    islands = sitk.ConnectedComponent(sitk.GetImageFromArray(speck.view(np.uint8)))
    ids = sitk.GetArrayViewFromImage(islands)  # a view: ``islands`` outlives it
    on_edge = np.zeros(int(ids.max()) + 1, bool)
    on_edge[np.unique(ids[speck & edge])] = True
    speck &= ~on_edge[ids]


def candidate_min_sizes(sizes: Mapping[str, Iterable[float]]) -> dict[str, float]:
    """Per label, :data:`ISLAND_FRACTION` of its median size over the training cases that hold it.

    Args:
        sizes: label name -> the label's physical size in each training case (0 where absent).

    Example:
        >>> candidate_min_sizes({"bladder": [0.0, 900.0, 1100.0], "never": [0.0]})
        {'bladder': 10.0}
    """
    result = {}
    for name, values in sizes.items():
        present = [v for v in values if v > 0]
        if present:
            result[name] = ISLAND_FRACTION * float(np.median(present))
    return result


def choose_min_sizes(candidates: Mapping[str, float], dice_raw: Mapping[str, float | None],
                     dice_removed: Mapping[str, float | None]) -> dict[str, float]:
    """The candidates kept: all but those whose removal lowers the label's held-out Dice.

    Args:
        candidates: label name -> minimum island size (:func:`candidate_min_sizes`).
        dice_raw, dice_removed: label name -> mean held-out Dice without and with every candidate
            applied; ``None`` or absent where no held-out case scores the label (absent from both
            maps in every case): a label unscored on either side shows no harm and is kept.

    Example:
        >>> choose_min_sizes({"a": 5.0, "b": 5.0, "c": 5.0, "d": 5.0}, {"a": 0.5, "b": 0.9, "c": None, "d": 0.0},
        ...                  {"a": 0.8, "b": 0.7, "c": None, "d": None})
        {'a': 5.0, 'c': 5.0, 'd': 5.0}
    """
    kept = {}
    for name, size in candidates.items():
        raw, removed = dice_raw.get(name), dice_removed.get(name)
        if raw is None or removed is None or removed >= raw:
            kept[name] = size
    return kept
