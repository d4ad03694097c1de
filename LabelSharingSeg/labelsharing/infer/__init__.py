"""Inference: the predictor, its backends (PyTorch, OpenVINO, ...) and evaluation on labelled cases.
"""

from __future__ import annotations

from labelsharing.utils import lazy_exports

_EXPORTS = {
    "predictor": ("OUTPUT_FORMATS", "Predictor"),
    "backends": ("BACKENDS", "PRECISIONS"),
    "dicom_seg": ("SEG_TYPES", "export_dicom_seg", "read_segments", "write_dicom_seg"),
    "familiarity": (
        "AUTO_TASK", "GRID", "MARGIN", "MIN_SCORE", "POWER", "QUANTILES", "SAMPLED_SLICES", "TaskChoice",
        "VolumeSignature", "examine_image", "slice_statistics",
        "familiarity_report", "recognise_task", "reference_entry", "relative_distance", "unpack_rows",
        "volume_signature",
    ),
    "small_islands": ("ISLAND_FRACTION", "candidate_min_sizes", "choose_min_sizes", "remove_small_islands"),
    "evaluation": ("DiceAccumulator", "evaluate_model", "evaluation_table", "format_dice", "split_warning"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
