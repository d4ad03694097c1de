"""Slicer segmentation files (``.seg.nrrd``), read and written with ``slicerio``.

A ``.seg.nrrd`` stores segments (name, colour, label value, layer) and voxels in (i, j, k) order
with an ``ijkToLPS`` 4x4 matrix. Its segments are matched to a task's labels **by name**, because
the stored label values are an accident of the order in which the annotator created them.
Overlapping segments lie in separate layers ((layers, i, j, k) voxels); a task is read from one
layer, and a task whose labels lie in several layers is read as sub-tasks, one per layer group
(:mod:`labelsharing.plan.layer_split`), each skipping its siblings' segments. Predictions of such a
task are written back as one layered file (:func:`write_layered_seg_nrrd`).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from labelsharing.data.image_io import SEG_NRRD, SegmentInfo, _check_written_image, _values_text, geometry_mismatch, \
    write_label
from labelsharing.errors import LabelSharingError
from labelsharing.utils import write_atomically

__all__ = ["read_seg_nrrd", "read_segment_layers", "write_seg_nrrd", "write_layered_seg_nrrd", "write_layered_label"]


def read_seg_nrrd(path: Path, labels: Mapping[str, int], reference: sitk.Image | None, pixel_type: int,
                  skip: Mapping[str, int] | None = None) -> sitk.Image:
    """Read a Slicer segmentation in the task's own label values (segments matched by name).

    Args:
        path: the ``.seg.nrrd`` file.
        labels: label name -> value of the task.
        reference: the image the labels belong to; a crop or shift of its grid is resampled onto it.
        pixel_type: SimpleITK pixel type of the result (uint8 or uint16).
        skip: segments to leave out (a sub-task's siblings' labels, name -> value).

    Returns:
        label image on ``reference``'s grid (or the file's own grid without ``reference``).

    Raises:
        LabelSharingError: unreadable or damaged file, the task's segments in several layers (they
            overlap), a segment that is not a label of the task, duplicate names, a segment without
            label value.
    """
    segmentation = _read(path)
    voxels = np.asarray(segmentation["voxels"])
    layers = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    segments = segmentation.get("segments", [])
    skip = skip or {}
    stored = _segment_label_values(path, [s for s in segments if s.get("name", "") not in skip], labels, len(layers))
    used = sorted({layer for layer, _ in stored})
    if len(used) > 1:
        names = "; ".join(f"layer {layer}: " + ", ".join(n for (l, _), n in stored.items() if l == layer)
                          for layer in used)
        raise LabelSharingError(
            f"{path} has overlapping segments ({names}). 'labelsharing plan', 'train', 'predict' and 'evaluate' "
            "split such a task into sub-tasks, one per layer (see the README, 'Overlapping segments'); this step "
            "reads the task whole. Make the segments exclusive in Slicer's Segment Editor (Masking: 'Overwrite "
            "other segments') and save again, or train a new model with the task."
        )
    layer = used[0] if used else 0
    voxels = layers[layer]
    skipped = {s.get("labelValue") for s in segments if s.get("name", "") in skip and s.get("layer", 0) == layer}
    stored = {value: name for (_, value), name in stored.items()}
    unexplained = sorted(set(np.unique(voxels).tolist()) - {0, *stored, *skipped})
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


def _read(path: Path, skip_voxels: bool = False) -> dict:
    """slicerio's reading of a ``.seg.nrrd`` (``skip_voxels``: the header only)."""
    import slicerio

    try:
        return slicerio.read_segmentation(str(path), skip_voxels=skip_voxels)
    except (OSError, ValueError, KeyError, IndexError, zlib.error) as exc:
        # pynrrd/slicerio raise these for malformed headers and damaged gzip data
        raise LabelSharingError(f"Cannot read Slicer segmentation {path}: {exc}") from exc


def read_segment_layers(path: Path) -> dict[str, int]:
    """Segment name -> layer of a ``.seg.nrrd``, from its header alone (no voxels are read)."""
    return {str(s.get("name", "")): int(s.get("layer", 0)) for s in _read(path, skip_voxels=True).get("segments", [])}


