"""Slicer segmentation files (``.seg.nrrd``), read and written with ``slicerio``.

A ``.seg.nrrd`` stores segments (name, colour, label value, layer) and voxels in (i, j, k) order
with an ``ijkToLPS`` 4x4 matrix. Its segments are matched to a task's labels **by name**, because
the stored label values are an accident of the order in which the annotator created them.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from labelsharing.data.image_io import SegmentInfo, _values_text, geometry_mismatch
from labelsharing.errors import LabelSharingError

__all__ = ["read_seg_nrrd", "write_seg_nrrd"]


def read_seg_nrrd(path: Path, labels: Mapping[str, int], reference: sitk.Image | None, pixel_type: int) -> sitk.Image:
    """Read a Slicer segmentation in the task's own label values (segments matched by name).

    Args:
        path: the ``.seg.nrrd`` file.
        labels: label name -> value of the task.
        reference: the image the labels belong to; a crop or shift of its grid is resampled onto it.
        pixel_type: SimpleITK pixel type of the result (uint8 or uint16).

    Returns:
        label image on ``reference``'s grid (or the file's own grid without ``reference``).

    Raises:
        LabelSharingError: unreadable or damaged file, overlapping segments, a segment that is not
            a label of the task, duplicate names, a segment without label value.
    """
    import slicerio

    try:
        segmentation = slicerio.read_segmentation(str(path))
    except (OSError, ValueError, KeyError, IndexError, zlib.error) as exc:
        # pynrrd/slicerio raise these for malformed headers and damaged gzip data
        raise LabelSharingError(f"Cannot read Slicer segmentation {path}: {exc}") from exc
    voxels = np.asarray(segmentation["voxels"])
    if voxels.ndim == 4:
        if voxels.shape[0] > 1:
            raise LabelSharingError(
                f"{path} has overlapping segments ({voxels.shape[0]} layers). Overlapping labels are "
                "not supported yet: make the segments exclusive in Slicer's Segment Editor "
                "(Masking: 'Overwrite other segments') and save again."
            )
        voxels = voxels[0]
    stored = _segment_label_values(path, segmentation.get("segments", []), labels)
    unexplained = sorted(set(np.unique(voxels).tolist()) - {0, *stored})
    if unexplained:
        raise LabelSharingError(
            f"{path}: voxel value(s) {_values_text(unexplained)} belong to no segment. The file is damaged or "
            "not a Slicer segmentation; save the segmentation from Slicer again."
        )
    values = np.zeros(voxels.shape, dtype=np.uint8 if pixel_type == sitk.sitkUInt8 else np.uint16)
    for stored_value, name in stored.items():
        values[voxels == stored_value] = labels[name]
    image = sitk.GetImageFromArray(np.transpose(values, (2, 1, 0)))  # (i, j, k) -> (k, j, i)
    _set_geometry(path, image, np.asarray(segmentation["ijkToLPS"], dtype=float))
    if reference is None:
        return image
    if reference.GetDimension() == 2 and image.GetSize()[2] == 1:
        image = image[:, :, 0]
    if geometry_mismatch(image, reference) is None:
        image.CopyInformation(reference)
        return image
    if image.GetDimension() == reference.GetDimension() and np.allclose(
        image.GetSpacing(), reference.GetSpacing(), rtol=1e-4
    ) and np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-4):
        # A cropped or shifted segmentation of the same grid: place it on the image's grid.
        return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())
    return image


def _set_geometry(path: Path, image: sitk.Image, ijk_to_lps: np.ndarray) -> None:
    """Give ``image`` the spacing, origin and direction of a 4x4 ``ijk_to_lps`` matrix."""
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    if not np.all(np.isfinite(ijk_to_lps[:3])) or not np.all(spacing > 0):
        raise LabelSharingError(
            f"{path}: its space directions / space origin are not a valid geometry (zero, infinite or NaN "
            "entries). The file is damaged; save the segmentation again from Slicer."
        )
    try:
        image.SetSpacing([float(s) for s in spacing])
        image.SetOrigin([float(v) for v in ijk_to_lps[:3, 3]])
        image.SetDirection([float(v) for v in (ijk_to_lps[:3, :3] / spacing).ravel()])
    except RuntimeError as exc:  # ITK refuses a singular direction matrix
        raise LabelSharingError(
            f"{path}: its space directions are not a valid geometry (they are not independent). The file is "
            "damaged; save the segmentation again from Slicer."
        ) from exc


def _segment_label_values(path: Path, segments: Sequence[Mapping], labels: Mapping[str, int]) -> dict[int, str]:
    """Stored label value -> segment name of a ``.seg.nrrd``'s segments, checked against the task."""
    by_value: dict[int, str] = {}
    names = [segment.get("name", "") for segment in segments]
    for segment, name in zip(segments, names):
        if name not in labels:
            known = ", ".join(sorted(n for n in labels if n != "background"))
            raise LabelSharingError(
                f"{path}: segment '{name}' is not a label of this task (labels: {known}). "
                "Rename the segment in Slicer or add it to dataset.json 'labels'."
            )
        if names.count(name) > 1:
            raise LabelSharingError(
                f"{path}: segment name '{name}' is used by {names.count(name)} segments; each label must be one "
                "segment. Merge or rename them in Slicer's Segment Editor and save again."
            )
        if "labelValue" not in segment:
            raise LabelSharingError(
                f"{path}: segment '{name}' has no label value (no LabelValue field), so its voxels cannot be "
                "found. Save the segmentation again from a current 3D Slicer."
            )
        if segment.get("layer", 0) != 0:
            raise LabelSharingError(
                f"{path}: segment '{name}' is in layer {segment['layer']}, but the file has a single layer. "
                "The file is damaged; save the segmentation again from Slicer."
            )
        value = segment["labelValue"]
        if value in by_value:
            raise LabelSharingError(
                f"{path}: segments '{by_value[value]}' and '{name}' share label value {value}, so their voxels "
                "cannot be told apart. Save the segmentation again from 3D Slicer."
            )
        by_value[value] = name
    return by_value


