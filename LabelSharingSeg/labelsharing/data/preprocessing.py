"""From images to network input and back: intensity normalisation, 2D slicing, square fitting.

The network is a 2D UNet on square ``S x S`` inputs. A 3D volume is cut into 2D slices along
one image axis; each slice is scaled (aspect ratio kept) and padded to ``S x S``. Predictions
are cropped and scaled back onto the slice's own grid before labels are decided, so the
output has exactly the input's size and geometry.

Conventions: a 3D ``sitk.GetArrayFromImage`` array is (z, y, x) = (k, j, i); ``axis`` is an
image index axis (0 = i, 1 = j, 2 = k) as in SimpleITK, so numpy axis = 2 - axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from labelsharing.errors import LabelSharingError

__all__ = [
    "NORMALIZATION_BY_MODALITY",
    "fit_ct_normalization",
    "normalize_intensities",
    "intensity_normalizer",
    "ORIENTATION",
    "PLANES",
    "choose_slice_axis",
    "to_slices",
    "from_slices",
    "SquareFit",
    "choose_input_size",
]

#: modality -> normalisation scheme (nnU-Net-like: CT uses dataset-wide foreground statistics).
NORMALIZATION_BY_MODALITY = {"CT": "ct", "MR": "zscore_foreground", "XR": "percentile", "other": "percentile"}
#: The orientation 3D volumes are viewed in before slicing (DICOM letters: voxel axes point to L, P, S);
#: see :mod:`labelsharing.data.orientation`.
ORIENTATION = "LPS"
#: Slicing planes, indexed by the LPS axis they cut across (0 = L, 1 = P, 2 = S).
PLANES = ("sagittal", "coronal", "axial")


def fit_ct_normalization(cases: Iterable[tuple[np.ndarray, np.ndarray]], samples: int = 20000) -> dict:
    """CT normalisation from a task's training data, as nnU-Net does.

    Intensities inside the labelled foreground of all training images are pooled (a random
    subsample of each); the window is their 0.5–99.5 percentile and the mean/std are taken
    after clipping to it.

    Args:
        cases: (HU array, label array) pairs, any shape (foreground: label > 0); iterated once,
            so a generator that loads one case at a time keeps memory to one case.
        samples: foreground voxels kept per image.

    Returns:
        ``{"scheme": "ct", "clip": [lo, hi], "mean": m, "std": s}``.
    """
    rng = np.random.default_rng(0)
    pooled = []
    for image, label in cases:
        values = np.asarray(image)[np.asarray(label) > 0]
        if values.size > samples:
            values = rng.choice(values, samples, replace=False)
        pooled.append(values.astype(np.float64))
    values = np.concatenate(pooled) if pooled else np.zeros(0)
    if values.size == 0:
        raise LabelSharingError("CT normalisation needs labelled foreground in the training images; none was found.")
    lo, hi = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, lo, hi)
    return {"scheme": "ct", "clip": [float(lo), float(hi)], "mean": float(clipped.mean()),
            "std": float(max(clipped.std(), 1e-6))}


def normalize_intensities(image: np.ndarray, normalization: Mapping) -> np.ndarray:
    """Normalise one image (any shape) with a stored scheme; returns float32.

    Schemes: ``ct`` (clip to the stored window, z-score with stored statistics),
    ``zscore_foreground`` (per-image z-score over voxels brighter than 5 % of the range,
    i.e. not the air around an MR head), ``percentile`` (per image, 1st..99th percentile
    -> 0..1, clipped; suits X-ray projections whose exposure varies).
    """
    return intensity_normalizer(image, normalization)(image)


# Hand-written rather than MONAI's ``NormalizeIntensity`` / ``ScaleIntensityRangePercentiles``: those
# take their statistics from the array they are given, and here they must be taken once (per task
# for CT, as nnU-Net's CTNormalization; per volume otherwise) and applied batch by batch, with no
# float copy of the whole volume (issue 11's memory bound).
def intensity_normalizer(image: np.ndarray, normalization: Mapping) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`normalize_intensities` of ``image`` as a function of any part of it (e.g. a batch of slices).

    Per-image statistics (``zscore_foreground``, ``percentile``) are taken from the whole image
    here, once; ``ct`` needs none, so ``image`` is not even read. Applied to parts, the function
    gives exactly the values of normalising the whole image (the same numpy expression), without
    a float copy of the whole volume ever existing beside the statistics.

    Returns:
        ``part -> float32 array`` of the part's shape (a new array; ``part`` is left unchanged).
    """
    scheme = normalization.get("scheme")
    if scheme == "ct":
        (lo, hi), mean, std = normalization["clip"], normalization["mean"], normalization["std"]
        return lambda part: ((np.clip(_float32(part), lo, hi) - mean) / std).astype(np.float32, copy=False)
    if scheme == "zscore_foreground":
        x = _float32(image)
        lo, hi = float(x.min()), float(np.percentile(x, 99))
        mask = x > lo + 0.05 * (hi - lo)
        values = x[mask] if mask.sum() > 0.05 * x.size else x.ravel()
        mean, std = values.mean(), max(float(values.std()), 1e-6)
        return lambda part: ((_float32(part) - mean) / std).astype(np.float32, copy=False)
    if scheme == "percentile":
        lo, hi = np.percentile(_float32(image), [1, 99])
        scale = max(float(hi - lo), 1e-6)
        return lambda part: np.clip((_float32(part) - lo) / scale, 0.0, 1.0).astype(np.float32, copy=False)
    raise ValueError(f"unknown normalisation scheme {scheme!r}")


