"""Seed spread of the real-data check (issue 9): is a gap between methods larger than the noise?

The real-data check (``real_data_check.py``) showed label sharing 0.06 behind per-task models
on both CT tasks, but also that one task's Dice moved by up to 0.15 between runs that differed
only in random draws. This script trains the same methods on the same real tasks with several
seeds (the seed sets the validation case, the network's initial weights, the batches and the
augmentation) and prints, per task, each method's test Dice per seed, their mean and range, and
the paired difference to the per-task models (same seed, so same validation case). Methods
already in ``OUT/results.json`` for a seed are kept, so a method can be added to earlier runs.

Methods, at the check's equal compute (``equal_compute_budget``: the joint model makes the
per-task models' steps together):

- ``per_task``: one model per task;
- ``label_sharing``: one model on all tasks (today's plan);
- ``label_sharing_apart``: one model on all tasks, look-alike tasks kept apart (``keep_apart``:
  different structures of look-alike tasks on different shared labels, each left out of the
  other's softmax).

Example::

    python benchmarks/real_data_spread.py --out /tmp/spread --cache /tmp/rdcache --tasks ct_abdomen ct_chest \\
        --seeds 0 1 2 --methods per_task label_sharing
    python benchmarks/real_data_spread.py --out /tmp/spread --cache /tmp/rdcache --quick --seeds 0 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from labelsharing.errors import LabelSharingError
from labelsharing.train import TrainingOptions, train
from labelsharing.utils import format_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import TASKS, Sources  # noqa: E402
from real_data_check import build_tasks, equal_compute_budget, file_log, train_and_score  # noqa: E402

__all__ = ["METHODS", "run_seed", "spread_table", "main"]

METHODS = ("per_task", "label_sharing", "label_sharing_apart")


def run_seed(folders: Sequence[Path], work: Path, logs: Path, options: TrainingOptions,
             methods: Sequence[str]) -> dict[str, dict[str, dict]]:
    """Train ``methods`` with ``options.seed``; returns method -> task -> test result (``score_on_test``)."""
    names = [f.name for f in folders]
    budget = equal_compute_budget(names, options.epochs, options.steps_per_epoch, options.batch_size, names[-1])
    shared_options = dataclasses.replace(options, steps_per_epoch=budget.steps_per_epoch["shared"])
    results: dict[str, dict[str, dict]] = {}
    if "per_task" in methods:
        results["per_task"] = {}
        for folder in folders:
            run = train_and_score(f"per-task {folder.name}", partial(
                train, [folder], work / f"per_task_{folder.name}", options, force=True,
                log=file_log(logs / f"per_task_{folder.name}.log")), [folder], budget.epochs,
                budget.per_task_steps[folder.name])
            results["per_task"][folder.name] = run["test"][folder.name]
    for method, keep_apart in (("label_sharing", False), ("label_sharing_apart", True)):
        if method in methods:
            extra = {"keep_apart": True} if keep_apart else {}
            run = train_and_score(method, partial(train, folders, work / method, shared_options, force=True,
                                                  log=file_log(logs / f"{method}.log"), **extra),
                                  folders, budget.epochs, budget.shared_steps)
            results[method] = run["test"]
    for task_results in results.values():
        for result in task_results.values():
            result.pop("per_case", None)
    return results


def _span(values: Sequence[float]) -> str:
    return f"{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def spread_table(by_seed: Mapping[int, Mapping[str, Mapping[str, dict]]], label: str | None = None) -> str:
    """Per task and method: test Dice per seed, mean [min, max]; per method against ``per_task``: the
    paired difference per seed and its mean [min, max].

    Args:
        by_seed: seed -> method -> task -> test result (``mean_dice`` and ``labels`` -> label -> ``dice``).
        label: score this label of each task instead of the task's mean (tasks without it are skipped).
    """
    seeds = sorted(by_seed)
    methods = [m for m in METHODS if all(m in by_seed[s] for s in seeds)]
    tasks = list(next(iter(by_seed.values()))[methods[0]])

    def score(seed: int, method: str, task: str) -> float | None:
        result = by_seed[seed][method][task]
        if label is None:
            return result["mean_dice"]
        return result["labels"].get(label, {}).get("dice")

    rows = []
    for task in tasks:
        for method in methods:
            values = [score(s, method, task) for s in seeds]
            if None in values:
                continue
            row = [task, method, *[f"{v:.3f}" for v in values], _span(values)]
            if method != "per_task" and "per_task" in methods:
                diffs = [v - score(s, "per_task", task) for s, v in zip(seeds, values)]
                row.append(f"{np.mean(diffs):+.3f} [{min(diffs):+.3f}, {max(diffs):+.3f}]")
            else:
                row.append("-")
            rows.append(row)
    return format_table(["task", "method", *[f"seed {s}" for s in seeds], "mean [min, max]",
                         "minus per-task, same seed: mean [min, max]"], rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="[REQUIRED] folder for results.json, report.md, logs/")
    parser.add_argument("--work", type=Path, default=None, help="[OPTIONAL] folder for tasks and models (OUT/work)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["ct_abdomen", "ct_chest"],
                        help="[OPTIONAL] tasks (%(default)s)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS[:2]),
                        help="[OPTIONAL] methods (%(default)s)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="[OPTIONAL] seeds (%(default)s)")
    parser.add_argument("--epochs", type=int, default=30, help="[OPTIONAL] epochs of every model (30, as the check)")
    parser.add_argument("--steps-per-epoch", type=int, default=20,
                        help="[OPTIONAL] steps an epoch of each per-task model (20); joint models make them together")
    parser.add_argument("--quick", action="store_true", help="[OPTIONAL] smoke setting: 2 epochs, input 32, features 8")
    Sources.add_arguments(parser)
    args = parser.parse_args(argv)
    if len(args.tasks) < 2 or len(set(args.tasks)) != len(args.tasks):
        parser.error("--tasks needs at least two distinct tasks")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see real_data_check.main)
    start = time.perf_counter()
    work = args.work or args.out / "work"
    size = dict(epochs=2, steps_per_epoch=4, input_size=32, features=8) if args.quick else dict(
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, input_size=96, features=16)
    saved = args.out / "results.json"  # a method already measured with a seed is kept, not trained again
    by_seed = {int(s): r for s, r in json.loads(saved.read_text())["by_seed"].items()} if saved.is_file() else {}
    commands = json.loads(saved.read_text())["commands"] if saved.is_file() else []
    try:
        folders = build_tasks(args.tasks, work / "data", Sources.from_arguments(args))
        for seed in args.seeds:
            missing = [m for m in args.methods if m not in by_seed.get(seed, {})]
            print(f"seed {seed}: {', '.join(missing) or 'nothing new'}", flush=True)
            options = TrainingOptions(device="cpu", seed=seed, **size)
            by_seed.setdefault(seed, {}).update(run_seed(folders, work / f"models_{seed}",
                                                         args.out / "logs" / f"seed_{seed}", options, missing))
            args.out.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps({"commands": [*commands, " ".join(sys.argv)], "by_seed": by_seed}, indent=1))
    except LabelSharingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    by_seed = {seed: by_seed[seed] for seed in args.seeds}
    tables = [f"Mean test Dice per task (this run {time.perf_counter() - start:.0f} s)\n\n" + spread_table(by_seed)]
    labels = sorted({label for method in by_seed[args.seeds[0]].values() for task in method.values()
                     for label in task["labels"]})
    tables += [f"Test Dice of {label}\n\n" + spread_table(by_seed, label) for label in labels]
    report = "\n\n".join(tables) + "\n"
    (args.out / "report.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
