"""``train``: a new shared-label model from several task datasets, written to a model folder.

The datasets are planned together (:mod:`labelsharing.plan`), each task's slices prepared once
(:mod:`labelsharing.train.task_data`), the network trained by a
:class:`~labelsharing.train.trainer.Trainer`, and the best epoch's weights written with
``model.json`` (built and validated by :mod:`labelsharing.model.folder`). The output is claimed
before any work (:func:`~labelsharing.train.checkpoint.claim_output`); an interrupted run
leaves a working folder that ``resume=True`` continues from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from labelsharing.data import choose_input_size, plan_slicing, read_image_header
from labelsharing.errors import LabelSharingError
from labelsharing.model import SegmentationModel, build_model_config, build_network, default_architecture, \
    package_versions
from labelsharing.plan import plan_task_datasets
from labelsharing.train.checkpoint import RunFolder, claim_output, run_options
from labelsharing.train.distributed import DistributedContext, describe_processes, main_process_output, \
    start_distributed
from labelsharing.train.familiarity_fit import fit_familiarity
from labelsharing.train.island_fit import fit_small_islands
from labelsharing.train.options import Log, TrainingOptions
from labelsharing.train.slice_store import SliceStore
from labelsharing.train.task_data import prepare_task
from labelsharing.train.trainer import Trainer
from labelsharing.utils import SILENT, ProgressReporter

__all__ = ["train", "task_slice_side"]


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
    keep_apart: bool = False,
) -> SegmentationModel:
    """Train one shared-label model on several task datasets and write it to ``out``.

    Under ``torchrun`` every process calls this; the main process writes ``out`` and the others
    return (with the last epoch's weights) once it is written.

    Args:
        pins: the user's pins, task -> label name -> shared label.
        resume: continue the interrupted run into ``out`` from its last checkpoint; the datasets,
            options, pins and ``keep_apart`` must be the interrupted run's.
        command: the command-line arguments of this run, recorded so that an interrupted run
            can say how to resume it (default: the Python call with ``resume=True``).
        keep_apart: keep look-alike tasks apart: their different structures on different shared
            labels, each left out of the others' softmax (``SharedLabelPlan.build``); the model
            keeps the mode for tasks added later.

    Raises:
        LabelSharingError: no datasets; ``out`` exists (without ``force``), is or holds a dataset, cannot be
            written, is being written by another process; a leftover working folder of an
            interrupted run (without ``resume``); invalid datasets or pins.
    """
    if not datasets:
        raise LabelSharingError("No task datasets given: train needs at least one task folder.")
    options = options or TrainingOptions()
    out = Path(out)
    identity = {"command": "train", "datasets": [str(Path(d).resolve()) for d in datasets],
                "options": run_options(options), "pins": pins, "keep_apart": keep_apart}
    with claim_output(out, datasets, force, identity, resume, command) as run:
        context = start_distributed(options.device)
        try:
            return _train(datasets, out, options, pins, keep_apart, force, context, run, resume,
                          *main_process_output(context, progress, log))
        finally:
            context.close()


def _train(datasets, out: Path, options: TrainingOptions, pins, keep_apart: bool, force: bool,
           context: DistributedContext, run: RunFolder, resume: bool, progress: ProgressReporter,
           log: Log) -> SegmentationModel:
    import torch

    device = context.device
    with context.together():  # the working folder first: slices beyond --slice-memory are kept there
        if context.is_main and not resume:
            run.start()
    with run.removed_on_failure(context.is_main and not resume), context.together():
        plan, summaries, appearance = plan_task_datasets(datasets, pins, progress, log, keep_apart)
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
    config = build_model_config(architecture, input_size, plan, {t.name: t.model_entry(plan) for t in tasks},
                                parameters=sum(p.numel() for p in network.parameters()), versions=package_versions(),
                                appearance=appearance.to_dict())
    model = SegmentationModel(config=config, network=network)
    result = Trainer(model, tasks, options, device, context=context, run=run, progress=progress, log=log).fit()
    with context.together():  # the others wait for the main process to write (and hear if it fails)
        if context.is_main:
            model.network.load_state_dict(result.best_state)
            config["familiarity"] = fit_familiarity(model, tasks, device, log)
            config["small_islands"] = fit_small_islands(model, tasks, device, log)
            config["history"].append(result.history_entry("train", options, device, [t.name for t in tasks],
                                                          context.world_size))
            model.save(out, overwrite=force, inputs=datasets)
            run.remove()
            log(f"model written to {out} (best epoch {result.best_epoch}, mean validation Dice "
                f"{result.best_dice:.3f}, {result.seconds:.0f} s)")
    return model


def _default_input_size(tasks: Sequence, axis: int | None) -> int:
    """Per task, the median longer side of its slices at its target spacing (from the files'
    headers); see :func:`choose_input_size`."""
    return choose_input_size([(task_slice_side(task, axis),) * 2 for task in tasks])


def task_slice_side(task, axis: int | None = None) -> int:
    """The median longer side of a task's slices at its target spacing, read from the files'
    headers (no pixels): what :func:`choose_input_size` is given per task. A federated site
    sends this number, so the coordinator picks the input size a pooled ``train`` would."""
    headers = [read_image_header(case.image) for case in task.training]
    slicing = plan_slicing(headers, axis)
    return int(np.median([max(slicing.resampled_shape(header)) for header in headers]))
