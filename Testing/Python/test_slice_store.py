"""Issue 9 (defect 7): one compact copy of the training slices, in RAM or memory-mapped, and no
volume kept alive once training starts."""

from __future__ import annotations

import errno
import gc
import json
import sys
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import boxes, write_image

from labelsharing.data import read_task_dataset
from labelsharing.errors import LabelSharingError
from labelsharing.plan import LabelStats, SharedLabelPlan
from labelsharing.train import prepare_task
from labelsharing.train.slice_store import SliceStore, label_dtype

ON_LINUX = sys.platform.startswith("linux")


def _mapped_files() -> list[str]:
    """Paths of the files this process has memory-mapped (Linux)."""
    fields = [line.split(maxsplit=5) for line in Path("/proc/self/maps").read_text().splitlines()]
    return [parts[5] for parts in fields if len(parts) == 6]


def test_blocks_stay_in_memory_up_to_the_limit_then_go_to_an_anonymous_file(tmp_path):
    store = SliceStore(tmp_path, memory_limit_mb=12 * 64 * 64 * 3 / 2**20)  # room for 12 slices of 64 x 64
    in_memory = store.allocate(10, 64, np.uint8)
    on_disk = store.allocate(5, 64, np.uint16)  # 10 + 5 slices exceed the limit
    empty = store.allocate(0, 64)
    assert not isinstance(in_memory[0], np.memmap) and not isinstance(empty[0], np.memmap)
    assert isinstance(on_disk[0], np.memmap) and isinstance(on_disk[1], np.memmap)
    assert on_disk[0].shape == on_disk[1].shape == (5, 64, 64)
    assert on_disk[0].dtype == np.float16 and on_disk[1].dtype == np.uint16
    on_disk[0][:] = 1.5
    on_disk[1][:] = 300
    assert float(on_disk[0].sum()) == 1.5 * 5 * 64 * 64 and int(on_disk[1][4, 63, 63]) == 300  # images, labels apart
    assert store.bytes_in_memory == 10 * 64 * 64 * 3 and store.bytes_on_disk == 5 * 64 * 64 * 4
    assert list(tmp_path.iterdir()) == []  # unlinked at once: nothing to clean up, even after a kill
    if ON_LINUX:
        assert any(path.startswith(str(tmp_path)) for path in _mapped_files())
    assert "memory-mapped in" in store.describe()


def test_a_full_disk_is_a_user_error_not_a_crash(tmp_path, monkeypatch):
    import os

    if not hasattr(os, "posix_fallocate"):
        pytest.skip("disk space is reserved only where posix_fallocate exists")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(LabelSharingError, match="Not enough disk space.*--slice-memory"):
        SliceStore(tmp_path, memory_limit_mb=0).allocate(4, 32)
    assert list(tmp_path.iterdir()) == []


def test_labels_past_255_shared_labels_are_stored_as_uint16():
    assert label_dtype(255) == np.uint8 and label_dtype(256) == np.uint16


def _volume_task(root: Path, cases: int, shape=(24, 32, 32)) -> Path:
    """A 3D MR task whose cases are noisy boxes (an MR scheme: no CT normalisation pass)."""
    rng = np.random.default_rng(0)
    for index in range(cases):
        label = boxes(shape, {1: shape[1] * shape[2] * 4, 2: shape[1] * shape[2] * 2})
        write_image((label * 100 + rng.normal(0, 5, shape)).astype(np.float32),
                    root / "imagesTr" / f"c{index:02d}_0000.nii.gz", spacing=[1.0, 1.0, 1.0])
        write_image(label, root / "labelsTr" / f"c{index:02d}.nii.gz", spacing=[1.0, 1.0, 1.0])
    (root / "dataset.json").write_text(json.dumps({
        "name": root.name, "channel_names": {"0": "MR"}, "file_ending": ".nii.gz",
        "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": cases}))
    return root


def test_preparation_holds_one_copy_of_the_slices_and_one_case_at_a_time(tmp_path):
    """The old preparation held every training volume, every case's fitted slices, and their
    concatenation at once: about twice the slices plus the volumes. Now the slices are written
    case by case into the store; what else is held is one case's working memory."""
    dataset = read_task_dataset(_volume_task(tmp_path / "T", cases=24))
    plan = SharedLabelPlan.build({"T": {"a": LabelStats(1, 0.2, 1.0), "b": LabelStats(2, 0.1, 1.0)}})
    prepare_task(dataset, plan, 16, val_fraction=0.2, seed=0)  # imports (torch) before measuring
    gc.collect()
    tracemalloc.start()
    try:
        task = prepare_task(dataset, plan, 64, val_fraction=0.2, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    slices = task.images.nbytes + task.labels.nbytes
    assert len(task.images) == 19 * 24  # 19 training cases of 24 slices
    assert peak < 1.25 * slices, f"peak {peak / 2**20:.1f} MB for {slices / 2**20:.1f} MB of slices"


def test_in_memory_and_memory_mapped_preparation_agree(tmp_path):
    dataset = read_task_dataset(_volume_task(tmp_path / "T", cases=4, shape=(6, 20, 16)))
    plan = SharedLabelPlan.build({"T": {"a": LabelStats(1, 0.2, 1.0), "b": LabelStats(2, 0.1, 1.0)}})
    work = tmp_path / "work"
    work.mkdir()
    in_memory = prepare_task(dataset, plan, 32, val_fraction=0.25)
    mapped = prepare_task(dataset, plan, 32, val_fraction=0.25, store=SliceStore(work, memory_limit_mb=0))
    assert isinstance(mapped.images, np.memmap) and not isinstance(in_memory.images, np.memmap)
    np.testing.assert_array_equal(mapped.images, in_memory.images)
    np.testing.assert_array_equal(mapped.labels, in_memory.labels)
    np.testing.assert_array_equal(mapped.foreground, in_memory.foreground)
    assert mapped.validation_slices == in_memory.validation_slices == 6


def test_no_volume_is_alive_when_training_starts(tmp_path, monkeypatch):
    """Planning and preparation read each case and let it go; the held-out cases are read again
    at each validation. The old code kept every held-out volume (and, until preparation ended,
    every volume) for the whole run."""
    from labelsharing.demo import make_demo_datasets
    from labelsharing.train import Trainer, TrainingOptions, train

    folders = make_demo_datasets(tmp_path / "demo", cases=5, seed=2)[:2]  # 3D CT and MR
    alive: list[weakref.ref] = []
    real_execute = sitk.ImageFileReader.Execute

    def tracked_execute(self, *args):
        image = real_execute(self, *args)
        alive.append(weakref.ref(image))
        return image

    class Started(Exception):
        pass

    seen: dict[str, int] = {}

    def fit_that_counts(self):
        gc.collect()
        seen["read"], seen["alive"] = len(alive), sum(ref() is not None for ref in alive)
        seen["held_out"] = sum(len(t.validation) for t in self.tasks)
        raise Started

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", tracked_execute)
    monkeypatch.setattr(Trainer, "fit", fit_that_counts)
    with pytest.raises(Started):
        train(folders, tmp_path / "model", TrainingOptions(epochs=1, input_size=32, features=4, device="cpu"),
              log=lambda m: None)
    assert seen["read"] >= 20 and seen["held_out"] == 2
    assert seen["alive"] == 0
