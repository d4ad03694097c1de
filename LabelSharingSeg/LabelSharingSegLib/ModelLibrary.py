"""The models a user trained or opened, remembered across sessions in Slicer's settings.

Only where each model is (and how it joined) is stored; its tasks and labels are read from its
``model.json`` whenever the list is shown, so the list never disagrees with the folder. A model
folder that was moved or deleted stays listed, flagged, until the user forgets it: nothing is
dropped silently and nothing on disk is ever touched.

Storage: one JSON text under the key ``LabelSharingSeg/ModelLibrary`` of the application settings
(``qt.QSettings()``, the object ``slicer.util.settingsValue`` reads, ``Base/Python/slicer/util.py``),
through ``value(key, default)`` / ``setValue(key, value)``. A JSON text round-trips through any
QSettings backend unchanged (a string list of one item may come back from an ``.ini`` file as a
plain string), and a text someone broke by hand reads as an empty library rather than an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Union

from .ModelInfo import ModelInfo
from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["SETTINGS_KEY", "MAX_ENTRIES", "SOURCES", "LibraryEntry", "ModelLibrary", "folderKey"]

SETTINGS_KEY = "LabelSharingSeg/ModelLibrary"
#: the oldest entries beyond this many are forgotten when a new one joins
MAX_ENTRIES = 50
#: how a model joined the library
SOURCES = ("trained", "added task", "updated", "opened", "demo")
PathLike = Union[str, Path]


@dataclass(frozen=True)
class LibraryEntry:
    """One remembered model: its folder, how it joined, and what its ``model.json`` says now.

    ``model`` is ``None`` when the model cannot be used any more; ``problem`` then says why
    (folder gone, ``model.json`` unreadable) in words for the user.
    """

    folder: Path
    source: str
    model: Optional[ModelInfo]
    problem: str = ""

    @property
    def available(self) -> bool:
        return self.model is not None

    @property
    def name(self) -> str:
        return self.folder.name

    def taskLines(self) -> List[str]:
        """One line per task: ``"AbdomenCT (CT): liver, spleen, left_kidney, aorta"``."""
        if self.model is None:
            return []
        return [
            f"{task.name} ({task.modality}): {', '.join(label.name for label in task.labels)}"
            for task in self.model.tasks.values()
        ]


class ModelLibrary:
    """The remembered model folders, most recently used first.

    Args:
        settings: a ``qt.QSettings`` (or anything with ``value(key, default)`` and ``setValue(key, value)``).
    """

    def __init__(self, settings: Any) -> None:
        self._settings = settings

    def records(self) -> List[dict]:
        """The stored ``{"folder": str, "source": str}`` records, most recent first."""
        text = self._settings.value(SETTINGS_KEY, "")
        try:
            records = json.loads(text) if text else []
        except (TypeError, ValueError):  # edited by hand or written by something else: start afresh
            return []
        if not isinstance(records, list):
            return []
        return [r for r in records if isinstance(r, dict) and isinstance(r.get("folder"), str) and r["folder"]]

    def entries(self) -> List[LibraryEntry]:
        """Every remembered model with its tasks and labels, or the reason it cannot be used."""
        entries = []
        for record in self.records():
            folder, source = Path(record["folder"]), str(record.get("source", "opened"))
            if not folder.is_dir():
                entries.append(LibraryEntry(folder, source, None, _("The folder no longer exists.")))
                continue
            try:
                entries.append(LibraryEntry(folder, source, ModelInfo.load(folder)))
            except ModuleError as exc:
                entries.append(LibraryEntry(folder, source, None, str(exc)))
        return entries

    def add(self, folder: PathLike, source: str) -> None:
        """Remember ``folder`` (first in the list); a folder already listed keeps how it joined.

        Raises:
            ValueError: ``source`` is not one of :data:`SOURCES`.
        """
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        key = folderKey(folder)
        records = self.records()
        previous = next((r for r in records if folderKey(r["folder"]) == key), None)
        record = {"folder": str(Path(folder).absolute()), "source": previous["source"] if previous else source}
        self._store([record] + [r for r in records if folderKey(r["folder"]) != key])

    def open(self, folder: PathLike) -> ModelInfo:
        """Read a model folder chosen on disk and remember it ("opened"); nothing is downloaded.

        Raises:
            ModuleError: the folder holds no readable model.
        """
        model = ModelInfo.load(folder)
        self.add(folder, "opened")
        return model

    def forget(self, folder: PathLike) -> None:
        """Drop ``folder`` from the list (its files stay where they are)."""
        key = folderKey(folder)
        self._store([r for r in self.records() if folderKey(r["folder"]) != key])

    def _store(self, records: List[dict]) -> None:
        self._settings.setValue(SETTINGS_KEY, json.dumps(records[:MAX_ENTRIES]))


def folderKey(folder: PathLike) -> str:
    """One key per folder however it is written (relative, trailing separator, case on Windows)."""
    return os.path.normcase(os.path.normpath(os.path.abspath(str(folder))))