def write_seg_nrrd(labels: np.ndarray, reference: sitk.Image, path: Path, segments: Sequence[SegmentInfo]) -> None:
    """Write ``labels`` ((z, y, x) or (y, x), on ``reference``'s grid) as a Slicer segmentation with
    one segment per entry of ``segments`` (:class:`SegmentInfo` or a ``(name, value, colour)``
    tuple). A segment's terminology goes into its ``TerminologyEntry`` tag, which Slicer reads
    back into the segment (``SegmentN_Tags``, ``vtkMRMLSegmentationStorageNode``). Not atomic by
    itself: callers write to a temporary path (see :func:`labelsharing.data.image_io.write_label`)."""
    import slicerio

    if reference.GetDimension() == 2:
        labels = labels[np.newaxis]
        spacing = list(reference.GetSpacing()) + [1.0]
        origin = list(reference.GetOrigin()) + [0.0]
        direction2 = np.asarray(reference.GetDirection()).reshape(2, 2)
        direction = np.eye(3)
        direction[:2, :2] = direction2
    else:
        spacing = list(reference.GetSpacing())
        origin = list(reference.GetOrigin())
        direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * np.asarray(spacing)
    ijk_to_lps[:3, 3] = origin
    voxels = np.transpose(labels, (2, 1, 0))  # (k, j, i) -> (i, j, k)
    segmentation = {
        "voxels": np.ascontiguousarray(voxels),
        "ijkToLPS": ijk_to_lps,
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": [_segment(SegmentInfo(*segment), voxels) for segment in segments],
    }
    slicerio.write_segmentation(str(path), segmentation)


def _segment(info: SegmentInfo, voxels: np.ndarray) -> dict:
    """slicerio's description of one segment of ``voxels`` ((i, j, k) label values)."""
    from slicerio.segmentation import terminology_entry_from_string

    segment = {
        "id": f"Segment_{info.value}",
        "name": info.name,
        "labelValue": int(info.value),
        "layer": 0,
        "color": [float(c) for c in info.color],
        "extent": _extent(voxels == info.value),
    }
    if info.terminology:
        segment["terminology"] = terminology_entry_from_string(info.terminology)
    return segment


def _extent(mask: np.ndarray) -> list[int]:
    if not mask.any():
        return [0, -1, 0, -1, 0, -1]
    indices = np.nonzero(mask)
    return [int(v) for axis in indices for v in (axis.min(), axis.max())]
