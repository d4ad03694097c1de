"""NRRD files in LPS space written from arrays, through pynrrd (``nrrd.write``), for task datasets.

Kept over Slicer's writers (issue 17): task datasets are written from arrays (``TaskDefinition.writeDataset``), a Slicer-free step with no node for ``slicer.util.exportNode``.

The Segment flow does not come here: it writes the input volume with Slicer's writer and reads the
engine's ``.seg.nrrd`` with Slicer's reader (``SceneIO.writeVolume``, ``SegmentImport``). pynrrd
writes ``space directions`` and ``space origin`` exactly (17 significant digits) and handles the
data (types, endianness, gzip); the IJK->RAS to LPS split is ``Geometry``'s.

Arrays are (k, j, i), as ``slicer.util.arrayFromVolume`` returns, hence ``index_order="C"``;
the header lists axes in (i, j, k) order. pynrrd is an engine dependency (``Dependencies``),
imported only when a file is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from .Geometry import lpsGeometryFromIjkToRas
from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["writeNrrd"]

PathLike = Union[str, Path]

_NUMPY_TYPES = ("i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8")  # what NRRD stores


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


def _nrrd():
    """pynrrd, or a readable error if the engine's packages are not installed yet."""
    try:
        import nrrd
    except ImportError as exc:
        raise ModuleError(
            _("Writing NRRD files needs the pynrrd package, which is not installed yet. Press "
              "'Check dependencies' in the Segment section to install the engine's packages, then try again.")
        ) from exc
    return nrrd
