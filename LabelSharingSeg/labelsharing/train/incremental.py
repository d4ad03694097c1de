"""Adding a task to a trained label-sharing model without forgetting the old ones.

The new task's labels are ranked by size and mapped onto the existing shared labels (old
tasks keep their mapping). If it has more labels than the model has shared labels, the output
layer grows (:func:`~labelsharing.model.network.grow_output_channels`) — beyond the paper, which stops
there. The model is then fine-tuned on the new task's slices mixed with a *replay* of the old
tasks' training slices (``replay`` = fraction of each batch drawn from old tasks). Dice on every
task's held-out cases before and after is stored as a forgetting table in the new model's
history. The input model folder is only read. Runs under ``torchrun`` like
:func:`~labelsharing.train.train_model.train` (the main process measures, logs and writes).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping, Sequence

from labelsharing.data import compare_datasets
from labelsharing.model import SegmentationModel, build_model_config, grow_output_channels, package_versions
from labelsharing.plan import LabelStats, SharedLabelPlan, summarise_tasks
from labelsharing.train.checkpoint import run_options
from labelsharing.train.distributed import DistributedContext, describe_processes
from labelsharing.train.fine_tuning import DEFAULT_REPLAY, FineTuning, measure, prepare_other_tasks, run_fine_tuning, \
    stored_datasets
from labelsharing.train.options import Log, TrainingOptions
from labelsharing.train.slice_store import SliceStore
from labelsharing.train.task_data import prepare_task
from labelsharing.utils import SILENT, ProgressReporter

__all__ = ["add_task", "extend_model"]


def add_task(
    model_dir: str | Path,
    dataset: str | Path,
    out: str | Path,
    options: TrainingOptions | None = None,
    replay: float = DEFAULT_REPLAY,
    pins: Mapping[str, Mapping[str, int]] | None = None,
    force: bool = False,
    progress: ProgressReporter = SILENT,
    log: Log = print,
    resume: bool = False,
    command: Sequence[str] | None = None,
    keep_apart: bool = False,
) -> SegmentationModel:
    """Fine-tune a copy of the model at ``model_dir`` on one more task and write it to ``out``.

    Args:
        model_dir: the trained model folder (never modified).
        dataset: the new task's dataset folder.
        out: the new model folder; records ``model_dir`` as its parent.
        options: fine-tuning settings (epochs, learning rate, ...); input size and width are the model's.
        replay: fraction of each batch drawn from the old tasks' training cases, in [0, 1).
            The old tasks' dataset folders (recorded in ``model.json``) must exist unless 0.
        pins: optional pins for the new task.
        resume, command: as for :func:`~labelsharing.train.train_model.train`.
        keep_apart: keep the new task apart from the old tasks it looks like (see ``train``); a
            model trained so keeps every new task apart without it.

    The forgetting table (Dice before and after, stored in the history) is measured on the
    weights that are written.

    Raises:
        LabelSharingError: an output that is or holds an input, exists (without ``force``), cannot
            be written or is being written by another process; unknown or duplicate task, missing old data with ``replay > 0``, a leftover interrupted run without ``resume``.
    """
    options = options or TrainingOptions(epochs=10, learning_rate=5e-4)
    model_dir, dataset, out = Path(model_dir), Path(dataset), Path(out)
    identity = {"command": "add-task", "model": str(model_dir.resolve()), "dataset": str(dataset.resolve()),
                "options": run_options(options), "replay": replay, "pins": pins, "keep_apart": keep_apart}
    return run_fine_tuning("add-task", model_dir, dataset, out, options, replay, force, identity, resume, command,
                           progress, log, lambda context, store, progress, log: _prepare(
                               model_dir, dataset, options, replay, pins, keep_apart, context, store, progress, log))


def extend_model(parent: SegmentationModel, name: str, stats: Mapping[str, LabelStats],
                 pins: Mapping[str, int] | None, look_alike: Sequence[str], terminology: Mapping[str, str],
                 log: Log, keep_apart: bool = False) -> tuple[SharedLabelPlan, object, dict]:
    """The parent's plan with task ``name`` added (old tasks keep their mapping) and its network and
    architecture, the output layer grown when the new task has more labels than the shared labels.

    Args:
        stats: the new task's label statistics (label name -> :class:`~labelsharing.plan.LabelStats`).
        terminology: the new task's label name -> Slicer terminology string.
        keep_apart: keep the new task apart from ``look_alike`` (a parent that keeps look-alike
            tasks apart always does; see ``SharedLabelPlan.add_task``).

    Returns:
        ``(plan, network, architecture)``; the network is the parent's (grown: a copy) on its device.
    """
    old_terminology = {t: {n: e["terminology"] for n, e in entry["labels"].items() if "terminology" in e}
                       for t, entry in parent.config["tasks"].items()}
    plan = parent.plan.add_task(name, stats, pins, look_alike, {name: terminology, **old_terminology}, keep_apart)
    network, architecture = parent.network, parent.config["architecture"]
    if plan.n_shared > parent.plan.n_shared:
        network, architecture = grow_output_channels(network, architecture, plan.n_shared + 1)
        why = (f"has {len(stats)} labels, more than the model's {parent.plan.n_shared} shared labels"
               if len(stats) > parent.plan.n_shared else "is kept apart from the tasks it looks like")
        log(f"'{name}' {why}: the output layer grows to {plan.n_shared} shared labels (new channels start from "
            f"background).")
    return plan, network, architecture


def _prepare(model_dir: Path, dataset: Path, options: TrainingOptions, replay: float, pins, keep_apart: bool,
             context: DistributedContext, store: SliceStore, progress: ProgressReporter, log: Log) -> FineTuning:
    """The parent model grown for the new task, the prepared tasks (slices in ``store``) and Dice before."""
    device = context.device
    log(describe_processes(context))
    parent = SegmentationModel.load(model_dir, device=str(device))
    summary = summarise_tasks([dataset], progress, thumbnails=True)[0]
    name = summary.task.name
    appearance = compare_datasets([summary.task, *stored_datasets(parent)], {name: summary.thumbnails})
    look_alike = [t for pair in appearance.look_alike_pairs(involving=name) for t in pair
                  if t != name and t in parent.plan.task_names]
    plan, network, architecture = extend_model(parent, name, summary.stats, (pins or {}).get(name), look_alike,
                                               summary.task.terminology, log, keep_apart)
    for note in summary.warnings + appearance.warnings(involving=name) + plan.warnings[len(parent.plan.warnings):]:
        log(f"warning: {note}")
    input_size = parent.input_size
    new_task = prepare_task(summary.task, plan, input_size, options.val_fraction, options.seed, options.axis,
                            store=store)
    old_tasks = prepare_other_tasks(parent, plan, replay, log, store)
    config = build_model_config(architecture, input_size, plan, {**parent.config["tasks"], name: new_task.model_entry(plan)},
                                parent=str(model_dir.resolve()), parameters=sum(p.numel() for p in network.parameters()),
                                versions=package_versions(), history=copy.deepcopy(parent.config["history"]),
                                appearance=appearance.to_dict())
    model = SegmentationModel(config=config, network=network.to(device))

    tasks = [new_task, *old_tasks]
    return FineTuning(model, tasks, before=measure(model, tasks, context))
