"""Training: a new model on several tasks, or one more task added to a model, on one or several
processes, with checkpoints to resume from.
"""

from __future__ import annotations

from labelsharing.utils import lazy_exports

_EXPORTS = {
    "options": ("TrainingOptions", "Log"),
    "train_model": ("train", "task_slice_side"),
    "trainer": ("Trainer",),
    "selection": ("FitResult",),
    "incremental": ("add_task", "extend_model"),
    "fine_tuning": ("DEFAULT_REPLAY", "forgetting_table", "replay_shares", "prepare_stored_task"),
    "task_update": ("update",),
    "task_data": ("PreparedTask", "prepare_task", "split_cases"),
    "checkpoint": ("RunFolder", "work_folder_for"),
    "validation": ("validation_dice",),
    "familiarity_fit": ("FOREIGN_VOLUMES", "MAX_VOLUMES", "fit_familiarity"),
    "island_fit": ("fit_small_islands",),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
