"""One writer at a time per output: an exclusive lock file beside the output.

``with lock_model_output(out): ...`` holds ``<parent>/.<name>.lock`` (``fcntl.flock`` on POSIX,
``msvcrt.locking`` on Windows; the system releases it when the process dies, so a killed writer
never blocks the next one). A second writer is refused at once, with the holder's pid.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from labelsharing.errors import LabelSharingError

__all__ = ["lock_model_output", "holds_lock"]

_HELD: set[Path] = set()  # outputs this process holds the lock of (the lock is re-entrant)


def holds_lock(out: str | Path) -> bool:
    """Whether this process holds the lock of the output ``out``."""
    return Path(out).resolve() in _HELD


@contextmanager
def lock_model_output(out: str | Path) -> Iterator[Path]:
    """Be the only writer of the output ``out`` while the block runs.

    The lock is ``<parent>/.<name>.lock`` (created with the parent folders if needed), held with
    ``fcntl.flock`` (POSIX) or ``msvcrt.locking`` (Windows), so it is released when the process
    dies; it holds the writer's pid. Re-entrant within one process.

    Yields:
        The lock file's path.

    Raises:
        LabelSharingError: another process holds the lock (naming its pid), or the parent folder
            cannot be created or written.
    """
    target = Path(out).resolve()
    lock_path = target.parent / f".{target.name}.lock"
    if target in _HELD:
        yield lock_path
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LabelSharingError(f"Cannot create the folder {target.parent} for --out: {exc.strerror or exc}. "
                                "Choose another --out.") from exc
    fd = _acquire(lock_path, out)
    _HELD.add(target)
    try:
        yield lock_path
    finally:
        _HELD.discard(target)
        _release(fd, lock_path)


def _acquire(lock_path: Path, out: str | Path) -> int:
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LabelSharingError(f"Cannot write in {lock_path.parent} (for --out {out}): {exc.strerror or exc}. "
                                    "Choose a writable --out.") from exc
        try:
            _lock_byte(fd)
        except OSError:
            pid = _read_pid(fd)
            os.close(fd)
            writer = f" (pid {pid})" if pid else ""
            raise LabelSharingError(f"{out} is being written by another labelsharing process{writer}; wait for it "
                                    "to finish or choose another --out.") from None
        if _same_file(fd, lock_path):
            break
        os.close(fd)  # the previous holder removed this file between our open and lock: try again
    try:
        os.ftruncate(fd, 1)
        os.lseek(fd, 1, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:
        _release(fd, lock_path)
        raise LabelSharingError(f"Cannot write in {lock_path.parent} (for --out {out}): {exc.strerror or exc}. "
                                "Free disk space or choose another --out.") from exc
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read_pid(fd: int) -> int | None:
    """The pid a lock holder wrote after the locked first byte, if readable."""
    try:
        os.lseek(fd, 1, os.SEEK_SET)
        return int(os.read(fd, 32).strip())
    except (OSError, ValueError):
        return None


if os.name == "nt":
    import msvcrt

    def _lock_byte(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _release(fd: int, lock_path: Path) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        os.close(fd)  # the file stays: Windows cannot remove a file another process has open

else:
    import fcntl

    def _lock_byte(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _release(fd: int, lock_path: Path) -> None:
        os.unlink(lock_path)  # while still held: a waiter that opened it sees it is gone (_same_file)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
