"""Overlapping segments: a task whose segments overlap is split into non-overlapping sub-tasks.

A Slicer segmentation (``.seg.nrrd``) keeps overlapping segments in separate *layers*; inside one
layer a voxel holds one segment. A task whose label files put two of its labels in different
layers is split into sub-tasks ``TASK/1``, ``TASK/2``, ... (:func:`subtask_name`), one per group of
labels that share a layer in every file (:func:`group_layers`). Each sub-task is an ordinary
multi-label task (a voxel has one label), so it is planned and trained as label sharing does.

Sub-tasks of one task have the *same images*, so the network cannot tell them apart from the
image: their labels must not share a shared label. The parent's labels are therefore ranked by
size together, as if the parent were one task, and the label of rank r goes to shared label r
(:func:`layer_pins`); the parent needs as many shared labels as it has labels. Training and
prediction of a sub-task leave its siblings' shared labels out of the softmax
(:func:`sibling_channels`), so one voxel may be a label of every sub-task: the overlap is kept.

Needs no numpy: the Slicer module uses it to show the split while an annotator defines a task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from labelsharing.errors import LabelSharingError

if TYPE_CHECKING:
    from labelsharing.plan.shared_labels import LabelStats

__all__ = ["SUBTASK_SEPARATOR", "subtask_name", "group_layers", "group_apart", "visible_tasks", "layer_pins", "split_width",
           "sibling_channels", "parent_pins", "check_splits"]

SUBTASK_SEPARATOR = "/"


def subtask_name(parent: str, index: int) -> str:
    """The name of the ``index``-th (1-based) sub-task of ``parent``: ``Chest/2``."""
    return f"{parent}{SUBTASK_SEPARATOR}{index}"


def group_layers(labels: Sequence[str], layerings: Iterable[Mapping[str, int]]) -> list[list[str]]:
    """Groups of labels that never lie in different layers of one label file.

    Two labels *conflict* when some file puts them in different layers (Slicer separates segments
    into layers only where they overlap, so labels sharing a layer in every file never overlap).
    Each label, in the task's order, joins the first group holding no label it conflicts with.
    For files that all layer the segments alike, the groups are exactly the layers (ordered by
    their first label), and no split needs fewer groups.

    Args:
        labels: the task's label names, in order (dataset.json).
        layerings: per label file, segment name -> layer index; names that are not labels are ignored.

    Returns:
        the groups in order (one group holding every label when nothing overlaps).

    Example:
        >>> group_layers(["organ", "lobe", "tumour"], [{"organ": 0, "lobe": 1, "tumour": 1}])
        [['organ'], ['lobe', 'tumour']]
    """
    conflicts: dict[str, set[str]] = {label: set() for label in labels}
    for layering in layerings:
        present = [label for label in labels if label in layering]
        for a in present:
            conflicts[a].update(b for b in present if layering[b] != layering[a])
    return group_apart(labels, conflicts)


def group_apart(labels: Sequence[str], conflicts: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Groups of labels with no conflicting pair: each label, in order, joins the first group holding
    none of its ``conflicts`` (label -> labels it must not share a group with, e.g. those it overlaps).

    Example:
        >>> group_apart(["lung", "lobe", "heart"], {"lung": {"lobe"}, "lobe": {"lung"}})
        [['lung', 'heart'], ['lobe']]
    """
    groups: list[list[str]] = []
    for label in labels:
        group = next((g for g in groups if not set(conflicts.get(label, ())).intersection(g)), None)
        if group is None:
            groups.append([label])
        else:
            group.append(label)
    return groups


def visible_tasks(task_names: Sequence[str], splits: Mapping[str, Sequence[str]]) -> list[str]:
    """The tasks as users see them: each split task once, in its first sub-task's place, instead of its sub-tasks.

    Example:
        >>> visible_tasks(["A", "Chest/1", "Chest/2"], {"Chest": ["Chest/1", "Chest/2"]})
        ['A', 'Chest']
    """
    parent_of = {sub: parent for parent, subtasks in splits.items() for sub in subtasks}
    return list(dict.fromkeys(parent_of.get(task, task) for task in task_names))


