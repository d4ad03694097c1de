"""The ``plan`` stage: read task datasets, measure label sizes, build the shared-label plan."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

from labelsharing.datasets import TaskSummary, inspect_task_dataset, read_task_dataset
from labelsharing.errors import LabelSharingError
from labelsharing.plan import SharedLabelPlan
from labelsharing.progress import SILENT, ProgressReporter
from labelsharing.tables import format_table

__all__ = ["summarise_tasks", "plan_tasks", "plan_task_datasets", "plan_table"]


def summarise_tasks(folders: Sequence[str | Path], progress: ProgressReporter = SILENT,
                    keep_cases: bool = False) -> list[TaskSummary]:
    """Read, validate and measure each task dataset folder.

    ``keep_cases`` keeps the loaded images in the summaries (see ``inspect_task_dataset``).

    Raises:
        LabelSharingError: on the first invalid dataset, or two datasets with one task name.
    """
    tasks = [read_task_dataset(folder) for folder in folders]
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LabelSharingError(
            f"Several datasets are named {', '.join(duplicates)}; task names must be unique "
            "(set a distinct 'name' in each dataset.json)."
        )
    summaries = []
    for task in tasks:
        with progress.track(f"checking {task.name}", total=len(task.training), unit="case") as advance:
            summaries.append(inspect_task_dataset(task, lambda done, total: advance(), keep_cases))
    return summaries


def plan_tasks(
    summaries: Sequence[TaskSummary], pins: Mapping[str, Mapping[str, int]] | None = None
) -> SharedLabelPlan:
    """Build the shared-label plan of several measured tasks (see ``SharedLabelPlan.build``)."""
    return SharedLabelPlan.build({s.task.name: s.stats for s in summaries}, pins)


def plan_task_datasets(
    folders: Sequence[str | Path],
    pins: Mapping[str, Mapping[str, int]] | None = None,
    progress: ProgressReporter = SILENT,
    log: Callable[[str], None] = print,
    keep_cases: bool = False,
) -> tuple[SharedLabelPlan, list[TaskSummary]]:
    """Check and measure the datasets, build their plan, and report the warnings of both.

    Returns:
        the plan and the task summaries (with the loaded cases if ``keep_cases``).
    """
    summaries = summarise_tasks(folders, progress, keep_cases)
    plan = plan_tasks(summaries, pins)
    for note in [w for s in summaries for w in s.warnings] + plan.warnings:
        log(f"warning: {note}")
    return plan, summaries


def plan_table(plan: SharedLabelPlan) -> str:
    """Shared labels as rows, tasks as columns: ``label (relative size %)`` in each cell."""
    rows = []
    for shared in range(1, plan.n_shared + 1):
        row: list[object] = [f"shared {shared}"]
        for task in plan.task_names:
            entry = next(((n, a) for n, a in plan.labels(task).items() if a.shared == shared), None)
            row.append("-" if entry is None else f"{entry[0]} ({100 * entry[1].relative_size:.2f}%)")
        rows.append(row)
    return format_table(["shared label", *plan.task_names], rows)
