"""The network and the self-describing model folder.

A model is a folder holding ``model.safetensors`` (weights; never a pickle) and
``model.json`` (everything needed to use it without the training data: architecture, input
size, the shared-label plan, each task's labels, colours, normalisation and slicing plane,
training history, package versions). See docs/CONTRACTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

from labelsharing import __version__
from labelsharing.errors import LabelSharingError
from labelsharing.model.folder import WEIGHTS_FILE, read_model_config, read_weights, weights_sha256, write_model_folder
from labelsharing.model.schema import FORMAT_VERSION, validate_architecture
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
    """Build the torch module an architecture entry of ``model.json`` describes (checked first).

    Raises:
        LabelSharingError: if the entry breaks the schema (unknown name or keyword, out of range).
    """
    validate_architecture(architecture)
    from monai.networks.nets import UNet

    return UNet(**architecture["kwargs"])


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
        """Load a model folder onto ``device`` (weights via safetensors, no unpickling).

        ``model.json`` is validated before anything is built, and the weights are checked
        against its ``weights_sha256``, their names and shapes against its architecture.

        Raises:
            LabelSharingError: a missing, invalid or damaged file, or weights of another model.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load

        config = read_model_config(folder)
        data = read_weights(folder, config)
        network = build_network(config["architecture"])
        path = Path(folder) / WEIGHTS_FILE
        try:
            state = load(data)
        except SafetensorError as exc:
            raise LabelSharingError(f"{path} is not a readable weights file ({exc}); the file is damaged. "
                                    "Restore the model folder from a copy.") from exc
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise LabelSharingError(f"{path}: the weights do not fit the architecture in model.json "
                                    f"({str(exc).splitlines()[0]} ...); they are from another model.") from exc
        _check_finite(state, path)
        return cls(config=config, network=network.to(device).eval())

    def save(self, folder: str | Path, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
        """Write the model folder atomically (see :func:`~labelsharing.model.folder.write_model_folder`).

        ``model.json`` gets the SHA-256 of the weights written (also set in ``self.config``).

        Args:
            folder: the model folder.
            overwrite: replace an existing model folder (``--force``); never anything else.
            inputs: the command's input folders (datasets, parent model), never replaced.

        Returns:
            The folder written (absolute).

        Raises:
            LabelSharingError: the rules of ``check_model_output`` are broken, another process is
                writing ``folder``, a weight is not finite, or the disk refuses the write.
        """
        from safetensors.torch import save

        state = {k: v.detach().to("cpu").contiguous() for k, v in self.network.state_dict().items()}
        _check_finite(state, Path(folder) / WEIGHTS_FILE)
        data = save(state, metadata={"format": "pt"})
        self.config["weights_sha256"] = weights_sha256(data)
        return write_model_folder(folder, self.config, data, overwrite, inputs)


def _check_finite(state: Mapping[str, Any], path: Path) -> None:
    """Refuse weights holding NaN or infinity (a diverged training, or a damaged file)."""
    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if bad:
        raise LabelSharingError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values (e.g. {bad[0]}); "
                                "such a model predicts nothing useful. Re-train it (lower --lr if the loss diverged).")


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
