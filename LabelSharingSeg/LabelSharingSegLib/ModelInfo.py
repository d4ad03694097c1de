"""What the module needs from a model folder's ``model.json``: tasks, labels, colours, plan.

Format: ``docs/CONTRACTS.md`` ("Model folder"). Reading it needs only ``json``; the weights are
never touched in Slicer's process.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["LabelInfo", "TaskInfo", "ModelInfo", "defaultColor"]

Color = Tuple[float, float, float]


@dataclass(frozen=True)
class LabelInfo:
    """One label of a task: its name, value in the task's label maps, shared label, colour.

    ``terminology`` is a Slicer terminology entry string, if the model gives one (optional
    ``"terminology"`` key of the label in ``model.json``).
    """

    name: str
    value: int
    shared: int
    color: Color
    terminology: Optional[str] = None


@dataclass(frozen=True)
class TaskInfo:
    """One task of a model.

    ``trainingCases``: the case ids the task was trained on (``training_cases``; ``None`` for a model
    written before they were stored, or a server's model); ``validationCases``: its held-out case ids;
    ``dataset``: the dataset folder it was trained from, as recorded (``""`` when not recorded).
    """

    name: str
    modality: str
    labels: Tuple[LabelInfo, ...]
    trainingCases: Optional[Tuple[str, ...]] = None
    validationCases: Tuple[str, ...] = ()
    dataset: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """The parts of ``model.json`` the module shows and uses.

    A model of a ``labelsharing serve`` has ``server`` set to the server's URL; its ``folder`` is
    then the model's name on that server (``GET /v1/models``), not a folder of this computer.
    ``parent``: the folder of the model it was made from by ``add-task`` or ``update`` (``""`` if none).
    """

    folder: Path
    tasks: Dict[str, TaskInfo]
    plan: dict
    version: str
    server: str = ""
    parent: str = ""

    @classmethod
    def fromServer(cls, entry: dict, server: str) -> "ModelInfo":
        """A model of the server's list (``{"name", "tasks": {task: {"modality", "labels": [...]}}, "n_shared"}``).

        Raises:
            ModuleError: an entry without the tasks and labels the list always has (another program answered).
        """
        try:
            tasks = {name: _task(name, {"modality": body.get("modality") or "other",
                                        "labels": {label["name"]: label for label in body["labels"]}})
                     for name, body in entry["tasks"].items()}
            return cls(Path(entry["name"]), tasks, {"n_shared": entry.get("n_shared", "?")},
                       str(entry.get("labelsharing_version", "")), server)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModuleError(_("The server at {url} sent a model list this module cannot read ({error}: {reason}); "
                                "is it a labelsharing server?").format(url=server, error=type(exc).__name__,
                                                                        reason=exc)) from exc

    @property
    def name(self) -> str:
        """The folder's name, or the model's name on its server."""
        return self.folder.name

    @classmethod
    def load(cls, folder: Union[str, Path]) -> "ModelInfo":
        """Read ``<folder>/model.json``.

        Raises:
            ModuleError: if the folder has no readable ``model.json`` or it lacks tasks/labels.
        """
        folder = Path(folder)
        path = folder / "model.json"
        if not path.is_file():
            raise ModuleError(
                _("{folder} is not a LabelSharingSeg model folder: it has no model.json. "
                  "Choose the folder written by 'labelsharing train' or by the Train button.").format(folder=folder)
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModuleError(_("Cannot read {path}: {reason}").format(path=path, reason=exc)) from exc
        try:
            tasks = {name: _task(name, body) for name, body in data["tasks"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModuleError(_("{path} has no valid 'tasks' section ({error}: {reason}).").format(
                path=path, error=type(exc).__name__, reason=exc)) from exc
        if not tasks:
            raise ModuleError(_("{path} lists no tasks.").format(path=path))
        return cls(folder, tasks, dict(data.get("plan") or {}), str(data.get("labelsharing_version", "")),
                   parent=str(data.get("parent") or ""))

    @property
    def taskNames(self) -> List[str]:
        return list(self.tasks)

    def task(self, name: str) -> TaskInfo:
        """One task; raises ``ModuleError`` naming the known tasks for an unknown one."""
        if name not in self.tasks:
            raise ModuleError(_("The model has no task '{task}'. Its tasks: {tasks}.").format(
                task=name, tasks=", ".join(self.tasks)))
        return self.tasks[name]


def defaultColor(index: int) -> Color:
    """A distinct, saturated colour for the label of rank ``index`` when the model gives none."""
    hue = (index * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, 0.9)
    return (round(red, 4), round(green, 4), round(blue, 4))


def _task(name: str, body: dict) -> TaskInfo:
    labels = []
    for index, (labelName, entry) in enumerate(sorted(body["labels"].items(), key=lambda item: int(item[1]["value"]))):
        color = entry.get("color")
        labels.append(
            LabelInfo(
                name=labelName,
                value=int(entry["value"]),
                shared=int(entry.get("shared", 0)),
                color=tuple(float(c) for c in color[:3]) if color else defaultColor(index),
                terminology=entry.get("terminology") or None,
            )
        )
    trained = body.get("training_cases")
    return TaskInfo(name, str(body.get("modality", "other")), tuple(labels),
                    None if trained is None else tuple(str(case) for case in trained),
                    tuple(str(case) for case in body.get("validation_cases") or ()), str(body.get("dataset") or ""))
