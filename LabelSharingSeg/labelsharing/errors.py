"""The project's one error type, and the user's wording of the environment's file errors."""

from __future__ import annotations

__all__ = ["LabelSharingError", "file_error_message"]


class LabelSharingError(Exception):
    """A problem with the user's input or environment.

    The message is written for the end user: it says what was found, what was expected and
    what to do. The command line prints it as ``error: <message>`` without a traceback;
    anything that is not a ``LabelSharingError`` is a bug and keeps its traceback.
    """


def file_error_message(exc: OSError) -> str | None:
    """The message for an ``OSError`` about a named file (a full disk, a missing or read-only file).

    Returns ``None`` when the error names no file: then it is not the user's to fix, and stays a bug.

    Example:
        >>> file_error_message(PermissionError(13, "Permission denied", "/out/ct.nii.gz"))
        'Permission denied: /out/ct.nii.gz. Check the path, its permissions and the free space.'
    """
    if exc.filename is None:
        return None
    return f"{exc.strerror or exc}: {exc.filename}. Check the path, its permissions and the free space."
