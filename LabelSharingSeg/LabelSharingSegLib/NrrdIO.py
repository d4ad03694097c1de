"""NRRD files in LPS space for the engine, through pynrrd (``nrrd.read`` / ``nrrd.write``).

The module hands volumes to the engine, and reads its results back, as ``.nrrd`` files in LPS
space (what ITK/SimpleITK, and so the engine, expect). We write the geometry ourselves rather
than through Slicer's writers so the RAS<->LPS conversion stays in one tested place
(``Geometry``) and the tests run without Slicer; pynrrd writes ``space directions`` and
``space origin`` exactly (17 significant digits) and handles the data (types, endianness, gzip).

Arrays are (k, j, i), as ``slicer.util.arrayFromVolume`` returns, hence ``index_order="C"``;
the header lists axes in (i, j, k) order. pynrrd is an engine dependency (``Dependencies``),
imported only when a file is read or written.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Tuple, Union

import numpy as np

from .Geometry import RAS_TO_LPS, ijkToRasFromLpsGeometry, lpsGeometryFromIjkToRas
from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["writeNrrd", "readNrrd"]

PathLike = Union[str, Path]

_NUMPY_TYPES = ("i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8")  # what NRRD stores
_SPACE_FLIPS = {"left-posterior-superior": np.eye(3), "lps": np.eye(3),
                "right-anterior-superior": RAS_TO_LPS, "ras": RAS_TO_LPS}


def writeNrrd(path: PathLike, voxels: np.ndarray, ijkToRas: np.ndarray, compress: bool = True) -> Path:
    """Write a (k, j, i) voxel array with its IJK->RAS geometry as an LPS NRRD file.

    Args:
        path: output ``.nrrd`` file; its folder is created.
        voxels: scalar array shaped (k, j, i), as ``slicer.util.arrayFromVolume`` returns.
        ijkToRas: 4x4 IJK->RAS matrix of the volume (``GetIJKToRASMatrix``).
        compress: gzip the data (default) or write it raw.

    Returns:
        the written path.
    """
    voxels = np.asarray(voxels)
    if voxels.ndim != 3:
        raise ValueError(f"voxels must be a 3D (k, j, i) array, got shape {voxels.shape}")
    if voxels.dtype.str[1:] not in _NUMPY_TYPES:
        raise ValueError(f"voxel type {voxels.dtype} cannot be written to NRRD")
    origin, spacing, direction = lpsGeometryFromIjkToRas(ijkToRas)
    header = {
        "space": "left-posterior-superior",
        "space directions": (direction * spacing).T,  # row c = LPS step of voxel axis c (i, j, k)
        "space origin": origin,
        "kinds": ["domain"] * 3,
        "encoding": "gzip" if compress else "raw",
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _nrrd().write(str(path), voxels, header, compression_level=1, index_order="C")
    return path


def readNrrd(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Read a 2D or 3D scalar NRRD file into a (k, j, i) array and its 4x4 IJK->RAS matrix.

    A 2D image comes back as one slice, (1, j, i), whose third axis is the unit z (superior) axis:
    a 2D file has no slice direction or spacing.

    Raises:
        ModuleError: for a missing or unreadable file, or one that is not a 2D/3D scalar image
            in LPS or RAS space.
    """
    path = Path(path)
    nrrd = _nrrd()
    from nrrd.errors import NRRDError

    try:
        voxels, header = nrrd.read(str(path), index_order="C")
    except (OSError, ValueError, KeyError, zlib.error, NRRDError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ModuleError(_("Cannot read {path}: {reason}").format(path=path, reason=reason)) from exc
    dimension = voxels.ndim
    if dimension not in (2, 3) or voxels.dtype.kind not in "iuf":
        valueType = header.get("type")
        raise ModuleError(_("{path}: only 2D and 3D scalar NRRD files are supported (dimension {dimension}, "
                            "type {type}).").format(path=path, dimension=dimension, type=valueType))
    space = str(header.get("space", "left-posterior-superior"))
    flip = _SPACE_FLIPS.get(space.lower())
    if flip is None:
        raise ModuleError(_("{path}: unsupported NRRD space '{space}' (LPS and RAS are supported).").format(
            path=path, space=space))
    vectors = [np.asarray(v, dtype=float) for v in header.get("space directions", [])]  # matrix or vector list
    if len(vectors) != dimension or any(v.ndim != 1 or v.size > 3 or not np.all(np.isfinite(v)) for v in vectors):
        raise ModuleError(_("{path}: NRRD 'space directions' must give one vector per axis.").format(path=path))
    axes = np.eye(3)  # column c = step of voxel axis c; a 2D image keeps the unit third axis
    for column, vector in enumerate(vectors):
        axes[: vector.size, column] = vector
    origin = np.zeros(3)
    values = np.asarray(header.get("space origin", []), dtype=float).ravel()[:3]
    origin[: values.size] = values
    axes, origin = flip @ axes, flip @ origin
    spacing = np.linalg.norm(axes, axis=0)
    voxels = voxels.astype(voxels.dtype.newbyteorder("="), copy=False)  # native byte order
    if dimension == 2:
        voxels = voxels[np.newaxis]
    return voxels, ijkToRasFromLpsGeometry(origin, spacing, axes / spacing)


def _nrrd():
    """pynrrd, or a readable error if the engine's packages are not installed yet."""
    try:
        import nrrd
    except ImportError as exc:
        raise ModuleError(
            _("Reading and writing NRRD files needs the pynrrd package, which is not installed yet. Press "
              "'Check dependencies' in the Segment section to install the engine's packages, then try again.")
        ) from exc
    return nrrd