def _segment_label_values(path: Path, segments: Sequence[Mapping], labels: Mapping[str, int],
                          layers: int) -> dict[tuple[int, int], str]:
    """(layer, stored label value) -> segment name of a ``.seg.nrrd``'s segments, checked against the task."""
    by_value: dict[tuple[int, int], str] = {}
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
        layer = segment.get("layer", 0)
        if not 0 <= layer < layers:
            raise LabelSharingError(
                f"{path}: segment '{name}' is in layer {layer}, but the file has "
                f"{'a single layer' if layers == 1 else f'{layers} layers'}. "
                "The file is damaged; save the segmentation again from Slicer."
            )
        key = (layer, segment["labelValue"])
        if key in by_value:
            raise LabelSharingError(
                f"{path}: segments '{by_value[key]}' and '{name}' share label value {key[1]}, so their voxels "
                "cannot be told apart. Save the segmentation again from 3D Slicer."
            )
        by_value[key] = name
    return by_value


def write_layered_label(layers: Sequence[np.ndarray], reference: sitk.Image, path: str | Path,
                        segments: Sequence[Sequence[SegmentInfo]]) -> Path:
    """Write label maps that may overlap (one per layer, each as :func:`write_label` takes it) as
    one layered Slicer segmentation, atomically; a single layer is written as :func:`write_label` does.

    Raises:
        LabelSharingError: several layers and ``path`` is not a ``.seg.nrrd`` (a label map holds one
            label per voxel), or the file could not be written completely.
    """
    path = Path(path)
    if len(layers) == 1:
        return write_label(layers[0], reference, path, segments[0])
    if not path.name.lower().endswith(SEG_NRRD):
        raise LabelSharingError(f"{path}: {len(layers)} layers of overlapping segments cannot be written as one label "
                                f"map (a voxel holds one label); write a Slicer segmentation ({SEG_NRRD}).")
    size = reference.GetSize() + ((1,) if reference.GetDimension() == 2 else ())
    return write_atomically(path, lambda temporary: write_layered_seg_nrrd(layers, reference, temporary, segments),
                            lambda temporary: _check_written_image(temporary, size, len(layers)))


def write_seg_nrrd(labels: np.ndarray, reference: sitk.Image, path: Path, segments: Sequence[SegmentInfo]) -> None:
    """Write ``labels`` ((z, y, x) or (y, x), on ``reference``'s grid) as a Slicer segmentation with
    one segment per entry of ``segments`` (:class:`SegmentInfo` or a ``(name, value, colour)``
    tuple). A segment's terminology goes into its ``TerminologyEntry`` tag, which Slicer reads
    back into the segment (``SegmentN_Tags``, ``vtkMRMLSegmentationStorageNode``). Not atomic by
    itself: callers write to a temporary path (see :func:`labelsharing.data.image_io.write_label`)."""
    write_layered_seg_nrrd([labels], reference, path, [segments])


def write_layered_seg_nrrd(layers: Sequence[np.ndarray], reference: sitk.Image, path: Path,
                           segments: Sequence[Sequence[SegmentInfo]]) -> None:
    """Write one Slicer segmentation whose layer ``l`` holds ``layers[l]`` with segments ``segments[l]``.

    Segments of different layers may overlap (Slicer keeps each layer as one shared labelmap,
    ``vtkMRMLSegmentationStorageNode``); one layer writes an ordinary 3D file, several a 4D
    (layer, i, j, k) one. Segment ids are ``Segment_<layer>_<value>`` beyond the first layer, so
    equal label values of two layers stay distinct segments. Not atomic by itself (see
    :func:`write_seg_nrrd`).
    """
    import slicerio

    if reference.GetDimension() == 2:
        layers = [labels[np.newaxis] for labels in layers]
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
    voxels = [np.transpose(labels, (2, 1, 0)) for labels in layers]  # (k, j, i) -> (i, j, k)
    dtype = np.result_type(*voxels)
    segmentation = {
        "voxels": np.ascontiguousarray(voxels[0] if len(voxels) == 1 else np.stack(voxels).astype(dtype, copy=False)),
        "ijkToLPS": ijk_to_lps,
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": [_segment(SegmentInfo(*segment), layer_voxels, layer)
                     for layer, (layer_voxels, layer_segments) in enumerate(zip(voxels, segments))
                     for segment in layer_segments],
    }
    slicerio.write_segmentation(str(path), segmentation)


def _segment(info: SegmentInfo, voxels: np.ndarray, layer: int = 0) -> dict:
    """slicerio's description of one segment of ``voxels`` ((i, j, k) label values of ``layer``)."""
    from slicerio.segmentation import terminology_entry_from_string

    segment = {
        "id": f"Segment_{info.value}" if layer == 0 else f"Segment_{layer}_{info.value}",
        "name": info.name,
        "labelValue": int(info.value),
        "layer": int(layer),
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
