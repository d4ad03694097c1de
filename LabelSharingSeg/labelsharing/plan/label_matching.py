"""One structure, one shared label: pinning matching labels of look-alike tasks together.

When two tasks' images look alike (:mod:`labelsharing.data.appearance`), the network cannot tell
which task an image comes from, so a shared label must mean the same structure in both. Labels
of look-alike tasks *match* when they carry the same terminology code (the coded parts of a
Slicer terminology string: category, type, type modifier, region, region modifier; the
free-text meanings and context names are ignored) or the same normalised name
(``White Matter``, ``white-matter`` and ``white_matter`` are one name). Matching labels are
pinned to one shared label; a user's own pins and existing tasks' labels are never moved.
What cannot be matched is reported as a conflict.

Pure Python (no numpy): :mod:`labelsharing.plan.shared_labels` imports it and the Slicer module imports that.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

__all__ = ["normalise_name", "terminology_code", "match_pins", "mixing_conflicts"]

Labels = Mapping[str, Mapping[str, float]]  # task -> label name -> relative size


def normalise_name(name: str) -> str:
    """Lower case, runs of spaces, ``-`` and ``_`` as one ``_``.

    Example:
        >>> normalise_name(" White-Matter ") == normalise_name("white_matter")
        True
    """
    return re.sub(r"[\s_\-]+", "_", name.strip().lower()).strip("_")


def terminology_code(entry: str) -> tuple[tuple[str, str], ...] | None:
    """The coded parts of a Slicer terminology string, or None if it holds no code.

    A Slicer terminology string is ``context~category~type~modifier~region context~region~region
    modifier``, each coded part ``scheme^value^meaning``; only ``(scheme, value)`` of the five
    coded parts are compared.

    Example:
        >>> a = "ctx~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~ctx~^^~^^"
        >>> b = "other~SCT^123037004^Anat.~SCT^10200004^liver (organ)~^^~other~^^~^^"
        >>> terminology_code(a) == terminology_code(b)
        True
    """
    parts = entry.split("~")
    coded = [parts[i] if i < len(parts) else "" for i in (1, 2, 3, 5, 6)]
    code = tuple(tuple((part.split("^") + ["", ""])[:2]) for part in coded)
    return code if any(value for _, value in code) else None


def match_pins(
    labels: Labels,
    groups: Sequence[Sequence[str]],
    terminology: Mapping[str, Mapping[str, str]],
    fixed: Mapping[str, Mapping[str, int]],
    n_shared: int,
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, str]]]:
    """Pins that put matching labels of look-alike tasks on one shared label.

    Classes of matching labels are placed largest first (mean relative size): on the shared label
    a member already holds in ``fixed``, else on the first shared label free in every member's
    task, searched from the best size rank any member has in its own task. A class whose fixed
    members disagree is left alone (the user's pins win).

    Args:
        labels: task -> label name -> relative size, for every task (old ones included).
        groups: look-alike groups of task names.
        terminology: task -> label name -> Slicer terminology string (where given).
        fixed: task -> label name -> shared label that must not change (user pins, old tasks).
        n_shared: shared labels available (1..n_shared).

    Returns:
        ``(pins, reasons)``: task -> label -> shared label, and task -> label -> why.
    """
    pins: dict[str, dict[str, int]] = {}
    reasons: dict[str, dict[str, str]] = {}
    for cls in _matching_classes(labels, groups, terminology):
        held = {fixed[t][n] for t, n in cls if n in fixed.get(t, {})}
        taken = {t: set(fixed.get(t, {}).values()) | set(pins.get(t, {}).values()) for t, _ in cls}
        if len(held) > 1:
            continue
        start = min(sorted(labels[t], key=lambda n: -labels[t][n]).index(n) + 1 for t, n in cls)
        order = [*range(start, n_shared + 1), *range(1, start)]
        target = next(iter(held)) if held else next(
            (s for s in order if all(s not in used for used in taken.values())), None)
        if target is None:
            continue
        for task, name in cls:
            if name in fixed.get(task, {}) or target in taken[task]:
                continue
            other_task, other, how = _partner(task, name, cls, terminology)
            pins.setdefault(task, {})[name] = target
            reasons.setdefault(task, {})[name] = f"same {how} as {other_task}/{other}"
    return pins, reasons


def mixing_conflicts(
    assigned: Mapping[str, Mapping[str, int]], groups: Sequence[Sequence[str]],
    terminology: Mapping[str, Mapping[str, str]], involving: str | None = None,
) -> list[str]:
    """Warnings for look-alike tasks whose unmatched labels share a shared label.

    Args:
        assigned: task -> label name -> shared label (the finished plan).
        groups, terminology: as for :func:`match_pins`.
        involving: report only groups holding this task (a task being added).
    """
    warnings = []
    for group in groups:
        if involving is not None and involving not in group:
            continue
        keys = {(t, n): _keys(t, n, terminology) for t in group for n in assigned[t]}
        mixed = []
        for shared in sorted({s for t in group for s in assigned[t].values()}):
            members = [(t, n) for t in group for n, s in assigned[t].items() if s == shared]
            if len({t for t, _ in members}) > 1 and not set.intersection(*(keys[m] for m in members)):
                mixed.append(f"shared {shared} = " + " / ".join(f"{t}/{n}" for t, n in members))
        if mixed:
            names = " and ".join(f"'{t}'" for t in group)
            warnings.append(
                f"Tasks {names} look alike but put differently named structures on one shared label "
                f"({'; '.join(mixed)}). If these are the same structure under other names, pin them together "
                f"(--pins). Otherwise keep the tasks apart (--keep-look-alikes-apart): each structure then gets a "
                f"shared label of its own, left out of the other task's softmax. If the tasks label the same "
                f"region differently (e.g. cortex as five lobes in one and as one gray_matter label in the "
                f"other), no pins can fix it: keep them apart, or train them as one merged task with one set of "
                f"labels, or as separate models."
            )
    return warnings


def _keys(task: str, name: str, terminology: Mapping[str, Mapping[str, str]]) -> set:
    keys: set = {("name", normalise_name(name))}
    code = terminology_code(terminology.get(task, {}).get(name, ""))
    if code is not None:
        keys.add(("code", code))
    return keys


def _matching_classes(labels: Labels, groups: Sequence[Sequence[str]],
                      terminology: Mapping[str, Mapping[str, str]]) -> list[list[tuple[str, str]]]:
    """Classes of matching labels spanning two or more tasks of one group, largest first.

    A task with several labels in one class keeps only its largest there.
    """
    classes = []
    for group in groups:
        nodes = [(t, n) for t in group for n in labels[t]]
        parent = {node: node for node in nodes}

        def root(node):
            while parent[node] != node:
                node = parent[node]
            return node

        first: dict = {}
        for node in nodes:
            for key in _keys(*node, terminology):
                if key in first:
                    parent[root(node)] = root(first[key])
                else:
                    first[key] = node
        members: dict = {}
        for node in nodes:
            members.setdefault(root(node), []).append(node)
        for cls in members.values():
            best: dict[str, str] = {}
            for task, name in cls:
                if task not in best or labels[task][name] > labels[task][best[task]]:
                    best[task] = name
            if len(best) > 1:
                classes.append([(t, best[t]) for t in group if t in best])
    size = lambda cls: sum(labels[t][n] for t, n in cls) / len(cls)  # noqa: E731
    return sorted(classes, key=lambda cls: (-size(cls), cls))


def _partner(task: str, name: str, cls: Sequence[tuple[str, str]],
             terminology: Mapping[str, Mapping[str, str]]) -> tuple[str, str, str]:
    """Another task's member of the class, and whether it matches by terminology code or name."""
    mine = _keys(task, name, terminology)
    others = [(t, n) for t, n in cls if t != task]
    for kind, how in (("code", "terminology code"), ("name", "name")):
        for t, n in others:
            if any(k[0] == kind for k in mine & _keys(t, n, terminology)):
                return t, n, how
    return others[0][0], others[0][1], "name or terminology code (through other labels)"
