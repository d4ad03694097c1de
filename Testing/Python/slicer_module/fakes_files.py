"""Files on both sides of the engine, for the Slicer-module tests (no Slicer, no engine run).

- FAKES of Slicer's writer and reader the module calls: a scalar volume written as
  ``slicer.util.exportNode`` writes it (ITK's NRRD writer, LPS), and a ``.seg.nrrd`` read as
  ``vtkMRMLSegmentationStorageNode::ReadBinaryLabelmapRepresentation`` reads it (5.8.0 and main);
- the engine's side: its own writer stands in for ``labelsharing predict --format seg.nrrd``, and
  files are read back as the engine reads them (SimpleITK).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS, its own inverse
Segment = Tuple[str, str, Tuple[float, float, float], Dict[str, str], np.ndarray]  # id, name, colour, tags, mask


def writeVolumeLikeSlicer(voxels: np.ndarray, ijkToRas: np.ndarray, filename) -> None:
    """A volume's (k, j, i) voxels on its IJK->RAS grid, written in LPS as Slicer's volume writer does."""
    import SimpleITK as sitk

    ijkToLps = _LPS @ np.asarray(ijkToRas, dtype=float)
    spacing = np.linalg.norm(ijkToLps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.asarray(voxels))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(ijkToLps[:3, 3].tolist())
    image.SetDirection((ijkToLps[:3, :3] / spacing).ravel().tolist())
    sitk.WriteImage(image, str(filename), useCompression=True)


def readSegNrrdLikeSlicer(filename) -> Tuple[List[Segment], np.ndarray]:
    """The segments of a single-layer ``.seg.nrrd`` and the IJK->RAS of its grid.

    As ReadBinaryLabelmapRepresentation: SegmentN_ID / _Name / _Color ("r g b") / _LabelValue /
    _Tags ("key:value|...", split as SetSegmentTagsFromString does); the voxels of value LabelValue
    form the segment. Slicer crops the layer to the segments' extents and
    ``arrayFromSegmentBinaryLabelmap`` resamples it back to the reference grid: the same mask on the
    file's grid, kept here uncropped.

    Raises:
        OSError: the file is missing or not NRRD (Slicer's reader then fails).
        NotImplementedError: several layers, or not LPS (the engine writes neither).
    """
    import nrrd

    try:
        voxels, header = nrrd.read(str(filename), index_order="C")
    except nrrd.NRRDError as exc:
        raise OSError(str(exc)) from exc
    if voxels.ndim != 3 or header.get("space") != "left-posterior-superior":
        raise NotImplementedError("the fake reads single-layer LPS .seg.nrrd files only")
    segments: List[Segment] = []
    index = 0
    while f"Segment{index}_ID" in header:
        field = lambda name: header[f"Segment{index}_{name}"]  # noqa: E731
        tags = dict(tag.split(":", 1) for tag in field("Tags").split("|") if ":" in tag)
        color = tuple(float(c) for c in field("Color").split())
        segments.append((field("ID"), field("Name"), color, tags, voxels == int(field("LabelValue"))))
        index += 1
    ijkToLps = np.eye(4)
    ijkToLps[:3, :3] = np.asarray(header["space directions"], dtype=float).T
    ijkToLps[:3, 3] = header["space origin"]
    return segments, _LPS @ ijkToLps


def writeEngineResult(inputFile, resultFile, labels: np.ndarray, taskLabels: Sequence) -> Path:
    """Stand in for ``labelsharing predict --format seg.nrrd``: the engine's own writer
    (``labelsharing.data.image_io.write_label``) puts ``labels`` (k, j, i) on the input file's grid,
    one segment per task label (name, value, colour, terminology; ``ModelInfo`` labels)."""
    import SimpleITK as sitk
    from labelsharing.data.image_io import SegmentInfo, write_label

    segments = [SegmentInfo(label.name, label.value, tuple(label.color), label.terminology) for label in taskLabels]
    return write_label(np.asarray(labels), sitk.ReadImage(str(inputFile)), resultFile, segments)


def readAsTheEngineDoes(path) -> Tuple[np.ndarray, np.ndarray]:
    """(k, j, i) voxels and IJK->RAS of an image file, read as the engine reads it (SimpleITK, LPS)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    ijkToLps = np.eye(4)
    ijkToLps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.array(image.GetSpacing())
    ijkToLps[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image), _LPS @ ijkToLps
