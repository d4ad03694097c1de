"""The one place where module settings become ``labelsharing`` command-line arguments.

Commands and options are those of ``docs/CONTRACTS.md`` ("Command line").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["DEVICES", "PredictCall", "ServerJobCall", "predictArgs", "trainArgs", "addTaskArgs", "updateArgs",
           "addCaseArgs", "writePins", "isSetPath"]

DEVICES = ("auto", "cpu", "cuda", "mps")
_FORMAT = "seg.nrrd"  # names, colours, label values and terminology in the file: Segmenter loads it with Slicer's reader
PathLike = Union[str, Path]


def isSetPath(path: Optional[PathLike]) -> bool:
    """False for ``None``, ``""`` and ``"."`` (an empty path field of the parameter node)."""
    return path is not None and str(path).strip() not in ("", ".")


def predictArgs(modelFolder: PathLike, task: str, inputFile: PathLike, outFolder: PathLike, device: str) -> List[str]:
    """``predict MODEL --task NAME INPUT --out OUTDIR --format seg.nrrd --device D``."""
    return PredictCall(str(modelFolder), task, str(inputFile), str(outFolder), device).args


@dataclass(frozen=True)
class PredictCall:
    """One segmentation by the engine, as a ``predict`` command line or as a request to a warm worker.

    Both forms say the same (``docs/CONTRACTS.md``: ``predict`` and "Worker protocol"): the
    worker started with :attr:`workerArgs` and sent :meth:`request` writes what :attr:`args` writes.

    Raises:
        ModuleError: an unknown device or an empty task name.
    """

    modelFolder: str
    task: str
    inputFile: str
    outFolder: str
    device: str
    #: the URL of the ``labelsharing serve`` holding the model (then ``modelFolder`` is its name there), or ""
    server: str = ""

    def __post_init__(self) -> None:
        _checkDevice(self.device)
        if not self.task:
            raise ModuleError(_("Choose the task to segment (the list is filled from the model)."))

    @property
    def args(self) -> List[str]:
        """The one-shot command: ``predict MODEL --task NAME INPUT --out OUTDIR --format seg.nrrd --device D``."""
        return [
            "predict", self.modelFolder, "--task", self.task, self.inputFile,
            "--out", self.outFolder, "--format", _FORMAT, "--device", self.device,
        ]

    @property
    def workerArgs(self) -> List[str]:
        """The worker serving this call's model: ``worker MODEL --device D`` (the key of a warm worker)."""
        return ["worker", self.modelFolder, "--device", self.device]

    def request(self) -> Dict[str, Any]:
        """The worker request (without ``id``) for :attr:`args`' task, input, output folder and format."""
        return {"task": self.task, "inputs": [self.inputFile], "out": self.outFolder, "format": _FORMAT}


@dataclass(frozen=True)
class ServerJobCall:
    """A training job for a ``labelsharing serve`` (``POST /v1/jobs/train`` or ``/v1/jobs/add-task``).

    ``datasets`` are local task folders (zipped and uploaded, with ``pins`` as ``pins.json``);
    ``name`` is the new model's name on the server; ``model`` the server model extended by
    ``add-task``; ``options`` the query options (``epochs``, ``replay``, ``keep_look_alikes_apart``: a bool,
    the engine's bare flag when true).

    Raises:
        ModuleError: an unknown kind, no dataset, no name, or add-task without a model.
    """

    kind: str
    datasets: Tuple[str, ...]
    name: str
    server: str
    options: Tuple[Tuple[str, Any], ...] = ()
    model: str = ""
    pins: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("train", "add-task"):
            raise ValueError(f"kind must be train or add-task, not {self.kind!r}")
        if not self.datasets:
            raise ModuleError(_("Add at least one task dataset folder to train on."))
        if not self.name.strip():
            raise ModuleError(_("Name the new model (Model name)."))
        if self.kind == "add-task" and not self.model:
            raise ModuleError(_("Choose the server model to extend in the Engine section."))

    @property
    def args(self) -> List[str]:
        """What the server runs, for the log (a true bool option as its bare flag, a false one left out)."""
        options = [f"--{key.replace('_', '-')}" + ("" if isinstance(value, bool) else f" {value}")
                   for key, value in self.options if value is not False]
        return [self.kind, *([self.model] if self.model else []), *self.datasets, "--out", self.name, *options,
                f"(on {self.server})"]