def _float32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def choose_slice_axis(spacing: Sequence[float], size: Sequence[int]) -> int | None:
    """Image axis to cut a volume along: the one with the largest spacing.

    That is the axis across the acquisition plane (e.g. k for axial CT with thick slices).
    On ties the last image axis wins (axial for standard orientations). 2D images: ``None``.
    Axes of size 1 (a 2D image stored as 3D) are chosen first.
    """
    if len(spacing) == 2:
        return None
    singleton = [axis for axis, n in enumerate(size) if n == 1]
    if singleton:
        return singleton[-1]
    largest = max(spacing)
    return max(axis for axis, s in enumerate(spacing) if np.isclose(s, largest, rtol=1e-3))


def to_slices(array: np.ndarray, axis: int | None) -> np.ndarray:
    """(z, y, x) volume -> (n, H, W) slices along image ``axis``; a (y, x) image -> (1, y, x)."""
    if axis is None:
        return array[np.newaxis]
    return np.moveaxis(array, 2 - axis, 0)


def from_slices(slices: np.ndarray, axis: int | None) -> np.ndarray:
    """Inverse of :func:`to_slices`: (n, H, W) -> the original (z, y, x) or (y, x) layout."""
    if axis is None:
        return slices[0]
    return np.moveaxis(slices, 0, 2 - axis)


