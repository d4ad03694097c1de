"""Training one shared-label UNet on all tasks.

All tasks' slices are pooled with shared labels and drawn with task-balanced weights, a batch
at a time, and augmented as one tensor on the training device (:mod:`labelsharing.train.augmentation`);
the loss is Dice + cross-entropy (MONAI ``DiceCELoss``), the optimiser AdamW with a linear
warm-up then cosine decay. Validated epochs end with Dice per task and label on held-out cases,
computed by the same :class:`~labelsharing.infer.predictor.Predictor` that inference uses, and the
weights of the best epoch are kept, chosen on the smoothed curve of the mean Dice over tasks
(:data:`SELECTION_SMOOTHING`). Every epoch is validated unless the held-out
cases hold many slices: then every N-th (:func:`validation_interval`), so that validation does
not dominate the run. The model folder is written only at the end.

Nothing is lost to an interruption: every epoch ends with a checkpoint in the run's working
folder (:mod:`labelsharing.train.checkpoint`), and ``resume=True`` continues from it with the same
result as an uninterrupted run. A loss that becomes NaN or infinite stops the run with an error;
a model whose weights are not finite is never written.

Under ``torchrun`` (see :mod:`labelsharing.train.distributed`) every process trains a
``DistributedDataParallel`` copy on its own draws (batch size per process, each epoch split
between the processes); only the main process validates, logs, keeps the best weights and writes.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from labelsharing.train.augmentation import augment_batch
from labelsharing.train.checkpoint import RunFolder, claim_output, epoch_seed, restore_trainer, run_options, \
    trainer_checkpoint
from labelsharing.train.distributed import DistributedContext, start_distributed
from labelsharing.errors import LabelSharingError
from labelsharing.data.image_io import read_image_header
from labelsharing.model.network import SegmentationModel, build_network, default_architecture, label_color, package_versions
from labelsharing.model.folder import build_model_config
from labelsharing.data.orientation import plan_slicing
from labelsharing.plan.shared_labels import SharedLabelPlan
from labelsharing.plan.planner import plan_task_datasets
from labelsharing.data.preprocessing import choose_input_size
from labelsharing.utils.progress import SILENT, ProgressReporter
from labelsharing.train.slice_store import DEFAULT_SLICE_MEMORY_MB, SliceStore
from labelsharing.train.task_data import PooledSlices, PreparedTask, prepare_task, sampling_weights
from labelsharing.train.validation import validation_dice, validation_interval

__all__ = ["TrainingOptions", "FitResult", "train", "fit", "task_config", "validation_dice", "validation_interval",
           "main_process_output", "describe_processes"]

Log = Callable[[str], None]


@dataclass
class TrainingOptions:
    """Settings of a training run (the command line's flags).

    Training is counted in optimisation steps, as nnU-Net does: an epoch is ``steps_per_epoch``
    steps of ``batch_size`` slices drawn task-balanced from the pooled training slices (whatever
    the data set's size), followed by validation. Under ``torchrun`` every process makes these
    steps with its own draws (``batch_size`` is per process). ``time_budget`` (minutes), if given,
    replaces ``epochs``: the number of epochs is fitted to the time after the first epoch.
    ``val_every`` validates every that many epochs (and the first and last); default: see
    :func:`validation_interval`. ``slice_memory_mb``: the training slices kept in RAM; those
    beyond go to a memory-mapped file in the run's working folder
    (:class:`~labelsharing.train.slice_store.SliceStore`); results do not depend on it.
    """

    epochs: int = 25
    steps_per_epoch: int = 50
    time_budget: float | None = None
    batch_size: int = 16
    input_size: int | None = None
    features: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    val_fraction: float = 0.2
    device: str = "auto"
    seed: int = 0
    axis: int | None = None
    val_every: int | None = None
    slice_memory_mb: float = DEFAULT_SLICE_MEMORY_MB

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.features < 1 or self.steps_per_epoch < 1:
            raise LabelSharingError("--epochs, --steps-per-epoch, --batch-size and --features must be at least 1.")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise LabelSharingError(f"--time-budget must be a positive number of minutes, got {self.time_budget}.")
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate <= 1):
            raise LabelSharingError(f"--lr must be a number in (0, 1], got {self.learning_rate}; "
                                    "AdamW is usually run at 1e-4 to 1e-2.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise LabelSharingError(f"weight decay must be a finite number >= 0, got {self.weight_decay}.")
        if not 0 <= self.warmup_fraction < 1:
            raise LabelSharingError(f"warm-up fraction must lie in [0, 1), got {self.warmup_fraction}.")
        if not 0 <= self.seed < 2**32:
            raise LabelSharingError(f"--seed must be an integer in [0, 2**32), got {self.seed}.")
        if self.input_size is not None and (self.input_size < 16 or self.input_size % 16):
            raise LabelSharingError(f"--input-size must be a multiple of 16 (the UNet halves it 4 times), "
                                    f"got {self.input_size}.")
        if not 0 <= self.val_fraction < 1:
            raise LabelSharingError(f"--val-fraction must lie in [0, 1), got {self.val_fraction}.")
        if self.val_every is not None and self.val_every < 1:
            raise LabelSharingError(f"--val-every must be at least 1, got {self.val_every}.")
        if not (math.isfinite(self.slice_memory_mb) and self.slice_memory_mb >= 0):
            raise LabelSharingError(f"--slice-memory must be a number of MB >= 0, got {self.slice_memory_mb}.")


@dataclass
class FitResult:
    """What :func:`fit` learnt: the best weights and the per-epoch log."""

    best_state: dict
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_dice: float = float("nan")
    seconds: float = 0.0
    planned_epochs: int = 0
    recent_gain: float | None = None


def task_config(task: PreparedTask, plan: SharedLabelPlan) -> dict:
    """The ``model.json`` entry of a task: preprocessing, labels, colours, source folder."""
    labels = {
        name: {"value": a.value, "shared": a.shared,
               "color": list(task.dataset.colors.get(name, label_color(a.shared)))}
        for name, a in plan.labels(task.name).items()
    }
    for name, entry in task.dataset.terminology.items():
        labels[name]["terminology"] = entry
    return {"modality": task.modality, **task.slicing.to_config(), "normalization": task.normalization,
            "labels": labels, "dataset": str(Path(task.dataset.root).resolve()),
            "validation_cases": list(task.validation_ids)}


def train(
    datasets: Sequence[str | Path],
    out: str | Path,
    options: TrainingOptions | None = None,
    pins: Mapping[str, Mapping[str, int]] | None = None,
    force: bool = False,
    progress: ProgressReporter = SILENT,
    log: Log = print,
    resume: bool = False,
    command: Sequence[str] | None = None,
) -> SegmentationModel:
    """Train one shared-label model on several task datasets and write it to ``out``.

    Under ``torchrun`` every process calls this; the main process writes ``out`` and the others
    return (with the last epoch's weights) once it is written.

    Args:
        resume: continue the interrupted run into ``out`` from its last checkpoint; the datasets,
            options and pins must be the interrupted run's.
        command: the command-line arguments of this run, recorded so that an interrupted run
            can say how to resume it (default: the Python call with ``resume=True``).

    Raises:
        LabelSharingError: ``out`` exists (without ``force``), is or holds a dataset, cannot be
            written, is being written by another process; a leftover working folder of an
            interrupted run (without ``resume``); invalid datasets or pins.
    """
    options = options or TrainingOptions()
    out = Path(out)
    identity = {"command": "train", "datasets": [str(Path(d).resolve()) for d in datasets],
                "options": run_options(options), "pins": pins}
    with claim_output(out, datasets, force, identity, resume, command) as run:
        context = start_distributed(options.device)
        try:
            return _train(datasets, out, options, pins, force, context, run, resume,
                          *main_process_output(context, progress, log))
        finally:
            context.close()


def main_process_output(context: DistributedContext, progress: ProgressReporter, log: Log) -> tuple[ProgressReporter, Log]:
    """Progress and messages of the main process; the other processes stay quiet."""
    return (progress, log) if context.is_main else (SILENT, lambda message: None)


def describe_processes(context: DistributedContext) -> str:
    """``device: ...`` line, with the number of processes and the backend under torchrun."""
    from labelsharing.utils.device import describe_device

    text = f"device: {describe_device(context.device)}"
    if context.world_size > 1:
        text += f" in each of {context.world_size} processes ({context.backend})"
    return text


def _train(datasets, out: Path, options: TrainingOptions, pins, force: bool, context: DistributedContext,
           run: RunFolder, resume: bool, progress: ProgressReporter, log: Log) -> SegmentationModel:
    import torch

    device = context.device
    with context.together():  # the working folder first: slices beyond --slice-memory are kept there
        if context.is_main and not resume:
            run.start()
    with run.removed_on_failure(context.is_main and not resume), context.together():
        plan, summaries, appearance = plan_task_datasets(datasets, pins, progress, log)
        log(describe_processes(context))
        input_size = options.input_size or _default_input_size([s.task for s in summaries], options.axis)
        store = SliceStore(run.folder, options.slice_memory_mb)
        tasks = [prepare_task(s.task, plan, input_size, options.val_fraction, options.seed, options.axis, store=store)
                 for s in summaries]
        log(f"{sum(len(t.images) for t in tasks)} training slices of {input_size}x{input_size} from "
            f"{len(tasks)} tasks ({store.describe()}); {plan.n_shared} shared labels")

    torch.manual_seed(options.seed)
    architecture = default_architecture(plan.n_shared + 1, options.features)
    network = build_network(architecture).to(device)
    config = build_model_config(architecture, input_size, plan, {t.name: task_config(t, plan) for t in tasks},
                                parameters=sum(p.numel() for p in network.parameters()), versions=package_versions(),
                                appearance=appearance.to_dict())
    model = SegmentationModel(config=config, network=network)
    result = fit(model, tasks, options, device, progress=progress, log=log, context=context, run=run)
    with context.together():  # the others wait for the main process to write (and hear if it fails)
        if context.is_main:
            model.network.load_state_dict(result.best_state)
            config["history"].append(history_entry("train", options, device, result, [t.name for t in tasks],
                                                   context.world_size))
            model.save(out, overwrite=force, inputs=datasets)
            run.remove()
            log(f"model written to {out} (best epoch {result.best_epoch}, mean validation Dice "
                f"{result.best_dice:.3f}, {result.seconds:.0f} s)")
    return model


def history_entry(kind: str, options: TrainingOptions, device, result: FitResult, tasks: Sequence[str],
                  processes: int = 1) -> dict:
    """A ``model.json`` history record of one training run (``processes``: torchrun world size)."""
    return {
        "kind": kind, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "tasks": list(tasks),
        "device": str(device), "processes": processes, "seconds": round(result.seconds, 1),
        "best_epoch": result.best_epoch,
        "best_mean_dice": result.best_dice, "options": dict(vars(options)),
        "steps": result.planned_epochs * options.steps_per_epoch,
        "images": result.planned_epochs * options.steps_per_epoch * options.batch_size * processes,
        "still_improving": result.recent_gain is not None and result.recent_gain > STILL_IMPROVING,
        "recent_gain": result.recent_gain,
        "epochs": result.epochs,
    }


def _default_input_size(tasks: Sequence, axis: int | None) -> int:
    """Per task, the median longer side of its slices at its target spacing (from the files'
    headers); see :func:`choose_input_size`."""
    per_task = []
    for task in tasks:
        headers = [read_image_header(case.image) for case in task.training]
        slicing = plan_slicing(headers, axis)
        sides = [max(slicing.resampled_shape(header)) for header in headers]
        per_task.append((int(np.median(sides)),) * 2)
    return choose_input_size(per_task)


def fit(
    model: SegmentationModel,
    tasks: Sequence[PreparedTask],
    options: TrainingOptions,
    device,
    shares: Mapping[str, float] | None = None,
    progress: ProgressReporter = SILENT,
    log: Log = print,
    context: DistributedContext | None = None,
    select_on: Sequence[str] | None = None,
    forward: Callable | None = None,
    predictor_factory: Callable | None = None,
    run: RunFolder | None = None,
) -> FitResult:
    """Train ``model.network`` in place on the pooled slices of ``tasks``; keep the best weights.

    Args:
        model: network and config (the config's ``tasks`` entries drive validation).
        tasks: prepared tasks; their ``validation`` cases give the Dice of validated epochs
            (every epoch, or every N-th: :func:`~labelsharing.train.validation.validation_interval`).
        options: epochs, batch size (per process), learning rate, seed.
        device: torch device.
        shares: fraction of draws per task (default: equal), e.g. for replay when adding a task.
        context: the torchrun launch (default: one process). With several processes the network
            trains wrapped in ``DistributedDataParallel``; each process makes the epoch's steps on
            its own draws (seeded by seed, rank and epoch); only the main process validates, logs
            and keeps the best weights (the others return the last weights). Every process
            returns together.
        select_on: tasks whose mean validation Dice, smoothed over the epochs, picks the best
            epoch (default: all tasks with validation cases). ``add_task`` without replay selects
            on the new task alone. If none of them has validation cases, the last epoch is kept.
        forward: ``forward(network, images, task_indices) -> logits`` with ``task_indices`` the
            (B,) index of each slice's task in ``tasks``; default ``network(images)``. Lets
            task-conditioned baselines (benchmarks/) train with exactly this loop.
        predictor_factory: ``(model, device) -> Predictor`` used for validation (default
            :class:`~labelsharing.infer.predictor.Predictor`).
        run: the run's working folder: a checkpoint is written there after every epoch (main
            process), and training continues after the checkpoint found there, if any.

    Raises:
        LabelSharingError: the loss became NaN or infinite (the run stops at once).
    """
    import torch
    from monai.losses import DiceCELoss

    context = context or DistributedContext(device)
    progress, log = main_process_output(context, progress, log)
    network = model.network
    trainee = network
    if context.world_size > 1:
        trainee = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None)
    pooled = PooledSlices(tasks)
    weights = torch.as_tensor(sampling_weights(tasks, shares), dtype=torch.double)
    generator = torch.Generator()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    optimizer = torch.optim.AdamW(network.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    schedule = _Schedule(options.epochs, options.steps_per_epoch, options.warmup_fraction)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    selectable = [t.name for t in tasks if t.validation and (select_on is None or t.name in select_on)]
    result = FitResult(best_state={})
    trainer_state = {"network": network, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    first_epoch, elapsed = restore_trainer(run, trainer_state, result, log)
    if result.planned_epochs:
        schedule.epochs = result.planned_epochs  # a resumed time-budget run keeps the epochs it chose
    if not selectable:
        log("note: no validation cases to choose the best epoch on; the last epoch's weights are kept.")
    interval = validation_interval(tasks, options)
    if interval > 1 and any(t.validation for t in tasks):
        log(f"validating every {interval} epochs (and the first and last): {sum(t.validation_slices for t in tasks)} "
            f"held-out slices, {options.steps_per_epoch * options.batch_size} trained on an epoch")
    images_per_step = options.batch_size * context.world_size
    start = time.perf_counter() - elapsed
    with progress.track("training", total=schedule.total, unit="step") as advance:
        advance((first_epoch - 1) * options.steps_per_epoch)
        epoch = first_epoch
        while epoch <= schedule.epochs:
            _reseed(epoch_seed(options.seed, context.rank, epoch), generator)
            draws = torch.multinomial(weights, options.steps_per_epoch * options.batch_size, replacement=True,
                                      generator=generator).numpy()
            trainee.train()
            losses = []
            for step in range(1, options.steps_per_epoch + 1):
                batch = pooled.batch(draws[(step - 1) * options.batch_size:step * options.batch_size])
                images, labels = augment_batch(batch["image"].to(device), batch["label"].to(device), generator)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    logits = trainee(images) if forward is None else forward(trainee, images, batch["task"].to(device))
                    loss = loss_fn(logits, labels)
                value = float(loss.detach())
                if not use_amp and not math.isfinite(value):  # AMP's scaler skips such steps itself
                    raise _diverged(epoch, step, value, options)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                losses.append(value)
                advance(epoch=f"{epoch}/{schedule.epochs}", loss=float(np.mean(losses[-20:])))
            epoch_loss = context.mean(float(np.mean(losses)))  # every process, same place: no desynchronisation
            if not math.isfinite(epoch_loss):
                raise _diverged(epoch, len(losses), epoch_loss, options)
            validation_seconds, dice = 0.0, {}
            validated = epoch == 1 or epoch % interval == 0 or epoch == schedule.epochs
            if context.is_main:  # validation, best weights and checkpoints are the main process's business
                network.eval()
                validation_start = time.perf_counter()
                dice = validation_dice(model, tasks, device, predictor_factory) if validated else {}
                validation_seconds = time.perf_counter() - validation_start
                smoothed = _smoothed_score(result.epochs, dice, selectable)
                improved = _keep_if_best(result, network, dice, selectable, smoothed, epoch)
                steps = epoch * options.steps_per_epoch
                result.epochs.append({"epoch": epoch, "steps": steps, "images": steps * images_per_step,
                                      "loss": epoch_loss, "val_dice": dice, "val_smoothed": smoothed,
                                      "seconds": round(time.perf_counter() - start, 1)})
                log(_epoch_line(epoch, schedule.epochs, steps, epoch_loss, dice, improved))
            if options.time_budget is not None and epoch == first_epoch == 1:  # the first epoch is validated:
                typical = time.perf_counter() - start - validation_seconds * (1 - 1 / interval)  # ... not all are
                schedule.fit_to_budget(options.time_budget * 60, context.mean(typical), log)
                advance(0, total=schedule.total)
            result.planned_epochs = schedule.epochs
            if context.is_main and run is not None:
                run.save(trainer_checkpoint(trainer_state, result, epoch, time.perf_counter() - start), epoch,
                         schedule.epochs)
            epoch += 1
    context.barrier()  # the others wait for the main process's last validation, then all leave together
    result.seconds = time.perf_counter() - start
    if not result.best_state or not context.is_main:  # nothing to select on: the last epoch
        result.best_state = copy.deepcopy(network.state_dict())
        result.best_epoch = schedule.epochs
        if context.is_main:
            result.best_dice = float("nan")
    result.recent_gain = _recent_gain(result.epochs, selectable)
    if result.recent_gain is not None and result.recent_gain > STILL_IMPROVING:
        log(f"warning: the validation Dice was still rising at the end (+{result.recent_gain:.3f} over the last "
            "fifth of the epochs): the model is probably under-trained. Train longer (--epochs or --time-budget).")
    return result


#: Gain of mean validation Dice, last fifth of the epochs over the fifth before, that counts as
#: "still rising steeply" at the end of a run.
STILL_IMPROVING = 0.01


@dataclass
class _Schedule:
    """Linear warm-up then cosine decay over ``epochs x steps`` optimisation steps; the number of
    epochs may be fitted to a time budget after the first epoch."""

    epochs: int
    steps: int
    warmup_fraction: float

    @property
    def total(self) -> int:
        return self.epochs * self.steps

    def factor(self, step: int) -> float:
        """Learning-rate factor of optimisation ``step`` (0-based)."""
        warmup = max(1, int(self.warmup_fraction * self.total))
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / self.total)))

    def fit_to_budget(self, budget_seconds: float, first_epoch_seconds: float, log: Log) -> None:
        """Choose the number of epochs that fits ``budget_seconds``, given the first epoch's time
        (training, and validation shared over the epochs of one validation interval)."""
        self.epochs = max(1, int(budget_seconds // max(first_epoch_seconds, 1e-3)))
        log(f"time budget {budget_seconds / 60:g} min: {self.epochs} epochs of {self.steps} steps "
            f"(the first took {first_epoch_seconds:.1f} s)")


#: Weight of the newest epoch in the smoothed validation score that picks the written epoch. A
#: validation split of one or two cases swings by 0.2-0.5 Dice between epochs (issue 9's real-data
#: check), so the raw maximum is often one lucky early epoch; nnU-Net v2 picks its best checkpoint
#: on the same exponential moving average (0.9 old + 0.1 new) of its validation Dice.
SELECTION_SMOOTHING = 0.1


def _smoothed_score(epochs: Sequence[Mapping], dice: Mapping[str, dict], selectable: Sequence[str]) -> float | None:
    """Exponential moving average of the selectable tasks' mean validation Dice, this epoch included
    (``None`` if this epoch has no score: nothing to select on)."""
    scores = [dice[task]["mean"] for task in selectable if task in dice]
    if not scores:
        return None
    previous = next((e["val_smoothed"] for e in reversed(epochs) if e.get("val_smoothed") is not None), None)
    score = float(np.mean(scores))
    return score if previous is None else (1 - SELECTION_SMOOTHING) * previous + SELECTION_SMOOTHING * score


def _keep_if_best(result: FitResult, network, dice: Mapping[str, dict], selectable: Sequence[str],
                  smoothed: float | None, epoch: int) -> bool:
    """Keep ``network``'s weights in ``result`` if the smoothed validation score beats every earlier
    epoch's (``result.epochs``, this one not yet in it); the recorded ``best_dice`` is that
    epoch's own mean validation Dice of the selectable tasks."""
    earlier = [e["val_smoothed"] for e in result.epochs if e.get("val_smoothed") is not None]
    if smoothed is None or smoothed <= max(earlier, default=-math.inf):
        return False
    result.best_epoch = epoch
    result.best_dice = float(np.mean([dice[task]["mean"] for task in selectable if task in dice]))
    result.best_state = copy.deepcopy(network.state_dict())
    return True


def _recent_gain(epochs: Sequence[Mapping], selectable: Sequence[str]) -> float | None:
    """Mean validation Dice of the last fifth of the epochs minus that of the fifth before it
    (``None`` with fewer than 4 epochs or no validation)."""
    curve = [float(np.mean([e["val_dice"][t]["mean"] for t in selectable if t in e["val_dice"]]))
             for e in epochs if any(t in e["val_dice"] for t in selectable)]
    if len(curve) < 4:
        return None
    window = max(1, len(curve) // 5)
    return float(np.mean(curve[-window:]) - np.mean(curve[-2 * window:-window]))


def _reseed(seed: int, generator) -> None:
    """Seed every random stream of one epoch (draws and augmentation, torch) from ``seed``."""
    import torch

    generator.manual_seed(seed)
    torch.manual_seed(seed)


def _diverged(epoch: int, step: int, value: float, options: TrainingOptions) -> LabelSharingError:
    return LabelSharingError(
        f"Training stopped at epoch {epoch}, step {step}: the loss became {value}. The learning rate is probably too "
        f"high for these data (--lr {options.learning_rate:g}); train again with a lower --lr (e.g. "
        f"{options.learning_rate / 4:g}). Nothing was written."
    )


def _epoch_line(epoch: int, epochs: int, steps: int, loss: float, dice: Mapping[str, dict], improved: bool) -> str:
    parts = [f"epoch {epoch:>3}/{epochs}", f"step {steps}", f"loss {loss:.3f}"]
    if dice:
        parts.append("val Dice " + "  ".join(f"{task} {d['mean']:.3f}" for task, d in dice.items()))
        parts.append(f"mean {np.mean([d['mean'] for d in dice.values()]):.3f}")
    return " | ".join(parts) + ("  *best*" if improved else "")
