"""``add-case``: one more labelled case in a task's dataset folder (a corrected segmentation, say).

The case is checked exactly as training reads it (:func:`~labelsharing.data.datasets.load_case`:
readable, finite intensities, the label on the image's grid, only declared label values; a
``.seg.nrrd`` by its segment names) and against the task (same image dimension as its other
cases), named, and written in the dataset's own file ending: ``imagesTr/<case>_0000<ending>``
then ``labelsTr/<case><ending>``, each complete or absent
(:func:`~labelsharing.utils.safe_write.write_atomically`). ``dataset.json``'s ``numTraining`` is
updated last. An existing case is never replaced.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import SimpleITK as sitk

from labelsharing.data.datasets import Case, TaskDataset, check_same_dimension, load_case, read_task_dataset
from labelsharing.data.image_io import read_image_header, write_image, write_label
from labelsharing.errors import LabelSharingError
from labelsharing.utils import write_json_atomically

__all__ = ["add_case", "next_case_id"]

#: A case id: a file-name stem without separators, spaces or a leading dot.
_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def add_case(dataset: str | Path, image: str | Path, label: str | Path, case_id: str | None = None) -> Case:
    """Add ``image`` and its ``label`` to the training cases of the task at ``dataset``.

    Args:
        dataset: the task's dataset folder (nnU-Net raw layout, see :mod:`labelsharing.data.datasets`).
        image: the image: any format SimpleITK reads, or a DICOM series (folder or ``.zip``).
        label: its label map in the task's label values, or a Slicer ``.seg.nrrd`` whose segment
            names are the task's labels.
        case_id: the new case's id (default: :func:`next_case_id`).

    Returns:
        the new case, as :func:`~labelsharing.data.datasets.read_task_dataset` now lists it.

    Raises:
        LabelSharingError: the case id is taken or not a plain file name; the label does not fit
            the image (size, spacing, origin, direction) or holds undeclared values; the image's
            dimension differs from the task's; the files cannot be written. Nothing is written then.
    """
    task = read_task_dataset(dataset)
    case_id = next_case_id(task) if case_id is None else case_id
    if not _CASE_ID.fullmatch(case_id):
        raise LabelSharingError(f"Case id {case_id!r} is not a plain file name; use letters, digits, '_', '-' and "
                                "'.', starting with a letter or digit (e.g. case_021).")
    image_path = task.root / "imagesTr" / f"{case_id}_0000{task.file_ending}"
    label_path = task.root / "labelsTr" / f"{case_id}{task.file_ending}"
    _refuse_taken(task, case_id)

    loaded_image, loaded_label = load_case(task, Case(case_id, Path(image), Path(label)))  # the training checks
    check_same_dimension(task.name, {loaded_image.GetDimension(),
                                     read_image_header(task.training[0].image).GetDimension()})

    write_image(loaded_image, image_path)
    try:
        write_label(sitk.GetArrayViewFromImage(loaded_label), loaded_image, label_path)
    except BaseException:  # an image without its label would break the dataset: take it back
        image_path.unlink(missing_ok=True)
        raise
    _update_count(task.root, len(task.training) + 1)
    return next(c for c in read_task_dataset(task.root).training if c.case_id == case_id)


def next_case_id(task: TaskDataset) -> str:
    """The next free id in the task's naming: the most common ``<prefix><number>`` of its training
    and test cases with the number one above the largest in use (``abd_012`` after ``abd_011``),
    else ``case_000``.

    Example:
        >>> from types import SimpleNamespace as T, SimpleNamespace as C
        >>> next_case_id(T(training=[C(case_id="abd_000"), C(case_id="abd_007")], test=[C(case_id="abd_020")],
        ...                unlabelled_test=[]))
        'abd_021'
    """
    numbered = [re.fullmatch(r"(.*?)(\d+)", c.case_id) for c in (*task.training, *task.test, *task.unlabelled_test)]
    numbered = [m for m in numbered if m]
    if not numbered:
        return "case_000"
    prefix = Counter(m.group(1) for m in numbered).most_common(1)[0][0]
    same = [m.group(2) for m in numbered if m.group(1) == prefix]
    return f"{prefix}{max(int(n) for n in same) + 1:0{max(len(n) for n in same)}d}"


def _refuse_taken(task: TaskDataset, case_id: str) -> None:
    """Refuse a case id already used by a training or test case of the task. (A lone image or label
    file of that id makes :func:`read_task_dataset` refuse the folder before this.)"""
    if case_id in {c.case_id for c in (*task.training, *task.test, *task.unlabelled_test)}:
        raise LabelSharingError(
            f"Case '{case_id}' already exists in {task.root}; add-case never replaces a case. Choose another id with "
            "--case-id (or leave it out for the next free one); to correct that case, replace its label file yourself."
        )


def _update_count(root: Path, count: int) -> None:
    """Set ``dataset.json``'s ``numTraining`` to ``count``, keeping every other field."""
    path = root / "dataset.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["numTraining"] = count
    write_json_atomically(path, meta)
