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

from labelsharing.data import Slicing, compare_datasets, read_task_dataset
from labelsharing.errors import LabelSharingError
from labelsharing.infer import Predictor
from labelsharing.model import SegmentationModel, build_model_config, grow_output_channels, package_versions
from labelsharing.plan import summarise_tasks
from labelsharing.train.checkpoint import RunFolder, claim_output, run_options
from labelsharing.train.distributed import DistributedContext, describe_processes, main_process_output, \
    start_distributed
from labelsharing.train.familiarity_fit import fit_familiarity
from labelsharing.train.options import Log, TrainingOptions
from labelsharing.train.slice_store import SliceStore
from labelsharing.train.task_data import PreparedTask, prepare_task
from labelsharing.train.trainer import Trainer
from labelsharing.train.validation import validation_dice
from labelsharing.utils import SILENT, ProgressReporter, format_table

__all__ = ["DEFAULT_REPLAY", "add_task", "forgetting_table"]

#: Share of each batch drawn from the old tasks (see the README's replay measurements).
DEFAULT_REPLAY = 0.5


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

    The forgetting table (Dice before and after, stored in the history) is measured on the
    weights that are written.

    Raises:
        LabelSharingError: an output that is or holds an input, exists (without ``force``), cannot
            be written or is being written by another process; unknown or duplicate task, missing old data with ``replay > 0``, a leftover interrupted run without ``resume``.
    """
    options = options or TrainingOptions(epochs=10, learning_rate=5e-4)
    model_dir, out = Path(model_dir), Path(out)
    if not 0 <= replay < 1:
        raise LabelSharingError(f"--replay must lie in [0, 1), got {replay}.")
    identity = {"command": "add-task", "model": str(model_dir.resolve()), "dataset": str(Path(dataset).resolve()),
                "options": run_options(options), "replay": replay, "pins": pins}
    with claim_output(out, [model_dir, dataset], force, identity, resume, command) as run:
        context = start_distributed(options.device)
        try:
            with context.together():  # the working folder first: slices beyond --slice-memory are kept there
                if context.is_main and not resume:
                    run.start()
            with run.removed_on_failure(context.is_main and not resume), context.together():
                model, tasks, shares, before = _prepare(model_dir, dataset, options, replay, pins, context,
                                                        SliceStore(run.folder, options.slice_memory_mb),
                                                        *main_process_output(context, progress, log))
            return _fine_tune(model, tasks, shares, before, model_dir, Path(dataset), out, options, replay, force,
                              context, run, *main_process_output(context, progress, log))
        finally:
            context.close()


def _prepare(model_dir: Path, dataset, options: TrainingOptions, replay: float, pins, context: DistributedContext,
             store: SliceStore, progress: ProgressReporter, log: Log):
    """The parent model grown for the new task, the prepared tasks (slices in ``store``), draw
    shares and Dice before."""
    device = context.device
    log(describe_processes(context))
    parent = SegmentationModel.load(model_dir, device=str(device))
    summary = summarise_tasks([dataset], progress, thumbnails=True)[0]
    name = summary.task.name
    appearance = compare_datasets([summary.task, *_old_datasets(parent)], {name: summary.thumbnails})
    look_alike = [t for pair in appearance.look_alike_pairs(involving=name) for t in pair
                  if t != name and t in parent.plan.task_names]
    terminology = {name: summary.task.terminology, **{t: {n: e["terminology"] for n, e in entry["labels"].items()
                                                          if "terminology" in e}
                                                      for t, entry in parent.config["tasks"].items()}}
    plan = parent.plan.add_task(name, summary.stats, (pins or {}).get(name), look_alike, terminology)
    for note in summary.warnings + appearance.warnings(involving=name) + plan.warnings[len(parent.plan.warnings):]:
        log(f"warning: {note}")

    network, architecture = parent.network, parent.config["architecture"]
    if plan.n_shared > parent.plan.n_shared:
        network, architecture = grow_output_channels(network, architecture, plan.n_shared + 1)
        log(f"'{name}' has {len(summary.stats)} labels, more than the model's {parent.plan.n_shared} shared labels: "
            f"the output layer grows to {plan.n_shared} shared labels (new channels start from background).")
    input_size = parent.input_size
    new_task = prepare_task(summary.task, plan, input_size, options.val_fraction, options.seed, options.axis,
                            store=store)
    old_tasks = _prepare_old_tasks(parent, plan, replay, log, store)
    config = build_model_config(architecture, input_size, plan, {**parent.config["tasks"], name: new_task.model_entry(plan)},
                                parent=str(model_dir.resolve()), parameters=sum(p.numel() for p in network.parameters()),
                                versions=package_versions(), history=copy.deepcopy(parent.config["history"]),
                                appearance=appearance.to_dict())
    model = SegmentationModel(config=config, network=network.to(device))

    tasks = [new_task, *old_tasks]
    before = validation_dice(Predictor(model, device), tasks) if context.is_main else {}
    shares = {new_task.name: 1.0 - replay, **{t.name: replay / len(old_tasks) for t in old_tasks}}
    return model, tasks, shares, before


def _fine_tune(model: SegmentationModel, tasks: list[PreparedTask], shares: dict, before: dict, model_dir: Path,
               dataset: Path, out: Path, options: TrainingOptions, replay: float, force: bool, context: DistributedContext,
               run: RunFolder, progress: ProgressReporter, log: Log) -> SegmentationModel:
    name = tasks[0].name
    # Without replay the old tasks are not trained on, so selecting the epoch on their Dice would
    # just keep an early, under-trained model: select on the new task alone.
    select_on = [name] if replay == 0 else None
    result = Trainer(model, tasks, options, context.device, shares=shares, select_on=select_on, context=context,
                     run=run, progress=progress, log=log).fit()
    with context.together():  # the others wait for the main process to write (and hear if it fails)
        if context.is_main:
            model.network.load_state_dict(result.best_state)
            model.config["familiarity"] = fit_familiarity(model, tasks, context.device, log)
            after = validation_dice(Predictor(model, context.device), tasks)  # the weights that are written
            forgetting = {task: {"before": before[task]["mean"], "after": after[task]["mean"]}
                          for task in after if task in before}
            record = result.history_entry("add-task", options, context.device, [name], context.world_size)
            record.update(replay=replay, forgetting=forgetting, parent=str(model_dir.resolve()))
            model.config["history"].append(record)
            model.save(out, overwrite=force, inputs=[model_dir, dataset])
            run.remove()
            log(forgetting_table(forgetting, new_task=name))
            if replay == 0:
                log("note: trained with --replay 0: forgetting of the old tasks was not guarded against.")
            log(f"model written to {out}")
    return model


def _old_datasets(parent: SegmentationModel) -> list:
    """The old tasks' datasets whose folders (recorded in ``model.json``) still exist."""
    folders = [entry.get("dataset") for entry in parent.config["tasks"].values()]
    return [read_task_dataset(f) for f in folders if f and (Path(f) / "dataset.json").is_file()]


