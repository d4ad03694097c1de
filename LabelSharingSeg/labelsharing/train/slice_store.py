"""Where a run's training slices live: in RAM for small sets, in a memory-mapped file beyond.

The fitted training slices (:func:`~labelsharing.train.task_data.prepare_task`) are a run's
largest data: ``S x S`` float16 images and uint8 shared labels (uint16 past 255 shared labels),
``3 x S x S`` bytes a slice (192 kB at S = 256, so 10,000 slices take 1.9 GB). Each task's
slices are written once, case by case, into a block that :meth:`SliceStore.allocate` hands
out, and training reads them where they are: there is no second copy.

Blocks stay in RAM while the run's slices fit in ``memory_limit_mb``; the blocks beyond go to
memory-mapped files in the run's working folder, which the kernel pages in as training draws
slices (from its page cache while RAM allows, so hardly slower) and may drop again under
memory pressure. Such a file is anonymous: it is unlinked as it is created, so it disappears
with the last array that maps it, or with the process, even a killed one, and it never shows
up in the model folder or outlives its run. Its disk space is reserved at once, so a full disk
is an error here rather than a crash while writing into the map.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import numpy as np

from labelsharing.errors import LabelSharingError

__all__ = ["DEFAULT_SLICE_MEMORY_MB", "SliceStore", "label_dtype"]

#: Training slices kept in RAM before the rest goes to a memory-mapped file (``--slice-memory``).
DEFAULT_SLICE_MEMORY_MB = 512.0


def label_dtype(n_shared: int) -> np.dtype:
    """The smallest unsigned type that holds shared labels ``0..n_shared``: uint8, else uint16."""
    return np.dtype(np.uint8 if n_shared <= np.iinfo(np.uint8).max else np.uint16)


class SliceStore:
    """Hands out the blocks that hold a run's training slices (see the module docstring).

    Args:
        folder: the run's working folder, for the memory-mapped files; ``None`` keeps every
            block in RAM.
        memory_limit_mb: the run's slices kept in RAM (MB) before blocks go to ``folder``;
            0 puts every block on disk.

    Example:
        >>> store = SliceStore()
        >>> images, labels = store.allocate(3, 16, np.uint8)
        >>> images.shape, images.dtype, labels.dtype, store.bytes_in_memory
        ((3, 16, 16), dtype('float16'), dtype('uint8'), 2304)
    """

    def __init__(self, folder: str | Path | None = None, memory_limit_mb: float = DEFAULT_SLICE_MEMORY_MB):
        if not memory_limit_mb >= 0:
            raise ValueError(f"memory_limit_mb must be >= 0, got {memory_limit_mb}")
        self.folder = Path(folder) if folder is not None else None
        self.memory_limit = int(memory_limit_mb * 2**20)
        self.bytes_in_memory = 0
        self.bytes_on_disk = 0

    def allocate(self, count: int, size: int, labels_type: np.dtype | type = np.uint8) -> tuple[np.ndarray, np.ndarray]:
        """Room for ``count`` slices, uninitialised: ``(count, size, size)`` float16 images and
        ``(count, size, size)`` ``labels_type`` labels, in RAM or memory-mapped (see the class)."""
        shape = (count, size, size)
        image_bytes = count * size * size * np.dtype(np.float16).itemsize
        total = image_bytes + count * size * size * np.dtype(labels_type).itemsize
        if self.folder is None or total == 0 or self.bytes_in_memory + total <= self.memory_limit:
            self.bytes_in_memory += total
            return np.empty(shape, np.float16), np.empty(shape, labels_type)
        with self._reserved_file(total) as file:  # the maps keep the file open (and alive) after this
            images = np.memmap(file, np.float16, "r+", 0, shape)
            labels = np.memmap(file, labels_type, "r+", image_bytes, shape)
        self.bytes_on_disk += total
        return images, labels

    def describe(self) -> str:
        """``"12 MB in memory"`` or ``"512 MB in memory, 1.4 GB memory-mapped in <folder>"``."""
        text = f"{_size(self.bytes_in_memory)} in memory"
        if self.bytes_on_disk:
            text += f", {_size(self.bytes_on_disk)} memory-mapped in {self.folder}"
        return text

    def _reserved_file(self, total: int):
        """An anonymous file of ``total`` bytes in ``folder``, its disk space reserved."""
        file = tempfile.TemporaryFile(prefix="slices-", dir=self.folder)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(file.fileno(), 0, total)
            else:  # no reservation here: the file grows as the map is written
                file.truncate(total)
        except OSError as exc:
            file.close()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise LabelSharingError(
                    f"Not enough disk space in {self.folder} for {_size(total)} of training slices (the slices beyond "
                    f"--slice-memory {self.memory_limit / 2**20:g} MB are kept there). Free some space, or raise "
                    "--slice-memory if the machine has the RAM."
                ) from exc
            raise
        return file


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MB"
