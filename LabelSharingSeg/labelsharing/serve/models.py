"""The models a server offers: every model folder under one folder, kept loaded (warm) by an LRU.

A predict on a model loads it once (torch, the weights, maybe an exported graph); the next
predicts on it cost only the network and the files. At most ``max_loaded`` models stay loaded
(the least recently used is dropped), so memory stays bounded however many folders there are.
A model re-trained into its folder is loaded again (as the worker does, by the files' signature).
Predictions on one model run one at a time (its lock): a predictor holds one set of buffers and
a device; requests for other models proceed in parallel.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterator

from labelsharing.errors import LabelSharingError
from labelsharing.model import CONFIG_FILE, label_color, read_model_config
from labelsharing.serve.security import NotFound, check_model_name
from labelsharing.serve.worker import files_signature

__all__ = ["ModelLibrary", "describe_tasks"]


def describe_tasks(config: dict) -> dict:
    """The tasks of a ``model.json``: ``{task: {"modality", "labels": [{"name", "value", "shared", "color",
    "terminology"}]}}``, labels by value; a label without a stored colour gets the one predictions use."""
    tasks = {}
    for task, entry in config["tasks"].items():
        labels = [{"name": name, "value": int(label["value"]), "shared": int(label["shared"]),
                   "color": list(label.get("color") or label_color(int(label["shared"]))),
                   "terminology": label.get("terminology")} for name, label in entry["labels"].items()]
        tasks[task] = {"modality": entry.get("modality"), "labels": sorted(labels, key=lambda label: label["value"])}
    return tasks


class ModelLibrary:
    """The model folders under ``root`` and an LRU of their loaded predictors.

    Args:
        root: the served folder (``--models DIR``); names are its sub-folder names.
        predictor_options: ``Predictor.from_model_dir``'s keyword arguments (device, backend, ...).
        max_loaded: models kept loaded at most.
        log: receives a line when a model is loaded or dropped.
    """

    def __init__(self, root: str | Path, predictor_options: dict, max_loaded: int = 4,
                 log: Callable[[str], None] = print) -> None:
        self.root = Path(root).resolve()
        self.options, self.max_loaded, self.log = dict(predictor_options), max(1, int(max_loaded)), log
        self._loaded: OrderedDict[str, tuple[tuple, object, threading.Lock]] = OrderedDict()
        self._guard = threading.Lock()

    def folder(self, name: str) -> Path:
        """The folder of model ``name``; never outside ``root`` (a symlink leading out is refused).

        Raises:
            LabelSharingError: a name that is no plain folder name (``../x``, ``.hidden``).
            NotFound: no model of that name.
        """
        folder = self.root / check_model_name(name)
        if not (folder / CONFIG_FILE).is_file() or folder.resolve().parent != self.root:
            raise NotFound(f"No model named {name!r} on this server; GET /v1/models lists them.")
        return folder

    def names(self) -> list[str]:
        """Names of the model folders (sub-folders holding ``model.json``; hidden folders skipped)."""
        return sorted(path.name for path in self.root.iterdir()
                      if not path.name.startswith(".") and (path / CONFIG_FILE).is_file()
                      and path.resolve().parent == self.root)

    def describe(self) -> Iterator[dict]:
        """``{"name", "tasks", "n_shared", "parent", "labelsharing_version"}`` per model, or ``{"name", "error"}``
        for a damaged one."""
        for name in self.names():
            try:
                config = read_model_config(self.root / name)
            except LabelSharingError as exc:
                yield {"name": name, "error": str(exc)}
                continue
            yield {"name": name, "tasks": describe_tasks(config), "n_shared": config["plan"]["n_shared"],
                   "parent": config.get("parent"),
                   "labelsharing_version": config.get("labelsharing_version")}

    def predictor(self, name: str):
        """``(predictor, lock)`` of model ``name``, loaded if needed; hold the lock while predicting."""
        from labelsharing.infer import Predictor

        folder = self.folder(name)
        signature = files_signature(folder)
        with self._guard:
            cached = self._loaded.get(name)
            if cached is not None and cached[0] == signature:
                self._loaded.move_to_end(name)
                return cached[1], cached[2]
            self._loaded.pop(name, None)
            predictor = Predictor.from_model_dir(folder, log=self.log, **self.options)
            self.log(f"loaded model {name}" + (" again (its files changed)" if cached is not None else ""))
            self._loaded[name] = (signature, predictor, threading.Lock())
            while len(self._loaded) > self.max_loaded:
                dropped, _ = self._loaded.popitem(last=False)
                self.log(f"unloaded model {dropped} (least recently used; --max-loaded {self.max_loaded})")
            return predictor, self._loaded[name][2]
