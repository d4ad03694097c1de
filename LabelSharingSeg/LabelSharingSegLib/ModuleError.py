"""The error type of the Slicer module."""

from __future__ import annotations

__all__ = ["ModuleError"]


class ModuleError(Exception):
    """A problem the user can act on (missing input, unreadable model, failed engine run).

    The message is written for the end user. The widget shows it with
    ``slicer.util.errorDisplay(message, detailedText=log)``; anything that is not a
    ``ModuleError`` is a bug and keeps its traceback in the Python console.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        #: Full log or technical details, shown one click away ("Show Details...").
        self.details = details
