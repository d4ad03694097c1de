"""The demo: built-in synthetic tasks, the four-task run and its report.
"""

from __future__ import annotations

from labelsharing.utils import lazy_exports

_EXPORTS = {
    "data": ("DEMO_TASK_NAMES", "make_demo_datasets"),
    "run": ("DemoSettings", "run_demo"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
