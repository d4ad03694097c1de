"""Correct and teach: does ``update`` with corrected cases make a task better without costing the others?

The loop of issue 16 on the built-in demo tasks, through the engine's own API (what the command
line calls):

1. the demo data with ``start + held_out + added`` training cases per task; the corrected task
   starts with only ``start + held_out`` of them (``held_out`` kept for validation), the other
   three tasks with all of theirs;
2. ``train`` one model on the four tasks (timed);
3. ``add_case`` the ``added`` further cases of the task, with their reference labels standing for
   a clinician's corrections;
4. ``update`` the task (timed), with replay of the others; and, as a control, the same update on
   the original cases only (same epochs, no case added), which separates what the added cases
   bring from what more fine-tuning brings.

Printed: every task's Dice on its held-out cases (fixed across the update, stored in the model)
and on its test split (``imagesTs``), before and after, for the update and for the control; the
goal is the task improves and the others lose at most 0.01. Then the update's time against the
original training's (ratio), on this machine, with the load average at start and end. Results
also go to ``<out>/correction_loop.json``.

Example::

    python benchmarks/correction_loop.py --out bench_output/correction        # about 10 min on 2 cores
    python benchmarks/correction_loop.py --task AbdomenCT --epochs 20
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the command line sets it, before torch loads

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from labelsharing.data import add_case, read_task_dataset
from labelsharing.demo import make_demo_datasets
from labelsharing.infer import Predictor, evaluate_model
from labelsharing.model import SegmentationModel
from labelsharing.train import TrainingOptions, forgetting_table, train, update
from labelsharing.utils import format_table, write_json_atomically

GOAL_OTHERS = 0.01


def start_folder(full: Path, out: Path, keep: int) -> tuple[Path, list]:
    """A copy of task folder ``full`` in ``out`` with only its first ``keep`` training cases; returns
    the copy and the cases left out (to be added later)."""
    task = read_task_dataset(full)
    copy = Path(shutil.copytree(full, out / full.name))
    for case in task.training[keep:]:
        (copy / "imagesTr" / case.image.name).unlink()
        (copy / "labelsTr" / case.label.name).unlink()
    meta = json.loads((copy / "dataset.json").read_text())
    meta["numTraining"] = keep
    (copy / "dataset.json").write_text(json.dumps(meta, indent=2))
    return copy, list(task.training[keep:])


def test_dice(model_dir: Path, folders: Sequence[Path], device: str) -> dict[str, float]:
    """Mean Dice per task on the test splits."""
    predictor = Predictor(SegmentationModel.load(model_dir, device=device), device)
    result = evaluate_model(predictor, [read_task_dataset(f) for f in folders])
    return {task: entry["mean_dice"] for task, entry in result["tasks"].items()}


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)  # the benchmark's own folder, re-runnable
    start_cases, held_out = args.start, args.held_out
    folders = make_demo_datasets(out / "demo", cases=start_cases + held_out + args.added, seed=args.seed)
    full = next(f for f in folders if f.name.endswith("_" + args.task))
    focus, extra = start_folder(full, out / "start", start_cases + held_out)
    tasks = [focus if f == full else f for f in folders]
    common = dict(steps_per_epoch=args.steps, batch_size=args.batch_size, device=args.device, seed=args.seed)
    quiet = (lambda message: None) if args.quiet else print

    print(f"== train: 4 tasks, '{args.task}' on {start_cases} cases (+{held_out} held out), the others on "
          f"{start_cases + held_out + args.added}", flush=True)
    trained = out / "model"
    started = time.perf_counter()
    train(tasks, trained, TrainingOptions(epochs=args.epochs, input_size=args.input_size, features=args.features,
                                          val_fraction=held_out / (start_cases + held_out), **common), log=quiet)
    train_wall = time.perf_counter() - started
    train_seconds = json.loads((trained / "model.json").read_text())["history"][-1]["seconds"]
    held = json.loads((trained / "model.json").read_text())["tasks"][args.task]["validation_cases"]
    assert len(held) == held_out, f"expected {held_out} held-out cases of {args.task}, the split gave {held}"

    runs = {}
    update_options = TrainingOptions(epochs=args.update_epochs, learning_rate=args.update_lr, **common)
    for name, cases in (("control", []), ("update", extra)):
        folder = focus if name == "update" else Path(shutil.copytree(focus, out / "control_data" / focus.name))
        for case in cases:
            add_case(folder, case.image, case.label)
        print(f"== {name}: '{args.task}' fine-tuned on {len(read_task_dataset(folder).training) - held_out} cases "
              f"({len(cases)} added), replay {args.replay}", flush=True)
        started = time.perf_counter()
        update(trained, args.task, folder, out / f"model_{name}", update_options, replay=args.replay, log=quiet)
        wall = time.perf_counter() - started
        record = json.loads((out / f"model_{name}" / "model.json").read_text())["history"][-1]
        runs[name] = {"forgetting": record["forgetting"], "seconds": record["seconds"], "wall_seconds": round(wall, 1),
                      "added_cases": record["added_cases"],
                      "test_dice": test_dice(out / f"model_{name}", [f for f in tasks if f != focus] + [folder],
                                             args.device)}
        print(forgetting_table(record["forgetting"], updated_task=args.task))
    before_test = test_dice(trained, tasks, args.device)
    return {"task": args.task, "start_cases": start_cases, "held_out": held_out, "added": args.added,
            "train_seconds": train_seconds, "train_wall_seconds": round(train_wall, 1),
            "test_dice_before": before_test, "runs": runs,
            "settings": {k: v for k, v in vars(args).items() if k != "out"}}


def report(result: dict) -> str:
    task, runs = result["task"], result["runs"]
    rows = []
    for name in ("update", "control"):
        held, test = runs[name]["forgetting"], runs[name]["test_dice"]
        for other in held:
            rows.append([name, other + (" (updated)" if other == task else ""), f"{held[other]['before']:.3f}",
                         f"{held[other]['after']:.3f}", f"{held[other]['after'] - held[other]['before']:+.3f}",
                         f"{result['test_dice_before'][other]:.3f}", f"{test[other]:.3f}",
                         f"{test[other] - result['test_dice_before'][other]:+.3f}"])
    lines = [f"Task '{task}': {result['start_cases']} training cases + {result['held_out']} held out, then "
             f"{result['added']} corrected cases added ('control': the same update with none added).",
             format_table(["run", "task", "held-out before", "after", "change", "test before", "after", "change"], rows)]
    update_run = runs["update"]
    others = [t for t in update_run["forgetting"] if t != task]
    worst = min(update_run["forgetting"][t]["after"] - update_run["forgetting"][t]["before"] for t in others)
    worst_test = min(update_run["test_dice"][t] - result["test_dice_before"][t] for t in others)
    gain = update_run["test_dice"][task] - result["test_dice_before"][task]
    gain_vs_control = update_run["test_dice"][task] - runs["control"]["test_dice"][task]
    lines += [
        f"'{task}' test Dice {gain:+.3f} after the update ({gain_vs_control:+.3f} against the control); other tasks' "
        f"worst change {worst:+.3f} held-out, {worst_test:+.3f} test (goal: >= -{GOAL_OTHERS}).",
        f"time: update {update_run['seconds']:.0f} s of training loop, training {result['train_seconds']:.0f} s: "
        f"{update_run['seconds'] / result['train_seconds']:.2f} x the training time; whole command (preparation, "
        f"Dice before/after, writing) {update_run['wall_seconds']:.0f} s against {result['train_wall_seconds']:.0f} s: "
        f"{update_run['wall_seconds'] / result['train_wall_seconds']:.2f} x.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench_output/correction", help="working folder (replaced)")
    parser.add_argument("--task", default="KneeXR", choices=("AbdomenCT", "BrainMR", "KneeXR", "ChestXR"))
    parser.add_argument("--start", type=int, default=5, help="training cases of the task at first (5)")
    parser.add_argument("--held-out", type=int, default=3, help="held-out cases of the task (3)")
    parser.add_argument("--added", type=int, default=5, help="corrected cases added (5)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs of the first training (15)")
    parser.add_argument("--update-epochs", type=int, default=8, help="epochs of the update (8)")
    parser.add_argument("--update-lr", type=float, default=5e-4, help="the update's learning rate (update's default)")
    parser.add_argument("--replay", type=float, default=0.5, help="replay share of the update (update's default)")
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch (30)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=64, help="network input side (64, as the quick demo)")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    result = run(args)
    result["load_average"] = [round(load, 1), round(os.getloadavg()[0], 1)]
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomically(Path(args.out) / "correction_loop.json", result)
    print(report(result))
    print(f"load average {result['load_average'][0]} at start, {result['load_average'][1]} at end "
          f"(2 cores); whole benchmark {result['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
