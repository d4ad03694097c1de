"""Serving models to other processes: the warm worker the Slicer module keeps between Applies.
"""

from __future__ import annotations

from labelsharing.utils import lazy_exports

_EXPORTS = {
    "worker": ("serve", "standard_streams"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
