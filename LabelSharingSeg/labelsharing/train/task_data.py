"""Training data: every task's cases as normalised, square 2D slices with shared labels.

Each task is prepared once (:func:`prepare_task`): a normalisation is fitted (CT) or chosen (MR,
X-ray), volumes are viewed in LPS and cut parallel to the task's plane, and each slice is
resampled to the task's in-plane target spacing and fitted (scaled, padded) into ``S x S``
(:mod:`labelsharing.data.orientation`). Labels are mapped to shared labels through the plan. Slices
of all tasks are then pooled where they lie (:class:`PooledSlices`) and drawn with task-balanced
weights (:func:`sampling_weights`) so that a task with many slices does not drown a small one.

Memory: the slices are counted from the files' headers first, then the cases are read one at a
time and each case's slices are written straight into the task's block of the run's
:class:`~labelsharing.train.slice_store.SliceStore` (float16 images, uint8 labels: ``3 * S * S`` bytes a
slice, 192 kB at S = 256; in RAM, or memory-mapped for large sets). No volume outlives its case,
and no second copy of the slices is made. Held-out validation cases are read again each time
validation needs them (:meth:`PreparedTask.load_validation`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from labelsharing.data import NORMALIZATION_BY_MODALITY, Case, Slicing, SquareFit, TaskDataset, fit_ct_normalization, \
    load_case, normalize_intensities, plan_slicing, read_image_header
from labelsharing.errors import LabelSharingError
from labelsharing.model import label_color
from labelsharing.plan import SharedLabelPlan
from labelsharing.train.slice_store import SliceStore, label_dtype

__all__ = ["PreparedTask", "prepare_task", "split_cases", "PooledSlices", "sampling_weights"]

#: Slices fitted at a time: bounds the float32 and int64 temporaries of a long volume.
_CHUNK = 32


@dataclass
class PreparedTask:
    """One task, ready for training.

    Attributes:
        name: task name.
        dataset: the task's dataset folder.
        modality, normalization, slicing: preprocessing stored in the model for inference.
        images: (n, S, S) float16 normalised slices; labels: (n, S, S) uint8 (uint16 past 255
            shared labels) shared labels. Both are a block of the run's slice store, in RAM or
            memory-mapped (:class:`~labelsharing.train.slice_store.SliceStore`).
        foreground: (n,) bool, slice holds any label.
        validation: the held-out cases, for Dice during training; read when needed
            (:meth:`load_validation`). Their ids are stored in ``model.json`` so that a later
            ``add-task`` validates (and never trains) on exactly these cases.
        validation_slices: the number of slices of the held-out cases (what one validation predicts).
        training_ids: the ids of the cases trained on, stored in ``model.json`` so that ``update``
            can tell which cases were added since (empty for a task prepared ``validation_only``).
    """

    name: str
    dataset: TaskDataset
    modality: str
    normalization: dict
    images: np.ndarray
    labels: np.ndarray
    foreground: np.ndarray
    validation: list[Case] = field(default_factory=list)
    slicing: Slicing = field(default_factory=Slicing)
    validation_slices: int = 0
    training_ids: tuple[str, ...] = ()

    @property
    def validation_ids(self) -> tuple[str, ...]:
        """The held-out cases' ids."""
        return tuple(case.case_id for case in self.validation)

    def model_entry(self, plan: SharedLabelPlan) -> dict:
        """The task's ``model.json`` entry (for :func:`~labelsharing.model.folder.build_model_config`):
        preprocessing, labels with values, shared labels, colours and terminology, source folder,
        held-out and trained-on case ids."""
        labels = {
            name: {"value": a.value, "shared": a.shared,
                   "color": list(self.dataset.colors.get(name, label_color(a.shared)))}
            for name, a in plan.labels(self.name).items()
        }
        for name, entry in self.dataset.terminology.items():
            labels[name]["terminology"] = entry
        return {"modality": self.modality, **self.slicing.to_config(), "normalization": self.normalization,
                "labels": labels, "dataset": str(Path(self.dataset.root).resolve()),
                "validation_cases": list(self.validation_ids), "training_cases": list(self.training_ids)}

    def load_validation(self) -> Iterator[tuple[sitk.Image, np.ndarray]]:
        """The held-out cases as (image, task-label array), read one at a time."""
        for case in self.validation:
            image, label = load_case(self.dataset, case)
            yield image, sitk.GetArrayFromImage(label)


