"""The ``plan`` stage: read task datasets, measure label sizes, check which tasks look alike
(:mod:`labelsharing.data.appearance`), build the shared-label plan.

Datasets and images are read through imports inside the functions: ``labelsharing info`` needs
only :func:`plan_table`, and starts without SimpleITK.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from labelsharing.errors import LabelSharingError
from labelsharing.plan.layer_split import subtask_name
from labelsharing.plan.shared_labels import USER_PIN, SharedLabelPlan
from labelsharing.utils import SILENT, ProgressReporter, format_table

if TYPE_CHECKING:
    from labelsharing.data import Appearance, TaskSummary

__all__ = ["summarise_tasks", "plan_tasks", "plan_task_datasets", "plan_table", "read_pins"]


def summarise_tasks(folders: Sequence[str | Path], progress: ProgressReporter = SILENT,
                    thumbnails: bool = False) -> list[TaskSummary]:
    """Read, validate and measure each task dataset folder, one case at a time.

    A task whose segments overlap is read as its sub-tasks ``TASK/1``, ``TASK/2``, ... (one per
    layer group, :mod:`labelsharing.plan.layer_split`), each measured as a task.
    ``thumbnails`` keeps each case's appearance thumbnails in the summaries (see ``inspect_task_dataset``).

    Raises:
        LabelSharingError: on the first invalid dataset, or two datasets with one task name.
    """
    from labelsharing.data import inspect_task_dataset, read_task_dataset, split_overlapping_task

    tasks = [sub for folder in folders for sub in split_overlapping_task(read_task_dataset(folder))]
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
            summaries.append(inspect_task_dataset(task, lambda done, total: advance(), thumbnails))
    return summaries


def plan_tasks(
    summaries: Sequence[TaskSummary], pins: Mapping[str, Mapping[str, int]] | None = None,
    look_alike: Sequence[Sequence[str]] = (), keep_apart: bool = False,
) -> SharedLabelPlan:
    """Build the shared-label plan of several measured tasks (see ``SharedLabelPlan.build``);
    ``look_alike`` groups get their matching labels pinned together (and, with ``keep_apart``,
    their other labels on shared labels of their own), sub-tasks of a split task
    (``TaskDataset.parent``) are kept on separate shared labels."""
    splits: dict[str, list[str]] = {}
    for summary in summaries:
        if summary.task.parent is not None:
            splits.setdefault(summary.task.parent, []).append(summary.task.name)
    return SharedLabelPlan.build({s.task.name: s.stats for s in summaries}, pins, look_alike,
                                 {s.task.name: s.task.terminology for s in summaries}, splits, keep_apart)


def plan_task_datasets(
    folders: Sequence[str | Path],
    pins: Mapping[str, Mapping[str, int]] | None = None,
    progress: ProgressReporter = SILENT,
    log: Callable[[str], None] = print,
    keep_apart: bool = False,
) -> tuple[SharedLabelPlan, list[TaskSummary], Appearance]:
    """Check and measure the datasets, run the look-alike check, build their plan, and report
    the warnings of all three. Each case is read once, and no volume is kept. ``keep_apart``
    keeps look-alike tasks apart (see ``SharedLabelPlan.build``).

    Returns:
        the plan, the task summaries (with their cases' thumbnails) and the look-alike check's result.
    """
    from labelsharing.data import compare_datasets

    summaries = summarise_tasks(folders, progress, thumbnails=True)
    # Sub-tasks of one split task have the same images: the first stands for all in the look-alike check.
    compared = [s for s in summaries if s.task.parent is None or s.task.name == subtask_name(s.task.parent, 1)]
    appearance = compare_datasets([s.task for s in compared], {s.task.name: s.thumbnails for s in compared})
    plan = plan_tasks(summaries, pins, appearance.groups(), keep_apart)
    for note in [w for s in summaries for w in s.warnings] + appearance.warnings() + plan.warnings:
        log(f"warning: {note}")
    return plan, summaries, appearance


def plan_table(plan: SharedLabelPlan) -> str:
    """Shared labels as rows, tasks as columns: ``label (relative size %)`` in each cell.

    Pinned labels are marked ``[pin]`` (the user's own) or ``[auto]`` (matched across look-alike
    tasks); a note under the table gives each automatic pin's reason. A task split by overlapping
    segments shows each sub-task as ``TASK/g [layer g]``, with a note naming the split; a look-alike
    group kept apart gets a note too.
    """
    rows, notes = [], []
    for shared in range(1, plan.n_shared + 1):
        row: list[object] = [f"shared {shared}"]
        for task in plan.task_names:
            entry = next(((n, a) for n, a in plan.labels(task).items() if a.shared == shared), None)
            if entry is None:
                row.append("-")
                continue
            reason = plan.pin_reasons.get(task, {}).get(entry[0])
            mark = "" if reason is None else " [pin]" if reason == USER_PIN else " [auto]"
            row.append(f"{entry[0]} ({100 * entry[1].relative_size:.2f}%){mark}")
            if mark == " [auto]":
                notes.append(f"[auto] {task}/{entry[0]} -> shared {shared}: {reason}")
        rows.append(row)
    parent_of = {sub: parent for parent, subtasks in plan.splits.items() for sub in subtasks}
    headers = [f"{task} [layer {task[len(parent_of[task]) + 1:]}]" if task in parent_of else task
               for task in plan.task_names]
    notes += [f"[layer] {parent} has overlapping segments: split into {', '.join(subtasks)} (one per layer group, "
              f"never on one shared label); predict --task {parent} writes them as one layered .seg.nrrd"
              for parent, subtasks in plan.splits.items()]
    for group in plan.apart or []:
        others = "the other's" if len(group) == 2 else "the others'"
        notes.append(f"[apart] {', '.join(group)} look alike: their different structures are on different shared "
                     f"labels, each left out of {others} softmax")
    table = format_table(["shared label", *headers], rows)
    return "\n".join([table, *notes])


def read_pins(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a pins file: ``{"<task>": {"<label name>": <shared label>}}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LabelSharingError(f"Cannot read pins file {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise LabelSharingError(f'{path}: pins must look like {{"<task>": {{"<label>": <shared label>}}}}.')
    pins: dict[str, dict[str, int]] = {}
    for task, entries in data.items():
        for label, shared in entries.items():
            if isinstance(shared, bool) or not isinstance(shared, int):
                raise LabelSharingError(f"{path}: pin {task}/{label} must be an integer shared label, got {shared!r}.")
            pins.setdefault(task, {})[label] = shared
    return pins
