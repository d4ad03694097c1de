"""Fine-tuning a trained model on one task with replay of its other tasks: what ``add-task`` and
``update`` share.

Both read a model folder (never modified), prepare one task to teach plus the model's other
tasks with their stored preprocessing and held-out cases (:func:`prepare_stored_task`), measure
every task's Dice on its held-out cases, train with a *replay* share of each batch drawn from the
other tasks (:func:`replay_shares`), measure again on the weights that are written and store the
before/after table (:func:`forgetting_table`) in the new model's history. :func:`run_fine_tuning`
holds the run around it: the output claimed first (lock, ``--force`` rules, working folder,
``--resume``), the same torchrun handling as :func:`~labelsharing.train.train_model.train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from labelsharing.data import Slicing, TaskDataset, read_task_dataset
from labelsharing.errors import LabelSharingError
from labelsharing.infer import Predictor
from labelsharing.model import SegmentationModel
from labelsharing.plan import SharedLabelPlan
from labelsharing.train.checkpoint import RunFolder, claim_output
from labelsharing.train.distributed import DistributedContext, main_process_output, start_distributed
from labelsharing.train.familiarity_fit import fit_familiarity
from labelsharing.train.island_fit import fit_small_islands
from labelsharing.train.options import Log, TrainingOptions
from labelsharing.train.slice_store import SliceStore
from labelsharing.train.task_data import PreparedTask, prepare_task
from labelsharing.train.trainer import Trainer
from labelsharing.train.validation import validation_dice
from labelsharing.utils import ProgressReporter, format_table

__all__ = ["DEFAULT_REPLAY", "FineTuning", "run_fine_tuning", "prepare_stored_task", "prepare_other_tasks",
           "replay_shares", "forgetting_table"]

#: Share of each batch drawn from the other tasks (see the README's replay measurements).
DEFAULT_REPLAY = 0.5


@dataclass
class FineTuning:
    """What one fine-tuning run trains, as ``add-task`` or ``update`` prepared it.

    Attributes:
        model: the model to train (its config already the new ``model.json``, history copied from the parent).
        tasks: the task taught first, then the other tasks (replayed, or only measured at ``replay`` 0).
        before: Dice on every task's held-out cases before training (``validation_dice``; main process only).
        record: extra fields of the run's history record (e.g. the cases an update added).
    """

    model: SegmentationModel
    tasks: list[PreparedTask]
    before: dict
    record: dict = field(default_factory=dict)


#: ``prepare(context, store, progress, log) -> FineTuning``: reads the parent and the data.
Prepare = Callable[[DistributedContext, SliceStore, ProgressReporter, Log], FineTuning]


def run_fine_tuning(kind: str, model_dir: Path, dataset: Path, out: Path, options: TrainingOptions, replay: float,
                    force: bool, identity: Mapping, resume: bool, command: Sequence[str] | None,
                    progress: ProgressReporter, log: Log, prepare: Prepare) -> SegmentationModel:
    """Claim ``out``, prepare the run with ``prepare``, fine-tune, write ``out``.

    Args:
        kind: the history record's ``kind`` (``add-task``, ``update``).
        model_dir, dataset: the run's inputs (never written; ``out`` may not be or hold them).
        identity: what ``--resume`` must repeat (:func:`~labelsharing.train.checkpoint.claim_output`).

    Raises:
        LabelSharingError: ``replay`` outside [0, 1); the output rules of
            :func:`~labelsharing.train.checkpoint.claim_output`; what ``prepare`` raises.
    """
    if not 0 <= replay < 1:
        raise LabelSharingError(f"--replay must lie in [0, 1), got {replay}.")
    with claim_output(out, [model_dir, dataset], force, identity, resume, command) as run:
        context = start_distributed(options.device)
        try:
            with context.together():  # the working folder first: slices beyond --slice-memory are kept there
                if context.is_main and not resume:
                    run.start()
            with run.removed_on_failure(context.is_main and not resume), context.together():
                job = prepare(context, SliceStore(run.folder, options.slice_memory_mb),
                              *main_process_output(context, progress, log))
            return _fine_tune(kind, job, model_dir, dataset, out, options, replay, force, context, run,
                              *main_process_output(context, progress, log))
        finally:
            context.close()


def measure(model: SegmentationModel, tasks: Sequence[PreparedTask], context: DistributedContext) -> dict:
    """Dice on the tasks' held-out cases (main process; the others get ``{}``)."""
    return validation_dice(Predictor(model, context.device), tasks) if context.is_main else {}


def _fine_tune(kind: str, job: FineTuning, model_dir: Path, dataset: Path, out: Path, options: TrainingOptions,
               replay: float, force: bool, context: DistributedContext, run: RunFolder, progress: ProgressReporter,
               log: Log) -> SegmentationModel:
    model, tasks, name = job.model, job.tasks, job.tasks[0].name
    # Without replay the other tasks are not trained on, so selecting the epoch on their Dice would
    # just keep an early, under-trained model: select on the taught task alone.
    select_on = [name] if replay == 0 else None
    result = Trainer(model, tasks, options, context.device, shares=replay_shares(name, [t.name for t in tasks[1:]], replay),
                     select_on=select_on, context=context, run=run, progress=progress, log=log).fit()
    with context.together():  # the others wait for the main process to write (and hear if it fails)
        if context.is_main:
            model.network.load_state_dict(result.best_state)
            model.config["familiarity"] = fit_familiarity(model, tasks, context.device, log)  # the network changed
            model.config["small_islands"] = fit_small_islands(model, tasks, context.device, log)
            after = measure(model, tasks, context)  # the weights that are written
            forgetting = {task: {"before": job.before[task]["mean"], "after": after[task]["mean"]}
                          for task in after if task in job.before}
            record = result.history_entry(kind, options, context.device, [name], context.world_size)
            record.update(replay=replay, forgetting=forgetting, parent=str(model_dir.resolve()), **job.record)
            model.config["history"].append(record)
            model.save(out, overwrite=force, inputs=[model_dir, dataset])
            run.remove()
            log(forgetting_table(forgetting, **({"new_task": name} if kind == "add-task" else {"updated_task": name})))
            if replay == 0:
                log("note: trained with --replay 0: forgetting of the other tasks was not guarded against.")
            log(f"model written to {out}")
    return model


