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
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from labelsharing import __version__
from labelsharing.data import DicomSeries, SegmentInfo
from labelsharing.errors import LabelSharingError
from labelsharing.plan import Code, label_codes

__all__ = ["SEG_TYPES", "ALGORITHM_NAME", "write_dicom_seg"]

#: Segmentation types ``predict --seg-type`` offers; the first is the default.
SEG_TYPES = ("binary", "labelmap")
ALGORITHM_NAME = "LabelSharingSeg"
_INSTALL = "pip install 'labelsharing[dicom]' (highdicom >= 0.24, Python >= 3.10)"


def write_dicom_seg(labels: np.ndarray, series: DicomSeries, path: str | Path, segments: Sequence[SegmentInfo],
                    task: str, model_sha256: str | None = None, seg_type: str = "binary") -> Path:
    """Write ``labels`` as a DICOM SEG of ``series`` (not atomic by itself: callers write to a temporary path).

    Args:
        labels: task label values, (z, y, x) on ``series.image``'s grid (what the predictor returns).
        series: the source series (headers and slice order).
        path: the output ``.dcm`` file.
        segments: the task's labels (name, value, colour, terminology), by ascending value.
        task: the task name (an algorithm parameter and the content description).
        model_sha256: the model weights' SHA-256 (an algorithm parameter and the device serial number).
        seg_type: ``binary`` or ``labelmap`` (:data:`SEG_TYPES`).

    Raises:
        LabelSharingError: highdicom missing or too old, an unknown ``seg_type``.
    """
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    if seg_type not in SEG_TYPES:
        raise LabelSharingError(f"Unknown DICOM SEG type '{seg_type}'; choose one of {', '.join(SEG_TYPES)}.")
    frames = _source_frames(labels, series, [segment.value for segment in segments])
    parameters = {"task": task, **({"model_sha256": model_sha256} if model_sha256 else {})}
    algorithm = hd.AlgorithmIdentificationSequence(name=ALGORITHM_NAME, version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence, parameters=parameters)
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
        device_serial_number=(model_sha256 or "unsaved model")[:16],
        content_label="LABELSHARING",
        content_description=f"{task}"[:64],
        series_description=f"{ALGORITHM_NAME} {task}"[:64],
        omit_empty_frames=bool(frames.any()),  # an all-empty result still needs frames
    )
    seg.save_as(str(path))
    return Path(path)


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
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
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
