"""The training loop: one shared-label network trained on the pooled slices of all its tasks.

All tasks' slices are pooled with shared labels and drawn with task-balanced weights, a batch
at a time, and augmented as one tensor on the training device (:mod:`labelsharing.train.augmentation`);
the loss is Dice + cross-entropy (MONAI ``DiceCELoss``; a sub-task of a task split by overlapping
segments leaves its siblings' shared labels out of the softmax, :mod:`labelsharing.plan.layer_split`,
so a voxel may be a label of each sub-task), the optimiser AdamW with MONAI's linear
warm-up then cosine decay (``WarmupCosineSchedule``). Validated epochs end with Dice per task and
label on held-out cases, computed by the same :class:`~labelsharing.infer.predictor.Predictor`
that inference uses, and the weights of the best epoch are kept (:mod:`labelsharing.train.selection`).
Every epoch is validated unless the held-out cases hold many slices: then every N-th
(:func:`~labelsharing.train.validation.validation_interval`), so that validation does not
dominate the run.

Nothing is lost to an interruption: every epoch ends with a checkpoint in the run's working
folder (:mod:`labelsharing.train.checkpoint`), and the next run with that folder continues from
it with the same result as an uninterrupted run. A loss that becomes NaN or infinite stops the
run with an error.

Under ``torchrun`` (:mod:`labelsharing.train.distributed`) every process trains a
``DistributedDataParallel`` copy on its own draws (batch size per process, each epoch split
between the processes); only the main process validates, logs, keeps the best weights and
checkpoints.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Mapping, Sequence

import numpy as np

from labelsharing.errors import LabelSharingError
from labelsharing.model import SegmentationModel
from labelsharing.train.augmentation import augment_batch
from labelsharing.train.checkpoint import RunFolder, epoch_seed, restore_trainer, trainer_checkpoint
from labelsharing.train.distributed import DistributedContext, main_process_output
from labelsharing.train.options import Log, TrainingOptions
from labelsharing.train.selection import FitResult
from labelsharing.train.task_data import PooledSlices, PreparedTask, sampling_weights
from labelsharing.train.validation import validation_dice, validation_interval
from labelsharing.utils import SILENT, ProgressReporter

__all__ = ["Trainer", "epochs_for_budget"]


class Trainer:
    """Trains ``model.network`` in place on the pooled slices of ``tasks`` and keeps the best weights.

    Extension points, as in nnU-Net's trainer variants: a subclass overrides :meth:`forward` (how
    the network is called, e.g. a task-conditioned baseline that is given each slice's task) or
    :meth:`make_predictor` (what validates, e.g. a timed predictor); sampling, loss, optimiser,
    schedule, checkpoints and epoch selection stay the engine's.

    Args:
        model: network and config (the config's ``tasks`` entries drive validation).
        tasks: prepared tasks; their ``validation`` cases give the Dice of validated epochs.
        options: epochs, steps, batch size (per process), learning rate, seed, time budget.
        device: torch device.
        shares: fraction of draws per task (default: equal), e.g. for replay when adding a task.
        select_on: tasks whose mean validation Dice, smoothed over the epochs, picks the best
            epoch (default: all tasks with validation cases). ``add_task`` without replay selects
            on the new task alone. If none of them has validation cases, the last epoch is kept.
        context: the torchrun launch (default: one process). With several processes the network
            trains wrapped in ``DistributedDataParallel``; each process makes the epoch's steps on
            its own draws (seeded by seed, rank and epoch); only the main process validates, logs
            and keeps the best weights (the others return the last weights).
        run: the run's working folder: a checkpoint is written there after every epoch (main
            process), and training continues after the checkpoint found there, if any.
        part: ``(epochs before, epochs in all)`` when this fit is one stretch of a longer run (a
            federated round: :mod:`labelsharing.federated`): it trains the epochs ``before + 1`` to
            ``before + options.epochs`` of a run of ``epochs in all`` epochs, so that the warm-up and
            cosine decay follow the whole run's steps (not restarted every round) and each epoch
            draws its own batches (its seed is the whole run's epoch number). The optimiser's state
            starts afresh. Not with ``run`` or a time budget.
    """

    def __init__(self, model: SegmentationModel, tasks: Sequence[PreparedTask], options: TrainingOptions, device, *,
                 shares: Mapping[str, float] | None = None, select_on: Sequence[str] | None = None,
                 context: DistributedContext | None = None, run: RunFolder | None = None,
                 part: tuple[int, int] | None = None, progress: ProgressReporter = SILENT, log: Log = print) -> None:
        self.model, self.tasks, self.options, self.device = model, list(tasks), options, device
        self.shares, self.run = shares, run
        if part is not None and (run is not None or options.time_budget is not None
                                 or not 0 <= part[0] <= part[1] - options.epochs):
            raise ValueError(f"part {part} of a run: needs no run folder, no time budget, and room for "
                             f"{options.epochs} epochs")
        self.part = part
        self.context = context or DistributedContext(device)
        self.progress, self.log = main_process_output(self.context, progress, log)
        self.selectable = [t.name for t in self.tasks if t.validation and (select_on is None or t.name in select_on)]

    # ------------------------------------------------------------------------- extension points
    def forward(self, network, images, task_indices):
        """``(B, 1, S, S)`` images -> ``(B, n_shared + 1, S, S)`` logits; ``task_indices`` is the (B,)
        index of each slice's task in ``tasks`` (unused by the shared-label network)."""
        return network(images)

    def make_predictor(self):
        """The predictor that validates the model (by default the one inference uses)."""
        from labelsharing.infer import Predictor

        return Predictor(self.model, self.device, remove_islands=False)  # the raw network picks the epoch

    # ------------------------------------------------------------------------------- the loop
    def fit(self) -> FitResult:
        """Train for ``options.epochs`` (or the time budget) and return the best weights and the log.

        Raises:
            LabelSharingError: the loss became NaN or infinite (the run stops at once).
        """
        import torch
        from monai.losses import DiceCELoss
        from monai.optimizers import WarmupCosineSchedule

        options, context, device, network = self.options, self.context, self.device, self.model.network
        trainee = network
        if context.world_size > 1:
            trainee = torch.nn.parallel.DistributedDataParallel(
                network, device_ids=[device.index] if device.type == "cuda" else None)
        self._pooled = PooledSlices(self.tasks)
        self._weights = torch.as_tensor(sampling_weights(self.tasks, self.shares), dtype=torch.double)
        self._generator = torch.Generator()
        self._loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        self._left_out = torch.zeros(len(self.tasks), self.model.plan.n_shared + 1, dtype=torch.bool)
        for index, task in enumerate(self.tasks):
            self._left_out[index, self.model.plan.left_out(task.name)] = True
        self._left_out = self._left_out.to(device) if bool(self._left_out.any()) else None
        self._optimizer = torch.optim.AdamW(network.parameters(), lr=options.learning_rate,
                                            weight_decay=options.weight_decay)
        before, whole = self.part or (0, options.epochs)
        for group in self._optimizer.param_groups:  # a scheduler that starts mid-run reads these
            group.setdefault("initial_lr", group["lr"])
        self._scheduler = WarmupCosineSchedule(self._optimizer, **_schedule_steps(whole, options),
                                               last_epoch=before * options.steps_per_epoch - 1)
        self._use_amp = device.type == "cuda"
        self._scaler = torch.amp.GradScaler("cuda", enabled=self._use_amp)
        result = FitResult(best_state={})
        trainer_state = {"network": network, "optimizer": self._optimizer, "scheduler": self._scheduler,
                         "scaler": self._scaler}
        first_epoch, elapsed = restore_trainer(self.run, trainer_state, result, self.log)
        first_epoch += before
        epochs = result.planned_epochs or before + options.epochs  # a resumed time-budget run keeps its epochs
        if not self.selectable:
            self.log("note: no validation cases to choose the best epoch on; the last epoch's weights are kept.")
        interval = validation_interval(self.tasks, options)
        if interval > 1 and any(t.validation for t in self.tasks):
            self.log(f"validating every {interval} epochs (and the first and last): "
                     f"{sum(t.validation_slices for t in self.tasks)} held-out slices, "
                     f"{options.steps_per_epoch * options.batch_size} trained on an epoch")
        start = time.perf_counter() - elapsed
        with self.progress.track("training", total=epochs * options.steps_per_epoch, unit="step") as advance:
            advance((first_epoch - 1) * options.steps_per_epoch)
            epoch = first_epoch
            while epoch <= epochs:
                loss = self._train_epoch(trainee, epoch, epochs, advance)
                validated = epoch == 1 or epoch % interval == 0 or epoch == epochs
                validation_seconds = self._end_epoch(result, epoch, epochs, loss, validated, start)
                if options.time_budget is not None and epoch == first_epoch == 1:  # the first epoch is validated:
                    typical = time.perf_counter() - start - validation_seconds * (1 - 1 / interval)  # not all are
                    epochs = epochs_for_budget(options.time_budget * 60, context.mean(typical), options, self.log)
                    for name, value in _schedule_steps(epochs, options).items():
                        setattr(self._scheduler, name, value)  # WarmupCosineSchedule reads them at every step
                    advance(0, total=epochs * options.steps_per_epoch)
                result.planned_epochs = epochs
                if context.is_main and self.run is not None:
                    self.run.save(trainer_checkpoint(trainer_state, result, epoch, time.perf_counter() - start),
                                  epoch, epochs)
                epoch += 1
        context.barrier()  # the others wait for the main process's last validation, then all leave together
        result.seconds = time.perf_counter() - start
        if not result.best_state or not context.is_main:  # nothing to select on: the last epoch
            result.best_state = copy.deepcopy(network.state_dict())
            result.best_epoch = epochs
            if context.is_main:
                result.best_dice = float("nan")
        if result.measure_recent_gain(self.selectable) is not None and result.still_improving:
            self.log(f"warning: the validation Dice was still rising at the end (+{result.recent_gain:.3f} over the "
                     "last fifth of the epochs): the model is probably under-trained. Train longer (--epochs or "
                     "--time-budget).")
        return result

    def _train_epoch(self, trainee, epoch: int, epochs: int, advance) -> float:
        """One epoch's optimisation steps; returns the mean loss over every process."""
        import torch

        options, device = self.options, self.device
        _reseed(epoch_seed(options.seed, self.context.rank, epoch), self._generator)
        draws = torch.multinomial(self._weights, options.steps_per_epoch * options.batch_size, replacement=True,
                                  generator=self._generator).numpy()
        trainee.train()
        losses = []
        for step in range(1, options.steps_per_epoch + 1):
            batch = self._pooled.batch(draws[(step - 1) * options.batch_size:step * options.batch_size])
            images, labels = augment_batch(batch["image"].to(device), batch["label"].to(device), self._generator)
            self._optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=self._use_amp):
                task_indices = batch["task"].to(device)
                logits = self.forward(trainee, images, task_indices)
                if self._left_out is not None:  # siblings' shared labels: out of the softmax (fp16-safe logit)
                    logits = logits.masked_fill(self._left_out[task_indices][:, :, None, None], -1e4)
                loss = self._loss(logits, labels)
            value = float(loss.detach())
            if not self._use_amp and not math.isfinite(value):  # AMP's scaler skips such steps itself
                raise _diverged(epoch, step, value, options)
            self._scaler.scale(loss).backward()
            self._scaler.step(self._optimizer)
            self._scaler.update()
            self._scheduler.step()
            losses.append(value)
            advance(epoch=f"{epoch}/{epochs}", loss=float(np.mean(losses[-20:])))
        epoch_loss = self.context.mean(float(np.mean(losses)))  # every process, same place: no desynchronisation
        if not math.isfinite(epoch_loss):
            raise _diverged(epoch, len(losses), epoch_loss, options)
        return epoch_loss

    def _end_epoch(self, result: FitResult, epoch: int, epochs: int, loss: float, validated: bool,
                   start: float) -> float:
        """Validate (main process, if ``validated``), keep the weights if best, record the epoch;
        returns the seconds validation took."""
        if not self.context.is_main:  # validation, best weights and checkpoints are the main process's business
            return 0.0
        self.model.network.eval()
        validation_start = time.perf_counter()
        dice = validation_dice(self.make_predictor(), self.tasks) if validated else {}
        validation_seconds = time.perf_counter() - validation_start
        smoothed = result.smoothed_score(dice, self.selectable)
        improved = result.keep_if_best(self.model.network, dice, self.selectable, smoothed, epoch)
        steps = epoch * self.options.steps_per_epoch
        result.epochs.append({"epoch": epoch, "steps": steps,
                              "images": steps * self.options.batch_size * self.context.world_size,
                              "loss": loss, "val_dice": dice, "val_smoothed": smoothed,
                              "seconds": round(time.perf_counter() - start, 1)})
        self.log(_epoch_line(epoch, epochs, steps, loss, dice, improved))
        return validation_seconds


def epochs_for_budget(budget_seconds: float, first_epoch_seconds: float, options: TrainingOptions, log: Log) -> int:
    """The number of epochs that fits ``budget_seconds``, given the first epoch's time (training,
    and validation shared over the epochs of one validation interval); at least the one made."""
    epochs = max(1, int(budget_seconds // max(first_epoch_seconds, 1e-3)))
    log(f"time budget {budget_seconds / 60:g} min: {epochs} epochs of {options.steps_per_epoch} steps "
        f"(the first took {first_epoch_seconds:.1f} s)")
    return epochs


def _schedule_steps(epochs: int, options: TrainingOptions) -> dict:
    """``WarmupCosineSchedule``'s step counts for a run of ``epochs``: the warm-up is the first
    ``warmup_fraction`` of all optimisation steps (at least one)."""
    total = epochs * options.steps_per_epoch
    return {"warmup_steps": min(total, max(1, int(options.warmup_fraction * total))), "t_total": total}


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
