"""``update``: teach a trained model more cases of one of its tasks (corrected segmentations, say).

The task's dataset folder has grown (``add-case``); the model is fine-tuned on all its training
cases, old and added, with a replay of the model's other tasks, as ``add-task`` fine-tunes
(:mod:`labelsharing.train.fine_tuning`: the same output, lock, ``--force`` and ``--resume`` rules).
Nothing about the task's preprocessing changes: its stored normalisation, slicing and labels are
the model's, so the network keeps seeing what it learnt on.

Held-out cases stay fixed across updates: the task's stored ``validation_cases`` are never
trained on, and every case added since the model was trained (its stored ``training_cases``)
goes to training, unless the caller names it in ``validation_cases`` (``--validation-cases``),
which adds it to the held-out cases of this and every later model. The Dice of every task on its
held-out cases before and after is stored in the history with the cases added.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

from labelsharing.data import TaskDataset, read_task_dataset
from labelsharing.errors import LabelSharingError
from labelsharing.model import SegmentationModel, build_model_config, package_versions
from labelsharing.train.checkpoint import run_options
from labelsharing.train.distributed import DistributedContext, describe_processes
from labelsharing.train.fine_tuning import DEFAULT_REPLAY, FineTuning, measure, prepare_other_tasks, \
    prepare_stored_task, run_fine_tuning
from labelsharing.train.options import Log, TrainingOptions
from labelsharing.train.slice_store import SliceStore
from labelsharing.utils import SILENT, ProgressReporter

__all__ = ["update"]


def update(
    model_dir: str | Path,
    task: str,
    dataset: str | Path,
    out: str | Path,
    options: TrainingOptions | None = None,
    replay: float = DEFAULT_REPLAY,
    validation_cases: Sequence[str] = (),
    force: bool = False,
    progress: ProgressReporter = SILENT,
    log: Log = print,
    resume: bool = False,
    command: Sequence[str] | None = None,
) -> SegmentationModel:
    """Fine-tune the model at ``model_dir`` on the grown dataset of its task ``task``; write it to ``out``.

    Args:
        model_dir: the trained model folder (never modified).
        task: the task to update (a task of the model).
        dataset: that task's dataset folder, original cases plus the added ones; its labels must
            be the task's.
        out: the new model folder; records ``model_dir`` as its parent.
        options: fine-tuning settings (epochs, learning rate, ...); ``val_fraction``, ``axis`` and
            ``input_size`` are the model's and ignored.
        replay: fraction of each batch drawn from the model's other tasks, in [0, 1); their
            dataset folders (recorded in ``model.json``) must exist unless 0.
        validation_cases: cases added since the model was trained to hold out from now on
            (default: every added case is trained on).
        resume, command: as for :func:`~labelsharing.train.train_model.train`; ``--resume``
            also needs the same cases in the dataset folder.

    Returns:
        the updated model (also written to ``out``).

    Raises:
        LabelSharingError: ``task`` is not a task of the model, or ``dataset`` is another task's or
            declares other labels; the model does not record the task's held-out cases, or one is
            missing from ``dataset``; a case named in ``validation_cases`` is not in ``dataset`` or
            was trained on; and the output rules of ``add-task``.
    """
    options = options or TrainingOptions(epochs=10, learning_rate=5e-4)
    model_dir, dataset, out = Path(model_dir), Path(dataset), Path(out)
    cases = [case.case_id for case in read_task_dataset(dataset).training]
    identity = {"command": "update", "model": str(model_dir.resolve()), "task": task,
                "dataset": str(dataset.resolve()), "cases": cases, "options": run_options(options), "replay": replay,
                "validation_cases": sorted(validation_cases)}
    return run_fine_tuning("update", model_dir, dataset, out, options, replay, force, identity, resume, command,
                           progress, log, lambda context, store, progress, log: _prepare(
                               model_dir, task, dataset, replay, validation_cases, context, store, log))


def _prepare(model_dir: Path, name: str, folder: Path, replay: float, marked: Sequence[str],
             context: DistributedContext, store: SliceStore, log: Log) -> FineTuning:
    """The parent model, the task with its grown training set and fixed held-out cases, the other
    tasks (slices in ``store``) and Dice before."""
    log(describe_processes(context))
    parent = SegmentationModel.load(model_dir, device=str(context.device))
    dataset = read_task_dataset(folder)
    entry = _task_entry(parent, name, dataset)
    trained = entry.get("training_cases")  # None: a model written before training cases were stored
    held_out = _held_out(entry, dataset, trained, marked)

    updated = prepare_stored_task(parent, dataset, parent.plan, validation_ids=held_out, store=store)
    added = None if trained is None else [c for c in updated.training_ids if c not in set(trained)]
    if added is None:
        log(f"note: the model does not list the cases '{name}' was trained on (written before update existed); "
            "the cases added cannot be named.")
    elif not added:
        log(f"note: no case was added to '{name}' since the model was trained: it is fine-tuned on the same cases.")
    gone = [c for c in trained or () if c not in set(updated.training_ids)]
    if gone:
        log(f"warning: {len(gone)} case(s) '{name}' was trained on are no longer in {folder}: {', '.join(gone[:5])}.")
    log(f"'{name}': {len(updated.training_ids)} training cases"
        + ("" if added is None else f" ({len(added)} added)") + f", {len(held_out)} held out")

    others = prepare_other_tasks(parent, parent.plan, replay, log, store, skip=name)
    tasks_config = {**parent.config["tasks"], name: {**entry, "dataset": str(folder.resolve()),
                                                      "validation_cases": list(held_out),
                                                      "training_cases": list(updated.training_ids)}}
    config = build_model_config(parent.config["architecture"], parent.input_size, parent.plan, tasks_config,
                                parent=str(model_dir.resolve()), parameters=parent.config.get("parameters"),
                                versions=package_versions(), history=copy.deepcopy(parent.config["history"]),
                                appearance=parent.config.get("appearance"))
    model = SegmentationModel(config=config, network=parent.network.to(context.device))
    tasks = [updated, *others]
    record = {"added_cases": added, "validation_added": held_out[len(entry["validation_cases"]):],
              "training_cases": len(updated.training_ids)}
    return FineTuning(model, tasks, before=measure(model, tasks, context), record=record)


def _task_entry(parent: SegmentationModel, name: str, dataset: TaskDataset) -> dict:
    """The model's entry of task ``name``, checked against ``dataset`` (same task, same labels)."""
    tasks = parent.config["tasks"]
    if name not in tasks:
        raise LabelSharingError(f"'{name}' is not a task of this model; its tasks are: {', '.join(tasks)}. "
                                "A new task is taught with add-task.")
    if dataset.name != name:
        raise LabelSharingError(f"{dataset.root} holds task '{dataset.name}', not '{name}'. Pass the folder of task "
                                f"'{name}' (the model recorded {tasks[name].get('dataset', 'none')}).")
    labels = {label: value["value"] for label, value in tasks[name]["labels"].items()}
    if dataset.labels != labels:
        raise LabelSharingError(
            f"{dataset.root}/dataset.json declares the labels {_text(dataset.labels)}, but the model's task '{name}' "
            f"has {_text(labels)}. update teaches more cases of the same labels; other labels make another task "
            "(add-task)."
        )
    return tasks[name]


