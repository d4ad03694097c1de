"""Data: task datasets, image, DICOM series and ``.seg.nrrd`` I/O, orientation and slicing, intensity
normalisation, and the appearance thumbnails of the look-alike check.
"""

from __future__ import annotations

from labelsharing.utils import lazy_exports

_EXPORTS = {
    "datasets": (
        "MODALITIES", "Case", "TaskDataset", "TaskSummary", "read_task_dataset", "inspect_task_dataset",
        "load_case", "check_same_dimension",
    ),
    "new_case": ("add_case", "next_case_id"),
    "image_io": (
        "SegmentInfo", "geometry_mismatch", "read_image", "read_image_header", "read_label", "write_image",
        "write_label", "case_id_from_path",
    ),
    "seg_nrrd": ("write_layered_label",),
    "overlap_split": ("split_overlapping_task",),
    "dicom_series": ("DicomSeries", "SeriesGeometry", "is_dicom_input", "read_dicom_series", "read_dicom_geometry"),
    "orientation": ("Slicing", "plan_slicing"),
    "preprocessing": (
        "NORMALIZATION_BY_MODALITY", "PLANES", "SquareFit", "choose_input_size", "fit_ct_normalization",
        "normalize_intensities", "intensity_normalizer",
    ),
    "label_resampling": ("resampled_argmax",),
    "appearance": ("Appearance", "compare_datasets"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
