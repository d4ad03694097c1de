"""Real-data check (issue 9): per-task models vs label sharing vs adding a task, at equal compute.

The tasks are built at run time from packaged real images with real label maps
(:mod:`real_data`, see ``docs/REAL_DATA.md``) into ``--work``, then three methods are trained
with the public engine API on the CPU and scored on every task's test split:

1. **per-task**: one model per task (``train`` on that task alone), ``--epochs`` epochs each;
2. **label sharing**: one model on all tasks together;
3. **incremental**: one model on all tasks but the last, then ``add_task`` of the last one
   (replay 0.5, the engine's default; peak learning rate 5e-4, the ``add-task`` default).

Equal compute is counted in optimisation steps (one batch forward + backward), see
:func:`equal_compute_budget`: the label-sharing model, and the incremental pair together, get at
most the steps of all per-task models together. Validation, data loading and evaluation are not
steps; their cost shows in the measured seconds.

The report (``report.md``, also printed) holds mean and per-label test Dice per method, the
step accounting, training seconds, best epochs, and what the engine's look-alike check
(:mod:`labelsharing.data.appearance`) says about the tasks. ``results.json`` has the same numbers and every model's
per-epoch validation curve; ``logs/`` the engine's training logs.

Example::

    python benchmarks/real_data_check.py --out /tmp/rdcheck --cache /tmp/rdcache --quick
    python benchmarks/real_data_check.py --out benchmarks/results/real_data_baseline --work /tmp/rdwork \\
        --cache /tmp/rdcache --epochs 40
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from labelsharing.data import load_case, read_task_dataset
from labelsharing.errors import LabelSharingError
from labelsharing.infer import Predictor, evaluate_model
from labelsharing.model import SegmentationModel
from labelsharing.plan import plan_table, plan_task_datasets
from labelsharing.train import DEFAULT_REPLAY, TrainingOptions, add_task, prepare_task, train
from labelsharing.utils import select_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comparison_report import machine_info  # noqa: E402
from real_data import TASKS, Sources, resample, write_task  # noqa: E402
from real_data_report import markdown_report  # noqa: E402

__all__ = ["DEFAULT_TASKS", "ComputeBudget", "equal_compute_budget", "build_tasks", "file_log", "score_on_test",
           "train_and_score", "run_check", "main"]

DEFAULT_TASKS = ("ct_abdomen", "ct_chest", "mr_brain_aal", "mr_brain_icbm")
ADD_TASK_LEARNING_RATE = 5e-4  # the add-task command's default
METHODS = ("per_task", "label_sharing", "incremental_base", "incremental")
Log = Callable[[str], None]


@dataclass(frozen=True)
class ComputeBudget:
    """Epochs and optimisation steps of every model of the check.

    The engine counts training in steps: an epoch is ``steps_per_epoch`` steps of ``batch_size``
    slices, whatever the data size. Every model trains the same number of epochs (so each is
    validated as often); what differs is its steps per epoch.

    Attributes:
        batch_size: slices per step.
        added: the task added last in the incremental method.
        epochs: epochs of every model.
        steps_per_epoch: model -> steps of one of its epochs (``per_task``, ``shared``, ``base``, ``add``).
        per_task_steps: task -> steps of its own model.
        shared_steps, base_steps, add_steps: steps of the label-sharing model, of the incremental
            base model (all tasks but ``added``) and of ``add_task``.
    """

    batch_size: int
    added: str
    epochs: int
    steps_per_epoch: dict[str, int]
    per_task_steps: dict[str, int]
    shared_steps: int
    base_steps: int
    add_steps: int

    @property
    def per_task_total(self) -> int:
        """Steps of all per-task models together: the budget of the other methods."""
        return sum(self.per_task_steps.values())

    @property
    def incremental_total(self) -> int:
        """Steps of the incremental base model plus the add-task fine-tuning."""
        return self.base_steps + self.add_steps


def equal_compute_budget(tasks: Sequence[str], epochs: int, steps: int, batch_size: int, added: str) -> ComputeBudget:
    """Steps per epoch of each method so that all make as many steps as the per-task models together.

    Each of the K per-task models makes ``steps`` steps an epoch; the label-sharing model
    ``K x steps`` (task-balanced draws: ``steps`` worth per task); the incremental base model
    ``(K - 1) x steps`` and ``add_task`` ``steps``. Every model trains ``epochs`` epochs.

    Example:
        >>> b = equal_compute_budget(["a", "b", "c"], epochs=10, steps=20, batch_size=16, added="c")
        >>> b.steps_per_epoch, b.per_task_total, b.shared_steps, b.incremental_total
        ({'per_task': 20, 'shared': 60, 'base': 40, 'add': 20}, 600, 600, 600)
    """
    if added not in tasks:
        raise ValueError(f"added task {added!r} is not one of {list(tasks)}")
    if epochs < 1 or steps < 1:
        raise ValueError(f"epochs and steps must be at least 1, got {epochs} and {steps}")
    k = len(tasks)
    per_epoch = {"per_task": steps, "shared": k * steps, "base": (k - 1) * steps, "add": steps}
    return ComputeBudget(batch_size, added, epochs, per_epoch, {t: epochs * steps for t in tasks},
                         epochs * per_epoch["shared"], epochs * per_epoch["base"], epochs * per_epoch["add"])


def build_tasks(names: Sequence[str], data: Path, sources: Sources) -> list[Path]:
    """Write the named real-data task folders into ``data`` (see :mod:`real_data`); returns them in order."""
    folders = []
    for name in names:
        builder, spacing, n_slabs = TASKS[name]
        write_task(name, resample(builder(sources), spacing), n_slabs, data)
        folders.append(data / name)
    return folders


def file_log(path: Path) -> Log:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")

    def log(message: str) -> None:
        with path.open("a") as handle:
            handle.write(message + "\n")
    return log


def score_on_test(model: SegmentationModel, folders: Sequence[Path]) -> dict:
    """Test-split Dice of ``model`` on ``folders`` (the engine's ``evaluate_model``).

    Each task also gets ``per_case``: case -> label -> [intersection, predicted, reference] voxel
    counts, from which ``real_data_report.present_dice`` scores labels the nnU-Net way.
    """
    predictor = Predictor(model, select_device("cpu"))
    datasets = [read_task_dataset(f) for f in folders]
    result = evaluate_model(predictor, datasets)["tasks"]
    for dataset in datasets:
        per_case = result[dataset.name]["per_case"] = {}
        for case in dataset.test:
            image, label = load_case(dataset, case)
            prediction, reference = predictor.predict_image(image, dataset.name), sitk.GetArrayViewFromImage(label)
            per_case[case.case_id] = {
                name: [int(np.count_nonzero((prediction == value) & (reference == value))),
                       int(np.count_nonzero(prediction == value)), int(np.count_nonzero(reference == value))]
                for name, value in dataset.labels.items()}
    return result


def train_and_score(name: str, fn: Callable[[], SegmentationModel], folders: Sequence[Path], epochs: int,
                    steps: int) -> dict:
    """Train one model (``fn``), print a line, return its curve, best epoch, shared labels and test Dice."""
    start = time.perf_counter()
    model = fn()
    seconds = time.perf_counter() - start
    history = model.config["history"][-1]
    curve = [[e["epoch"], e["seconds"], round(e["loss"], 4),
              round(float(np.mean([d["mean"] for d in e["val_dice"].values()])), 4)] for e in history["epochs"]]
    shared = {task: {label: entry["shared"] for label, entry in cfg["labels"].items()}
              for task, cfg in model.config["tasks"].items()}
    print(f"  {name}: {epochs} epochs, {steps} steps, {seconds:.0f} s, best epoch {history['best_epoch']}", flush=True)
    return {"epochs": epochs, "steps": steps, "train_seconds": round(seconds, 1), "best_epoch": history["best_epoch"],
            "best_val_dice": history["best_mean_dice"], "curve": curve, "shared_labels": shared,
            "test": score_on_test(model, folders)}


def run_check(folders: Sequence[Path], work: Path, logs: Path, options: TrainingOptions) -> dict:
    """Prepare the tasks as ``train`` does, count slices, run the look-alike check and the three methods."""
    plan, summaries, appearance = plan_task_datasets(folders, log=file_log(logs / "plan.log"))
    prepared = [prepare_task(s.task, plan, options.input_size, options.val_fraction, options.seed, options.axis)
                for s in summaries]
    names = [t.name for t in prepared]
    slices = {t.name: len(t.images) for t in prepared}
    lookalike = {**appearance.to_dict(), "warnings": appearance.warnings()}
    del prepared, summaries
    budget = equal_compute_budget(names, options.epochs, options.steps_per_epoch, options.batch_size, names[-1])
    per_epoch = budget.steps_per_epoch

    def with_steps(steps: int, **changes) -> TrainingOptions:
        return dataclasses.replace(options, steps_per_epoch=steps, **changes)

    runs: dict[str, dict] = {"per_task": {"models": {}}}
    for folder, name in zip(folders, names):
        runs["per_task"]["models"][name] = train_and_score(
            f"per-task {name}", partial(train, [folder], work / f"per_task_{name}", with_steps(per_epoch["per_task"]),
                                        force=True, log=file_log(logs / f"per_task_{name}.log")),
            [folder], budget.epochs, budget.per_task_steps[name])
    runs["label_sharing"] = train_and_score(
        "label sharing", partial(train, folders, work / "label_sharing", with_steps(per_epoch["shared"]), force=True,
                                 log=file_log(logs / "label_sharing.log")),
        folders, budget.epochs, budget.shared_steps)
    runs["incremental_base"] = train_and_score(
        "incremental base", partial(train, folders[:-1], work / "incremental_base", with_steps(per_epoch["base"]),
                                    force=True, log=file_log(logs / "incremental_base.log")),
        folders[:-1], budget.epochs, budget.base_steps)
    add_options = with_steps(per_epoch["add"], learning_rate=ADD_TASK_LEARNING_RATE)
    runs["incremental"] = train_and_score(
        f"add-task {names[-1]}", partial(add_task, work / "incremental_base", folders[-1], work / "incremental",
                                         add_options, replay=DEFAULT_REPLAY, force=True,
                                         log=file_log(logs / "incremental_add.log")),
        folders, budget.epochs, budget.add_steps)
    runs["per_task"]["test"] = {t: m["test"][t] for t, m in runs["per_task"]["models"].items()}
    return {"tasks": names, "slices": slices, "budget": {**dataclasses.asdict(budget), "per_task_total": budget.per_task_total,
                                                         "incremental_total": budget.incremental_total},
            "lookalike": lookalike, "plan_table": plan_table(plan), "runs": runs}


# --------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="[REQUIRED] folder for report.md, results.json, logs/")
    parser.add_argument("--work", type=Path, default=None,
                        help="[OPTIONAL] folder for the built tasks and the models (default OUT/work; not for committing)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(DEFAULT_TASKS),
                        help="[OPTIONAL] tasks, the last is the one added incrementally (%(default)s)")
    parser.add_argument("--epochs", type=int, default=30, help="[OPTIONAL] epochs of every model (30)")
    parser.add_argument("--steps-per-epoch", type=int, default=20,
                        help="[OPTIONAL] steps an epoch of each per-task model (20); the joint models make the "
                             "per-task models' steps together")
    parser.add_argument("--input-size", type=int, default=96, help="[OPTIONAL] network input size (96)")
    parser.add_argument("--features", type=int, default=16, help="[OPTIONAL] UNet width (16)")
    parser.add_argument("--seed", type=int, default=0, help="[OPTIONAL] random seed (0)")
    parser.add_argument("--quick", action="store_true",
                        help="[OPTIONAL] smoke setting: 2 epochs, input 32, features 8 (under 2 minutes)")
    Sources.add_arguments(parser)
    args = parser.parse_args(argv)
    if len(args.tasks) < 2 or len(set(args.tasks)) != len(args.tasks):
        parser.error("--tasks needs at least two distinct tasks")
    if args.quick:
        args.epochs, args.steps_per_epoch, args.input_size, args.features = 2, 4, 32, 8
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Before torch loads OpenMP (it is imported lazily): idle threads sleep instead of spinning on a
    # shared CPU (see paper_comparison.worker_env); an explicit setting of the caller wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    start = time.perf_counter()
    work = args.work or args.out / "work"
    try:
        options = TrainingOptions(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, input_size=args.input_size,
                                  features=args.features, device="cpu", seed=args.seed)
        folders = build_tasks(args.tasks, work / "data", Sources.from_arguments(args))
        print(f"built {len(folders)} tasks in {work / 'data'}", flush=True)
        results = run_check(folders, work / "models", args.out / "logs", options)
    except LabelSharingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results.update(command="python benchmarks/real_data_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
                   machine={**machine_info(), "omp_wait_policy": os.environ["OMP_WAIT_POLICY"]}, options=dataclasses.asdict(options),
                   add_task={"replay": DEFAULT_REPLAY, "learning_rate": ADD_TASK_LEARNING_RATE},
                   seconds=round(time.perf_counter() - start, 1))
    report = markdown_report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "report.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
