"""Helpers every stage uses: devices, progress, tables, atomic writes.
"""

from __future__ import annotations

from labelsharing.utils.lazy_exports import lazy_exports

_EXPORTS = {
    "device": ("select_device", "describe_device"),
    "progress": ("PROGRESS_MODES", "ProgressReporter", "SILENT"),
    "safe_write": (
        "IO_ERRORS", "check_gzip_stream", "check_outputs", "write_atomically", "write_json_atomically",
    ),
    "tables": ("format_table",),
    "lazy_exports": ("lazy_exports",),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