def trainArgs(
    datasets: Sequence[PathLike], outFolder: PathLike, epochs: Optional[int], device: str,
    pinsFile: Optional[PathLike] = None, keepLookAlikesApart: bool = False,
) -> List[str]:
    """``train DATASET... --out MODEL [--epochs N] --device D [--pins FILE] [--keep-look-alikes-apart]``;
    ``epochs=None``: the engine's default."""
    _checkDevice(device)
    if not datasets:
        raise ModuleError(_("Add at least one task dataset folder to train on."))
    if not isSetPath(outFolder):
        raise ModuleError(_("Choose the folder where the new model is written."))
    epochArgs = ["--epochs", str(int(epochs))] if epochs is not None else []
    args = ["train", *[str(d) for d in datasets], "--out", str(outFolder), *epochArgs, "--device", device]
    return args + _optionalArgs(pinsFile, keepLookAlikesApart)


def addTaskArgs(
    modelFolder: PathLike, dataset: PathLike, outFolder: PathLike, epochs: int, replay: float, device: str,
    pinsFile: Optional[PathLike] = None, keepLookAlikesApart: bool = False,
) -> List[str]:
    """``add-task MODEL DATASET --out NEW_MODEL --epochs N --replay F --device D [--pins FILE]
    [--keep-look-alikes-apart]``."""
    _checkDevice(device)
    if not isSetPath(outFolder):
        raise ModuleError(_("Choose the folder where the extended model is written."))
    if Path(outFolder).resolve() == Path(modelFolder).resolve():
        raise ModuleError(_("Write the extended model to a new folder: the chosen model stays unchanged."))
    args = [
        "add-task", str(modelFolder), str(dataset), "--out", str(outFolder),
        "--epochs", str(int(epochs)), "--replay", f"{float(replay):g}", "--device", device,
    ]
    return args + _optionalArgs(pinsFile, keepLookAlikesApart)


def updateArgs(
    modelFolder: PathLike, task: str, dataset: PathLike, outFolder: PathLike, epochs: int, replay: float, device: str,
) -> List[str]:
    """``update MODEL --task NAME DATASET --out NEW_MODEL [--epochs N] --replay F --device D``.

    ``epochs`` 0 or less leaves the engine's default (the panel's field before the engine's defaults were read).
    """
    _checkDevice(device)
    if not isSetPath(outFolder):
        raise ModuleError(_("Choose the folder where the updated model is written."))
    if Path(outFolder).resolve() == Path(modelFolder).resolve():
        raise ModuleError(_("Write the updated model to a new folder: the chosen model stays unchanged."))
    epochArgs = ["--epochs", str(int(epochs))] if epochs and epochs > 0 else []
    return ["update", str(modelFolder), "--task", task, str(dataset), "--out", str(outFolder), *epochArgs,
            "--replay", f"{float(replay):g}", "--device", device]


def addCaseArgs(dataset: PathLike, image: PathLike, label: PathLike) -> List[str]:
    """``add-case DATASET IMAGE LABEL``: the engine names the case (the next free id)."""
    return ["add-case", str(dataset), str(image), str(label)]


def writePins(path: PathLike, task: str, pins: Mapping[str, int]) -> Optional[Path]:
    """Write a pins file ``{"<task>": {"<label>": shared}}``; ``None`` (no file) when there are no pins."""
    if not pins:
        return None
    path = Path(path)
    path.write_text(json.dumps({task: {label: int(shared) for label, shared in pins.items()}}, indent=2) + "\n")
    return path


def _optionalArgs(pinsFile: Optional[PathLike], keepLookAlikesApart: bool) -> List[str]:
    """``[--pins FILE] [--keep-look-alikes-apart]`` of ``train`` and ``add-task``."""
    pins = ["--pins", str(pinsFile)] if pinsFile else []
    return pins + (["--keep-look-alikes-apart"] if keepLookAlikesApart else [])


def _checkDevice(device: str) -> None:
    if device not in DEVICES:
        raise ModuleError(_("Device must be one of {devices}, not '{device}'.").format(
            devices=", ".join(DEVICES), device=device))
