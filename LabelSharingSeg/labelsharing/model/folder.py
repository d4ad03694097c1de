"""The model folder on disk: ``model.json`` + ``model.safetensors``, read, verified and written safely.

* :func:`build_model_config` is the one place a ``model.json`` document is assembled; it is
  validated (:mod:`labelsharing.model.schema`) before anything uses it.
* :func:`read_model_config` validates ``model.json`` before anything is built from it and reads
  format 1 (written before checksums) with a warning; :func:`read_weights` checks the weights
  against the SHA-256 ``model.json`` stores.
* :func:`check_model_output` says, before any work, whether a command may write its ``--out``:
  ``--force`` replaces only a labelsharing model folder that is not (and does not contain) an
  input of the command, and the location must be writable. :func:`write_model_folder` applies
  the same rules, then writes atomically (staging folder, verified, renamed into place).
* :func:`lock_model_output` (from :mod:`labelsharing.model.output_lock`) makes one process at a time the
  writer of an output; leftovers of interrupted writes (``.<name>.partial-*``, ``.<name>.old-*``)
  are cleaned up under that lock.

Needs no torch (``labelsharing info`` reads models with it).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Mapping, Sequence

from labelsharing import __version__
from labelsharing.errors import LabelSharingError
from labelsharing.model.output_lock import holds_lock, lock_model_output
from labelsharing.model.schema import FORMAT_VERSION, validate_model_config
from labelsharing.plan import SharedLabelPlan

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "CACHE_FOLDER",
    "build_model_config",
    "read_model_config",
    "read_weights",
    "weights_sha256",
    "check_model_output",
    "lock_model_output",
    "write_model_folder",
]

CONFIG_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
#: Graphs that inference backends built from the weights (:mod:`labelsharing.infer.graph_cache`); part of the model folder.
CACHE_FOLDER = ".cache"
#: A larger model.json is not one this package wrote (its history grows by kilobytes per run).
MAX_CONFIG_BYTES = 64 * 2**20
_MODEL_FILES = {CONFIG_FILE, WEIGHTS_FILE, CACHE_FOLDER}
_RESTORE = "Restore the model folder from a copy or re-train the model."


# --------------------------------------------------------------------------------- model.json
def build_model_config(
    architecture: Mapping,
    input_size: int,
    plan: SharedLabelPlan,
    tasks: Mapping[str, Mapping],
    *,
    parent: str | None = None,
    parameters: int | None = None,
    versions: Mapping[str, str] | None = None,
    history: Sequence[Mapping] = (),
    appearance: Mapping | None = None,
) -> dict:
    """Assemble and validate the ``model.json`` document of a model (without ``weights_sha256``,
    which :func:`write_model_folder` adds from the weights it writes).

    Args:
        architecture: ``{"name": "UNet", "kwargs": {...}}`` (see ``model.default_architecture``).
        input_size: side S of the square S x S network input.
        plan: the shared-label plan; ``tasks`` must name the same tasks and labels.
        tasks: task name -> ``{"modality", "plane", "target_spacing", "normalization", "labels", "dataset"}``.
        parent: path of the model this one was fine-tuned from, if any.
        parameters: number of network parameters, if known.
        versions: package name -> version that built the model.
        history: records of the training runs so far (free-form).
        appearance: the look-alike check's ``{"tasks": [...], "confusion": [[...]]}``
            (``appearance.Appearance.to_dict``), if it ran.

    Raises:
        LabelSharingError: if any field breaks the schema (e.g. a label value above 65535).
    """
    config = {
        "format_version": FORMAT_VERSION,
        "labelsharing_version": __version__,
        "architecture": json.loads(json.dumps(architecture)),
        "input_size": [int(input_size), int(input_size)],
        "plan": plan.to_dict(),
        "tasks": json.loads(json.dumps(tasks)),
        "history": list(history),
        "parent": parent,
    }
    if parameters is not None:
        config["parameters"] = int(parameters)
    if versions is not None:
        config["versions"] = dict(versions)
    if appearance is not None:
        config["appearance"] = json.loads(json.dumps(appearance))
    return validate_model_config(config, "the new model.json")


def read_model_config(folder: str | Path) -> dict:
    """Read and validate ``model.json`` of a model folder (no torch needed).

    Format 1 (written before the weights' checksum was stored) is read as format
    :data:`FORMAT_VERSION` without ``weights_sha256``, with a warning that its weights cannot be
    verified; formats 2 (before the ``familiarity`` references), 3 (before ``plan.splits``), 4
    (before ``plan.apart``) and 5 (before ``small_islands``) as they are.

    Raises:
        LabelSharingError: no ``model.json``, not JSON, an unknown format or a field that breaks
            the schema (naming the field).
    """
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise LabelSharingError(
            f"{folder} is not a model folder (no {CONFIG_FILE}). Train one with 'labelsharing train'."
        )
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise LabelSharingError(f"{path} is larger than {MAX_CONFIG_BYTES // 2**20} MB: not a model.json this "
                                    f"package wrote. {_RESTORE}")
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise LabelSharingError(f"{path} is damaged ({type(exc).__name__}: {exc}). {_RESTORE}") from exc
    if not isinstance(config, dict):
        raise LabelSharingError(f"{path} does not hold a JSON object, so it is not a model.json. {_RESTORE}")
    version = config.get("format_version")
    if type(version) is int and version in (2, 3, 4, 5):  # formats 3 to 6 only add optional fields
        config["format_version"] = version = FORMAT_VERSION
    if type(version) is int and version == 1:
        warnings.warn(f"{path} has model format 1, written before labelsharing stored a checksum of the weights: "
                      f"damage to {WEIGHTS_FILE} cannot be detected. Models written from it (add-task) get one.")
        config["format_version"] = FORMAT_VERSION
    elif type(version) is not int or version != FORMAT_VERSION:
        raise LabelSharingError(
            f"{path} has model format {version!r}; this labelsharing {__version__} reads formats 1 to "
            f"{FORMAT_VERSION}. Update labelsharing or re-train the model."
        )
    elif "weights_sha256" not in config:
        raise LabelSharingError(f"{path}: weights_sha256 is missing; format {FORMAT_VERSION} stores the checksum "
                                f"of {WEIGHTS_FILE}. {_RESTORE}")
    return validate_model_config(config, str(path), _RESTORE)


# --------------------------------------------------------------------------------- weights
def weights_sha256(data: bytes) -> str:
    """Hexadecimal SHA-256 of a weights file's bytes (stored as ``weights_sha256``)."""
    return hashlib.sha256(data).hexdigest()


def read_weights(folder: str | Path, config: Mapping) -> bytes:
    """The bytes of ``model.safetensors``, checked against ``config["weights_sha256"]``.

    A config without the checksum (format 1, see :func:`read_model_config`) is not checked.

    Raises:
        LabelSharingError: missing or unreadable file, or bytes that do not match the checksum.
    """
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise LabelSharingError(f"{folder} has no {WEIGHTS_FILE}; the model folder is incomplete.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LabelSharingError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    expected = config.get("weights_sha256")
    if expected is not None and weights_sha256(data) != expected:
        raise LabelSharingError(f"{path}: the weights do not match model.json: the file is damaged or from another "
                                f"model. {_RESTORE}")
    return data


# --------------------------------------------------------------------------------- writing
def check_model_output(out: str | Path, inputs: Sequence[str | Path] = (), force: bool = False) -> list[str]:
    """Check, before any work, that a command may write the model folder ``out``.

    Rules: ``out`` is not an input of the command and does not contain one; if it exists,
    ``force`` is given and ``out`` is a labelsharing model folder (``model.json``, and nothing
    besides the model's two files); its parent folder can be written. Leftovers of interrupted
    writes of ``out`` are removed (or an interrupted replacement restored) on the way.

    Args:
        out: the model folder to be written (``--out``).
        inputs: the command's input folders and files (datasets, parent model).
        force: ``--force``: replace an existing model folder.

    Returns:
        One line per leftover removed or restored (each also issued as a warning).

    Raises:
        LabelSharingError: a rule is broken, or another process is writing ``out``.
    """
    out = Path(out)
    target = out.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if source == target:
            raise LabelSharingError(f"--out {out} is an input of this command ({given}); it is never replaced. "
                                    "Choose another --out.")
        if target in source.parents:
            raise LabelSharingError(f"--out {out} contains {given}, an input of this command; it is never replaced. "
                                    "Choose another --out.")
    with lock_model_output(out):
        notes = _clean_leftovers(target)
        if out.exists() or out.is_symlink():
            if not force:
                raise LabelSharingError(f"{out} already exists; choose another --out or pass --force to replace it.")
            if not out.is_dir() or out.is_symlink() or not (out / CONFIG_FILE).is_file():
                raise LabelSharingError(f"--force replaces only a labelsharing model folder (one holding {CONFIG_FILE}); "
                                        f"{out} is not one, so it is left untouched. Choose another --out.")
            others = sorted(p.name for p in out.iterdir() if p.name not in _MODEL_FILES)
            if others:
                raise LabelSharingError(f"{out} holds files besides the model ({', '.join(others[:5])}); --force "
                                        f"replaces only {CONFIG_FILE} and {WEIGHTS_FILE}. Move them out or choose "
                                        "another --out.")
    return notes


def write_model_folder(folder: str | Path, config: Mapping, weights: bytes, overwrite: bool = False,
                       inputs: Sequence[str | Path] = ()) -> Path:
    """Write a model folder atomically: a crash leaves either no folder or the old one.

    The files are written into ``.<name>.partial-*`` beside ``folder``, flushed to disk and read
    back, then renamed into place (an existing folder is moved aside to ``.<name>.old-<pid>``
    first and removed after). Runs under :func:`lock_model_output` and :func:`check_model_output`.

    Args:
        folder: the model folder to write.
        config: the ``model.json`` document, including ``weights_sha256`` of ``weights``.
        weights: the ``model.safetensors`` bytes.
        overwrite: replace an existing model folder (``--force``).
        inputs: the command's inputs, never replaced.

    Raises:
        LabelSharingError: the config breaks the schema or does not match ``weights``, a rule of
            :func:`check_model_output` is broken, or the disk refuses the write (nothing is replaced).
    """
    folder = Path(folder).resolve()
    validate_model_config(config, f"{folder / CONFIG_FILE} (not written)")
    if config.get("weights_sha256") != weights_sha256(weights):
        raise ValueError("config['weights_sha256'] must be the SHA-256 of weights")
    with lock_model_output(folder):
        check_model_output(folder, inputs, overwrite)
        staging = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        try:
            staging.mkdir()
            _write_verified(staging / WEIGHTS_FILE, weights)
            _write_verified(staging / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode("utf-8"))
            if folder.exists():
                folder.rename(old)
            staging.rename(folder)
        except OSError as exc:
            if old.exists() and not folder.exists():
                old.rename(folder)
            raise LabelSharingError(f"Could not write the model folder {folder}: {exc.strerror or exc}. Nothing was "
                                    "replaced; free disk space or choose another --out.") from exc
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        if old.exists():
            shutil.rmtree(old)
    return folder


def _write_verified(path: Path, data: bytes) -> None:
    """Write ``data``, flush it to disk and read it back (a full disk may truncate silently)."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    if path.read_bytes() != data:
        raise OSError(f"{path.name} read back differs from what was written")


def _clean_leftovers(target: Path) -> list[str]:
    """Remove ``.<name>.partial-*`` / ``.<name>.old-*`` beside ``target`` left by interrupted writes.

    Needs the output's lock, so no live writer owns them. An ``.old-*`` copy is moved back to
    ``target`` if ``target`` is missing (a replacement died between its two renames). Folders
    holding anything besides model files are left alone.
    """
    if not holds_lock(target):
        raise ValueError(f"cleaning leftovers of {target} needs its lock (lock_model_output)")
    name = glob.escape(target.name)
    leftovers = sorted(target.parent.glob(f".{name}.old-*")) + sorted(target.parent.glob(f".{name}.partial-*"))
    notes = []
    for leftover in leftovers:
        if leftover.is_symlink() or not leftover.is_dir() or not {p.name for p in leftover.iterdir()} <= _MODEL_FILES:
            continue
        if ".old-" in leftover.name and not target.exists() and (leftover / WEIGHTS_FILE).is_file():
            leftover.rename(target)
            notes.append(f"restored {target} from {leftover.name}, left by an interrupted replacement")
        else:
            shutil.rmtree(leftover)
            notes.append(f"removed {leftover}, left by an interrupted write of {target.name}")
    for note in notes:
        warnings.warn(note)
    return notes
