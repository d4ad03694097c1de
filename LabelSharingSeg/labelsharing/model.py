"""The network and the self-describing model folder.

A model is a folder holding ``model.safetensors`` (weights; never a pickle) and
``model.json`` (everything needed to use it without the training data: architecture, input
size, the shared-label plan, each task's labels, colours, normalisation and slicing axis,
training history, package versions). See docs/CONTRACTS.md.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from labelsharing import __version__
from labelsharing.errors import LabelSharingError
from labelsharing.plan import SharedLabelPlan

__all__ = [
    "FORMAT_VERSION",
    "PALETTE",
    "default_architecture",
    "build_network",
    "grow_output_channels",
    "label_color",
    "SegmentationModel",
    "read_model_config",
]

FORMAT_VERSION = 1
CONFIG_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"

#: Colours (RGB 0..1) given to task labels by shared label, unless the dataset names its own.
PALETTE = (
    (0.86, 0.37, 0.34), (0.36, 0.64, 0.85), (0.47, 0.75, 0.40), (0.95, 0.77, 0.31),
    (0.67, 0.49, 0.80), (0.96, 0.58, 0.30), (0.40, 0.80, 0.78), (0.90, 0.55, 0.72),
    (0.62, 0.47, 0.36), (0.80, 0.85, 0.40), (0.35, 0.45, 0.75), (0.70, 0.70, 0.70),
)


def label_color(shared: int) -> list[float]:
    """Default colour of a task label mapped to shared label ``shared`` (1-based)."""
    return list(PALETTE[(shared - 1) % len(PALETTE)])


def default_architecture(n_outputs: int, features: int = 16) -> dict:
    """MONAI 2D UNet settings: 5 levels (features x 1, 2, 4, 8, 16), 2 residual units each.

    ``features=16`` gives about 1.6 M parameters, which trains on a CPU in minutes; use 32
    (about 6.5 M) or more on a GPU. Input sizes must be multiples of 16.
    """
    if n_outputs < 2:
        raise ValueError("n_outputs must be at least 2 (background + one shared label)")
    return {
        "name": "UNet",
        "kwargs": {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": int(n_outputs),
            "channels": [features * m for m in (1, 2, 4, 8, 16)],
            "strides": [2, 2, 2, 2],
            "num_res_units": 2,
            "norm": "instance",
        },
    }


def build_network(architecture: Mapping[str, Any]):
    """Build the torch module an architecture entry of ``model.json`` describes."""
    if architecture.get("name") != "UNet":
        raise LabelSharingError(f"Unknown architecture {architecture.get('name')!r}; this version knows 'UNet'.")
    from monai.networks.nets import UNet

    return UNet(**architecture["kwargs"])


def read_model_config(folder: str | Path) -> dict:
    """Read and check ``model.json`` of a model folder (no torch needed)."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise LabelSharingError(
            f"{folder} is not a model folder (no {CONFIG_FILE}). Train one with 'labelsharing train'."
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LabelSharingError(f"{path} is damaged: {exc}") from exc
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise LabelSharingError(
            f"{path} has model format {version}; this labelsharing {__version__} reads format {FORMAT_VERSION}. "
            "Update labelsharing or re-train the model."
        )
    return config


