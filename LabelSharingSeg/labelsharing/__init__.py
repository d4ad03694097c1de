"""LabelSharing engine: one segmentation network for many independent multi-label tasks.

The engine never imports ``slicer``, ``qt`` or ``ctk``; the Slicer module talks to it through
the ``labelsharing`` command line. torch is imported lazily by the stages that need it, so
``labelsharing --help`` and dataset planning stay fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

from labelsharing.errors import LabelSharingError

__all__ = ["__version__", "LabelSharingError"]
