"""What a federated site computes on its own data; only numbers and weights leave it.

A site (a hospital's SuperNode) holds one or more task datasets. It answers the coordinator in
three ways, each a plain function here (no Flower), so that the same code runs under Flower's
ClientApp (:mod:`labelsharing.federated.flower_apps`) and in tests:

* :func:`site_statistics`: per task the label names, values, average relative sizes and presence
  (:class:`~labelsharing.plan.LabelStats`, what ``plan`` measures), terminology, colours, modality,
  the median slice side and the number of cases. No image, label map or thumbnail: the
  coordinator plans without the look-alike check, which needs images.
* :func:`prepare_site`: the site's tasks prepared for training under the coordinator's plan
  (:func:`labelsharing.train.prepare_task`) and their ``model.json`` entries.
* :func:`train_locally` / :func:`evaluate_locally`: local epochs of the engine's own
  :class:`~labelsharing.train.Trainer` (task-balanced sampling over the site's tasks, same loss;
  the learning-rate schedule and the epochs' seeds those of the whole federated run, a round
  being one stretch of it), optionally with FedProx's proximal term; Dice per task on the
  held-out cases.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

from labelsharing.errors import LabelSharingError
from labelsharing.model import SegmentationModel, build_network
from labelsharing.plan import SharedLabelPlan, summarise_tasks
from labelsharing.train import PreparedTask, Trainer, TrainingOptions, prepare_stored_task, prepare_task, \
    task_slice_side, validation_dice
from labelsharing.utils import select_device

__all__ = ["site_statistics", "prepare_site", "prepare_for_model", "site_model", "train_locally", "evaluate_locally", "site_task_label"]


def site_statistics(folders: Sequence[str | Path], axis: int | None = None) -> list[dict]:
    """Per task of the site, the statistics the coordinator plans from (JSON-ready).

    Returns:
        one dict per task: ``{"name", "modality", "cases", "slice_side", "labels": {name: {"value",
        "relative_size", "presence"}}, "terminology": {name: entry}, "colors": {name: [r, g, b]}}``.
    """
    summaries = summarise_tasks(folders)
    return [{
        "name": s.task.name, "modality": s.task.modality, "cases": len(s.task.training),
        "slice_side": task_slice_side(s.task, axis),
        "labels": {name: dataclasses.asdict(stats) for name, stats in s.stats.items()},
        "terminology": dict(s.task.terminology), "colors": {k: list(v) for k, v in s.task.colors.items()},
    } for s in summaries]


def site_task_label(site: str, task: str) -> str:
    """The ``dataset`` field a federated model stores for a task: the anonymous site id and the
    task name, never the site's folder path."""
    return f"federated:{site}/{task}"


def prepare_site(folders: Sequence[str | Path], plan: SharedLabelPlan, input_size: int, options: TrainingOptions,
                 site: str) -> tuple[list[PreparedTask], dict[str, dict]]:
    """The site's tasks prepared under the coordinator's plan, and their ``model.json`` entries.

    Preparation is repeatable (seeded validation split, fitted normalisation), so every round
    prepares the same slices; the ``dataset`` field names the site anonymously.
    """
    from labelsharing.data import read_task_dataset

    tasks = [prepare_task(read_task_dataset(folder), plan, input_size, options.val_fraction, options.seed, options.axis)
             for folder in folders]
    entries = {}
    for task in tasks:
        entry = task.model_entry(plan)
        entry["dataset"] = site_task_label(site, task.name)
        entries[task.name] = entry
    return tasks, entries


def prepare_for_model(folders: Sequence[str | Path], model: SegmentationModel) -> list[PreparedTask]:
    """The site's tasks prepared as ``model`` stores them (normalisation, slicing, held-out cases:
    :func:`labelsharing.train.prepare_stored_task`), every round the same slices.

    Raises:
        LabelSharingError: a dataset of the site holds a task the model does not know.
    """
    from labelsharing.data import read_task_dataset

    datasets = [read_task_dataset(folder) for folder in folders]
    unknown = [d.name for d in datasets if d.name not in model.config["tasks"]]
    if unknown:
        raise LabelSharingError(f"This site's task(s) {', '.join(unknown)} are not in the coordinator's model; "
                                "restart the site with the datasets it joined with.")
    return [prepare_stored_task(model, dataset, model.plan) for dataset in datasets]


