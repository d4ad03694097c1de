"""Model: the network, and the model folder (``model.json`` built, validated, read, migrated and
written in one place: :mod:`labelsharing.model.folder`).
"""

from __future__ import annotations

from labelsharing.utils import lazy_exports

_EXPORTS = {
    "network": (
        "SegmentationModel", "build_network", "default_architecture", "grow_output_channels", "label_color",
        "package_versions",
    ),
    "folder": (
        "CONFIG_FILE", "WEIGHTS_FILE", "CACHE_FOLDER", "build_model_config", "read_model_config",
        "check_model_output", "lock_model_output",
    ),
    "description": ("describe_model",),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
