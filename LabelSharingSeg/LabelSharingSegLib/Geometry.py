"""Voxel grid geometry: Slicer's IJK->RAS matrix -> the LPS origin/spacing/direction of files.

Kept over Slicer's writers (issue 17): ``NrrdIO`` writes task datasets from arrays, with no node whose writer would do this split.

Slicer works in RAS (x to the Right, y Anterior, z Superior); ITK, SimpleITK, NRRD files with
``space: left-posterior-superior`` and therefore the engine work in LPS. The two differ by a
sign flip of the first two axes: ``LPS = diag(-1, -1, 1) @ RAS``.

Axis order: ``slicer.util.arrayFromVolume`` returns (k, j, i) arrays; spacing, origin and the
direction columns are in (i, j, k) order, as in ``GetSpacing()`` and in the NRRD header.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["RAS_TO_LPS", "lpsGeometryFromIjkToRas", "ijkToLpsFromIjkToRas"]

#: Multiplying a RAS point by this gives the LPS point (and back: the matrix is its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def ijkToLpsFromIjkToRas(ijkToRas: np.ndarray) -> np.ndarray:
    """The 4x4 IJK->LPS matrix of a volume given its 4x4 IJK->RAS matrix."""
    ijkToRas = np.asarray(ijkToRas, dtype=float)
    if ijkToRas.shape != (4, 4):
        raise ValueError(f"ijkToRas must be 4x4, got shape {ijkToRas.shape}")
    rasToLps = np.eye(4)
    rasToLps[:3, :3] = RAS_TO_LPS
    return rasToLps @ ijkToRas


def lpsGeometryFromIjkToRas(ijkToRas: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split an IJK->RAS matrix into the LPS origin, spacing and direction a file stores.

    Args:
        ijkToRas: 4x4 matrix mapping voxel (i, j, k, 1) to RAS (x, y, z, 1).

    Returns:
        origin (3,) in LPS mm (the centre of voxel 0, 0, 0); spacing (3,) in (i, j, k) order;
        direction (3, 3) whose column c is the unit LPS direction of voxel axis c.

    Raises:
        ValueError: for a singular matrix (a zero spacing).

    Example:
        >>> origin, spacing, direction = lpsGeometryFromIjkToRas(np.diag([2.0, 3.0, 4.0, 1.0]))
        >>> origin.tolist(), spacing.tolist(), direction[0].tolist()
        ([0.0, 0.0, 0.0], [2.0, 3.0, 4.0], [-1.0, 0.0, 0.0])
    """
    ijkToLps = ijkToLpsFromIjkToRas(ijkToRas)
    axes = ijkToLps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"IJK->RAS matrix has a zero spacing: {spacing.tolist()}")
    return ijkToLps[:3, 3].copy(), spacing, axes / spacing
