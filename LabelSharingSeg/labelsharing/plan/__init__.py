"""Plan: label sizes, the shared-label plan, pins (matched by name or terminology code) and the
look-alike check across tasks.

``shared_labels``, ``label_matching`` and ``terminology`` need numpy alone: the Slicer process imports this
package to show the grouping (and nothing else of the engine).
"""

from __future__ import annotations

from labelsharing.utils import lazy_exports

_EXPORTS = {
    "shared_labels": (
        "BACKGROUND", "LabelStats", "LabelAssignment", "SharedLabelPlan", "rank_labels_by_size",
    ),
    "label_sizes": ("measure_label_sizes",),
    "terminology": (
        "EXAMPLE_ENTRY", "GENERIC_ENTRY", "Code", "LabelCodes", "label_codes", "entry_from_codes",
        "terminology_entry_problem",
    ),
    "layer_split": ("SUBTASK_SEPARATOR", "subtask_name", "group_apart", "group_layers", "visible_tasks"),
    "planner": ("summarise_tasks", "plan_tasks", "plan_task_datasets", "plan_table", "read_pins"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
