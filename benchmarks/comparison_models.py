"""Baseline networks of the paper comparison: merged multi-channel and DoDNet-style heads.

Both baselines are the same MONAI 2D UNet as label sharing (``model.default_architecture``,
same ``features``); only the output and the loss differ:

* :class:`MergedNetwork` - one output channel per label of every task (+ background). During
  training and inference the logits of the channels of *other* tasks are replaced by a large
  negative constant (:data:`MASK_VALUE`), so the softmax, the Dice + cross-entropy loss and
  the argmax only run over background + the image's own task's channels.
* :class:`DynamicHeadNetwork` - DoDNet-style (Zhang et al., CVPR 2021): the UNet ends in
  ``features`` decoder channels; a linear *controller* maps the task's one-hot code to the
  weights and biases of a head of three dynamic 1x1 convolutions (features -> 8 -> 8 ->
  n* + 1, after instance norm + ReLU of the features); the channels beyond the task's label count are masked as above.

The task is given per sample (``forward(images, task)``) in training, and through the
``task`` attribute when the engine's :class:`~labelsharing.infer.predictor.Predictor` calls
``network(images)`` (see :class:`TaskPredictor`).

Label encodings (a :class:`~labelsharing.plan.shared_labels.SharedLabelPlan` per method, so the engine's
data pipeline produces the right targets): :func:`merged_plan` puts task ``t``'s labels on
channels ``offset_t + 1 ..`` (by label value); :func:`dodnet_plan` puts each task's labels on
channels ``1 .. n_t`` (by label value, as the task's own label maps are ordered).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from labelsharing.infer import Predictor
from labelsharing.model import build_network
from labelsharing.plan import LabelAssignment, SharedLabelPlan

__all__ = ["MASK_VALUE", "allowed_channels", "mask_logits", "merged_plan", "dodnet_plan", "MergedNetwork",
           "DynamicHeadNetwork", "TaskPredictor", "count_parameters"]

#: Logit given to channels outside the image's task: exp(-1e4) is 0 in float32 and float16.
MASK_VALUE = -1.0e4


def _by_value(labels: Mapping[str, LabelAssignment]) -> list[str]:
    return sorted(labels, key=lambda name: labels[name].value)


def merged_plan(plan: SharedLabelPlan) -> SharedLabelPlan:
    """Channel ``offset_t + rank-by-value`` for every label of every task (task order of ``plan``)."""
    tasks, offset = {}, 0
    for task in plan.task_names:
        labels = plan.labels(task)
        tasks[task] = {name: LabelAssignment(labels[name].value, labels[name].relative_size, labels[name].presence,
                                             offset + rank)
                       for rank, name in enumerate(_by_value(labels), start=1)}
        offset += len(labels)
    return SharedLabelPlan(tasks, offset)


def dodnet_plan(plan: SharedLabelPlan) -> SharedLabelPlan:
    """Channel ``rank-by-value`` (1..n_t) for each task's labels; n* = the largest label count."""
    tasks = {}
    for task in plan.task_names:
        labels = plan.labels(task)
        tasks[task] = {name: LabelAssignment(labels[name].value, labels[name].relative_size, labels[name].presence,
                                             rank)
                       for rank, name in enumerate(_by_value(labels), start=1)}
    return SharedLabelPlan(tasks, max(len(t) for t in tasks.values()))


def allowed_channels(plan: SharedLabelPlan) -> torch.Tensor:
    """(n_tasks, n_shared + 1) bool: background and the channels each task's labels use."""
    allowed = torch.zeros(len(plan.task_names), plan.n_shared + 1, dtype=torch.bool)
    allowed[:, 0] = True
    for index, task in enumerate(plan.task_names):
        for assignment in plan.labels(task).values():
            allowed[index, assignment.shared] = True
    return allowed


