"""Task datasets in nnU-Net v2's raw layout: reading and validating them.

A task is one folder::

    dataset.json            name, channel_names, labels, numTraining, file_ending[, modality, colors,
                            terminology]
    imagesTr/<case>_0000<file_ending>   or a DICOM series: imagesTr/<case>_0000/ (a folder of one
                            series' files) or imagesTr/<case>_0000.zip
    labelsTr/<case><file_ending>   or   labelsTr/<case>.seg.nrrd   (a Slicer segmentation)
    imagesTs/, labelsTs/    optional test split, same naming; test images without a label are
                            normal (only evaluation needs test labels)

This is the layout annotators already have for nnU-Net, so the same folder works for both.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import SimpleITK as sitk

from labelsharing.data.appearance import case_thumbnails
from labelsharing.data.image_io import MAX_LABEL_VALUE, SEG_NRRD, case_id_from_path, geometry_mismatch, read_image, \
    read_label
from labelsharing.errors import LabelSharingError
from labelsharing.plan import EXAMPLE_ENTRY, LabelStats, entry_from_codes, measure_label_sizes, \
    terminology_entry_problem

__all__ = ["MODALITIES", "Case", "TaskDataset", "TaskSummary", "read_task_dataset", "inspect_task_dataset", "load_case",
           "check_same_dimension"]

MODALITIES = ("CT", "MR", "XR", "other")
_MODALITY_WORDS = {
    "CT": ("ct", "cect", "ncct"),
    "MR": ("mr", "mri", "t1", "t2", "flair", "dwi", "adc", "pd", "t1w", "t2w", "t1c", "t1ce"),
    "XR": ("xr", "x-ray", "xray", "cr", "dx", "radiograph", "projection"),
}


@dataclass(frozen=True)
class Case:
    """One image and its label file (``label`` is None for unlabelled images)."""

    case_id: str
    image: Path
    label: Path | None


@dataclass(frozen=True)
class TaskDataset:
    """A task dataset folder, read but not yet loaded.

    Attributes:
        name: task name (``dataset.json`` ``name``, else the folder name).
        root: the folder.
        labels: label name -> value, background excluded.
        modality: ``CT``, ``MR``, ``XR`` or ``other``; chooses intensity normalisation.
        file_ending: image file ending, e.g. ``.nii.gz``.
        training: labelled training cases (``imagesTr``/``labelsTr``).
        test: labelled test cases (``imagesTs``/``labelsTs``), possibly empty.
        unlabelled_test: test images (``imagesTs``) without a label in ``labelsTs``, possibly empty.
        colors: label name -> RGB in 0..1 given by ``dataset.json`` ``colors`` (optional).
        terminology: label name -> Slicer terminology entry string, given by ``dataset.json``
            ``terminology`` as that string or as code triples (optional); the Slicer module tags the
            segments with it and DICOM SEG output codes the segments with it.
        parent: for a sub-task of a task split by overlapping segments (``Chest/2``), the task's own
            name (:func:`~labelsharing.data.overlap_split.split_overlapping_task`); else None.
        other_labels: the parent's labels that the sibling sub-tasks hold (name -> value): their
            segments or values are left out when this sub-task's labels are read.
    """

    name: str
    root: Path
    labels: dict[str, int]
    modality: str
    file_ending: str
    training: tuple[Case, ...]
    test: tuple[Case, ...] = ()
    unlabelled_test: tuple[Case, ...] = ()
    colors: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    terminology: dict[str, str] = field(default_factory=dict)
    parent: str | None = None
    other_labels: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSummary:
    """What loading every training case of a task found."""

    task: TaskDataset
    stats: dict[str, LabelStats]
    dimension: int
    warnings: list[str]
    thumbnails: tuple[np.ndarray, ...] = ()


def read_task_dataset(folder: str | Path) -> TaskDataset:
    """Read ``dataset.json`` and pair image and label files (no pixels are loaded).

    Raises:
        LabelSharingError: missing or malformed ``dataset.json``, no training cases, a training
            image without label, a label without image, several input channels.
    """
    root = Path(folder)
    meta = _read_dataset_json(root)
    labels = _parse_labels(root, meta.get("labels"))
    channels = meta.get("channel_names", {"0": "unknown"})
    if not isinstance(channels, dict) or len(channels) != 1:
        raise LabelSharingError(
            f"{root}: {len(channels) if isinstance(channels, dict) else '?'} input channels in 'channel_names'. "
            "Only single-channel tasks are supported for now; keep one channel (e.g. {\"0\": \"CT\"})."
        )
    name = root.name if meta.get("name") is None else meta["name"]
    if not isinstance(name, str) or not name.strip():
        raise LabelSharingError(f'{root}/dataset.json: "name" must be the task name as non-empty text, got {name!r}.')
    file_ending = meta.get("file_ending")
    if not isinstance(file_ending, str) or not file_ending.startswith("."):
        raise LabelSharingError(f'{root}/dataset.json: add the image file ending, e.g. "file_ending": ".nii.gz".')
    training = _pair_cases(root, "imagesTr", "labelsTr", file_ending, labels_required=True)
    if not training:
        raise LabelSharingError(
            f"{root}: no training cases. Put images in imagesTr/<case>_0000{file_ending} "
            f"and labels in labelsTr/<case>{file_ending}."
        )
    test = _pair_cases(root, "imagesTs", "labelsTs", file_ending, labels_required=False)
    declared = meta.get("numTraining")
    if isinstance(declared, int) and declared != len(training):
        warnings.warn(f"{root}: numTraining is {declared} but {len(training)} training cases were found.")
    return TaskDataset(
        name=name,
        root=root,
        labels=labels,
        modality=_modality(root, meta, channels),
        file_ending=file_ending,
        training=training,
        test=tuple(c for c in test if c.label is not None),
        unlabelled_test=tuple(c for c in test if c.label is None),
        colors=_parse_colors(root, meta.get("colors", {}), labels),
        terminology=_parse_terminology(root, meta.get("terminology", {}), labels),
    )


def inspect_task_dataset(task: TaskDataset, progress: Callable[[int, int], None] | None = None,
                         thumbnails: bool = False) -> TaskSummary:
    """Load every training pair, one at a time, check it, and measure each label's size.

    Checks: image/label size and geometry agree, label values are declared, all cases have
    the same dimension. A declared label that never occurs is a warning.

    Args:
        task: the dataset.
        progress: called as ``progress(done, total)`` after each case.
        thumbnails: also keep each case's appearance thumbnails (``TaskSummary.thumbnails``, see
            :func:`~labelsharing.data.appearance.case_thumbnails`), so that the look-alike check does
            not read every image a second time. No volume is kept.

    Raises:
        LabelSharingError: naming the file and the fix, on the first broken case.
    """
    dims: set[int] = set()
    kept: list[np.ndarray] = []

    def arrays() -> Iterator[np.ndarray]:
        for index, case in enumerate(task.training):
            image, label = load_case(task, case)
            dims.add(image.GetDimension())
            if thumbnails:
                kept.append(case_thumbnails(image))
            yield sitk.GetArrayViewFromImage(label)
            if progress is not None:
                progress(index + 1, len(task.training))

    stats = measure_label_sizes(arrays(), task.labels)
    check_same_dimension(task.name, dims)
    notes = [
        f"Task '{task.name}': label '{name}' (value {s.value}) never occurs in the training labels."
        for name, s in stats.items()
        if s.presence == 0
    ]
    return TaskSummary(task=task, stats=stats, dimension=dims.pop(), warnings=notes, thumbnails=tuple(kept))


def check_same_dimension(task_name: str, dimensions: set[int]) -> None:
    """Refuse a task whose cases mix 2D and 3D images (``dimensions``: those found).

    Raises:
        LabelSharingError: more than one dimension.
    """
    if len(dimensions) > 1:
        raise LabelSharingError(f"Task '{task_name}' mixes 2D and 3D images; split it into two tasks.")


def load_case(task: TaskDataset, case: Case):
    """Load one case as (image, label) SimpleITK images, checked against each other.

    Raises:
        LabelSharingError: unreadable files, non-finite intensities, geometry mismatch,
            undeclared label values.
    """
    image = read_image(case.image)
    if case.label is None:
        raise LabelSharingError(f"Case '{case.case_id}' of task '{task.name}' has no label file.")
    label = read_label(case.label, task.labels, reference=image, skip=task.other_labels)
    mismatch = geometry_mismatch(label, image)
    if mismatch:
        raise LabelSharingError(
            f"{case.label} does not match its image {case.image.name}: {mismatch}. "
            "Save the label on the image's grid (same size, spacing, origin and direction)."
        )
    return image, label


def _read_dataset_json(root: Path) -> dict:
    if not root.is_dir():
        raise LabelSharingError(f"Dataset folder not found: {root}")
    path = root / "dataset.json"
    if not path.is_file():
        raise LabelSharingError(
            f"{root} has no dataset.json. A task folder needs dataset.json, imagesTr/ and labelsTr/ "
            "(nnU-Net v2 raw layout; see the README)."
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelSharingError(f"{path} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise LabelSharingError(f"{path} is not a dataset description: its JSON is nested too deeply.") from exc
    if not isinstance(meta, dict):
        raise LabelSharingError(f"{path} must hold a JSON object.")
    return meta


def _parse_labels(root: Path, labels: object) -> dict[str, int]:
    path = root / "dataset.json"
    if not isinstance(labels, dict) or not labels:
        raise LabelSharingError(f'{path}: "labels" must map names to values, e.g. {{"background": 0, "liver": 1}}.')
    parsed: dict[str, int] = {}
    for name, value in labels.items():
        if not name.strip():
            raise LabelSharingError(f"{path}: label {name!r} has no name; label names must be non-empty text.")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LABEL_VALUE:
            raise LabelSharingError(
                f"{path}: label '{name}' has value {value!r}; values must be integers from 0 to {MAX_LABEL_VALUE} "
                "(region-based labels with lists are not supported)."
            )
        parsed[name] = value
    if parsed.get("background") != 0:
        raise LabelSharingError(f'{path}: "labels" must contain "background": 0.')
    if len(set(parsed.values())) != len(parsed):
        raise LabelSharingError(f"{path}: two labels share one value ({_labels_text(parsed)}).")
    del parsed["background"]
    if not parsed:
        raise LabelSharingError(f"{path}: no labels besides background.")
    return parsed


def _pair_cases(
    root: Path, image_dir: str, label_dir: str, file_ending: str, labels_required: bool
) -> tuple[Case, ...]:
    """Pair ``image_dir`` images with ``label_dir`` labels; unpaired images get ``label=None``.

    Raises:
        LabelSharingError: misnamed images, extra channels, a label without an image, and (if
            ``labels_required``) an image without a label.
    """
    images_path, labels_path = root / image_dir, root / label_dir
    if not images_path.is_dir():
        return ()
    # An image is a file with the dataset's ending, or a DICOM series: a folder or .zip named <case>_0000.
    # Hidden names are not cases: a killed writer's temporary file (.x.tmp-<pid>-<hex><ending>), macOS's ._ files.
    images = sorted(p for p in images_path.iterdir() if not p.name.startswith(".") and (
                    p.name.endswith(file_ending) or p.is_dir() or p.name.lower().endswith(".zip")))
    stems = [p.name[: len(p.name) - len(_image_ending(p, file_ending))] for p in images]
    unnamed = [s for s in stems if not re.search(r"_\d{4}$", s)]
    if unnamed:
        raise LabelSharingError(
            f"{images_path}: image file(s) {', '.join(unnamed[:3])} lack the channel suffix; "
            f"name them <case>_0000{file_ending} (nnU-Net v2 layout)."
        )
    channels = sorted({s[-4:] for s in stems} - {"0000"})
    if channels:
        raise LabelSharingError(
            f"{images_path}: found extra input channels (_{', _'.join(channels)}); "
            "only single-channel tasks (_0000) are supported for now."
        )
    labels = ({case_id_from_path(p, is_label=True): p for p in labels_path.iterdir() if not p.name.startswith(".")}
              if labels_path.is_dir() else {})
    cases, missing = [], []
    for image in images:
        case_id = case_id_from_path(image)
        label = labels_path / f"{case_id}{file_ending}"
        if not label.is_file():
            label = labels_path / f"{case_id}{SEG_NRRD}"
        if not label.is_file():
            missing.append(case_id)
        cases.append(Case(case_id, image, label if label.is_file() else None))
    if missing and labels_required:
        raise LabelSharingError(
            f"{root}: {len(missing)} image(s) in {image_dir} have no label in {label_dir}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. "
            f"Expected {label_dir}/<case>{file_ending} or <case>{SEG_NRRD}."
        )
    orphans = sorted(set(labels) - {c.case_id for c in cases})
    if orphans:
        raise LabelSharingError(
            f"{root}: label(s) in {label_dir} without an image in {image_dir}: {', '.join(orphans[:5])}. "
            f"Expected {image_dir}/<case>_0000{file_ending}."
        )
    return tuple(cases)


def _image_ending(image: Path, file_ending: str) -> str:
    if image.is_dir():
        return ""
    return ".zip" if image.name.lower().endswith(".zip") and not image.name.endswith(file_ending) else file_ending


def _modality(root: Path, meta: Mapping, channels: Mapping) -> str:
    given = meta.get("modality")
    if given is not None:
        if given not in MODALITIES:
            raise LabelSharingError(f"{root}/dataset.json: modality {given!r} must be one of {', '.join(MODALITIES)}.")
        return str(given)
    channel = str(next(iter(channels.values()))).strip().lower()
    for modality, words in _MODALITY_WORDS.items():
        if channel in words:
            return modality
    return "other"


def _parse_colors(root: Path, colors: object, labels: Mapping[str, int]) -> dict[str, tuple[float, float, float]]:
    path = root / "dataset.json"
    if not isinstance(colors, dict):
        raise LabelSharingError(f'{path}: "colors" must map label names to [r, g, b], e.g. {{"liver": [255, 0, 0]}}.')
    parsed = {}
    for name, rgb in colors.items():
        if name not in labels:
            raise LabelSharingError(f'{path}: "colors" names \'{name}\', which is not a declared label.')
        numbers = isinstance(rgb, list) and len(rgb) == 3 and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in rgb
        )
        if not numbers:
            raise LabelSharingError(f"{path}: colour of label '{name}' is {rgb!r}; give 3 numbers [r, g, b].")
        if not all(0 <= c <= 1 for c in rgb) and not all(0 <= c <= 255 for c in rgb):
            raise LabelSharingError(
                f"{path}: colour of label '{name}' is {rgb!r}; give 3 numbers all in 0..1 or all in 0..255."
            )
        scale = 255.0 if max(rgb) > 1 else 1.0
        parsed[name] = tuple(float(c) / scale for c in rgb)
    return parsed


def _parse_terminology(root: Path, terminology: object, labels: Mapping[str, int]) -> dict[str, str]:
    """label -> Slicer terminology entry, from ``dataset.json`` ``terminology``: per label either the entry
    string or its codes ``{"category": [scheme, value, meaning], "type": [...], "region": [...]}``."""
    if not isinstance(terminology, dict) or not all(
        name in labels and isinstance(entry, (str, dict)) for name, entry in terminology.items()
    ):
        raise LabelSharingError(
            f'{root}/dataset.json: "terminology" must map declared label names to Slicer terminology strings or to '
            'codes, e.g. {"liver": {"category": ["SCT", "123037004", "Anatomical Structure"], '
            '"type": ["SCT", "10200004", "Liver"]}}.'
        )
    entries = {}
    for name, entry in terminology.items():
        if isinstance(entry, dict):
            try:
                entry = entry_from_codes(entry)
            except ValueError as exc:
                raise LabelSharingError(f'{root}/dataset.json: the terminology of label "{name}" {exc}.') from exc
        problem = terminology_entry_problem(entry)
        if problem is not None:
            raise LabelSharingError(
                f'{root}/dataset.json: the terminology of label "{name}" {problem}. Give the entry as Slicer '
                f'writes it (a segment\'s TerminologyEntry tag), e.g. "{EXAMPLE_ENTRY}", or its codes '
                '({"category": [scheme, value, meaning], "type": [...]}), or leave the label out of "terminology".'
            )
        entries[name] = entry
    return entries


def _labels_text(labels: Mapping[str, int]) -> str:
    return ", ".join(f"{name}={value}" for name, value in labels.items())
