"""Serving models to other processes: the warm worker the Slicer module keeps between Applies, and
``labelsharing serve``, the HTTP server that shares one GPU between many Slicers (FastAPI, the
``labelsharing[serve]`` extra; only :mod:`~labelsharing.serve.app` imports it).
"""

from __future__ import annotations

from labelsharing.utils import lazy_exports

_EXPORTS = {
    "worker": ("serve", "standard_streams"),
    "server": ("SERVER_FOLDER", "run_server"),
    "app": ("ServerSettings", "create_app"),
    "models": ("ModelLibrary", "describe_tasks"),
    "jobs": ("Job", "JobQueue"),
    "security": ("check_listen_address", "check_model_name", "load_or_create_token", "unpack_zip"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