def site_model(config: Mapping, state: Mapping | None, device) -> SegmentationModel:
    """The coordinator's model (its ``model.json`` document and weights) on the site's ``device``
    (a name: ``auto`` picks CUDA, then MPS, then the CPU)."""
    device = select_device(device)
    network = build_network(config["architecture"])
    if state is not None:
        network.load_state_dict(state)
    return SegmentationModel(config=dict(config), network=network.to(device))


def train_locally(model: SegmentationModel, tasks: Sequence[PreparedTask], options: TrainingOptions,
                  proximal_mu: float = 0.0, round_number: int = 1, rounds: int = 1,
                  shares: Mapping[str, float] | None = None, log=print) -> tuple[dict, dict]:
    """``options.epochs`` local epochs of the engine's Trainer on the site's tasks, from the
    global weights in ``model``: round ``round_number`` of ``rounds``.

    The round is the stretch ``(round_number - 1) * epochs + 1`` to ``round_number * epochs`` of
    a run of ``rounds * epochs`` epochs (the Trainer's ``part``): the warm-up happens once, in
    round 1, and the cosine decay runs over all rounds' steps, as in pooled ``train`` with the
    same steps; each round draws new batches. The AdamW state starts afresh every round (the
    sites keep nothing between rounds, as in FedAvg: only the weights are averaged).
    ``shares``: fraction of the draws per task (default: equal), e.g. ``add-task``'s replay
    shares of the site's tasks; a task with no share is not trained.

    Validation is left to :func:`evaluate_locally` (the global model is what is measured), so
    the tasks are trained without their held-out cases. With ``proximal_mu`` > 0 every gradient
    gets FedProx's proximal term ``mu * (w - w_global)`` (Li et al., MLSys 2020), which keeps a
    site whose data differ strongly near the global model; the Trainer itself is unchanged.

    Returns:
        the trained weights (CPU tensors) and ``{"num-examples": training slices of the tasks
        trained, "loss": last epoch's mean loss}``.
    """
    import torch

    device = next(model.network.parameters()).device
    if shares is not None:
        tasks = [task for task in tasks if shares.get(task.name, 0.0) > 0]
    if not tasks:
        raise LabelSharingError("This site was asked to train but holds none of the tasks being trained.")
    trainees = [dataclasses.replace(task, validation=[], validation_slices=0) for task in tasks]
    hooks = []
    if proximal_mu > 0:
        for parameter in model.network.parameters():
            anchor = parameter.detach().clone()
            hooks.append(parameter.register_hook(
                lambda grad, p=parameter, a=anchor: grad + proximal_mu * (p.detach() - a)))
    try:
        part = ((round_number - 1) * options.epochs, rounds * options.epochs)
        result = Trainer(model, trainees, options, device, shares=shares, part=part, log=lambda message: None).fit()
    finally:
        for hook in hooks:
            hook.remove()
    slices = sum(len(task.images) for task in tasks)
    if slices == 0:
        raise LabelSharingError("This site has no training slices; every case is held out for validation. "
                                "Give it more cases or a smaller --val-fraction.")
    state = {name: tensor.detach().to("cpu") for name, tensor in model.network.state_dict().items()}
    log(f"trained {options.epochs} local epoch(s) on {slices} slices, loss {result.epochs[-1]['loss']:.3f}")
    return state, {"num-examples": slices, "loss": float(result.epochs[-1]["loss"])}


def evaluate_locally(model: SegmentationModel, tasks: Sequence[PreparedTask]) -> dict[str, dict]:
    """Dice per task and label of ``model`` on the site's held-out cases (``{task: {"mean", "labels"}}``)."""
    from labelsharing.infer import Predictor

    model.network.eval()
    return validation_dice(Predictor(model, next(model.network.parameters()).device), tasks)