def _held_out(entry: dict, dataset: TaskDataset, trained: Sequence[str] | None, marked: Sequence[str]) -> list[str]:
    """The stored held-out cases, plus the ``marked`` cases (which must be new to the model)."""
    stored = entry.get("validation_cases")
    if stored is None:
        raise LabelSharingError(
            f"The model does not record the held-out cases of '{dataset.name}' (written by an older labelsharing), so "
            "an update could train on them and its Dice before/after would not compare. Train the model again, "
            "then update it."
        )
    present = {case.case_id for case in dataset.training}
    unknown = [c for c in marked if c not in present]
    if unknown:
        raise LabelSharingError(f"--validation-cases {', '.join(unknown)}: no such training case in "
                                f"{dataset.root / 'imagesTr'}.")
    if marked and trained is None:
        raise LabelSharingError("The model does not list the cases it was trained on, so cases marked with "
                                "--validation-cases cannot be checked to be unseen. Update without them.")
    seen = [c for c in marked if c in set(trained or ())]
    if seen:
        raise LabelSharingError(f"--validation-cases {', '.join(seen)}: the model was trained on these cases, so "
                                "their Dice would flatter it. Hold out only cases added since.")
    return [*stored, *(c for c in dict.fromkeys(marked) if c not in stored)]


def _text(labels: dict) -> str:
    return ", ".join(f"{name}={value}" for name, value in labels.items())
