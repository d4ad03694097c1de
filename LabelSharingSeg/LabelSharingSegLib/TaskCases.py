"""A corrected result as a new case of the model's task: names checked, files written, cases counted.

Used by the "Correct the result" section (``CorrectionPanel``). The engine's ``add-case`` checks the
case again as training reads it and writes it into the dataset folder; this module prepares what it
gets and says early, in the user's words, what would make it fail:

- the segments must be the task's labels, by name (a missing or renamed segment is named);
- the image is the input volume written by Slicer's writer (``SceneIO.writeVolume``), the label map
  the segmentation written on that volume's grid in the task's label values
  (``SegmentationExporter.writeLabelmap``, as the Export section writes it), so both share one grid;
- the dataset folder is the task's: its ``dataset.json`` lists the task's labels.

Cases are counted as the engine pairs them (``labelsharing/data/datasets.py``, ``_pair_cases``):
one label per case in ``labelsTr/<case><file_ending>`` or ``labelsTr/<case>.seg.nrrd``, hidden files
skipped. The dataset folder of each model's task is remembered in the application settings
(``qt.QSettings``: ``value(key, default)``/``setValue(key, value)``, as ``ModelLibrary`` keeps its list).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .ModelInfo import ModelInfo, TaskInfo
from .ModelLibrary import folderKey
from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["checkSegmentNames", "checkDatasetFolder", "datasetCaseIds", "addedCases", "TaskDatasetFolders", "CaseFiles", "writeCase",
           "diceBySegment", "SETTINGS_KEY"]

SETTINGS_KEY = "LabelSharingSeg/TaskDatasets"
_SEG_NRRD = ".seg.nrrd"
PathLike = Union[str, Path]


def checkSegmentNames(segmentNames: Sequence[str], task: TaskInfo) -> None:
    """The segments must be exactly the task's labels, by name.

    Raises:
        ModuleError: naming the segments that are not labels of the task (renamed?) and the labels
            that have no segment, with the task's label list.

    Example:
        >>> from LabelSharingSegLib.ModelInfo import LabelInfo
        >>> task = TaskInfo("abd", "CT", (LabelInfo("liver", 1, 1, (1, 0, 0)),))
        >>> checkSegmentNames(["liver"], task)
    """
    labels = [label.name for label in task.labels]
    extra = [name for name in segmentNames if name not in labels]
    missing = [name for name in labels if name not in segmentNames]
    if not extra and not missing:
        return
    parts = []
    if extra:
        parts.append(_("segment(s) {names} are not labels of the task (renamed?)").format(
            names=", ".join(f"'{name}'" for name in extra)))
    if missing:
        parts.append(_("label(s) {names} have no segment (missing or renamed?)").format(
            names=", ".join(f"'{name}'" for name in missing)))
    raise ModuleError(_("The segmentation does not match task '{task}': {problems}. Name the segments as the "
                        "task's labels ({labels}); keep a segment for every label, empty where the structure is "
                        "absent.").format(task=task.name, problems="; ".join(parts), labels=", ".join(labels)))


def _datasetJson(folder: Path) -> dict:
    path = folder / "dataset.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModuleError(_("{folder} is not a task dataset folder: its dataset.json cannot be read ({reason}). "
                            "Choose the folder holding the task's dataset.json, imagesTr/ and labelsTr/.").format(
            folder=folder, reason=exc)) from exc


def checkDatasetFolder(folder: PathLike, task: TaskInfo) -> Path:
    """``folder`` is a dataset folder of ``task``: its ``dataset.json`` lists the task's labels.

    Raises:
        ModuleError: no readable ``dataset.json``, or other labels (another task's folder).
    """
    folder = Path(folder)
    labels = _datasetJson(folder).get("labels")
    names = sorted(name for name in (labels or {}) if name != "background")
    expected = sorted(label.name for label in task.labels)
    if names != expected:
        raise ModuleError(_("{folder} holds another task: its labels are {found}, task '{task}' has {expected}. "
                            "Choose the dataset folder of '{task}'.").format(
            folder=folder, found=", ".join(names) or _("none"), task=task.name, expected=", ".join(expected)))
    return folder


def datasetCaseIds(folder: PathLike) -> List[str]:
    """The training case ids of a dataset folder, as the engine pairs them (one label each in ``labelsTr``).

    Raises:
        ModuleError: no readable ``dataset.json`` or no ``file_ending`` in it.
    """
    folder = Path(folder)
    ending = _datasetJson(folder).get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise ModuleError(_("{folder}/dataset.json has no file_ending (e.g. \".nii.gz\").").format(folder=folder))
    labels = folder / "labelsTr"
    ids = []
    for path in sorted(labels.iterdir()) if labels.is_dir() else ():
        if path.name.startswith("."):
            continue  # a killed writer's temporary file, macOS's ._ files: not cases (datasets.py)
        for suffix in (_SEG_NRRD, ending):
            if path.name.endswith(suffix):
                ids.append(path.name[: -len(suffix)])
                break
    return ids


def addedCases(folder: PathLike, task: TaskInfo) -> Optional[List[str]]:
    """Cases of ``folder`` the task was neither trained on nor validated on (``None``: the model does not say)."""
    if task.trainingCases is None:
        return None
    known = set(task.trainingCases) | set(task.validationCases)
    return [case for case in datasetCaseIds(folder) if case not in known]


class TaskDatasetFolders:
    """The dataset folder of each (model folder, task), kept across sessions in the application settings.

    Args:
        settings: a ``qt.QSettings`` (or anything with ``value(key, default)`` and ``setValue(key, value)``).
    """

    def __init__(self, settings: Any) -> None:
        self._settings = settings

    def _all(self) -> Dict[str, str]:
        try:
            stored = json.loads(self._settings.value(SETTINGS_KEY, "") or "{}")
        except (TypeError, json.JSONDecodeError):
            return {}  # unreadable settings: the folder is asked again
        return stored if isinstance(stored, dict) else {}

    @staticmethod
    def _key(model: ModelInfo, task: str) -> str:
        return f"{folderKey(model.folder)}\n{task}"

    def get(self, model: ModelInfo, task: str) -> Optional[Path]:
        """The remembered folder, or ``None`` (never chosen, or moved away since)."""
        folder = self._all().get(self._key(model, task))
        return Path(folder) if folder and Path(folder).is_dir() else None

    def set(self, model: ModelInfo, task: str, folder: PathLike) -> None:
        stored = self._all()
        stored[self._key(model, task)] = str(Path(folder).absolute())
        self._settings.setValue(SETTINGS_KEY, json.dumps(stored))

    def suggestion(self, model: ModelInfo, task: str) -> str:
        """Where to open the folder dialog: the remembered folder, else the one the model was trained from."""
        remembered = self.get(model, task)
        return str(remembered) if remembered else model.task(task).dataset


@dataclass(frozen=True)
class CaseFiles:
    """The image and label map files of one case, in a temporary folder the caller deletes."""

    workDir: Path
    image: Path
    label: Path


def writeCase(sceneIO: Any, exporter: Any, volume: Any, segmentation: Any, task: TaskInfo,
              temporaryPath: str) -> CaseFiles:
    """Write ``volume`` and ``segmentation`` (checked against ``task``) as ``image.nrrd`` and ``label.nrrd``.

    The label map is on ``volume``'s grid: it becomes the segmentation's reference volume first if it
    is not (as the Segment Editor does when a source volume is chosen; ``SceneIO.caseFromSegmentation``).

    Raises:
        ModuleError: no volume or segmentation, segment names that are not the task's labels, a failed write.
    """
    if volume is None or segmentation is None:
        raise ModuleError(_("Choose the input volume and its corrected output segmentation in the Segment section."))
    checkSegmentNames(list(sceneIO.segmentProperties(segmentation)), task)
    if sceneIO.referenceVolume(segmentation) is not volume:
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    workDir = Path(tempfile.mkdtemp(prefix="LabelSharingSeg-case-", dir=temporaryPath))
    image = sceneIO.writeVolume(volume, workDir / "image.nrrd")
    labels = {label.name: label.value for label in task.labels}
    label = exporter.writeLabelmap(segmentation, workDir, "label", labels, "nrrd")
    return CaseFiles(workDir, image, label)


def diceBySegment(first: Mapping[str, np.ndarray], second: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """Dice of each segment name of ``first`` with the same name in ``second`` (masks of one grid).

    A name missing from ``second`` counts as empty; two empty masks agree (Dice 1).

    Example:
        >>> a = {"liver": np.array([1, 1, 0, 0], bool)}
        >>> diceBySegment(a, {"liver": np.array([1, 0, 0, 0], bool)})
        {'liver': 0.6666666666666666}
    """
    dice = {}
    for name, mask in first.items():
        mask = np.asarray(mask, dtype=bool)
        other = np.asarray(second.get(name, np.zeros_like(mask)), dtype=bool)
        total = int(mask.sum()) + int(other.sum())
        dice[name] = 1.0 if total == 0 else 2.0 * int(np.logical_and(mask, other).sum()) / total
    return dice
