"""Keeping look-alike tasks apart: their different structures on different shared labels.

Label sharing maps rank r of every task to shared label r. When two tasks' images look alike
(:mod:`labelsharing.data.appearance`), the network cannot tell which task an image comes from:
if task A's vertebrae and task B's heart share shared label 1, channel 1 must fire on vertebrae
in A's images and stay background on the (unlabelled) vertebrae of B's near-identical images,
which is contradictory supervision. Matching labels (same name or terminology code) are already
pinned together (:mod:`labelsharing.plan.label_matching`); this opt-in mode ("apart") handles the rest:

1. A grouped task's labels that are not pinned (by a match, a layer split or the user) take, in
   size order, the lowest shared labels used by none of its partners' labels nor by its own pins
   (:func:`apart_placement`); the plan grows beyond the largest label count when needed.
2. Each grouped task's softmax leaves out the shared labels its partners use and it does not
   (:func:`partner_channels`), so an unlabelled partner structure teaches no channel "background".

Groups are stored with the plan, so a task added to a group later extends its old partners'
left-out channels too. Tasks outside every group are planned as without this mode.

Pure Python (no numpy): :mod:`labelsharing.plan.shared_labels` imports it and the Slicer module imports that.
"""

from __future__ import annotations

from itertools import count
from typing import Iterable, Mapping, Sequence

from labelsharing.errors import LabelSharingError

__all__ = ["merge_groups", "with_siblings", "apart_placement", "partner_channels", "check_apart"]


def merge_groups(groups: Iterable[Sequence[str]]) -> list[list[str]]:
    """Groups sharing a task merged into one (tasks in order of first mention); groups of one task dropped.

    Example:
        >>> merge_groups([["A", "B"], ["C", "A"], ["D"]])
        [['A', 'B', 'C']]
    """
    merged: list[list[str]] = []
    for group in groups:
        members = list(dict.fromkeys(group))
        touching = [g for g in merged if set(g) & set(members)]
        for g in touching:
            merged.remove(g)
        merged.append(list(dict.fromkeys([t for g in touching for t in g] + members)))
    return [g for g in merged if len(g) > 1]


def with_siblings(groups: Iterable[Sequence[str]], splits: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Groups with every sub-task of a split task that one of their tasks belongs to.

    The look-alike check compares a split task's first sub-task only (all have the same images).

    Example:
        >>> with_siblings([["A", "C/1"]], {"C": ["C/1", "C/2"]})
        [['A', 'C/1', 'C/2']]
    """
    family = {sub: list(subtasks) for subtasks in splits.values() for sub in subtasks}
    return merge_groups([[s for task in group for s in family.get(task, [task])] for group in groups])


def _partners(groups: Sequence[Sequence[str]]) -> dict[str, set[str]]:
    partners: dict[str, set[str]] = {}
    for group in groups:
        for task in group:
            partners.setdefault(task, set()).update(t for t in group if t != task)
    return partners


def apart_placement(ranked: Mapping[str, Sequence[str]], fixed: Mapping[str, Mapping[str, int]],
                    groups: Sequence[Sequence[str]]) -> dict[str, dict[str, int]]:
    """Shared label of each not yet placed label of the grouped tasks being planned.

    Tasks are taken in ``ranked``'s order; each one's unplaced labels, largest first, take the
    lowest shared labels that are neither its own fixed labels nor any label of a partner (fixed,
    or placed here before it). Shared labels beyond the plan's current count may be returned.

    Args:
        ranked: task being planned -> its label names, largest first.
        fixed: task -> label name -> shared label already decided: the pins of the tasks being
            planned (the user's, matches, layers) and every label of the plan's old tasks.
        groups: the groups kept apart.

    Returns:
        task -> label name -> shared label, for the grouped tasks of ``ranked`` only.

    Example:
        >>> apart_placement({"A": ["spine", "liver"], "B": ["heart"]}, {}, [["A", "B"]])
        {'A': {'spine': 1, 'liver': 2}, 'B': {'heart': 3}}
    """
    partners = _partners(groups)
    placed: dict[str, dict[str, int]] = {}
    for task, labels in ranked.items():
        if task not in partners:
            continue
        own = fixed.get(task, {})
        blocked = set(own.values()).union(*(
            [*fixed.get(p, {}).values(), *placed.get(p, {}).values()] for p in partners[task]))
        free = (s for s in count(1) if s not in blocked)
        placed[task] = {label: next(free) for label in labels if label not in own}
    return placed


def partner_channels(groups: Sequence[Sequence[str]], shared_of: Mapping[str, Iterable[int]]) -> dict[str, list[int]]:
    """Per grouped task, the shared labels its partners use and it does not (left out of its softmax).

    Example:
        >>> partner_channels([["A", "B"]], {"A": [1, 2], "B": [1, 3]})
        {'A': [3], 'B': [2]}
    """
    used = {task: set(shared) for task, shared in shared_of.items()}
    return {task: sorted(set().union(*(used[p] for p in others)) - used[task])
            for task, others in _partners(groups).items()}


def check_apart(groups: Sequence[Sequence[str]], tasks: Iterable[str]) -> None:
    """Each group names two or more distinct tasks of the plan, and each task is in one group at most.

    Raises:
        LabelSharingError: naming the group and the rule broken.
    """
    known, seen = set(tasks), set()
    for group in groups:
        if len(group) < 2 or len(set(group)) != len(group) or not known.issuperset(group) or seen & set(group):
            raise LabelSharingError(f"The look-alike group kept apart {list(group)} must name two or more distinct "
                                    f"tasks of the plan, none of them in another group.")
        seen.update(group)