def parent_pins(pins: Mapping[str, Mapping[str, int]], splits: Mapping[str, Sequence[str]],
                task_labels: Mapping[str, Iterable[str]]) -> dict[str, dict[str, int]]:
    """The user's pins with a split task's pins (given by its name) moved to the sub-task holding the label."""
    moved = {task: dict(entries) for task, entries in pins.items() if task not in splits}
    for parent, subtasks in splits.items():
        for label, shared in pins.get(parent, {}).items():
            owner = next((s for s in subtasks if label in task_labels[s]), None)
            if owner is None:
                raise LabelSharingError(f"Pins for task '{parent}' name unknown label '{label}'.")
            moved.setdefault(owner, {})[label] = shared
    return moved


def split_width(subtasks: Sequence[str], task_stats: Mapping[str, Mapping[str, LabelStats]]) -> int:
    """Shared labels a split task needs: all its labels (its sub-tasks never share one)."""
    return sum(len(task_stats[s]) for s in subtasks)


def layer_pins(task_stats: Mapping[str, Mapping[str, LabelStats]], splits: Mapping[str, Sequence[str]],
               pins: Mapping[str, Mapping[str, int]], n_shared: int) -> dict[str, dict[str, int]]:
    """Shared label of every unpinned label of the sub-tasks: each parent's labels ranked by size together.

    Ranking is as :func:`~labelsharing.plan.shared_labels.rank_labels_by_size` (largest first, ties
    by label value), over the labels of all the parent's sub-tasks; shared labels the user pinned
    to any of them are skipped.
    """
    placed: dict[str, dict[str, int]] = {}
    for subtasks in splits.values():
        taken = {shared for sub in subtasks for shared in pins.get(sub, {}).values()}
        free = iter(s for s in range(1, n_shared + 1) if s not in taken)
        unpinned = [(sub, name, stats) for sub in subtasks for name, stats in task_stats[sub].items()
                    if name not in pins.get(sub, {})]
        for sub, name, _ in sorted(unpinned, key=lambda item: (-item[2].relative_size, item[2].value)):
            placed.setdefault(sub, {})[name] = next(free)
    return placed


def sibling_channels(splits: Mapping[str, Sequence[str]], shared_of: Mapping[str, Iterable[int]]) -> dict[str, list[int]]:
    """Per sub-task, the shared labels of its siblings (left out of its softmax); other tasks have none.

    Args:
        splits: parent -> its sub-tasks.
        shared_of: task -> the shared labels of its labels.
    """
    left_out: dict[str, list[int]] = {}
    for subtasks in splits.values():
        for sub in subtasks:
            left_out[sub] = sorted(s for other in subtasks if other != sub for s in shared_of[other])
    return left_out


def check_splits(splits: Mapping[str, Sequence[str]], shared_of: Mapping[str, Iterable[int]]) -> None:
    """A split names two or more tasks of the plan, each in one split, and siblings share no shared label.

    Raises:
        LabelSharingError: naming the split and the rule broken.
    """
    seen: dict[str, str] = {}
    for parent, subtasks in splits.items():
        unknown = [s for s in subtasks if s not in shared_of]
        if unknown or len(subtasks) < 2 or len(set(subtasks)) != len(subtasks):
            raise LabelSharingError(f"Split task '{parent}' must name two or more distinct tasks of the plan; "
                                    f"it names {list(subtasks)}.")
        owners: dict[int, str] = {}
        for sub in subtasks:
            if sub in seen:
                raise LabelSharingError(f"Task '{sub}' is a sub-task of both '{seen[sub]}' and '{parent}'.")
            seen[sub] = parent
            for shared in shared_of[sub]:
                if shared in owners:
                    raise LabelSharingError(
                        f"Sub-tasks '{owners[shared]}' and '{sub}' of '{parent}' share shared label {shared}: they have "
                        "the same images, so the network could not tell their labels apart. Pin them apart.")
                owners[shared] = sub
