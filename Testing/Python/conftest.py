"""Shared fixtures: tiny task datasets written on the fly (no files are shipped)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pytest
import SimpleITK as sitk


def write_image(array: np.ndarray, path: Path, spacing=None, origin=None, direction=None) -> sitk.Image:
    """Write ``array`` ((z, y, x) or (y, x)) with the given geometry; returns the image."""
    image = sitk.GetImageFromArray(array)
    dim = image.GetDimension()
    image.SetSpacing(spacing or [1.0] * dim)
    image.SetOrigin(origin or [0.0] * dim)
    if direction is not None:
        image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return image


def write_task(
    root: Path,
    labels: Mapping[str, int],
    label_arrays: Sequence[np.ndarray],
    name: str | None = None,
    file_ending: str = ".nii.gz",
    channel: str = "CT",
    extra: Mapping | None = None,
    spacing=None,
) -> Path:
    """Write a task folder whose images are noisy copies of ``label_arrays``."""
    rng = np.random.default_rng(0)
    for index, label in enumerate(label_arrays):
        image = (label.astype(np.float32) * 100 + rng.normal(0, 5, label.shape)).astype(np.float32)
        write_image(image, root / "imagesTr" / f"case{index:03d}_0000{file_ending}", spacing=spacing)
        write_image(label.astype(np.uint8), root / "labelsTr" / f"case{index:03d}{file_ending}", spacing=spacing)
    meta = {
        "name": name or root.name,
        "channel_names": {"0": channel},
        "labels": {"background": 0, **labels},
        "numTraining": len(label_arrays),
        "file_ending": file_ending,
        **(extra or {}),
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def boxes(shape: tuple[int, ...], sizes: Mapping[int, int]) -> np.ndarray:
    """A label map with, for each value, a run of exactly ``sizes[value]`` voxels (non-overlapping)."""
    flat = np.zeros(int(np.prod(shape)), dtype=np.uint8)
    start = 0
    for value, count in sizes.items():
        flat[start : start + count] = value
        start += count
    return flat.reshape(shape)


@pytest.fixture
def two_tasks(tmp_path: Path) -> list[Path]:
    """Task A: 3 labels of sizes 40/20/10 %; task B: 2 labels of sizes 5/30 % (values reversed)."""
    a = write_task(tmp_path / "TaskA", {"big": 1, "mid": 2, "small": 3},
                   [boxes((10, 10), {1: 40, 2: 20, 3: 10})] * 2)
    b = write_task(tmp_path / "TaskB", {"tiny": 1, "large": 2}, [boxes((4, 5, 5), {1: 5, 2: 30})] * 2)
    return [a, b]
