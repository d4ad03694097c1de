"""Anatomical slicing: every volume is cut in the task's plane, whatever its stored orientation.

A volume's voxel axes may point anywhere (a NIfTI file is often stored RAS, a DICOM series LPS,
a reformatted one with permuted axes), so "array axis 0" is a different anatomical plane from
file to file. Before slicing, each 3D volume is therefore viewed in one orientation, **LPS**
(SimpleITK's :class:`~SimpleITK.DICOMOrientImageFilter` decides the permutation and flips from
the direction cosines; here they are applied as a numpy view, exact and without a copy), and cut
parallel to a named plane: ``axial`` (across S, the LPS axis 2), ``coronal`` (across P, 1) or
``sagittal`` (across L, 0). LPS because it is the frame of DICOM and ITK itself: a volume with
an identity direction, as most CT series and this package's demo data are stored, needs no
permutation or flip at all, so models and data of earlier versions see the very same slices.
An axial LPS slice shows the patient's right on the image's left, anterior at the top, as a
radiologist reads it.

In-plane, the slices are resampled to the task's **target spacing** (nnU-Net's plan: the median
in-plane spacing of the task's training images) before the square fit, so anisotropic pixels
are not squashed. Both steps are one interpolation (:class:`~labelsharing.data.preprocessing.SquareFit`
with the pixel ``aspect``), mapped back by the same transform at inference.

2D images (X-ray projections) have no plane: they are kept as stored; the target spacing applies
to them too, so an image whose pixels are not square like the task's is resampled.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from labelsharing.data.preprocessing import ORIENTATION, PLANES, SquareFit, choose_slice_axis, to_slices

__all__ = ["orientation_code", "lps_view", "Slicing", "plan_slicing"]

_AXIS_LETTERS = ("LR", "PA", "SI")


def orientation_code(image: sitk.Image) -> str:
    """DICOM orientation code of a 3D image: the letter each voxel axis (i, j, k) points to.

    Example:
        >>> image = sitk.Image(2, 3, 4, sitk.sitkUInt8)
        >>> image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        >>> orientation_code(image)
        'RAS'
    """
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def lps_view(array: np.ndarray, code: str) -> np.ndarray:
    """A (z, y, x) array of an image with orientation ``code``, viewed in LPS (a numpy view).

    The result equals ``sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))``; writing into it
    writes into ``array``, so a prediction made on the LPS view lands on the stored grid.

    Example:
        >>> lps_view(np.arange(3)[None, None, :], "RPS")  # i points right: flipped
        array([[[2, 1, 0]]])
    """
    source = _lps_sources(code)
    view = np.transpose(array, [2 - source[2 - n] for n in range(3)])
    flips = tuple(n for n in range(3) if code[source[2 - n]] != ORIENTATION[2 - n])
    return np.flip(view, flips) if flips else view


@dataclass(frozen=True)
class Slicing:
    """How a task cuts its images into 2D slices, as stored per task in ``model.json``.

    Attributes:
        plane: ``axial``, ``coronal`` or ``sagittal``: 3D volumes are viewed in LPS and cut
            parallel to it; ``None``: the task's images are 2D. A volume with a singleton axis
            (a 2D image stored as 3D) is cut across that axis; a 3D volume given to a 2D task
            across its axis of largest spacing.
        target_spacing: (row, column) in-plane spacing in mm the slices are resampled to
            before the square fit; ``None``: pixels are taken as square.
        stored_axis: models written before ``plane`` (``"axis"`` in ``model.json``): volumes are
            not reoriented, and are cut across this image axis of the stored file (0 = i,
            1 = j, 2 = k), exactly as those models were trained. Only with ``oriented=False``.
        oriented: False for those older models.
    """

    plane: str | None = None
    target_spacing: tuple[float, float] | None = None
    stored_axis: int | None = None
    oriented: bool = True

    def __post_init__(self) -> None:
        if self.plane is not None and self.plane not in PLANES:
            raise ValueError(f"plane must be one of {PLANES} or None, got {self.plane!r}")
        if self.oriented and self.stored_axis is not None:
            raise ValueError("stored_axis describes models before 'plane'; it needs oriented=False")

    @classmethod
    def from_config(cls, entry: Mapping) -> Slicing:
        """The slicing of a ``model.json`` task entry (``plane`` + ``target_spacing``, or an older ``axis``)."""
        if "plane" not in entry:
            return cls(stored_axis=entry.get("axis"), oriented=False)
        spacing = entry.get("target_spacing")
        return cls(entry["plane"], tuple(float(s) for s in spacing) if spacing is not None else None)

    def to_config(self) -> dict:
        """The ``model.json`` keys of this slicing."""
        if not self.oriented:
            return {"axis": self.stored_axis}
        if self.target_spacing is None:
            return {"plane": self.plane}
        return {"plane": self.plane, "target_spacing": [float(s) for s in self.target_spacing]}

    def slices(self, array: np.ndarray, image: sitk.Image) -> np.ndarray:
        """(n, H, W) slices of ``array`` ((z, y, x) or (y, x), on ``image``'s grid), as a view.

        Writing into the view writes into ``array``: this is how predictions go back exactly
        onto the input's own grid.
        """
        code, axis = self._layout(image)
        return to_slices(lps_view(array, code) if code else array, axis)

    def slice_shape(self, image: sitk.Image) -> tuple[int, int]:
        """(H, W) of the slices of ``image``."""
        height, width = self._in_plane(image, image.GetSize())
        return int(height), int(width)

    def slice_count(self, image: sitk.Image) -> int:
        """Number of slices of ``image`` (an image, or its header: :func:`~labelsharing.data.image_io.read_image_header`)."""
        height, width = self.slice_shape(image)
        return int(np.prod(image.GetSize())) // (height * width)

    def pixel_spacing(self, image: sitk.Image) -> tuple[float, float]:
        """(row, column) spacing in mm of the slices of ``image``."""
        row, column = self._in_plane(image, image.GetSpacing())
        return float(row), float(column)

    def resampled_shape(self, image: sitk.Image) -> tuple[float, float]:
        """(H, W) of the slices of ``image`` once resampled to the target spacing (not rounded)."""
        (height, width), (row, column) = self.slice_shape(image), self.pixel_spacing(image)
        target_row, target_column = self.target_spacing or (row, column)
        return height * row / target_row, width * column / target_column

    def aspect(self, image: sitk.Image) -> float:
        """Pixel height over width of the slices of ``image``, each in units of the target spacing."""
        (height, width), (resampled_height, resampled_width) = self.slice_shape(image), self.resampled_shape(image)
        return (resampled_height / height) / (resampled_width / width)

    def square_fit(self, image: sitk.Image, size: int) -> SquareFit:
        """How the slices of ``image`` are resampled to the target spacing and fitted into ``size x size``."""
        height, width = self.slice_shape(image)
        return SquareFit(height, width, size, self.aspect(image))

    def _layout(self, image: sitk.Image) -> tuple[str | None, int | None]:
        """(orientation code to view the array from, or None as stored; image axis to cut across, None for 2D)."""
        if image.GetDimension() == 2:
            return None, None
        code = orientation_code(image) if self.oriented else None
        spacing, size = _in_lps(image.GetSpacing(), code), _in_lps(image.GetSize(), code)
        axis = PLANES.index(self.plane) if self.plane is not None else self.stored_axis
        if axis is None or 1 in size:
            axis = choose_slice_axis(spacing, size)
        return code, axis

    def _in_plane(self, image: sitk.Image, values: Sequence[float]) -> tuple[float, float]:
        """(row, column) entries of per-voxel-axis ``values`` (size, spacing) of ``image``'s slices."""
        code, axis = self._layout(image)
        if axis is None:
            return values[1], values[0]
        values = _in_lps(values, code)
        row, column = (a for a in (2, 1, 0) if a != axis)
        return values[row], values[column]


def plan_slicing(images: Sequence[sitk.Image], axis: int | None = None) -> Slicing:
    """A task's slicing, planned from its training images (only their headers are read).

    Args:
        images: the task's training images.
        axis: force the plane of 3D volumes by the LPS axis it cuts across (0 = sagittal,
            1 = coronal, 2 = axial; the command line's ``--axis``); default: the plane most
            images vote for, each across its axis of largest spacing once viewed in LPS
            (:func:`~labelsharing.data.preprocessing.choose_slice_axis`).

    Returns:
        the plane (``None`` for 2D images) and the target spacing: the median (row, column)
        spacing of the images' slices, as nnU-Net plans its target spacing.

    Example:
        >>> volume = sitk.Image(64, 48, 10, sitk.sitkFloat32)
        >>> volume.SetSpacing((0.8, 0.8, 5.0))
        >>> plan_slicing([volume])
        Slicing(plane='axial', target_spacing=(0.8, 0.8), stored_axis=None, oriented=True)
    """
    if not images:
        raise ValueError("plan_slicing needs at least one image")
    if axis is not None and images[0].GetDimension() == 3:
        plane = PLANES[axis]
    else:
        votes = Counter(Slicing()._layout(image)[1] for image in images)
        voted = votes.most_common(1)[0][0]
        plane = None if voted is None else PLANES[voted]
    spacings = np.array([Slicing(plane).pixel_spacing(image) for image in images])
    row, column = np.median(spacings, axis=0)
    return Slicing(plane, (round(float(row), 6), round(float(column), 6)))


def _lps_sources(code: str) -> list[int]:
    """For each LPS axis, the voxel axis (0 = i, 1 = j, 2 = k) of an image with ``code`` along it."""
    code = code.upper()
    sources = [next((d for d, letter in enumerate(code) if letter in pair), -1) for pair in _AXIS_LETTERS]
    if len(code) != 3 or sorted(sources) != [0, 1, 2]:
        raise ValueError(f"not a 3D orientation code: {code!r}")
    return sources


def _in_lps(values: Sequence[float], code: str | None) -> tuple:
    """Per-voxel-axis ``values`` (size, spacing) reordered to the LPS axes (unchanged if ``code`` is None)."""
    return tuple(values) if code is None else tuple(values[d] for d in _lps_sources(code))
