"""The methods of the paper comparison, each trained and tested on the same data and budget.

Every ``run_*`` function trains one method on task dataset folders and returns a JSON-ready
dict: ``train_seconds`` (``time.perf_counter`` around everything training does: reading,
preprocessing, the epochs with their validation), ``parameters`` and ``test`` (the engine's
:func:`~labelsharing.infer.evaluation.evaluate_model` on each task's test split).

Budget: the label-sharing model makes ``epochs x steps`` optimisation steps of ``batch``
slices, drawn task-balanced, so ``epochs x steps x batch / K`` draws per task. The baselines
that see all tasks (merged, DoDNet) use exactly the engine's sampler and epoch, so the same
draws. A per-task model makes ``epochs x round(steps / K)`` steps, i.e. about the same number
of draws of its task (``budget="joint"``: ``epochs x steps``, K x the cost).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from comparison_models import DynamicHeadNetwork, MergedNetwork, TaskPredictor, allowed_channels, count_parameters, \
    dodnet_plan, merged_plan, task_indices

from labelsharing.data import read_task_dataset
from labelsharing.infer import Predictor, evaluate_model
from labelsharing.model import SegmentationModel, default_architecture, package_versions
from labelsharing.plan import plan_task_datasets
from labelsharing.train import FitResult, Trainer, TrainingOptions, prepare_task, train
from labelsharing.utils import select_device

__all__ = ["run_per_task", "run_label_sharing", "run_merged", "run_dodnet", "run_incremental_base",
           "run_incremental_add", "fit_conditioned"]

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    if not message.startswith("epoch"):
        print(f"    {message}", flush=True)


def _test(predictor, folders: Sequence[Path]) -> dict:
    datasets = [read_task_dataset(f) for f in folders]
    start = time.perf_counter()
    result = evaluate_model(predictor, datasets)["tasks"]
    return {"tasks": result, "seconds": time.perf_counter() - start}


def _prepared(folders: Sequence[Path], options: TrainingOptions, plan_of=None):
    """The engine's preparation (as ``train`` does it), optionally with another label encoding."""
    plan, summaries, _ = plan_task_datasets(folders, log=_quiet)
    method_plan = plan_of(plan) if plan_of else plan
    tasks = [prepare_task(s.task, method_plan, options.input_size, options.val_fraction, options.seed, options.axis)
             for s in summaries]
    return method_plan, tasks


# --------------------------------------------------------------------------- engine methods
def run_label_sharing(folders: Sequence[Path], work: Path, options: TrainingOptions, log: Log = _quiet) -> dict:
    """The engine's ``train`` on all tasks (label sharing)."""
    start = time.perf_counter()
    model = train(folders, work / "label_sharing", options, force=True, log=log)
    seconds = time.perf_counter() - start
    device = select_device(options.device)
    return {"train_seconds": seconds, "parameters": count_parameters(model.network),
            "n_outputs": model.plan.n_shared + 1, "test": _test(Predictor(model, device), folders)}


def run_per_task(folders: Sequence[Path], work: Path, options: TrainingOptions, log: Log = _quiet,
                 budget: str = "task") -> dict:
    """One engine model per task (a one-task label-sharing model is a plain per-task UNet).

    Args:
        budget: ``task``: each model makes ``steps / K`` steps an epoch, as many draws of its task as
            the joint models make (all K models together cost one joint model); ``joint``: each
            model makes as many optimiser steps as one joint model (K x the cost).
    """
    if budget not in ("task", "joint"):
        raise ValueError(f"budget must be 'task' or 'joint', got {budget!r}")
    _, tasks = _prepared(folders, options)
    slices = {t.name: len(t.images) for t in tasks}
    steps = max(1, round(options.steps_per_epoch / (len(tasks) if budget == "task" else 1)))
    draws_per_task = options.epochs * steps * options.batch_size
    device = select_device(options.device)
    result = {"train_seconds": 0.0, "parameters": 0, "test": {"tasks": {}, "seconds": 0.0}, "models": {}}
    for folder, task in zip(folders, tasks):
        epochs = options.epochs
        task_options = dataclasses.replace(options, steps_per_epoch=steps)
        start = time.perf_counter()
        model = train([folder], work / f"per_task_{task.name}", task_options, force=True, log=log)
        seconds = time.perf_counter() - start
        test = _test(Predictor(model, device), [folder])
        result["train_seconds"] += seconds
        result["parameters"] += count_parameters(model.network)
        result["test"]["tasks"].update(test["tasks"])
        result["test"]["seconds"] += test["seconds"]
        result["models"][task.name] = {"epochs": epochs, "steps_per_epoch": steps, "slices": slices[task.name],
                                       "draws": draws_per_task,
                                       "train_seconds": seconds, "parameters": count_parameters(model.network),
                                       "outputs": model.plan.n_shared + 1}
        log(f"per-task {task.name}: {epochs} epochs x {steps} steps ({slices[task.name]} slices), {seconds:.0f} s")
    result["draws_per_task_target"] = draws_per_task
    result["per_task_budget"] = budget
    result["n_outputs"] = "+".join(str(m["outputs"]) for m in result["models"].values())
    return result


