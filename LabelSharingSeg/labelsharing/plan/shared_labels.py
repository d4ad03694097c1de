"""The shared-label plan: rank each task's labels by size and share them across tasks.

Label sharing (Anand et al., MICCAI ADSMI 2024): for every label j of task i the average
relative size ``s_ij = mean over images of (voxels of j) / (voxels of the image)`` is measured;
each task's labels are sorted largest first, and the label of rank r in *every* task maps to
the same shared label ``r``. One network with ``n_shared + 1`` outputs (background included)
then serves all tasks; a task's prediction is mapped back through its inverse map.

Tasks whose images look alike (``look_alike`` groups, found by :mod:`labelsharing.data.appearance`)
get their matching labels (same name or terminology code) pinned to one shared label
(:mod:`labelsharing.plan.label_matching`); every pin's reason is kept (``pin_reasons``).
With ``keep_apart``, their other labels go to shared labels of their own, left out of the
partners' softmax (:mod:`labelsharing.plan.look_alike_apart`).

This module needs numpy only (no torch, no SimpleITK), so the Slicer module can use it in
Slicer's own process to show the grouping while an annotator defines a task.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from labelsharing.errors import LabelSharingError
from labelsharing.plan.label_matching import match_pins, mixing_conflicts
from labelsharing.plan.layer_split import check_splits, layer_pins, parent_pins, sibling_channels, split_width
from labelsharing.plan.look_alike_apart import apart_placement, check_apart, merge_groups, partner_channels, \
    with_siblings

__all__ = ["BACKGROUND", "FRAGILE_SIZE_RATIO", "LabelStats", "LabelAssignment", "SharedLabelPlan", "rank_labels_by_size"]

BACKGROUND = 0
#: Two labels of one task whose sizes differ by less than this fraction rank fragilely.
FRAGILE_SIZE_RATIO = 0.10
#: The pin reason of a user's own pin.
USER_PIN = "pinned by you"


@dataclass(frozen=True)
class LabelStats:
    """Size statistics of one label of one task.

    Attributes:
        value: the label's value in the task's own label maps.
        relative_size: mean over the task's images of label voxels / image voxels.
        presence: fraction of the task's images in which the label occurs.
    """

    value: int
    relative_size: float
    presence: float


@dataclass(frozen=True)
class LabelAssignment:
    """A task label and the shared label it is mapped to (1-based)."""

    value: int
    relative_size: float
    presence: float
    shared: int


class SharedLabelPlan:
    """Shared labels 1..n_shared and each task's local <-> shared label maps.

    Build it with :meth:`build` (from size statistics) or :meth:`from_dict` (from plan JSON).
    Shared label 0 is background in every task. ``pin_reasons`` holds task -> label -> why the
    label is pinned (:data:`USER_PIN`, or the automatic match ``same name as B/white_matter``).
    ``splits`` holds parent task -> its sub-tasks for tasks split by overlapping segments
    (:mod:`labelsharing.plan.layer_split`); sub-tasks of one parent never share a shared label.
    ``apart`` holds the look-alike groups kept apart (:mod:`labelsharing.plan.look_alike_apart`):
    ``None`` without the mode, a list (maybe empty) with it, so tasks added later are kept apart too.
    """

    def __init__(self, tasks: Mapping[str, Mapping[str, LabelAssignment]], n_shared: int, warnings: Iterable[str] = (),
                 pin_reasons: Mapping[str, Mapping[str, str]] | None = None,
                 splits: Mapping[str, Sequence[str]] | None = None, apart: Sequence[Sequence[str]] | None = None):
        self._tasks = {task: dict(labels) for task, labels in tasks.items()}
        self.n_shared = int(n_shared)
        self.warnings = list(warnings)
        self.pin_reasons = {task: dict(reasons) for task, reasons in (pin_reasons or {}).items() if reasons}
        self.splits = {parent: list(subtasks) for parent, subtasks in (splits or {}).items()}
        self.apart = None if apart is None else [list(group) for group in apart]
        for task, labels in self._tasks.items():
            _check_task_assignment(task, labels, self.n_shared)
        if self._tasks:
            check_splits(self.splits, {t: [a.shared for a in labels.values()] for t, labels in self._tasks.items()})
            check_apart(self.apart or [], self._tasks)

    # ----------------------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        task_stats: Mapping[str, Mapping[str, LabelStats]],
        pins: Mapping[str, Mapping[str, int]] | None = None,
        look_alike: Sequence[Sequence[str]] = (),
        terminology: Mapping[str, Mapping[str, str]] | None = None,
        splits: Mapping[str, Sequence[str]] | None = None,
        keep_apart: bool = False,
    ) -> SharedLabelPlan:
        """Rank every task's labels by size and map rank r to shared label r.

        Ties are broken by label value (smaller value first), so the plan is deterministic.
        Pinned labels keep their shared label; the others fill the free shared labels in rank
        order. ``n_shared`` is the largest label count of any task.

        Args:
            task_stats: task -> label name -> size statistics.
            pins: the user's pins, task -> label name -> shared label; they always win.
            look_alike: groups of tasks whose images look alike: their labels with one
                normalised name or terminology code are pinned to one shared label, and
                different structures left on one shared label are warned about.
            terminology: task -> label name -> Slicer terminology string (dataset.json).
            splits: parent task -> its sub-tasks (tasks of ``task_stats``), for a task split by
                overlapping segments: the parent's labels are ranked together (rank r -> shared
                label r), so ``n_shared`` is at least its label count; pins may name the parent.
            keep_apart: in each ``look_alike`` group (with its split tasks' sub-tasks), labels not pinned
                together go to shared labels no partner uses (``n_shared`` grows when needed), left out
                of the partners' softmax (:meth:`left_out`).

        Raises:
            LabelSharingError: on pins naming unknown tasks/labels, out-of-range shared labels,
                or two labels of one task on one shared label.
        """
        if not task_stats:
            raise LabelSharingError("No tasks given: a plan needs at least one task dataset.")
        splits = splits or {}
        pins = parent_pins(pins or {}, splits, task_stats)
        n_shared = max([len(stats) for stats in task_stats.values()]
                       + [split_width(subtasks, task_stats) for subtasks in splits.values()])
        layered = layer_pins(task_stats, splits, pins, n_shared)
        apart = with_siblings(look_alike, splits) if keep_apart else None
        return cls({}, n_shared, splits=splits)._with_tasks(task_stats, pins, look_alike, terminology or {}, apart,
                                                            layered)

    def add_task(
        self, name: str, stats: Mapping[str, LabelStats], pins: Mapping[str, int] | None = None,
        look_alike: Sequence[str] = (), terminology: Mapping[str, Mapping[str, str]] | None = None,
        keep_apart: bool = False,
    ) -> SharedLabelPlan:
        """A new plan with one more task; existing tasks keep their mapping untouched.

        If the new task has more labels than ``n_shared``, the plan grows to that many shared
        labels (the model's output layer must grow with it).

        Args:
            look_alike: existing tasks whose images look like the new task's: its labels matching
                theirs (see :meth:`build`) take their shared labels.
            terminology: task -> label name -> Slicer terminology string (old and new tasks).
            keep_apart: keep the new task apart from ``look_alike`` (see :meth:`build`), as a plan that
                keeps look-alike tasks apart always does; the old partners' softmax then leaves it out.
        """
        if name in self._tasks:
            raise LabelSharingError(f"The model already has a task named '{name}'; give the new task another name.")
        n_shared = max(self.n_shared, len(stats))
        grown = SharedLabelPlan(self._tasks, n_shared, self.warnings, self.pin_reasons, self.splits, self.apart)
        groups = [[name, *look_alike]] if look_alike else []
        apart = self.apart if self.apart is not None else [] if keep_apart else None
        apart = None if apart is None else merge_groups([*apart, *groups])
        return grown._with_tasks({name: stats}, {name: dict(pins or {})}, groups, terminology or {}, apart)

    def _with_tasks(
        self, task_stats: Mapping[str, Mapping[str, LabelStats]], pins: Mapping[str, Mapping[str, int]],
        groups: Sequence[Sequence[str]], terminology: Mapping[str, Mapping[str, str]],
        apart: list[list[str]] | None, layered: Mapping[str, Mapping[str, int]] | None = None,
    ) -> SharedLabelPlan:
        unknown = sorted(set(pins) - set(task_stats) - set(self._tasks))
        if unknown:
            raise LabelSharingError(
                f"Pins name unknown task(s) {', '.join(unknown)}; tasks are: {', '.join(sorted(task_stats))}."
            )
        unknown = sorted({t for group in groups for t in group} - set(task_stats) - set(self._tasks))
        if unknown:
            raise ValueError(f"look-alike groups name unknown tasks {unknown}")
        sizes = {**{t: {n: a.relative_size for n, a in labels.items()} for t, labels in self._tasks.items()},
                 **{t: {n: s.relative_size for n, s in stats.items()} for t, stats in task_stats.items()}}
        fixed = {**{t: {n: a.shared for n, a in labels.items()} for t, labels in self._tasks.items()},
                 **{t: {n: s for n, s in pins.get(t, {}).items() if n in task_stats[t]} for t in task_stats}}
        auto, auto_reasons = match_pins(sizes, groups, terminology, fixed, self.n_shared)
        chosen = {t: {**{n: v for n, v in auto.get(t, {}).items() if n not in pins.get(t, {})},
                      **(layered or {}).get(t, {}), **pins.get(t, {})} for t in task_stats}
        placed = apart_placement({t: rank_labels_by_size(stats) for t, stats in task_stats.items()},
                                 {**fixed, **chosen}, apart or [])
        n_shared = max([self.n_shared, *(s for labels in placed.values() for s in labels.values())])
        tasks = dict(self._tasks)
        warnings = list(self.warnings)
        reasons = dict(self.pin_reasons)
        for task, stats in task_stats.items():
            if not stats:
                raise LabelSharingError(f"Task '{task}' has no labels besides background.")
            user = pins.get(task, {})
            tasks[task] = _assign_task(task, stats, {**placed.get(task, {}), **chosen[task]}, n_shared)
            reasons[task] = {**auto_reasons.get(task, {}), **{label: USER_PIN for label in user}}
            warnings.extend(_fragile_rank_warnings(task, stats))
        assigned = {t: {n: a.shared for n, a in labels.items()} for t, labels in tasks.items()}
        new = next(iter(task_stats)) if self._tasks else None
        warnings.extend(mixing_conflicts(assigned, groups, terminology, involving=new))
        return SharedLabelPlan(tasks, n_shared, warnings, reasons, self.splits, apart)

    # ----------------------------------------------------------------------------- queries
    @property
    def task_names(self) -> list[str]:
        return list(self._tasks)

    def labels(self, task: str) -> dict[str, LabelAssignment]:
        """label name -> assignment of one task; raises ``LabelSharingError`` for unknown tasks."""
        return dict(self._tasks[self._known(task)])

    def subtasks(self, task: str) -> list[str]:
        """The sub-tasks of a split task, in order; ``[task]`` for a task of the plan."""
        return list(self.splits[task]) if task in self.splits else [self._known(task)]

    def left_out(self, task: str) -> list[int]:
        """Shared labels left out of ``task``'s softmax: its sibling sub-tasks' and, in a look-alike
        group kept apart, those its partners use and it does not (none for other tasks)."""
        task = self._known(task)
        shared_of = {t: [a.shared for a in labels.values()] for t, labels in self._tasks.items()}
        return sorted(set(sibling_channels(self.splits, shared_of).get(task, []))
                      | set(partner_channels(self.apart or [], shared_of).get(task, [])))

    def group(self, shared: int) -> dict[str, str]:
        """task -> label name of the task labels mapped to one shared label."""
        return {
            task: name for task, labels in self._tasks.items() for name, a in labels.items() if a.shared == shared
        }

    def to_shared(self, task: str, label_array: np.ndarray) -> np.ndarray:
        """Map a label map in the task's own values onto shared values.

        Args:
            task: task name.
            label_array: integer array of any shape in the task's label values; 0 is background.

        Returns:
            int64 array of the same shape holding shared label values (0..n_shared).

        Raises:
            LabelSharingError: if the array holds a value that is not a label of the task.
        """
        labels = self._tasks[self._known(task)]
        array = np.asarray(label_array).astype(np.int64)
        table_size = max(max(a.value for a in labels.values()), int(array.max(initial=0))) + 1
        lookup = np.full(table_size, -1, dtype=np.int64)
        lookup[BACKGROUND] = BACKGROUND
        for assignment in labels.values():
            lookup[assignment.value] = assignment.shared
        if array.min(initial=0) < 0:
            raise LabelSharingError(f"Task '{task}': negative label values are not allowed.")
        shared = lookup[array]
        if (shared < 0).any():
            bad = sorted(int(v) for v in np.unique(array[shared < 0]))
            raise LabelSharingError(f"Task '{task}': label value(s) {bad} are not declared in its labels.")
        return shared

    def from_shared(self, task: str, shared_array: np.ndarray) -> np.ndarray:
        """Map shared label values back to the task's own values.

        Shared labels the task does not use become background (0).

        Args:
            task: task name.
            shared_array: integer array of any shape with values in 0..n_shared.

        Returns:
            int64 array of the same shape in the task's label values.
        """
        labels = self._tasks[self._known(task)]
        lookup = np.zeros(self.n_shared + 1, dtype=np.int64)
        for assignment in labels.values():
            lookup[assignment.shared] = assignment.value
        shared = np.asarray(shared_array).astype(np.int64)
        if shared.size and (shared.min() < 0 or shared.max() > self.n_shared):
            raise ValueError(f"shared values must lie in 0..{self.n_shared}")
        return lookup[shared]

    def _known(self, task: str) -> str:
        if task in self._tasks:
            return task
        import difflib

        names = [*self.splits, *self._tasks]  # a split task is named by users too
        close = difflib.get_close_matches(task, names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise LabelSharingError(f"Unknown task '{task}'.{hint} Tasks: {', '.join(names)}.")

    # ----------------------------------------------------------------------------- (de)serialising
    def to_dict(self) -> dict:
        """The plan JSON: ``{"n_shared": n, "tasks": {task: {"labels": {name: {...}}}}}``, and
        ``"splits": {parent: [sub-task, ...]}`` when a task is split by overlapping segments, and
        ``"apart": [[task, ...], ...]`` (the look-alike groups kept apart) when the plan keeps them apart."""
        plan = {
            "n_shared": self.n_shared,
            "tasks": {
                task: {"labels": {name: {**asdict(a), **self._pin_entry(task, name)} for name, a in labels.items()}}
                for task, labels in self._tasks.items()
            },
        }
        plan = {**plan, "splits": dict(self.splits)} if self.splits else plan
        return plan if self.apart is None else {**plan, "apart": [list(group) for group in self.apart]}

    def _pin_entry(self, task: str, label: str) -> dict:
        reason = self.pin_reasons.get(task, {}).get(label)
        return {"pin": reason} if reason else {}

    @classmethod
    def from_dict(cls, data: Mapping) -> SharedLabelPlan:
        """Rebuild a plan from :meth:`to_dict`'s JSON, checking its rules."""
        try:
            tasks = {
                task: {
                    name: LabelAssignment(
                        value=int(entry["value"]),
                        relative_size=float(entry.get("relative_size", 0.0)),
                        presence=float(entry.get("presence", 0.0)),
                        shared=int(entry["shared"]),
                    )
                    for name, entry in body["labels"].items()
                }
                for task, body in data["tasks"].items()
            }
            reasons = {task: {name: str(entry["pin"]) for name, entry in body["labels"].items() if entry.get("pin")}
                       for task, body in data["tasks"].items()}
            splits = {str(parent): [str(s) for s in subtasks] for parent, subtasks in data.get("splits", {}).items()}
            apart = [[str(t) for t in group] for group in data["apart"]] if "apart" in data else None
            return cls(tasks, int(data["n_shared"]), pin_reasons=reasons, splits=splits, apart=apart)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LabelSharingError(f"Not a valid shared-label plan ({type(exc).__name__}: {exc}).") from exc

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> SharedLabelPlan:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise LabelSharingError(f"Cannot read plan {path}: {exc}") from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SharedLabelPlan) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"SharedLabelPlan(n_shared={self.n_shared}, tasks={self.task_names})"


def rank_labels_by_size(stats: Mapping[str, LabelStats]) -> list[str]:
    """Label names largest first; equal sizes are ordered by label value."""
    return sorted(stats, key=lambda name: (-stats[name].relative_size, stats[name].value))


def _assign_task(
    task: str, stats: Mapping[str, LabelStats], pins: Mapping[str, int], n_shared: int
) -> dict[str, LabelAssignment]:
    unknown = sorted(set(pins) - set(stats))
    if unknown:
        raise LabelSharingError(
            f"Pins for task '{task}' name unknown label(s) {', '.join(unknown)}; labels are: {', '.join(stats)}."
        )
    taken: dict[int, str] = {}
    for label, shared in pins.items():
        if not 1 <= shared <= n_shared:
            raise LabelSharingError(
                f"Pin {task}/{label} -> shared label {shared} is impossible: shared labels run from 1 to {n_shared} "
                "(the largest label count of any task)."
            )
        if shared in taken:
            raise LabelSharingError(
                f"Pins put two labels of task '{task}' ({taken[shared]} and {label}) on shared label {shared}; "
                "each shared label holds at most one label of a task."
            )
        taken[shared] = label
    free = iter(s for s in range(1, n_shared + 1) if s not in taken)
    shared_of = {label: shared for shared, label in taken.items()}
    for label in rank_labels_by_size(stats):
        if label not in shared_of:
            shared_of[label] = next(free)
    return {
        label: LabelAssignment(s.value, s.relative_size, s.presence, shared_of[label])
        for label, s in sorted(stats.items(), key=lambda item: shared_of[item[0]])
    }


def _check_task_assignment(task: str, labels: Mapping[str, LabelAssignment], n_shared: int) -> None:
    shared = [a.shared for a in labels.values()]
    values = [a.value for a in labels.values()]
    if any(not 1 <= s <= n_shared for s in shared):
        raise LabelSharingError(f"Task '{task}' maps a label outside shared labels 1..{n_shared}.")
    if len(set(shared)) != len(shared):
        raise LabelSharingError(f"Task '{task}' maps two labels onto one shared label.")
    if len(set(values)) != len(values) or BACKGROUND in values:
        raise LabelSharingError(f"Task '{task}' has duplicate label values or a label with the background value 0.")


def _fragile_rank_warnings(task: str, stats: Mapping[str, LabelStats]) -> list[str]:
    ranked = rank_labels_by_size(stats)
    warnings = []
    for bigger, smaller in zip(ranked, ranked[1:]):
        a, b = stats[bigger].relative_size, stats[smaller].relative_size
        if a > 0 and (a - b) / a < FRAGILE_SIZE_RATIO:
            warnings.append(
                f"Task '{task}': '{bigger}' ({a:.4f}) and '{smaller}' ({b:.4f}) differ in size by less than "
                f"{FRAGILE_SIZE_RATIO:.0%}; their ranking is fragile. Pin them if the grouping matters."
            )
    return warnings
