"""Federated label sharing (one site per task, on Flower) against pooled ``train``, same training.

The four demo tasks (:func:`labelsharing.demo.make_demo_datasets`) are trained twice into one
shared-label model:

* **pooled**: ``labelsharing train`` on all four datasets (the reference);
* **federated**: ``labelsharing federated local``: a SuperLink and one SuperNode per task (four
  sites) on 127.0.0.1, ``--rounds`` rounds of ``--local-epochs`` local epochs of
  ``--steps-per-epoch`` steps at each site, FedAvg with every task an equal share
  (``--site-weighting slices``: weighted by training slices; FedProx with ``--proximal-mu``).

Same training: each site makes ``rounds x local-epochs x steps`` steps on its own task; pooled
``train`` makes ``rounds x local-epochs`` epochs of ``sites x steps`` steps drawn task-balanced,
so both see the same number of training slices per task and in total (same batch size, width,
learning rate, seed, validation fraction). Printed per method: mean test Dice per task
(:func:`labelsharing.infer.evaluate_model` on each task's ``imagesTs``), rounds, optimisation
steps, megabytes of weights sent per round each way (from the model's history), wall time; and
each federated figure as a ratio to pooled's. Wall time of the federated run includes starting
the Flower processes; the rounds' own seconds are printed apart.

Example::

    python benchmarks/federated_vs_pooled.py                          # 12 cases/task, 30 rounds x 1 x 10 steps
    python benchmarks/federated_vs_pooled.py --cases 3 --rounds 1 --steps-per-epoch 2 --features 4  # smoke
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from labelsharing.data import read_task_dataset
from labelsharing.demo import make_demo_datasets
from labelsharing.federated import run_local
from labelsharing.infer import Predictor, evaluate_model
from labelsharing.model import SegmentationModel
from labelsharing.train import TrainingOptions, train
from labelsharing.utils import format_table, select_device


def _test_dice(model: SegmentationModel, folders: Sequence[Path], device) -> dict[str, float]:
    """Mean test Dice per task (``None`` where no label has a Dice)."""
    result = evaluate_model(Predictor(model, device), [read_task_dataset(f) for f in folders])
    return {task: entry["mean_dice"] for task, entry in result["tasks"].items()}


def run(args: argparse.Namespace) -> dict:
    """Both trainings and their figures (JSON-ready)."""
    work = Path(args.work or tempfile.mkdtemp(prefix="labelsharing-federated-bench-"))
    folders = make_demo_datasets(work / "data", cases=args.cases, seed=args.seed)
    sites, steps = len(folders), args.rounds * args.local_epochs * args.steps_per_epoch
    device = select_device(args.device)
    results = {}

    start = time.perf_counter()
    options = TrainingOptions(epochs=args.rounds * args.local_epochs, steps_per_epoch=sites * args.steps_per_epoch,
                              batch_size=args.batch_size, features=args.features, learning_rate=args.lr,
                              seed=args.seed, device=args.device)
    pooled = train(folders, work / "pooled", options, force=True, log=lambda message: None)
    results["pooled"] = {"rounds": "-", "steps": options.epochs * options.steps_per_epoch,
                         "seconds": time.perf_counter() - start, "dice": _test_dice(pooled, folders, device)}

    start = time.perf_counter()
    run_local(folders, work / "federated", {
        "rounds": args.rounds, "local-epochs": args.local_epochs, "steps-per-epoch": args.steps_per_epoch,
        "batch-size": args.batch_size, "features": args.features, "lr": args.lr, "seed": args.seed,
        "proximal-mu": args.proximal_mu, "site-weighting": args.site_weighting, "force": True},
        work=work / "flower", device=args.device)
    seconds = time.perf_counter() - start
    federated = SegmentationModel.load(work / "federated")
    [record] = [h for h in federated.config["history"] if h["kind"] == "federated"]
    rounds = record["rounds"]
    results["federated"] = {
        "rounds": len(rounds), "steps": sites * steps, "seconds": seconds,
        "round_seconds": sum(r["seconds"] for r in rounds), "dice": _test_dice(federated, folders, device),
        "mb_to_sites": float(np.mean([r["bytes_to_sites"] for r in rounds])) / 1e6,
        "mb_from_sites": float(np.mean([r["bytes_from_sites"] for r in rounds])) / 1e6,
        "val_dice_per_round": [{t: d["mean"] for t, d in r["val_dice"].items()} for r in rounds]}
    results["settings"] = {**vars(args), "sites": sites, "input_size": federated.input_size,
                           "parameters": federated.config.get("parameters")}
    return results


def _mean(dice: dict) -> float:
    values = [d for d in dice.values() if d is not None]
    return float(np.mean(values)) if values else float("nan")


def report(results: dict) -> str:
    """The comparison table, pooled the reference, and the ratio row."""
    pooled, federated = results["pooled"], results["federated"]
    tasks = sorted(pooled["dice"])

    def row(name: str, r: dict) -> list:
        mb = f"{r['mb_to_sites']:.2f} / {r['mb_from_sites']:.2f}" if "mb_to_sites" in r else "-"
        return [name, r["rounds"], r["steps"], *(_fmt(r["dice"].get(t)) for t in tasks), _fmt(_mean(r["dice"])), mb,
                f"{r['seconds']:.0f}"]

    ratios = ["federated / pooled", "", f"{federated['steps'] / pooled['steps']:.2f}",
              *(_ratio(federated["dice"].get(t), pooled["dice"].get(t)) for t in tasks),
              _ratio(_mean(federated["dice"]), _mean(pooled["dice"])), "",
              _ratio(federated["seconds"], pooled["seconds"])]
    table = format_table(["method", "rounds", "steps", *tasks, "mean", "MB/round to / from sites", "wall s"],
                         [row("pooled train", pooled), row("federated (1 site/task)", federated), ratios])
    return (table + f"\n\nfederated rounds alone: {federated['round_seconds']:.0f} s of {federated['seconds']:.0f} s "
            "wall (the rest: Flower processes starting, planning, writing)")


def _fmt(value) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def _ratio(a, b) -> str:
    return "-" if a is None or b is None or not b or a != a or b != b else f"{a / b:.2f}"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=12, help="training cases per demo task (12)")
    parser.add_argument("--rounds", type=int, default=30, help="federated rounds (30, the command's default)")
    parser.add_argument("--local-epochs", type=int, default=1, help="local epochs per round (1)")
    parser.add_argument("--steps-per-epoch", type=int, default=10,
                        help="steps per local epoch at a site (10, the command's default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--features", type=int, default=16, help="UNet width (16)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--proximal-mu", type=float, default=0.0, help="FedProx weight (0: FedAvg)")
    parser.add_argument("--site-weighting", choices=("tasks", "slices"), default="tasks",
                        help="sites' weights in the average: per task (default) or by training slices")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", help="folder for data and models (default: a new temporary folder)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    results = run(args)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