def mask_logits(logits: torch.Tensor, task: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Replace the logits of channels a sample's task does not use by :data:`MASK_VALUE`.

    Args:
        logits: (B, C, H, W).
        task: (B,) long task indices.
        allowed: (n_tasks, C) bool from :func:`allowed_channels`.

    Returns:
        (B, C, H, W) logits; masked entries carry no gradient back to ``logits``.
    """
    if logits.shape[1] != allowed.shape[1]:
        raise ValueError(f"logits have {logits.shape[1]} channels, the mask {allowed.shape[1]}")
    keep = allowed.to(logits.device)[task.to(logits.device)][:, :, None, None]
    return logits.masked_fill(~keep, MASK_VALUE)


class _TaskConditioned(nn.Module):
    """Shared plumbing: the mask buffer and the task given per call or by attribute."""

    def __init__(self, allowed: torch.Tensor):
        super().__init__()
        self.register_buffer("allowed", allowed.clone().bool(), persistent=False)
        self.task: int | None = None  # set by TaskPredictor for network(images) calls

    @property
    def n_tasks(self) -> int:
        return int(self.allowed.shape[0])

    def _task_tensor(self, images: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
        if task is None:
            if self.task is None:
                raise ValueError("call network(images, task) or set network.task to a task index first")
            task = torch.full((images.shape[0],), int(self.task), dtype=torch.long)
        task = torch.as_tensor(task, dtype=torch.long, device=images.device).reshape(-1)
        if task.numel() != images.shape[0]:
            raise ValueError(f"{task.numel()} task indices for a batch of {images.shape[0]} images")
        return task


class MergedNetwork(_TaskConditioned):
    """The UNet with one channel per (task, label) + background; other tasks' channels masked.

    Args:
        architecture: ``default_architecture(n_all_labels + 1, features)``.
        allowed: (n_tasks, C) bool from :func:`allowed_channels` of :func:`merged_plan`.
    """

    def __init__(self, architecture: Mapping, allowed: torch.Tensor):
        super().__init__(allowed)
        if architecture["kwargs"]["out_channels"] != allowed.shape[1]:
            raise ValueError("the architecture's out_channels must equal the mask's channel count")
        self.backbone = build_network(architecture)

    def forward(self, images: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        return mask_logits(self.backbone(images), self._task_tensor(images, task), self.allowed)


class DynamicHeadNetwork(_TaskConditioned):
    """DoDNet-style: UNet decoder features + a task-generated head of dynamic 1x1 convolutions.

    Args:
        architecture: ``default_architecture(features, features)``: the UNet's last layer
            returns ``features`` decoder channels instead of class logits.
        allowed: (n_tasks, n* + 1) bool from :func:`allowed_channels` of :func:`dodnet_plan`.
        hidden: width of the dynamic head's hidden layers (8, as in DoDNet).

    The controller is one ``nn.Linear(n_tasks, n_dynamic_parameters)``; fed a one-hot code it
    returns one column, i.e. each task owns its head. It is initialised so that generated
    weights start He-normal and biases zero.
    """

    def __init__(self, architecture: Mapping, allowed: torch.Tensor, hidden: int = 8):
        super().__init__(allowed)
        self.backbone = build_network(architecture)
        width = int(architecture["kwargs"]["out_channels"])
        self.norm = nn.InstanceNorm2d(width, affine=True)  # the UNet's last layer is a bare convolution
        self.shapes = [(hidden, width), (hidden, hidden), (int(allowed.shape[1]), hidden)]
        n_params = sum(o * i + o for o, i in self.shapes)
        self.controller = nn.Linear(self.n_tasks, n_params)
        with torch.no_grad():
            self.controller.weight.zero_()
            self.controller.bias.zero_()
            start = 0
            for out_c, in_c in self.shapes:
                self.controller.weight[start:start + out_c * in_c].normal_(0.0, float(np.sqrt(2.0 / in_c)))
                start += out_c * in_c + out_c

    def forward(self, images: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        task = self._task_tensor(images, task)
        x = torch.relu(self.norm(self.backbone(images)))
        code = nn.functional.one_hot(task, self.n_tasks).to(x.dtype)
        params = self.controller(code)  # (B, n_params)
        start = 0
        for layer, (out_c, in_c) in enumerate(self.shapes):
            weight = params[:, start:start + out_c * in_c].reshape(-1, out_c, in_c)
            start += out_c * in_c
            bias = params[:, start:start + out_c]
            start += out_c
            x = torch.einsum("bchw,boc->bohw", x, weight) + bias[:, :, None, None]
            if layer < len(self.shapes) - 1:
                x = torch.relu(x)
        return mask_logits(x, task, self.allowed)


class TaskPredictor(Predictor):
    """The engine's :class:`Predictor` for task-conditioned networks: sets ``network.task`` first.

    Args:
        model: ``SegmentationModel`` whose network is a :class:`MergedNetwork` or
            :class:`DynamicHeadNetwork` and whose plan is the method's label encoding.
        device: torch device.
        task_index: task name -> index into the network's mask / task code.
    """

    def __init__(self, model, device, task_index: Mapping[str, int], batch_size: int = 16):
        super().__init__(model, device, batch_size)
        self.task_index = dict(task_index)

    def predict_image(self, image, task: str) -> np.ndarray:
        self.network.task = self.task_index[task]
        try:
            return super().predict_image(image, task)
        finally:
            self.network.task = None

    def predict_probabilities(self, image, task: str):
        self.network.task = self.task_index[task]
        try:
            return super().predict_probabilities(image, task)
        finally:
            self.network.task = None


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters of ``module``."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def task_indices(names: Sequence[str]) -> dict[str, int]:
    """task name -> index, in the given (plan) order."""
    return {name: index for index, name in enumerate(names)}
