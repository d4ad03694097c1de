"""DICOM SEG out: a predicted label map written as a DICOM Segmentation object with highdicom.

One SEG per input series. Its frames are the source series' frames (the label map is on the
source grid, so no resampling), each referencing its source image (single-frame series) or
frame (enhanced multi-frame object). One segment per task label, by ascending label value:
segment label = the label's name, recommended display CIELab colour from its RGB colour,
Segmented Property Category/Type (and Anatomic Region where given) from its terminology entry
(:func:`labelsharing.plan.label_codes`; the generic Tissue/Tissue when the label has no codes),
algorithm identification (name ``LabelSharingSeg``, family Artificial Intelligence, version,
model weights' SHA-256 and the task as parameters). Patient, study and frame of reference come
from the source via highdicom.

``BINARY`` (the default) is read by every SEG reader; ``LABELMAP`` (DICOM 2024, one frame per
slice holding all segments) is smaller but newer readers only.

:func:`export_dicom_seg` writes an existing segmentation (not a prediction) the same way: a label
map with its ``<name>.labels.json`` (what the Slicer module's label-map export writes: ``labels``,
``colors``, ``terminology``) or a Slicer ``.seg.nrrd``, on the grid of a DICOM series. The Slicer
module uses it when Slicer itself has no DICOM SEG exporter (``labelsharing export-seg``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from labelsharing import __version__
from labelsharing.data import DicomSeries, SegmentInfo, case_id_from_path, geometry_mismatch, read_dicom_series, \
    read_label
from labelsharing.errors import LabelSharingError
from labelsharing.model import label_color
from labelsharing.plan import Code, label_codes, terminology_entry_problem

__all__ = ["SEG_TYPES", "ALGORITHM_NAME", "write_dicom_seg", "export_dicom_seg", "read_segments"]

#: Segmentation types ``predict --seg-type`` offers; the first is the default.
SEG_TYPES = ("binary", "labelmap")
ALGORITHM_NAME = "LabelSharingSeg"
_SEG_NRRD = ".seg.nrrd"
_INSTALL = "pip install 'labelsharing[dicom]' (highdicom >= 0.24, Python >= 3.10)"


def write_dicom_seg(labels: np.ndarray, series: DicomSeries, path: str | Path, segments: Sequence[SegmentInfo],
                    task: str, model_sha256: str | None = None, seg_type: str = "binary",
                    manual: bool = False) -> Path:
    """Write ``labels`` as a DICOM SEG of ``series`` (not atomic by itself: callers write to a temporary path).

    Args:
        labels: task label values, (z, y, x) on ``series.image``'s grid (what the predictor returns).
        series: the source series (headers and slice order).
        path: the output ``.dcm`` file.
        segments: the task's labels (name, value, colour, terminology), by ascending value.
        task: the task name (an algorithm parameter and the content description).
        model_sha256: the model weights' SHA-256 (an algorithm parameter and the device serial number).
        seg_type: ``binary`` or ``labelmap`` (:data:`SEG_TYPES`).
        manual: segments made or corrected by a person (:func:`export_dicom_seg`): algorithm type
            MANUAL and no algorithm identification, as Slicer's own exporter writes them; else
            AUTOMATIC with this algorithm's identification.

    Raises:
        LabelSharingError: highdicom missing or too old, an unknown ``seg_type``.
    """
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    if seg_type not in SEG_TYPES:
        raise LabelSharingError(f"Unknown DICOM SEG type '{seg_type}'; choose one of {', '.join(SEG_TYPES)}.")
    frames = _source_frames(labels, series, [segment.value for segment in segments])
    parameters = {"task": task, **({"model_sha256": model_sha256} if model_sha256 else {})}
    algorithm = None if manual else hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, version=__version__, family=codes.cid7162.ArtificialIntelligence, parameters=parameters)
    descriptions = [_description(hd, number, segment, algorithm) for number, segment in enumerate(segments, start=1)]
    seg = hd.seg.Segmentation(
        source_images=list(series.datasets),
        pixel_array=frames,
        segmentation_type=seg_type.upper(),
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=_series_number(series),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=ALGORITHM_NAME,
        manufacturer_model_name=f"{ALGORITHM_NAME} {task}"[:64],
        software_versions=__version__,
        device_serial_number=(model_sha256 or ("none" if manual else "unsaved model"))[:16],
        content_label="LABELSHARING",
        content_description=f"{task}"[:64],
        series_description=(task if manual else f"{ALGORITHM_NAME} {task}")[:64],
        omit_empty_frames=bool(frames.any()),  # an all-empty result still needs frames
    )
    seg.save_as(str(path))
    return Path(path)


def export_dicom_seg(label_file: str | Path, source: str | Path, path: str | Path, series_uid: str | None = None,
                     seg_type: str = "binary") -> Path:
    """Write an existing segmentation as a DICOM SEG of the series it was drawn on (segments as MANUAL).

    Args:
        label_file: a label map with ``<name>.labels.json`` beside it, or a Slicer ``.seg.nrrd``
            (:func:`read_segments`); on the series' grid (a ``.seg.nrrd`` may be a crop of it).
        source: the DICOM series (a folder or ``.zip``), as ``predict`` reads it.
        path: the ``.dcm`` file to write (not atomic by itself: callers write to a temporary path).
        series_uid: the SeriesInstanceUID to read when ``source`` holds several series.
        seg_type: ``binary`` or ``labelmap`` (:data:`SEG_TYPES`).

    Raises:
        LabelSharingError: the errors of :func:`read_segments`, of reading the series, a label map
            not on the series' grid, no segment with voxels, and those of :func:`write_dicom_seg`.
    """
    label_file = Path(label_file)
    segments = read_segments(label_file)
    series = read_dicom_series(source, series_uid)
    labels = read_label(label_file, {segment.name: segment.value for segment in segments}, reference=series.image)
    mismatch = geometry_mismatch(labels, series.image)
    if mismatch is not None:
        raise LabelSharingError(
            f"{label_file} is not on the grid of the DICOM series {source} ({mismatch}), so its voxels cannot be "
            "placed on the series' frames. Export the label map on the grid of the volume loaded from that series.")
    array = sitk.GetArrayFromImage(labels)
    present = set(np.unique(array).tolist())
    kept = [segment for segment in segments if segment.value in present]
    if not kept:
        raise LabelSharingError(f"{label_file} has no segment with voxels: there is nothing to write as a DICOM SEG.")
    return write_dicom_seg(array, series, path, kept, task=case_id_from_path(label_file, is_label=True),
                           seg_type=seg_type, manual=True)


def read_segments(label_file: str | Path) -> list[SegmentInfo]:
    """The segments of a segmentation file, by ascending label value.

    A ``.seg.nrrd`` names them itself (name, label value, colour, terminology). Any other label map
    needs ``<name>.labels.json`` beside it (``<name>`` = the file name without its ending), as the
    Slicer module's label-map export writes it: ``{"labels": {name: value}, "colors": {name: [r, g, b]
    in 0..1}, "terminology": {name: Slicer terminology entry}}``; ``background`` (value 0) is not a
    segment. A segment without colour gets the default palette's, one without terminology is coded
    as the generic Tissue/Tissue when written.

    Raises:
        LabelSharingError: no sidecar, a sidecar that is not this shape, a terminology entry Slicer
            could not read (naming the segment).
    """
    label_file = Path(label_file)
    if label_file.name.lower().endswith(_SEG_NRRD):
        return _seg_nrrd_segments(label_file)
    sidecar = label_file.with_name(f"{case_id_from_path(label_file, is_label=True)}.labels.json")
    if not sidecar.is_file():
        raise LabelSharingError(
            f"{label_file} is a label map without segment names: {sidecar.name} (labels, colors, terminology) is "
            "missing beside it. Export the segmentation as a label map from the Slicer module, which writes it, or "
            "use a Slicer .seg.nrrd.")
    try:
        description = json.loads(sidecar.read_text(encoding="utf-8"))
        labels = {str(n): int(v) for n, v in description["labels"].items() if n != "background" and int(v) != 0}
        colors = {str(n): tuple(float(c) for c in rgb) for n, rgb in description.get("colors", {}).items()}
        terminology = {str(n): str(e) for n, e in description.get("terminology", {}).items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LabelSharingError(
            f"{sidecar} is not a segment description ({exc}); it needs \"labels\": {{name: value}} and may have "
            "\"colors\" and \"terminology\". Export the segmentation from the Slicer module again.") from exc
    return _checked([SegmentInfo(name, value, colors.get(name), terminology.get(name))
                     for name, value in labels.items()], sidecar)


def _seg_nrrd_segments(path: Path) -> list[SegmentInfo]:
    import slicerio
    from slicerio.segmentation import terminology_entry_to_string

    try:
        segments = slicerio.read_segmentation(str(path), skip_voxels=True).get("segments", [])
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise LabelSharingError(f"Cannot read Slicer segmentation {path}: {exc}") from exc
    return _checked([SegmentInfo(str(segment.get("name", "")), int(segment.get("labelValue", 0)),
                                 segment.get("color"),
                                 terminology_entry_to_string(segment["terminology"])
                                 if segment.get("terminology") else None)
                     for segment in segments], path)


def _checked(segments: list[SegmentInfo], source: Path) -> list[SegmentInfo]:
    """Segments by ascending value, with default colours and checked terminology."""
    checked = []
    for number, segment in enumerate(sorted(segments, key=lambda s: s.value), start=1):
        problem = terminology_entry_problem(segment.terminology) if segment.terminology else None
        if problem is not None:
            raise LabelSharingError(f"{source}: the terminology of segment '{segment.name}' {problem}. Choose its "
                                    "terminology again in Slicer's Segment Editor.")
        color = tuple(segment.color) if segment.color is not None and len(segment.color) == 3 else label_color(number)
        checked.append(segment._replace(color=tuple(float(c) for c in color)))
    return checked


def _highdicom():
    try:
        import highdicom as hd
    except ImportError as exc:
        raise LabelSharingError(f"Writing DICOM SEG needs highdicom: {_INSTALL}.") from exc
    if not hasattr(hd.seg.SegmentationTypeValues, "LABELMAP"):
        raise LabelSharingError(f"highdicom {hd.__version__} is too old for DICOM SEG output: {_INSTALL}.")
    return hd


def _source_frames(labels: np.ndarray, series: DicomSeries, values: Sequence[int]) -> np.ndarray:
    """Segment numbers (1..N by ascending label value, 0 = none) per source frame: (frames, rows, columns).

    The image's z slice k is the source's frame ``series.frame_order[k]`` (multi-frame) or its
    k-th dataset (single-frame, already in z order).
    """
    lookup = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint16)
    for number, value in enumerate(values, start=1):
        if value < len(lookup):
            lookup[value] = number
    numbers = lookup[labels].astype(np.uint8 if len(values) < 256 else np.uint16)
    if not series.frame_order:
        return numbers
    frames = np.empty_like(numbers)
    frames[list(series.frame_order)] = numbers
    return frames


def _description(hd, number: int, segment: SegmentInfo, algorithm):
    codes = label_codes(segment.terminology)
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.name[:64],
        segmented_property_category=_concept(hd, codes.category),
        segmented_property_type=_concept(hd, codes.type),
        algorithm_type=(hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if algorithm
                        else hd.seg.SegmentAlgorithmTypeValues.MANUAL),
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id=segment.name[:64],
        anatomic_regions=[_concept(hd, codes.region)] if codes.region else None,
        display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in segment.color)),
    )


def _concept(hd, code: Code):
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def _series_number(series: DicomSeries) -> int:
    """The source's series number + 1000 (an unused, recognisable number), 1000 without one."""
    number = series.datasets[0].get("SeriesNumber")
    return int(number) + 1000 if number not in (None, "") else 1000