def run_incremental_base(folders: Sequence[Path], work: Path, options: TrainingOptions, log: Log = _quiet) -> dict:
    """``train`` on tasks 1..K-1; the model is kept in ``work/incremental_base`` for the add step."""
    start = time.perf_counter()
    model = train(folders[:-1], work / "incremental_base", options, force=True, log=log)
    seconds = time.perf_counter() - start
    device = select_device(options.device)
    return {"train_seconds": seconds, "parameters": count_parameters(model.network),
            "n_outputs": model.plan.n_shared + 1, "test": _test(Predictor(model, device), folders[:-1])}


def run_incremental_add(folders: Sequence[Path], work: Path, options: TrainingOptions, replay: float,
                        log: Log = _quiet) -> dict:
    """``add_task`` of task K onto the base model, with ``replay`` of old-task slices per batch."""
    from labelsharing.train import add_task

    out = work / f"incremental_replay_{replay:g}"
    start = time.perf_counter()
    model = add_task(work / "incremental_base", folders[-1], out, options, replay=replay, force=True, log=log)
    seconds = time.perf_counter() - start
    device = select_device(options.device)
    history = model.config.get("history", [])
    last = {k: v for k, v in history[-1].items() if k != "epochs"} if history else {}
    return {"train_seconds": seconds, "parameters": count_parameters(model.network),
            "n_outputs": model.plan.n_shared + 1, "replay": replay,
            "test": _test(Predictor(model, device), folders), "add_task_history": last}


# --------------------------------------------------------------------------- baselines
def run_merged(folders: Sequence[Path], work: Path, options: TrainingOptions, log: Log = _quiet) -> dict:
    """Merged multi-channel model: one channel per label of every task, loss on the task's own."""
    return _run_conditioned("merged", folders, options, log)


def run_dodnet(folders: Sequence[Path], work: Path, options: TrainingOptions, log: Log = _quiet) -> dict:
    """DoDNet-style model: task code -> controller -> dynamic 1x1-conv head on decoder features."""
    return _run_conditioned("dodnet", folders, options, log)


def _run_conditioned(kind: str, folders: Sequence[Path], options: TrainingOptions, log: Log) -> dict:
    device = select_device(options.device)
    start = time.perf_counter()
    plan, tasks = _prepared(folders, options, merged_plan if kind == "merged" else dodnet_plan)
    torch.manual_seed(options.seed)
    allowed = allowed_channels(plan)
    if kind == "merged":
        architecture = default_architecture(plan.n_shared + 1, options.features)
        network = MergedNetwork(architecture, allowed)
    else:
        architecture = default_architecture(options.features, options.features)
        network = DynamicHeadNetwork(architecture, allowed)
    # Not a model.json, so not from model_folder.build_model_config: the merged plan (one channel per
    # label of every task) and DoDNet's feature head break the shared-label schema by design. This
    # in-memory config only tells TaskPredictor the tasks and labels; it is never written.
    config = {"architecture": architecture, "input_size": [options.input_size] * 2, "plan": plan.to_dict(),
              "tasks": {t.name: t.model_entry(plan) for t in tasks}, "history": [], "parent": None,
              "versions": package_versions()}
    model = SegmentationModel(config=config, network=network.to(device))
    index = task_indices(plan.task_names)
    fitted = fit_conditioned(model, tasks, options, device, index, log)
    model.network.load_state_dict(fitted.best_state)
    seconds = time.perf_counter() - start
    log(f"{kind}: best epoch {fitted.best_epoch}, validation Dice {fitted.best_dice:.3f}")
    return {"train_seconds": seconds, "parameters": count_parameters(network), "n_outputs": plan.n_shared + 1,
            "best_epoch": fitted.best_epoch, "test": _test(TaskPredictor(model, device, index), folders)}


class ConditionedTrainer(Trainer):
    """The engine's trainer with the task passed to the network (same sampler, loss, optimiser,
    schedule and best-epoch selection on validation Dice); only ``network(images, task)`` differs."""

    def __init__(self, model: SegmentationModel, tasks, options: TrainingOptions, device, task_index, log: Log):
        super().__init__(model, tasks, options, device, log=log)
        self.task_index = task_index
        # the dataset's task index follows ``tasks``; the network's follows the plan's task order
        self.order = torch.as_tensor([task_index[t.name] for t in tasks], dtype=torch.long, device=device)

    def forward(self, network, images, task_indices):
        return network(images, self.order[task_indices])

    def make_predictor(self):
        return TaskPredictor(self.model, self.device, self.task_index)


def fit_conditioned(model: SegmentationModel, tasks, options: TrainingOptions, device, task_index,
                    log: Log = _quiet) -> FitResult:
    """Train a task-conditioned baseline with :class:`ConditionedTrainer`."""
    return ConditionedTrainer(model, tasks, options, device, task_index, log).fit()


