"""Overlapping segments: a task whose ``.seg.nrrd`` labels are layered is split into sub-tasks
``TASK/1``, ``TASK/2`` ..., planned and trained as label-sharing tasks, and predicted back into one
layered ``.seg.nrrd``. Data: the overlapping segmentation slicerio ships (``SegmentationOverlapping.seg.nrrd``,
7 chest segments in layer 0 and an "overlapping sphere" in layer 1) on its CT (``CTChest4.nrrd``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from labelsharing.errors import LabelSharingError
from labelsharing.plan import summarise_tasks

CHEST = ["ribs", "cervical vertebral column", "thoracic vertebral column", "lumbar vertebral column", "right lung",
         "left lung", "tissue"]
SPHERE = "overlapping sphere"


def write_overlapping_task(root: Path, cases: int = 2, name: str = "Chest") -> Path:
    """A task folder of ``cases`` copies of slicerio's CT and its overlapping segmentation."""
    image = sitk.ReadImage(slicerio.get_testdata_file("CTChest4.nrrd"))
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for index in range(cases):
        sitk.WriteImage(image, str(root / "imagesTr" / f"case{index}_0000.nii.gz"))
        shutil.copy(slicerio.get_testdata_file("SegmentationOverlapping.seg.nrrd"),
                    root / "labelsTr" / f"case{index}.seg.nrrd")
    labels = {"background": 0, **{label: value for value, label in enumerate(CHEST + [SPHERE], start=1)}}
    (root / "dataset.json").write_text(json.dumps({"name": name, "channel_names": {"0": "CT"}, "labels": labels,
                                                   "numTraining": cases, "file_ending": ".nii.gz"}))
    return root


@pytest.fixture(scope="module")
def chest(tmp_path_factory) -> Path:
    return write_overlapping_task(tmp_path_factory.mktemp("overlap") / "Chest")


def test_an_overlapping_task_is_split_into_one_sub_task_per_layer(chest):
    summaries = summarise_tasks([chest])
    assert [s.task.name for s in summaries] == ["Chest/1", "Chest/2"]
    assert list(summaries[0].task.labels) == CHEST and list(summaries[1].task.labels) == [SPHERE]
    assert {s.task.parent for s in summaries} == {"Chest"}
    sphere = summaries[1].stats[SPHERE]
    assert sphere.presence == 1.0 and sphere.relative_size == pytest.approx(19139 / (128 * 128 * 34))
    tissue = summaries[0].stats["tissue"]  # overlapped by the sphere in the file, whole in its own layer
    assert tissue.relative_size == pytest.approx(154589 / (128 * 128 * 34))