@dataclass
class SegmentationModel:
    """A network with its ``model.json`` configuration."""

    config: dict
    network: Any  # torch.nn.Module

    @cached_property
    def plan(self) -> SharedLabelPlan:
        """The shared-label plan of ``config["plan"]`` (parsed once; the config is not changed
        after the model is built)."""
        return SharedLabelPlan.from_dict(self.config["plan"])

    @property
    def input_size(self) -> int:
        return int(self.config["input_size"][0])

    def task(self, name: str) -> dict:
        """A task's entry of ``model.json``; unknown names get the closest suggestion."""
        self.plan.labels(name)  # raises LabelSharingError with a suggestion
        return self.config["tasks"][name]

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> SegmentationModel:
        """Load a model folder onto ``device`` (weights via safetensors, no unpickling)."""
        from safetensors.torch import load_file

        config = read_model_config(folder)
        weights = Path(folder) / WEIGHTS_FILE
        if not weights.is_file():
            raise LabelSharingError(f"{folder} has no {WEIGHTS_FILE}; the model folder is incomplete.")
        network = build_network(config["architecture"])
        network.load_state_dict(load_file(str(weights), device=str(device)))
        return cls(config=config, network=network.to(device).eval())

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the model folder atomically: a crash leaves either no folder or the old one.

        Raises:
            LabelSharingError: if ``folder`` exists and ``overwrite`` is False.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        if folder.exists() and not overwrite:
            raise LabelSharingError(f"{folder} already exists; choose another --out or pass --force to replace it.")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
        try:
            state = {k: v.detach().to("cpu").contiguous() for k, v in self.network.state_dict().items()}
            save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
            (staging / CONFIG_FILE).write_text(json.dumps(self.config, indent=2) + "\n")
            if folder.exists():
                old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
                folder.rename(old)
                staging.rename(folder)
                shutil.rmtree(old)
            else:
                staging.rename(folder)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        return folder


def package_versions() -> dict[str, str]:
    """Versions of the packages that shaped a model (recorded in ``model.json``)."""
    import monai
    import numpy
    import SimpleITK
    import torch

    return {"labelsharing": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "numpy": numpy.__version__, "SimpleITK": SimpleITK.Version_VersionString()}


def grow_output_channels(network, architecture: Mapping[str, Any], n_outputs: int):
    """A copy of ``network`` with ``n_outputs`` output channels; every old weight is kept.

    Used when a new task has more labels than the model has shared labels. Each layer whose
    channel count follows the output count gets the new channels appended: new output filters
    start as copies of the **background** filter (so new shared labels begin as background, and
    fine-tuning separates them), and weights from new input channels to old outputs are zero,
    so the old outputs stay numerically identical until fine-tuning changes them.

    Args:
        network: the trained network (``build_network(architecture)``).
        architecture: its ``model.json`` architecture entry.
        n_outputs: the new number of outputs (background + shared labels), > the old one.

    Returns:
        ``(new_network, new_architecture)``.
    """
    import torch

    old_outputs = int(architecture["kwargs"]["out_channels"])
    if n_outputs <= old_outputs:
        raise ValueError(f"n_outputs must exceed the current {old_outputs}")
    new_architecture = {**architecture, "kwargs": {**architecture["kwargs"], "out_channels": int(n_outputs)}}
    grown = build_network(new_architecture)
    old_modules = dict(network.named_modules())
    with torch.no_grad():
        for name, new in grown.named_modules():
            old = old_modules.get(name)
            if isinstance(new, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and old is not None:
                _copy_grown_conv(old, new)
        grown_names = {n for n, m in grown.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))}
        state = grown.state_dict()
        for key, value in network.state_dict().items():
            if key.rsplit(".", 1)[0] not in grown_names and state[key].shape == value.shape:
                state[key].copy_(value)
    return grown.to(next(network.parameters()).device), new_architecture


def _copy_grown_conv(old, new) -> None:
    """Copy conv weights into a conv with more in/out channels (see grow_output_channels)."""
    import torch

    transposed = isinstance(new, torch.nn.ConvTranspose2d)
    out_dim, in_dim = (1, 0) if transposed else (0, 1)
    old_w, new_w = old.weight, new.weight
    new_w.zero_()
    n_out, n_in = old_w.shape[out_dim], old_w.shape[in_dim]
    index_old = [slice(None)] * new_w.dim()
    index_old[out_dim], index_old[in_dim] = slice(0, n_out), slice(0, n_in)
    new_w[tuple(index_old)] = old_w
    if new_w.shape[out_dim] > n_out:
        background = old_w.narrow(out_dim, 0, 1)  # filter of output channel 0 (background)
        extra = [slice(None)] * new_w.dim()
        extra[out_dim], extra[in_dim] = slice(n_out, None), slice(0, n_in)
        new_w[tuple(extra)] = background.expand_as(new_w[tuple(extra)])
    if new.bias is not None:
        new.bias[:n_out] = old.bias
        new.bias[n_out:] = old.bias[0]
