"""The torch device a command runs on, chosen once for training, prediction and distributed runs.

torch is imported inside the functions: ``labelsharing --help`` and ``info`` never load it.
"""

from __future__ import annotations

from labelsharing.errors import LabelSharingError

__all__ = ["select_device", "describe_device"]

_DEVICES = ("auto", "cpu", "cuda", "mps")


def select_device(requested: str = "auto"):
    """The torch device to run on.

    Args:
        requested: ``auto`` (CUDA, then Apple MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        a ``torch.device``.

    Raises:
        LabelSharingError: an unknown name, or a GPU that this torch build cannot use.
    """
    import torch

    name = str(requested).strip().lower()
    kind = name.split(":", 1)[0]
    if kind not in _DEVICES or (":" in name and kind != "cuda"):
        raise LabelSharingError(f"Unknown device '{requested}'; choose one of {', '.join(_DEVICES)} (or cuda:N).")
    mps_ok = _mps_available()
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"a CUDA {torch.version.cuda} build"
            raise LabelSharingError(
                f"CUDA was requested but is not available (torch {torch.__version__} is {build}, or no NVIDIA "
                "GPU/driver was found). Install a CUDA build of torch matching your driver "
                "(https://pytorch.org/get-started/locally/), or use --device cpu."
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LabelSharingError(
                f"{name} was requested but only {torch.cuda.device_count()} CUDA device(s) exist (cuda:0 ...)."
            )
        return device
    if kind == "mps" and not mps_ok:
        raise LabelSharingError(
            "Apple MPS was requested but is not available (it needs an Apple-silicon Mac, macOS 12.3+ and a "
            "torch build with MPS). Use --device cpu."
        )
    return torch.device(kind)


def describe_device(device) -> str:
    """Human-readable device, e.g. ``cuda:0 (NVIDIA A100)`` or ``cpu (8 threads)``."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
