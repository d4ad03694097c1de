"""A task dataset whose ``.seg.nrrd`` labels overlap, read as its non-overlapping sub-tasks.

The layers of every ``.seg.nrrd`` label file of the task (training and test) are read from the
files' headers (no voxels); labels that some file puts in different layers go to different
sub-tasks (:func:`labelsharing.plan.group_layers`). Each sub-task ``TASK/g`` is the same folder and
cases with a subset of the labels; its label maps are read from the one layer its segments lie in,
leaving the siblings' segments out (``TaskDataset.other_labels``). A task without overlaps is
returned unchanged.
"""

from __future__ import annotations

import dataclasses

from labelsharing.data.datasets import TaskDataset
from labelsharing.data.image_io import SEG_NRRD
from labelsharing.data.seg_nrrd import read_segment_layers
from labelsharing.plan import group_layers, subtask_name

__all__ = ["split_overlapping_task"]


def split_overlapping_task(task: TaskDataset) -> tuple[TaskDataset, ...]:
    """``(task,)`` if no label file layers its labels apart, else its sub-tasks ``TASK/1``, ``TASK/2``, ...

    Sub-task ``g`` keeps the labels of layer group ``g`` with their values, colours and terminology,
    and ``parent`` = the task's name.

    Raises:
        LabelSharingError: a label file's header cannot be read.
    """
    files = [case.label for case in task.training + task.test
             if case.label is not None and case.label.name.lower().endswith(SEG_NRRD)]
    groups = group_layers(list(task.labels), (read_segment_layers(path) for path in files))
    if len(groups) == 1:
        return (task,)
    return tuple(
        dataclasses.replace(
            task,
            name=subtask_name(task.name, index),
            labels={name: task.labels[name] for name in group},
            colors={name: c for name, c in task.colors.items() if name in group},
            terminology={name: t for name, t in task.terminology.items() if name in group},
            parent=task.name,
            other_labels={name: value for name, value in task.labels.items() if name not in group},
        )
        for index, group in enumerate(groups, start=1)
    )