def split_cases(cases: Sequence[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Hold out ``val_fraction`` of the cases (at least one if there are two or more)."""
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = 0 if len(cases) < 2 or val_fraction <= 0 else max(1, int(round(val_fraction * len(cases))))
    n_val = min(n_val, len(cases) - 1)
    val = [cases[i] for i in sorted(order[:n_val])]
    train = [cases[i] for i in sorted(order[n_val:])]
    return train, val


def prepare_task(
    dataset: TaskDataset,
    plan: SharedLabelPlan,
    input_size: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    axis: int | None = None,
    normalization: dict | None = None,
    validation_ids: Sequence[str] | None = None,
    slicing: Slicing | None = None,
    validation_only: bool = False,
    store: SliceStore | None = None,
) -> PreparedTask:
    """Normalise, slice and square-fit one task's training cases, one case at a time.

    Args:
        dataset: the task.
        plan: maps the task's labels to shared labels.
        input_size: the network's square input size S.
        val_fraction: fraction of cases held out for validation Dice.
        seed: fixes the validation split.
        axis: force the plane of 3D images by the LPS axis it cuts across (0 = sagittal,
            1 = coronal, 2 = axial); default: :func:`~labelsharing.data.orientation.plan_slicing`.
        normalization: a stored normalisation to reuse (an existing model's task) instead of
            fitting one (a CT normalisation is fitted in a first pass over the training cases).
        validation_ids: a stored validation split (an existing model's task) to reuse instead
            of drawing one with ``val_fraction`` and ``seed``.
        slicing: a stored slicing (an existing model's task) to reuse instead of planning one
            from the task's training images (``axis`` is then ignored).
        validation_only: prepare no training slices and read no case, only the held-out cases'
            headers (an old task that is measured but not replayed); needs the stored
            ``normalization`` and ``slicing``.
        store: where the slices go (default: a store in RAM).

    Raises:
        LabelSharingError: a stored validation case is no longer in the dataset; unreadable or
            inconsistent cases (:func:`~labelsharing.data.datasets.load_case`).
    """
    if validation_ids is None:
        train_cases, val_cases = split_cases(dataset.training, val_fraction, seed)
    else:
        train_cases, val_cases = _stored_split(dataset, validation_ids)
    if validation_only:
        if normalization is None or slicing is None:
            raise ValueError("validation_only needs the stored normalization and slicing")
        train_cases = []
    planned = dataset.training if slicing is None else [*train_cases, *val_cases]
    headers = {case.case_id: read_image_header(case.image) for case in planned}
    if slicing is None:
        slicing = plan_slicing([headers[c.case_id] for c in dataset.training], axis)
    scheme = NORMALIZATION_BY_MODALITY[dataset.modality]
    if normalization is None:
        normalization = fit_ct_normalization(_arrays(dataset, train_cases)) if scheme == "ct" else {"scheme": scheme}

    counts = [slicing.slice_count(headers[c.case_id]) for c in train_cases]
    images, labels = (store or SliceStore()).allocate(sum(counts), input_size, label_dtype(plan.n_shared))
    foreground = np.zeros(len(images), dtype=bool)
    start = 0
    for case, count in zip(train_cases, counts):
        image, label = load_case(dataset, case)
        image_slices = slicing.slices(normalize_intensities(sitk.GetArrayViewFromImage(image), normalization), image)
        label_slices = slicing.slices(sitk.GetArrayViewFromImage(label), image)
        if len(image_slices) != count:
            raise LabelSharingError(f"{case.image} changed while the task was prepared ({len(image_slices)} slices, "
                                    f"{count} when its header was read). Train again once the files stay put.")
        aspect = slicing.aspect(image)
        for first in range(0, count, _CHUNK):
            chunk, rows = slice(first, min(first + _CHUNK, count)), slice(start + first, start + min(first + _CHUNK, count))
            shared = plan.to_shared(dataset.name, label_slices[chunk]).astype(labels.dtype)
            images[rows], labels[rows] = _fit_slices(image_slices[chunk], shared, input_size, aspect)
            foreground[rows] = labels[rows].reshape(len(shared), -1).any(axis=1)
        start += count
    return PreparedTask(
        name=dataset.name, dataset=dataset, modality=dataset.modality, normalization=normalization,
        images=images, labels=labels, foreground=foreground, validation=list(val_cases), slicing=slicing,
        validation_slices=sum(slicing.slice_count(headers[c.case_id]) for c in val_cases),
        training_ids=tuple(c.case_id for c in train_cases),
    )


def _arrays(dataset: TaskDataset, cases: Sequence[Case]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image, label) arrays of ``cases``, read one case at a time."""
    for case in cases:
        image, label = load_case(dataset, case)
        yield sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(label)


def _stored_split(dataset: TaskDataset, validation_ids: Sequence[str]) -> tuple[list[Case], list[Case]]:
    """(training, validation) cases of ``dataset`` for a stored list of validation case ids."""
    known = {case.case_id for case in dataset.training}
    missing = sorted(set(validation_ids) - known)
    if missing:
        raise LabelSharingError(
            f"Task '{dataset.name}': validation case(s) {', '.join(missing[:5])} recorded in the model are no longer "
            f"in {dataset.root / 'imagesTr'}. Restore them, so that the task is validated on the same cases."
        )
    held_out = set(validation_ids)
    return ([c for c in dataset.training if c.case_id not in held_out],
            [c for c in dataset.training if c.case_id in held_out])


def _fit_slices(slices: np.ndarray, shared: np.ndarray, size: int,
                aspect: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W) image and shared-label slices -> (n, S, S) float32 images and labels (uint8 if
    ``shared`` is, else int32; ``aspect``: see :class:`SquareFit`)."""
    import torch

    fit = SquareFit(slices.shape[1], slices.shape[2], size, aspect)
    image_t = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    label_type = np.uint8 if shared.dtype == np.uint8 else np.int32
    label_t = torch.from_numpy(np.ascontiguousarray(shared, dtype=label_type))[:, None]
    return fit.forward(image_t)[:, 0].numpy(), fit.forward_labels(label_t)[:, 0].numpy()


def sampling_weights(tasks: Sequence[PreparedTask], shares: Mapping[str, float] | None = None) -> np.ndarray:
    """Per-slice sampling weights over the pooled slices (task order, then slice order).

    Each task receives ``shares[task]`` of the draws (default: equal shares). Within a task,
    slices holding labels are drawn twice as often as empty ones, as nnU-Net oversamples
    foreground; the weights sum to 1.
    """
    shares = dict(shares) if shares else {t.name: 1.0 / len(tasks) for t in tasks}
    total = sum(shares.get(t.name, 0.0) for t in tasks)
    if total <= 0:
        raise ValueError("task shares must have a positive sum")
    weights = []
    for task in tasks:
        w = np.where(task.foreground, 2.0, 1.0)
        weights.append(w / w.sum() * shares.get(task.name, 0.0) / total)
    return np.concatenate(weights)


class PooledSlices:
    """The training slices of several prepared tasks, pooled where they lie, drawn by batch.

    The tasks' slice arrays are indexed in place, not concatenated: the training slices exist
    once (in the store). Index ``i`` runs over the tasks in order, then their slices.
    """

    def __init__(self, tasks: Sequence[PreparedTask]):
        self.tasks = list(tasks)
        self.starts = np.cumsum([0] + [len(t.images) for t in self.tasks])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def batch(self, indices: np.ndarray) -> dict:
        """The slices at ``indices`` (B,) as ``{"image": (B, 1, S, S) float32, "label": (B, 1, S, S)
        int64, "task": (B,) int64 index of each slice's task}`` tensors, in the order given."""
        import torch

        indices = np.asarray(indices, dtype=np.int64)
        task_of = np.searchsorted(self.starts, indices, side="right") - 1
        size = self.tasks[0].images.shape[-1]
        images = np.empty((len(indices), size, size), np.float32)
        labels = np.empty((len(indices), size, size), np.int64)
        for task_index in np.unique(task_of):
            chosen = task_of == task_index
            local = indices[chosen] - self.starts[task_index]
            images[chosen] = self.tasks[task_index].images[local]
            labels[chosen] = self.tasks[task_index].labels[local]
        return {"image": torch.from_numpy(images)[:, None], "label": torch.from_numpy(labels)[:, None],
                "task": torch.from_numpy(task_of)}