# Hand-written rather than MONAI ``Resize(size_mode="longest")`` + ``SpatialPad``: those pad with one
# constant, resize labels by nearest neighbour (a quarter-pixel shift at 2:1, issue 9) and invert
# through per-image MetaTensor bookkeeping, where this pads each slice with its own minimum,
# resamples labels as nnU-Net does (order 1, per label) and maps a whole batch of logits back in
# one ``interpolate`` call.
@dataclass(frozen=True)
class SquareFit:
    """How an (H, W) slice is scaled (aspect kept) and padded (centred) into ``size x size``.

    ``aspect`` is the slice's pixel height over its pixel width, each in units of the task's
    target spacing (1: pixels as square as the task's): the slice is stretched to its physical
    shape and scaled to fit in one interpolation, i.e. resampled to the target spacing first.

    Images, labels and logits share one pixel geometry: output pixel centres map onto input
    pixel centres as in ``interpolate(..., align_corners=False)``, so a label stays on its image
    pixels in training (:meth:`forward`, :meth:`forward_labels`) and back on the slice's own grid
    at inference (:meth:`backward`).

    Example:
        >>> import torch
        >>> fit = SquareFit(2, 4, 8)
        >>> fit.scaled, fit.offset
        ((4, 8), (2, 0))
        >>> fit.forward_labels(torch.tensor([[[[0, 1, 1, 2], [0, 1, 1, 2]]]]))[0, 0, 2]
        tensor([0, 0, 1, 1, 1, 1, 2, 2])
    """

    height: int
    width: int
    size: int
    aspect: float = 1.0

    @property
    def scaled(self) -> tuple[int, int]:
        height, width = self.height * self.aspect, float(self.width)
        scale = self.size / max(height, width)
        return max(1, min(self.size, round(height * scale))), max(1, min(self.size, round(width * scale)))

    @property
    def offset(self) -> tuple[int, int]:
        h, w = self.scaled
        return (self.size - h) // 2, (self.size - w) // 2

    def forward(self, batch):
        """(B, C, H, W) float image tensor -> (B, C, size, size), bilinear; pads with each slice's minimum."""
        import torch.nn.functional as F

        h, w = self.scaled
        resized = (F.interpolate(batch, size=(h, w), mode="bilinear", align_corners=False)
                   if (h, w) != batch.shape[-2:] else batch)
        return self._pad(resized, resized.amin(dim=(1, 2, 3), keepdim=True))

    def forward_labels(self, labels):
        """(B, 1, H, W) integer label tensor -> (B, 1, size, size), same dtype; pads with background 0.

        Each label's mask is resampled bilinearly, exactly as :meth:`forward` resamples the
        image, and an output pixel takes the label of largest weight (ties: the lower value, as
        ``argmax`` at inference). This is nnU-Net's order-1 segmentation resampling; unlike any
        nearest-neighbour rule it does not shift labels by a quarter pixel at a 2:1 downscale
        (512 -> 256), where every output centre falls between two input pixels.
        """
        import torch
        import torch.nn.functional as F

        h, w = self.scaled
        if (h, w) == labels.shape[-2:]:
            return self._pad(labels, torch.zeros((), dtype=labels.dtype, device=labels.device))
        resized = torch.zeros(labels.shape[:2] + (h, w), dtype=labels.dtype, device=labels.device)
        best = torch.zeros(resized.shape, dtype=torch.float32, device=labels.device)
        for value in range(int(labels.max()) + 1):
            mask = labels == value
            if not bool(mask.any()):
                continue
            weight = F.interpolate(mask.float(), size=(h, w), mode="bilinear", align_corners=False)
            take = weight > best
            resized = torch.where(take, torch.tensor(value, dtype=labels.dtype, device=labels.device), resized)
            best = torch.maximum(weight, best)
        return self._pad(resized, torch.zeros((), dtype=labels.dtype, device=labels.device))

    def crop(self, batch):
        """(B, C, size, size) -> (B, C, h, w): the fitted slice without its padding (a view)."""
        h, w = self.scaled
        top, left = self.offset
        return batch[:, :, top : top + h, left : left + w]

    def backward(self, batch):
        """(B, C, size, size) tensor (e.g. logits) -> (B, C, H, W) on the slice's own grid (bilinear)."""
        import torch.nn.functional as F

        cropped = self.crop(batch)
        if cropped.shape[-2:] == (self.height, self.width):
            return cropped
        return F.interpolate(cropped, size=(self.height, self.width), mode="bilinear", align_corners=False)

    def _pad(self, resized, fill):
        """(B, C, h, w) -> (B, C, size, size), centred; ``fill`` broadcasts to (B, C, size, size)."""
        h, w = self.scaled
        out = fill.expand(resized.shape[0], resized.shape[1], self.size, self.size).clone()
        top, left = self.offset
        out[:, :, top : top + h, left : left + w] = resized
        return out


def choose_input_size(slice_shapes: Iterable[tuple[int, int]], multiple: int = 16, maximum: int = 256) -> int:
    """Default network input size: the median of the slices' longer sides, rounded up to a
    multiple of ``multiple`` and capped at ``maximum``."""
    sides = [max(shape) for shape in slice_shapes]
    if not sides:
        raise ValueError("no slices")
    median = float(np.median(sides))
    return int(min(maximum, max(multiple, multiple * int(np.ceil(median / multiple)))))
