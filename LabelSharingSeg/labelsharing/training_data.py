"""Training data: every task's cases as normalised, square 2D slices with shared labels.

Each task is prepared once (:func:`prepare_task`): its cases are read, a normalisation is fitted
(CT) or chosen (MR, X-ray), volumes are viewed in LPS and cut parallel to the task's plane, and
each slice is resampled to the task's in-plane target spacing and fitted (scaled, padded) into
``S x S`` (:mod:`labelsharing.orientation`). Labels are mapped to shared labels through the plan. Slices of
all tasks are then pooled (:class:`SharedSliceDataset`) and drawn with task-balanced weights
(:func:`sampling_weights`) so that a task with many slices does not drown a small one.

Memory: slices are kept in memory as float16 images and uint8 labels, ``2 * S * S * 1.5``
bytes per slice (about 200 kB at S=256).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from labelsharing.datasets import Case, TaskDataset, load_case
from labelsharing.errors import LabelSharingError
from labelsharing.orientation import Slicing, plan_slicing
from labelsharing.plan import SharedLabelPlan
from labelsharing.preprocessing import NORMALIZATION_BY_MODALITY, SquareFit, fit_ct_normalization, normalize_intensities

__all__ = ["PreparedTask", "prepare_task", "split_cases", "SharedSliceDataset", "sampling_weights",
           "training_transforms"]


@dataclass
class PreparedTask:
    """One task, ready for training.

    Attributes:
        name: task name.
        dataset: the task's dataset folder.
        modality, normalization, slicing: preprocessing stored in the model for inference.
        images: (n, S, S) float16 normalised slices. labels: (n, S, S) uint8 shared labels.
        foreground: (n,) bool, slice holds any label.
        validation: held-out cases as (image, task-label array) for Dice during training.
        validation_ids: the held-out cases' ids, stored in ``model.json`` so that a later
            ``add-task`` validates (and never trains) on exactly these cases.
    """

    name: str
    dataset: TaskDataset
    modality: str
    normalization: dict
    images: np.ndarray
    labels: np.ndarray
    foreground: np.ndarray
    validation: list[tuple[sitk.Image, np.ndarray]] = field(default_factory=list)
    validation_ids: tuple[str, ...] = ()
    slicing: Slicing = field(default_factory=Slicing)


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
    loaded: Sequence[tuple[sitk.Image, sitk.Image]] | None = None,
    normalization: dict | None = None,
    validation_ids: Sequence[str] | None = None,
    slicing: Slicing | None = None,
    validation_only: bool = False,
) -> PreparedTask:
    """Load, normalise, slice and square-fit one task's training cases.

    Args:
        dataset: the task.
        plan: maps the task's labels to shared labels.
        input_size: the network's square input size S.
        val_fraction: fraction of cases held out for validation Dice.
        seed: fixes the validation split.
        axis: force the plane of 3D images by the LPS axis it cuts across (0 = sagittal,
            1 = coronal, 2 = axial); default: :func:`~labelsharing.orientation.plan_slicing`.
        loaded: the (image, label) pairs of ``dataset.training`` if already loaded.
        normalization: a stored normalisation to reuse (an existing model's task) instead of
            fitting one.
        validation_ids: a stored validation split (an existing model's task) to reuse instead
            of drawing one with ``val_fraction`` and ``seed``.
        slicing: a stored slicing (an existing model's task) to reuse instead of planning one
            from the task's training images (``axis`` is then ignored).
        validation_only: read only the validation cases and prepare no training slices (an old
            task that is measured but not replayed); needs the stored ``normalization`` and
            ``slicing``.

    Raises:
        LabelSharingError: a stored validation case is no longer in the dataset.
    """
    if validation_ids is None:
        train_cases, val_cases = split_cases(dataset.training, val_fraction, seed)
    else:
        train_cases, val_cases = _stored_split(dataset, validation_ids)
    if validation_only:
        if normalization is None or slicing is None:
            raise ValueError("validation_only needs the stored normalization and slicing")
        train_cases = []
    if loaded is not None:
        by_id = {case.case_id: pair for case, pair in zip(dataset.training, loaded)}
    else:  # read each needed case once
        by_id = {case.case_id: load_case(dataset, case) for case in [*train_cases, *val_cases]}
    train_pairs = [by_id[c.case_id] for c in train_cases]
    arrays = [(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)) for image, label in train_pairs]

    scheme = NORMALIZATION_BY_MODALITY[dataset.modality]
    if normalization is None:
        normalization = (fit_ct_normalization([a for a, _ in arrays], [b for _, b in arrays])
                         if scheme == "ct" else {"scheme": scheme})
    if slicing is None:
        slicing = plan_slicing([by_id[c.case_id][0] for c in dataset.training], axis)

    images, labels = [], []
    for (image, _), (img_arr, lab_arr) in zip(train_pairs, arrays):
        slices = slicing.slices(normalize_intensities(img_arr, normalization), image)
        shared = slicing.slices(plan.to_shared(dataset.name, lab_arr), image)
        fitted_images, fitted_labels = _fit_slices(slices, shared, input_size, slicing.aspect(image))
        images.append(fitted_images)
        labels.append(fitted_labels)
    empty = np.zeros((0, input_size, input_size))
    image_stack = np.concatenate(images) if images else empty.astype(np.float16)
    label_stack = np.concatenate(labels) if labels else empty.astype(np.uint8)
    validation = [(by_id[c.case_id][0], sitk.GetArrayFromImage(by_id[c.case_id][1])) for c in val_cases]
    return PreparedTask(
        name=dataset.name, dataset=dataset, modality=dataset.modality, normalization=normalization,
        images=image_stack, labels=label_stack, foreground=label_stack.reshape(len(label_stack), input_size * input_size).any(axis=1),
        validation=validation, validation_ids=tuple(c.case_id for c in val_cases), slicing=slicing,
    )


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
    """(n, H, W) image and shared-label slices -> (n, S, S) float16 images and uint8 labels
    (``aspect``: see :class:`SquareFit`)."""
    import torch

    fit = SquareFit(slices.shape[1], slices.shape[2], size, aspect)
    image_t = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    label_t = torch.from_numpy(np.ascontiguousarray(shared, dtype=np.uint8))[:, None]
    fitted_image = fit.forward(image_t)[:, 0].numpy().astype(np.float16)
    fitted_label = fit.forward_labels(label_t)[:, 0].numpy()
    return fitted_image, fitted_label


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


def training_transforms(input_size: int, seed: int):
    """MONAI augmentation suited to medical slices: small affine, intensity scale/shift, noise.

    No flips: left/right laterality matters (left vs right kidney or lung).
    """
    from monai.transforms import Compose, RandAffined, RandGaussianNoised, RandScaleIntensityd, RandShiftIntensityd

    transforms = Compose([
        RandAffined(keys=("image", "label"), prob=0.5, rotate_range=(np.pi / 18,), scale_range=(0.1, 0.1),
                    translate_range=(0.05 * input_size, 0.05 * input_size), mode=("bilinear", "nearest"),
                    padding_mode=("border", "zeros")),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.3),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.3),
        RandGaussianNoised(keys="image", std=0.03, prob=0.2),
    ])
    transforms.set_random_state(seed=seed)
    return transforms


class SharedSliceDataset:
    """torch-style dataset over the pooled slices of several prepared tasks.

    The tasks' slice arrays are indexed where they are, not concatenated: the training slices
    exist once in memory. Index ``i`` runs over the tasks in order, then their slices.
    Items are ``{"image": (1, S, S) float32, "label": (1, S, S) int64, "task": index}`` tensors.
    """

    def __init__(self, tasks: Sequence[PreparedTask], transforms=None):
        self.tasks = list(tasks)
        self.starts = np.cumsum([0] + [len(t.images) for t in self.tasks])
        self.transforms = transforms

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> dict:
        import torch

        task_index = int(np.searchsorted(self.starts, index, side="right")) - 1
        task, local = self.tasks[task_index], index - int(self.starts[task_index])
        item = {"image": torch.from_numpy(task.images[local].astype(np.float32))[None],
                "label": torch.from_numpy(task.labels[local].astype(np.float32))[None]}
        if self.transforms is not None:
            item = self.transforms(item)
        image = torch.as_tensor(item["image"], dtype=torch.float32)
        label = torch.as_tensor(item["label"]).round().long()
        return {"image": image, "label": label, "task": task_index}
