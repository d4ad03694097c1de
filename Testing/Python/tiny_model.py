"""Tiny models for inference and evaluation tests (a helper module, not a test file).

Plan used throughout:

* ``TaskA``: big=1, mid=2, small=3 (sizes 0.4/0.2/0.1) -> shared 1, 2, 3.
* ``TaskB``: tiny=1, large=2 (sizes 0.05/0.3) -> large -> shared 1, tiny -> shared 2;
  shared label 3 is not used by TaskB, so it must come out as background.

:class:`IntensityNetwork` replaces the UNet when a test needs known outputs without training:
channel k's logit is ``-scale * (x - k)^2``, so a pixel of (normalised) intensity about k is
predicted as shared label k.
"""

from __future__ import annotations

import torch

from labelsharing.model import SegmentationModel, build_model_config, build_network, default_architecture
from labelsharing.plan import LabelStats, SharedLabelPlan

TASK_LABELS = {"TaskA": {"big": 1, "mid": 2, "small": 3}, "TaskB": {"tiny": 1, "large": 2}}
_SIZES = {"TaskA": {"big": 0.4, "mid": 0.2, "small": 0.1}, "TaskB": {"tiny": 0.05, "large": 0.3}}
COLORS = {"big": [1.0, 0.0, 0.0], "mid": [0.0, 1.0, 0.0], "small": [0.0, 0.0, 1.0],
          "tiny": [0.5, 0.5, 0.0], "large": [0.0, 0.5, 0.5]}


class IntensityNetwork(torch.nn.Module):
    """(B, 1, H, W) -> (B, n_outputs, H, W) with channel k high where the input is about k."""

    def __init__(self, n_outputs: int, scale: float = 20.0):
        super().__init__()
        self.register_buffer("centres", torch.arange(n_outputs, dtype=torch.float32).view(1, -1, 1, 1))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.scale * (x - self.centres) ** 2


def make_config(input_size: int = 32, axis_a: int | None = 2, std: float = 1.0, apart: bool = False) -> dict:
    """``model.json`` content; normalisation is the identity (``std=1``) or divides by ``std``.

    ``apart``: TaskA and TaskB look alike and are kept apart: TaskA on shared 1-3, TaskB large -> 4,
    tiny -> 5, each task's softmax leaving out the other's channels.
    """
    stats = {
        task: {name: LabelStats(value, _SIZES[task][name], 1.0) for name, value in labels.items()}
        for task, labels in TASK_LABELS.items()
    }
    plan = SharedLabelPlan.build(stats, look_alike=[list(TASK_LABELS)] if apart else (), keep_apart=apart)
    normalization = {"scheme": "ct", "clip": [-1e6, 1e6], "mean": 0.0, "std": std}
    tasks = {}
    for task, labels in TASK_LABELS.items():
        assignments = plan.labels(task)
        tasks[task] = {
            "modality": "CT",
            "axis": axis_a if task == "TaskA" else None,
            "normalization": normalization,
            "labels": {name: {"value": v, "shared": assignments[name].shared, "color": COLORS[name]}
                       for name, v in labels.items()},
        }
    return build_model_config(default_architecture(plan.n_shared + 1, features=4), input_size, plan, tasks)


def make_model(fake: bool = True, seed: int = 0, **config_kwargs) -> SegmentationModel:
    """A model with the plan above: the :class:`IntensityNetwork` or a random 4-feature UNet."""
    config = make_config(**config_kwargs)
    torch.manual_seed(seed)
    n_outputs = config["plan"]["n_shared"] + 1
    network = IntensityNetwork(n_outputs) if fake else build_network(config["architecture"])
    return SegmentationModel(config=config, network=network.eval())