def _prepare_old_tasks(parent: SegmentationModel, plan, replay: float, log: Log,
                       store: SliceStore | None = None) -> list[PreparedTask]:
    """Old tasks' data, prepared with their stored preprocessing and their own validation split
    (slices in ``store``, default RAM); without replay only their validation cases are read (to
    measure forgetting)."""
    prepared, missing = [], []
    for task_name, entry in parent.config["tasks"].items():
        folder = entry.get("dataset")
        if not folder or not (Path(folder) / "dataset.json").is_file():
            missing.append(f"{task_name} ({folder or 'no folder recorded'})")
            continue
        dataset = read_task_dataset(folder)
        val_fraction, seed = _split_options(parent.config.get("history", []), task_name)
        prepared.append(prepare_task(dataset, plan, parent.input_size, val_fraction, seed,
                                     normalization=entry["normalization"],
                                     validation_ids=entry.get("validation_cases"), slicing=Slicing.from_config(entry),
                                     validation_only=replay == 0, store=store))  # not replayed: only measured
    if missing and replay > 0:
        raise LabelSharingError(
            "Replay needs the old tasks' training data, but these dataset folders are missing: "
            f"{', '.join(missing)}. Restore them at those paths, or pass --replay 0 (forgetting is then not "
            "guarded against)."
        )
    if missing:
        log(f"warning: old task data not found ({', '.join(missing)}); their Dice before/after cannot be measured.")
    return prepared


def _split_options(history: list, task_name: str) -> tuple[float, int]:
    """``(val_fraction, seed)`` of the run that first trained ``task_name``: how models written
    before ``validation_cases`` was stored drew that task's split."""
    for record in history:
        if task_name in record.get("tasks", ()):
            options = record.get("options", {})
            return options.get("val_fraction", 0.2), options.get("seed", 0)
    return 0.2, 0


def forgetting_table(forgetting: Mapping[str, Mapping[str, float]], new_task: str = "") -> str:
    """Dice per task before and after adding a task (mean over held-out cases)."""
    rows = [[task + (" (new)" if task == new_task else ""), f"{d['before']:.3f}", f"{d['after']:.3f}",
             f"{d['after'] - d['before']:+.3f}"] for task, d in forgetting.items()]
    return "Dice on held-out cases, before -> after adding the task\n" + format_table(
        ["task", "before", "after", "change"], rows)
