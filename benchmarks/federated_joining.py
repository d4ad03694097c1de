"""A fourth site joins a three-site federated model (federated add-task) against pooled add-task.

Three demo tasks (AbdomenCT, BrainMR, KneeXR: three sites) are trained into one shared-label
model, then ChestXR's site joins (``labelsharing federated local ... --add-to PARENT``): it trains
its task while the old sites replay theirs locally, the replay share the old tasks' weight in the
average (``--replay``, default ``tasks``: every task an equal share, as the federated command). The
reference is the same story pooled: ``train`` on the three tasks, then ``add-task`` with its own
default replay share (0.5). Same training on both sides, as in ``federated_vs_pooled.py``: each
site makes ``rounds x steps`` steps per stage, pooled runs ``rounds`` epochs of ``sites x steps``.

Printed per method and task: held-out Dice before and after the join (the forgetting table each
run stores in the model's history), and test Dice after (``imagesTs``); ratios federated / pooled.

Example::

    python benchmarks/federated_joining.py                              # 12 cases, 30 + 30 rounds of 10 steps
    python benchmarks/federated_joining.py --cases 2 --rounds 1 --join-rounds 1 --steps-per-epoch 1 --features 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Sequence

from federated_vs_pooled import _fmt, _ratio, _test_dice

from labelsharing.demo import make_demo_datasets
from labelsharing.federated import run_local
from labelsharing.model import SegmentationModel
from labelsharing.train import DEFAULT_REPLAY, TrainingOptions, add_task, train
from labelsharing.utils import format_table, select_device

JOINING = "ChestXR"


def run(args: argparse.Namespace) -> dict:
    """Both stories and their figures (JSON-ready)."""
    work = Path(args.work or tempfile.mkdtemp(prefix="labelsharing-joining-bench-"))
    folders = make_demo_datasets(work / "data", cases=args.cases, seed=args.seed)
    old = [f for f in folders if not f.name.endswith(JOINING)]
    device, quiet = select_device(args.device), (lambda message: None)
    common = {"batch-size": args.batch_size, "features": args.features, "seed": args.seed, "force": True,
              "steps-per-epoch": args.steps_per_epoch}
    results = {}

    start = time.perf_counter()
    pooled_options = dict(batch_size=args.batch_size, features=args.features, seed=args.seed, device=args.device)
    train(old, work / "pooled3", TrainingOptions(epochs=args.rounds, steps_per_epoch=len(old) * args.steps_per_epoch,
                                                 learning_rate=args.lr, **pooled_options), force=True, log=quiet)
    [joining] = [f for f in folders if f.name.endswith(JOINING)]
    pooled = add_task(work / "pooled3", joining, work / "pooled4",
        TrainingOptions(epochs=args.join_rounds, steps_per_epoch=len(folders) * args.steps_per_epoch,
                        learning_rate=args.join_lr, **pooled_options), replay=DEFAULT_REPLAY, force=True, log=quiet)
    results["pooled"] = {"seconds": time.perf_counter() - start, "forgetting": pooled.config["history"][-1]["forgetting"],
                         "test": _test_dice(pooled, folders, device)}

    start = time.perf_counter()
    run_local(old, work / "federated3", {"rounds": args.rounds, "lr": args.lr, **common}, work=work / "flower3",
              device=args.device)
    run_local(folders, work / "federated4", {"rounds": args.join_rounds, "lr": args.join_lr, "add-to":
                                             str(work / "federated3"), "replay": args.replay, **common},
              work=work / "flower4", device=args.device)
    federated = SegmentationModel.load(work / "federated4")
    record = federated.config["history"][-1]
    results["federated"] = {"seconds": time.perf_counter() - start, "forgetting": record["forgetting"],
                            "test": _test_dice(federated, folders, device), "weights": record["rounds"][-1]["weights"]}
    results["settings"] = vars(args)
    return results


def report(results: dict) -> str:
    """Per task: held-out Dice before -> after for each method, test Dice after, ratios."""
    pooled, federated = results["pooled"], results["federated"]
    rows = []
    for task in sorted(pooled["forgetting"], key=lambda t: (t == JOINING, t)):
        p, f = pooled["forgetting"][task], federated["forgetting"][task]
        rows.append([task + (" (joins)" if task == JOINING else ""),
                     f"{p['before']:.3f} -> {p['after']:.3f} ({p['after'] - p['before']:+.3f})",
                     f"{f['before']:.3f} -> {f['after']:.3f} ({f['after'] - f['before']:+.3f})",
                     _fmt(pooled["test"].get(task)), _fmt(federated["test"].get(task)),
                     _ratio(federated["test"].get(task), pooled["test"].get(task))])
    table = format_table(["task", "pooled held-out before -> after", "federated held-out before -> after",
                          "pooled test", "federated test", "federated / pooled test"], rows)
    return (table + f"\n\nwall: pooled {pooled['seconds']:.0f} s, federated {federated['seconds']:.0f} s; "
            f"federated weights of the last round: {federated['weights']}")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=12, help="training cases per demo task (12)")
    parser.add_argument("--rounds", type=int, default=30, help="rounds of the three-site model (30)")
    parser.add_argument("--join-rounds", type=int, default=30, help="rounds after the fourth site joins (30)")
    parser.add_argument("--steps-per-epoch", type=int, default=10, help="steps per round at a site (10)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--features", type=int, default=16, help="UNet width (16)")
    parser.add_argument("--lr", type=float, default=2e-3, help="learning rate of the three-task training (2e-3)")
    parser.add_argument("--join-lr", type=float, default=5e-4, help="learning rate after the join (5e-4, add-task's)")
    parser.add_argument("--replay", default="tasks",
                        help="the old tasks' share of the federated average: 'tasks' (equal per task) or a fraction")
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
