"""The settings of a training run: the command line's training flags, validated once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from labelsharing.errors import LabelSharingError
from labelsharing.train.slice_store import DEFAULT_SLICE_MEMORY_MB

__all__ = ["TrainingOptions", "Log"]

#: Where a run's messages go (``print``, a list's ``append``, the progress reporter's log).
Log = Callable[[str], None]


@dataclass
class TrainingOptions:
    """Settings of a training run (the command line's flags).

    Training is counted in optimisation steps, as nnU-Net does: an epoch is ``steps_per_epoch``
    steps of ``batch_size`` slices drawn task-balanced from the pooled training slices (whatever
    the data set's size), followed by validation. Under ``torchrun`` every process makes these
    steps with its own draws (``batch_size`` is per process). ``time_budget`` (minutes), if given,
    replaces ``epochs``: the number of epochs is fitted to the time after the first epoch.
    ``val_every`` validates every that many epochs (and the first and last); default: see
    :func:`validation_interval`. ``slice_memory_mb``: the training slices kept in RAM; those
    beyond go to a memory-mapped file in the run's working folder
    (:class:`~labelsharing.train.slice_store.SliceStore`); results do not depend on it.
    """

    epochs: int = 25
    steps_per_epoch: int = 50
    time_budget: float | None = None
    batch_size: int = 16
    input_size: int | None = None
    features: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    val_fraction: float = 0.2
    device: str = "auto"
    seed: int = 0
    axis: int | None = None
    val_every: int | None = None
    slice_memory_mb: float = DEFAULT_SLICE_MEMORY_MB

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.features < 1 or self.steps_per_epoch < 1:
            raise LabelSharingError("--epochs, --steps-per-epoch, --batch-size and --features must be at least 1.")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise LabelSharingError(f"--time-budget must be a positive number of minutes, got {self.time_budget}.")
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate <= 1):
            raise LabelSharingError(f"--lr must be a number in (0, 1], got {self.learning_rate}; "
                                    "AdamW is usually run at 1e-4 to 1e-2.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise LabelSharingError(f"weight decay must be a finite number >= 0, got {self.weight_decay}.")
        if not 0 <= self.warmup_fraction < 1:
            raise LabelSharingError(f"warm-up fraction must lie in [0, 1), got {self.warmup_fraction}.")
        if not 0 <= self.seed < 2**32:
            raise LabelSharingError(f"--seed must be an integer in [0, 2**32), got {self.seed}.")
        if self.input_size is not None and (self.input_size < 16 or self.input_size % 16):
            raise LabelSharingError(f"--input-size must be a multiple of 16 (the UNet halves it 4 times), "
                                    f"got {self.input_size}.")
        if not 0 <= self.val_fraction < 1:
            raise LabelSharingError(f"--val-fraction must lie in [0, 1), got {self.val_fraction}.")
        if self.val_every is not None and self.val_every < 1:
            raise LabelSharingError(f"--val-every must be at least 1, got {self.val_every}.")
        if not (math.isfinite(self.slice_memory_mb) and self.slice_memory_mb >= 0):
            raise LabelSharingError(f"--slice-memory must be a number of MB >= 0, got {self.slice_memory_mb}.")
