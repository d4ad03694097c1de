"""The project's one error type."""

from __future__ import annotations

__all__ = ["LabelSharingError"]


class LabelSharingError(Exception):
    """A problem with the user's input or environment.

    The message is written for the end user: it says what was found, what was expected and
    what to do. The command line prints it as ``error: <message>`` without a traceback;
    anything that is not a ``LabelSharingError`` is a bug and keeps its traceback.
    """
