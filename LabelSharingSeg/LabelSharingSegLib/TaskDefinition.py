"""Define a task from segmentations: label names, sizes, shared-label grouping, dataset folder.

Everything here is numpy plus the engine's own ``labelsharing.plan`` package (numpy only), so the
grouping shown in Slicer is the grouping the engine will train with. It is the one part of the
engine Slicer's process imports, with ``labelsharing.errors`` for the error type the plan raises
(``test_slicer_engine_boundary.py``); everything else runs in a ``labelsharing`` subprocess. The Slicer side
(``SceneIO.caseFromSegmentation``) turns segmentation nodes into :class:`TaskCase` objects.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from labelsharing.errors import LabelSharingError  # the error the plan functions raise (numpy-only module)
from labelsharing.plan import LabelStats, SharedLabelPlan, group_apart, measure_label_sizes, subtask_name, \
    terminology_entry_problem

from .ModuleError import ModuleError
from .NrrdIO import writeNrrd
from .Translation import tr as _

__all__ = ["TaskCase", "GroupingRow", "Grouping", "TaskDefinition", "MODALITIES", "unionOfSegmentNames", "uniqueCaseIds"]

MODALITIES = ("CT", "MR", "XR", "other")
_CASE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")


@dataclass
class TaskCase:
    """One annotated case: image voxels (k, j, i), IJK->RAS, and a binary mask per segment name."""

    caseId: str
    image: np.ndarray
    ijkToRas: np.ndarray
    segments: Dict[str, np.ndarray]


@dataclass(frozen=True)
class GroupingRow:
    """One row of the grouping table.

    ``others`` lists "task: label" of the model's existing tasks on the same shared label.
    ``subtask`` is the label's sub-task (``TASK/1``, ...) when the task's segments overlap, else "".
    """

    label: str
    value: int
    relativeSize: float
    presence: float
    shared: int
    others: Tuple[str, ...]
    subtask: str = ""


@dataclass(frozen=True)
class Grouping:
    """The plan with the new task added, the table rows of the new task and the plan warnings.

    ``layers`` holds the label groups the engine splits the task into when its segments overlap
    (``labelsharing.plan.layer_split``: sub-tasks ``TASK/1``, ``TASK/2``, ...); one group otherwise.
    """

    plan: SharedLabelPlan
    rows: Tuple[GroupingRow, ...]
    warnings: Tuple[str, ...]
    layers: Tuple[Tuple[str, ...], ...] = ()


class TaskDefinition:
    """A task being defined by an annotator: its name, modality and cases."""

    def __init__(self, name: str, modality: str, cases: Sequence[TaskCase]) -> None:
        name = name.strip()
        if not name:
            raise ModuleError(_("Give the task a name (for example 'abdomen_ct')."))
        if modality not in MODALITIES:
            raise ModuleError(_("Modality must be one of {modalities}, not '{modality}'.").format(
                modalities=", ".join(MODALITIES), modality=modality))
        if not cases:
            raise ModuleError(_("Select at least one segmentation (with its reference volume) to define a task."))
        self.name = name
        self.modality = modality
        self.cases = list(cases)
        self.labelNames, self.warnings = unionOfSegmentNames({c.caseId: list(c.segments) for c in self.cases})
        if not self.labelNames:
            raise ModuleError(_("The selected segmentations have no segments."))
        #: label name -> value in the task's label maps (1, 2, ... in order of first appearance)
        self.labels: Dict[str, int] = {label: index + 1 for index, label in enumerate(self.labelNames)}

    def layers(self) -> List[List[str]]:
        """The label groups of the task: labels whose segments overlap in some case go to different
        groups (``group_apart``, as the engine splits a layered ``.seg.nrrd``); one group if none overlap."""
        conflicts: Dict[str, set] = {name: set() for name in self.labelNames}
        for case in self.cases:
            names = list(case.segments)
            for index, a in enumerate(names):
                for b in names[index + 1:]:
                    if np.any((np.asarray(case.segments[a]) > 0) & (np.asarray(case.segments[b]) > 0)):
                        conflicts[a].add(b)
                        conflicts[b].add(a)
        return group_apart(self.labelNames, conflicts)

    def labelArray(self, case: TaskCase, labels: Optional[Sequence[str]] = None) -> np.ndarray:
        """The case's label map in the task's values (only ``labels`` if given); a voxel in two
        segments gets the later label."""
        shape = case.image.shape
        dtype = np.uint8 if len(self.labels) < 256 else np.uint16
        values = np.zeros(shape, dtype=dtype)
        for name, mask in case.segments.items():
            if labels is not None and name not in labels:
                continue
            mask = np.asarray(mask)
            if mask.shape != shape:
                raise ModuleError(
                    _("Case '{case}': segment '{segment}' has shape {maskShape}, its volume {volumeShape}.").format(
                        case=case.caseId, segment=name, maskShape=mask.shape, volumeShape=shape)
                )
            values[mask > 0] = self.labels[name]
        return values

    def measure(self, labels: Optional[Sequence[str]] = None) -> Dict[str, LabelStats]:
        """Average relative size and presence of each label (of ``labels`` if given; the engine's
        ``measure_label_sizes``)."""
        wanted = {name: value for name, value in self.labels.items() if labels is None or name in labels}
        return measure_label_sizes((self.labelArray(case, labels) for case in self.cases), wanted)

    def grouping(
        self, modelPlan: Optional[Mapping] = None, pins: Optional[Mapping[str, int]] = None
    ) -> Grouping:
        """Shared-label grouping of this task, alone or added to an existing model's plan.

        Args:
            modelPlan: the ``plan`` of the chosen model's ``model.json``, or ``None``.
            pins: label name -> shared label the annotator pinned in the table.

        When segments overlap, the task is planned as the engine plans it: one sub-task per label
        group (:meth:`layers`), never on one shared label; the first warning names the split.

        Raises:
            ModuleError: with the engine's message for invalid pins or a task name already in
                the model; overlapping segments with a model chosen (added tasks cannot overlap yet).
        """
        layers = self.layers()
        names = [subtask_name(self.name, index) for index in range(1, len(layers) + 1)] if len(layers) > 1 \
            else [self.name]
        stats = {name: self.measure(group) for name, group in zip(names, layers)}
        notes = [] if len(layers) == 1 else [_(
            "Segments overlap: the task is split into {count} sub-tasks ({groups}), trained apart and predicted as "
            "one segmentation with overlapping segments.").format(count=len(layers), groups="; ".join(
                f"{name}: {', '.join(group)}" for name, group in zip(names, layers)))]
        try:
            if modelPlan and len(layers) > 1:
                raise ModuleError(notes[0] + " " + _("Adding such a task to a model is not supported yet: train a new "
                                                     "model with it (choose no model)."))
            if modelPlan:
                plan = SharedLabelPlan.from_dict(modelPlan).add_task(self.name, stats[self.name], dict(pins or {}))
            else:
                plan = SharedLabelPlan.build(stats, {self.name: dict(pins or {})},
                                             splits={self.name: names} if len(layers) > 1 else None)
        except LabelSharingError as exc:
            raise ModuleError(str(exc)) from exc
        rows = []
        for name in names:
            for label, assignment in plan.labels(name).items():
                others = tuple(f"{task}: {other}" for task, other in plan.group(assignment.shared).items()
                               if task not in names)
                rows.append(GroupingRow(label, assignment.value, assignment.relative_size, assignment.presence,
                                        assignment.shared, others, name if len(layers) > 1 else ""))
        rows.sort(key=lambda row: row.shared)
        return Grouping(plan, tuple(rows), tuple(notes + self.warnings) + tuple(plan.warnings),
                        tuple(tuple(group) for group in layers))

    def writeDataset(
        self,
        folder: Union[str, Path],
        colors: Optional[Mapping[str, Sequence[float]]] = None,
        terminology: Optional[Mapping[str, str]] = None,
        overwrite: bool = False,
        onCase: Optional[Callable[[int, int, str], None]] = None,
    ) -> Path:
        """Write the task as an nnU-Net-style dataset folder the engine reads (CONTRACTS.md).

        Layout: ``dataset.json``, ``imagesTr/<case>_0000.nrrd``, ``labelsTr/<case>.nrrd``.
        ``colors`` (label name -> 0..1 RGB) and ``terminology`` (label name -> Slicer terminology
        entry string) become ``dataset.json`` ``colors`` and ``terminology`` for the task's labels;
        the engine keeps both in the model and gives them back to the predicted segments.
        ``onCase(done, total, text)`` is called before each case and once at the end.

        Raises:
            ModuleError: if the folder already holds a dataset and ``overwrite`` is False, a
                terminology entry is one the engine would refuse (checked before writing), or
                segments overlap (a label map would lose the overlap).
        """
        folder = Path(folder)
        layers = self.layers()
        if len(layers) > 1:
            raise ModuleError(_(
                "Segments overlap ({groups}): a label map would lose the overlap. Save each segmentation as a "
                ".seg.nrrd (File > Save) into labelsTr/ of a dataset folder, where the engine splits the task "
                "into one sub-task per layer.").format(groups="; ".join(", ".join(group) for group in layers)))
        if (folder / "dataset.json").exists() and not overwrite:
            raise ModuleError(_("{folder} already holds a dataset (dataset.json). Choose an empty folder.").format(
                folder=folder))
        terminology = {name: entry for name, entry in (terminology or {}).items() if name in self.labels and entry}
        for name, entry in terminology.items():
            problem = terminology_entry_problem(entry)
            if problem is not None:
                raise ModuleError(
                    _("The terminology of segment '{segment}' {problem}. Choose its terminology again in the "
                      "Segment Editor (double-click the segment's colour), or clear it, then export again.").format(
                        segment=name, problem=problem)
                )
        for done, case in enumerate(self.cases):
            if onCase is not None:
                onCase(done, len(self.cases), _("Writing case {case} ({number} of {total})...").format(
                    case=case.caseId, number=done + 1, total=len(self.cases)))
            writeNrrd(folder / "imagesTr" / f"{case.caseId}_0000.nrrd", case.image, case.ijkToRas)
            writeNrrd(folder / "labelsTr" / f"{case.caseId}.nrrd", self.labelArray(case), case.ijkToRas)
        description = {
            "name": self.name,
            "channel_names": {"0": self.modality},
            "labels": {"background": 0, **self.labels},
            "numTraining": len(self.cases),
            "file_ending": ".nrrd",
            "modality": self.modality,
        }
        if colors:
            description["colors"] = {name: [float(c) for c in colors[name][:3]] for name in self.labels if name in colors}
        if terminology:
            description["terminology"] = terminology
        (folder / "dataset.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
        if onCase is not None:
            onCase(len(self.cases), len(self.cases),
                   _("Wrote {count} case(s) to {folder}.").format(count=len(self.cases), folder=folder))
        return folder


def unionOfSegmentNames(caseSegmentNames: Mapping[str, Sequence[str]]) -> Tuple[List[str], List[str]]:
    """All segment names over the cases, in order of first appearance, and warnings.

    Segments are matched by name. A name missing from some cases is kept (the label is
    simply absent there) but reported, since it is often a typo.

    Example:
        >>> unionOfSegmentNames({"a": ["liver", "kidney"], "b": ["liver"]})
        (['liver', 'kidney'], ["'kidney' is in 1 of 2 cases (missing in: b)."])
    """
    names: List[str] = []
    for segmentNames in caseSegmentNames.values():
        for name in segmentNames:
            if name not in names:
                names.append(name)
    warnings = []
    for name in names:
        missing = [case for case, segmentNames in caseSegmentNames.items() if name not in segmentNames]
        if missing:
            present = len(caseSegmentNames) - len(missing)
            warnings.append(_("'{label}' is in {present} of {total} cases (missing in: {missing}).").format(
                label=name, present=present, total=len(caseSegmentNames), missing=", ".join(missing)))
    return names, warnings


def uniqueCaseIds(names: Iterable[str]) -> List[str]:
    """File-safe, unique case identifiers for node names (no ``_0000``-like ending)."""
    ids: List[str] = []
    for name in names:
        base = _CASE_ID_UNSAFE.sub("_", name).strip("_") or "case"
        if _CHANNEL_SUFFIX.search(base):
            base += "_case"
        candidate, number = base, 2
        while candidate in ids:
            candidate, number = f"{base}_{number}", number + 1
        ids.append(candidate)
    return ids