def replay_shares(name: str, others: Sequence[str], replay: float) -> dict[str, float]:
    """Share of the draws per task: ``1 - replay`` for the taught task ``name``, ``replay`` split
    evenly over ``others`` (all draws for ``name`` when there are none).

    Example:
        >>> replay_shares("New", ["A", "B"], 0.5)
        {'New': 0.5, 'A': 0.25, 'B': 0.25}
    """
    if not others:
        return {name: 1.0}
    return {name: 1.0 - replay, **{other: replay / len(others) for other in others}}


def stored_datasets(parent: SegmentationModel, skip: str | None = None) -> list[TaskDataset]:
    """The datasets of the parent's tasks (but ``skip``) whose folders (recorded in ``model.json``) still exist."""
    folders = [entry.get("dataset") for name, entry in parent.config["tasks"].items() if name != skip]
    return [read_task_dataset(f) for f in folders if f and (Path(f) / "dataset.json").is_file()]


def prepare_stored_task(parent: SegmentationModel, dataset: TaskDataset, plan: SharedLabelPlan,
                        validation_ids: Sequence[str] | None = None, validation_only: bool = False,
                        store: SliceStore | None = None) -> PreparedTask:
    """One of the parent's tasks, prepared as the parent was: its stored normalisation and slicing,
    and its stored held-out cases (or ``validation_ids``, if given).

    Models written before ``validation_cases`` was stored draw the split again from the first
    run's ``val_fraction`` and seed (:func:`_split_options`).
    """
    entry = parent.config["tasks"][dataset.name]
    val_fraction, seed = _split_options(parent.config.get("history", []), dataset.name)
    stored = entry.get("validation_cases") if validation_ids is None else validation_ids
    return prepare_task(dataset, plan, parent.input_size, val_fraction, seed, normalization=entry["normalization"],
                        validation_ids=stored, slicing=Slicing.from_config(entry), validation_only=validation_only,
                        store=store)


def prepare_other_tasks(parent: SegmentationModel, plan: SharedLabelPlan, replay: float, log: Log,
                        store: SliceStore | None = None, skip: str | None = None) -> list[PreparedTask]:
    """The parent's tasks (but ``skip``), prepared with :func:`prepare_stored_task` (slices in
    ``store``, default RAM); without replay only their held-out cases are read (to measure forgetting).

    Raises:
        LabelSharingError: a task's dataset folder is missing and ``replay > 0``.
    """
    prepared, missing, federated = [], [], []
    for task_name, entry in parent.config["tasks"].items():
        if task_name == skip:
            continue
        folder = entry.get("dataset")
        if str(folder).startswith("federated:"):  # labelsharing.federated's site_task_label: no folder here
            federated.append(f"{task_name} (trained federatedly at {folder[len('federated:'):].split('/')[0]})")
            continue
        if not folder or not (Path(folder) / "dataset.json").is_file():
            missing.append(f"{task_name} ({folder or 'no folder recorded'})")
            continue
        prepared.append(prepare_stored_task(parent, read_task_dataset(folder), plan,
                                            validation_only=replay == 0, store=store))  # not replayed: only measured
    if federated and replay > 0:
        raise LabelSharingError(
            f"Replay needs the other tasks' training data, but these tasks' images stay at their sites: "
            f"{', '.join(federated)}. Pass --replay 0 (forgetting is then not guarded against).")
    missing += federated
    if missing and replay > 0:
        raise LabelSharingError(
            "Replay needs the other tasks' training data, but these dataset folders are missing: "
            f"{', '.join(missing)}. Restore them at those paths, or pass --replay 0 (forgetting is then not "
            "guarded against)."
        )
    if missing:
        log(f"warning: task data not found ({', '.join(missing)}); their Dice before/after cannot be measured.")
    return prepared


def _split_options(history: list, task_name: str) -> tuple[float, int]:
    """``(val_fraction, seed)`` of the run that first trained ``task_name``: how models written
    before ``validation_cases`` was stored drew that task's split."""
    for record in history:
        if task_name in record.get("tasks", ()):
            options = record.get("options", {})
            return options.get("val_fraction", 0.2), options.get("seed", 0)
    return 0.2, 0


def forgetting_table(forgetting: Mapping[str, Mapping[str, float]], new_task: str = "", updated_task: str = "") -> str:
    """Dice per task before and after adding ``new_task`` or updating ``updated_task`` (mean over held-out cases)."""
    marks = {task: mark for task, mark in ((new_task, " (new)"), (updated_task, " (updated)")) if task}
    rows = [[task + marks.get(task, ""), f"{d['before']:.3f}", f"{d['after']:.3f}",
             f"{d['after'] - d['before']:+.3f}"] for task, d in forgetting.items()]
    action = "the update" if updated_task else "adding the task"
    return f"Dice on held-out cases, before -> after {action}\n" + format_table(["task", "before", "after", "change"],
                                                                               rows)
