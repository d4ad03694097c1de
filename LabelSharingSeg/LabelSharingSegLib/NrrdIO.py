"""Minimal NRRD reader and writer for 3D scalar volumes, numpy only.

The module hands volumes to the engine, and reads its results back, as ``.nrrd`` files in LPS
space (what ITK/SimpleITK, and so the engine, expect). Writing the header ourselves keeps the
RAS<->LPS conversion in one tested place (``Geometry``) instead of inside Slicer's writers,
and lets the tests check it without Slicer.

Supported: attached data, ``raw`` or ``gzip`` encoding, little or big endian, 2D or 3D scalar
images, ``space`` LPS or RAS. That covers what SimpleITK writes.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np

from .Geometry import ijkToRasFromLpsGeometry, lpsGeometryFromIjkToRas
from .ModuleError import ModuleError

__all__ = ["writeNrrd", "readNrrd"]

PathLike = Union[str, Path]

_NRRD_TYPES = {
    "int8": ("signed char", "int8", "int8_t"),
    "uint8": ("unsigned char", "uchar", "uint8", "uint8_t"),
    "int16": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "uint16": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "int32": ("int", "signed int", "int32", "int32_t"),
    "uint32": ("uint", "unsigned int", "uint32", "uint32_t"),
    "int64": ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"),
    "uint64": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    "float32": ("float",),
    "float64": ("double",),
}
_DTYPE_BY_NAME = {alias: np.dtype(name) for name, aliases in _NRRD_TYPES.items() for alias in aliases}
_VECTOR = re.compile(r"\(([^)]*)\)")


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
    dtypeName = voxels.dtype.newbyteorder("=").name
    if dtypeName not in _NRRD_TYPES:
        raise ValueError(f"voxel type {voxels.dtype} cannot be written to NRRD")
    origin, spacing, direction = lpsGeometryFromIjkToRas(ijkToRas)
    axes = direction * spacing  # column c = LPS step of voxel axis c
    header = [
        "NRRD0004",
        "# written by LabelSharingSeg",
        f"type: {_NRRD_TYPES[dtypeName][0]}",
        "dimension: 3",
        "space: left-posterior-superior",
        "sizes: " + " ".join(str(n) for n in reversed(voxels.shape)),
        "space directions: " + " ".join(_vector(axes[:, c]) for c in range(3)),
        "kinds: domain domain domain",
        "endian: little",
        f"encoding: {'gzip' if compress else 'raw'}",
        "space origin: " + _vector(origin),
    ]
    data = np.ascontiguousarray(voxels, dtype=voxels.dtype.newbyteorder("<")).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        stream.write(("\n".join(header) + "\n\n").encode("ascii"))
        stream.write(gzip.compress(data, compresslevel=1) if compress else data)
    return path


def readNrrd(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Read an NRRD file into a (k, j, i) array and its 4x4 IJK->RAS matrix.

    Raises:
        ModuleError: for a missing file or an NRRD feature this reader does not support.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModuleError(f"Cannot read {path}: {exc.strerror or exc}") from exc
    fields, data = _splitHeader(path, raw)
    dimension = int(fields.get("dimension", "0"))
    if dimension not in (2, 3):
        raise ModuleError(f"{path}: only 2D and 3D scalar NRRD files are supported (dimension {dimension}).")
    if "data file" in fields or "datafile" in fields:
        raise ModuleError(f"{path}: NRRD files with detached data are not supported.")
    typeName = fields.get("type", "")
    if typeName not in _DTYPE_BY_NAME:
        raise ModuleError(f"{path}: unsupported NRRD voxel type '{typeName}'.")
    dtype = _DTYPE_BY_NAME[typeName].newbyteorder(">" if fields.get("endian") == "big" else "<")
    sizes = [int(n) for n in fields["sizes"].split()]
    encoding = fields.get("encoding", "raw")
    if encoding in ("gzip", "gz"):
        data = gzip.decompress(data)
    elif encoding != "raw":
        raise ModuleError(f"{path}: unsupported NRRD encoding '{encoding}' (raw and gzip are supported).")
    count = int(np.prod(sizes))
    voxels = np.frombuffer(data, dtype=dtype, count=count).reshape(tuple(reversed(sizes)))
    voxels = voxels.astype(dtype.newbyteorder("="))
    origin, axes = _spaceGeometry(path, fields, dimension)
    if dimension == 2:
        voxels = voxels[np.newaxis]
    spacing = np.linalg.norm(axes, axis=0)
    return voxels, ijkToRasFromLpsGeometry(origin, spacing, axes / spacing)


def _splitHeader(path: Path, raw: bytes) -> Tuple[Dict[str, str], bytes]:
    if not raw.startswith(b"NRRD"):
        raise ModuleError(f"{path} is not an NRRD file.")
    end = raw.find(b"\n\n")
    if end < 0:
        raise ModuleError(f"{path}: NRRD header has no end (blank line).")
    fields: Dict[str, str] = {}
    for line in raw[:end].decode("ascii", errors="replace").splitlines()[1:]:
        if not line or line.startswith("#") or ":=" in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    return fields, raw[end + 2:]


def _spaceGeometry(path: Path, fields: Dict[str, str], dimension: int) -> Tuple[np.ndarray, np.ndarray]:
    """LPS origin (3,) and axis steps (3, 3), column c for voxel axis c, of a 2D or 3D NRRD."""
    space = fields.get("space", "left-posterior-superior").lower()
    if space in ("right-anterior-superior", "ras"):
        flip = np.diag([-1.0, -1.0, 1.0])
    elif space in ("left-posterior-superior", "lps"):
        flip = np.eye(3)
    else:
        raise ModuleError(f"{path}: unsupported NRRD space '{space}' (LPS and RAS are supported).")
    vectors = [[float(v) for v in text.split(",")] for text in _VECTOR.findall(fields.get("space directions", ""))]
    if len(vectors) != dimension:
        raise ModuleError(f"{path}: NRRD 'space directions' must give one vector per axis.")
    axes = np.eye(3)
    for column, vector in enumerate(vectors):
        axes[: len(vector), column] = vector
    origin = np.zeros(3)
    originText = _VECTOR.findall(fields.get("space origin", ""))
    if originText:
        values = [float(v) for v in originText[0].split(",")]
        origin[: len(values)] = values
    return flip @ origin, flip @ axes


def _vector(values) -> str:
    return "(" + ",".join(repr(float(v)) for v in values) + ")"
