"""Small-island removal on models already trained by ``real_data_spread.py`` (issue 9).

For every seed and method of a spread run's work folder (``W/models_<seed>/<method>``), fits the
removal as training now does (:func:`labelsharing.train.fit_small_islands`: the rule on the
training cases, the check on the model's stored held-out cases), then scores the test split
without and with it, and prints the spread tables of ``real_data_spread.py`` for both, with the
labels whose rule was kept. The models are not changed; nothing is trained.

Example::

    python benchmarks/small_islands.py --work /tmp/spread/work --out /tmp/islands --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from labelsharing.data import read_task_dataset
from labelsharing.infer import Predictor, evaluate_model
from labelsharing.model import SegmentationModel
from labelsharing.train import fit_small_islands, prepare_stored_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data_spread import METHODS, spread_table  # noqa: E402

__all__ = ["score_model", "main"]


def score_model(folder: Path) -> tuple[dict, dict, dict]:
    """Fit the removal for the model in ``folder``; its test results without and with it, and the rules kept.

    Returns:
        ``(raw, removed, kept)``: task -> ``evaluate_model`` result (twice); task -> label -> size.
    """
    model = SegmentationModel.load(folder, device="cpu")
    datasets = [read_task_dataset(entry["dataset"]) for entry in model.config["tasks"].values()]
    tasks = [prepare_stored_task(model, dataset, model.plan, validation_only=True) for dataset in datasets]
    kept = fit_small_islands(model, tasks, "cpu", log=lambda line: print(f"  {folder.name}: {line}", flush=True))
    model.config["small_islands"] = kept
    scores = [evaluate_model(Predictor(model, "cpu", remove_islands=remove), datasets)["tasks"]
              for remove in (False, True)]
    return scores[0], scores[1], kept


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="[REQUIRED] a real_data_spread.py work folder")
    parser.add_argument("--out", type=Path, required=True, help="[REQUIRED] folder for results.json and report.md")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="[OPTIONAL] seeds (%(default)s)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="[OPTIONAL] methods (%(default)s)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    raw: dict = {}
    removed: dict = {}
    kept: dict = {}
    for seed in args.seeds:
        for method in args.methods:
            folders = sorted((args.work / f"models_{seed}").glob(f"{method}_*" if method == "per_task" else method))
            for folder in folders:
                before, after, rules = score_model(folder)
                for target, scores in ((raw, before), (removed, after)):
                    target.setdefault(seed, {}).setdefault(method, {}).update(scores)
                kept.setdefault(str(seed), {})[folder.name] = rules
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"command": " ".join(sys.argv), "raw": raw, "removed": removed,
                                                       "kept": kept}, indent=1))
    labels = sorted({label for method in raw[args.seeds[0]].values() for task in method.values()
                     for label in task["labels"]})
    tables = [f"Mean test Dice per task, islands kept (the network's labels; {time.perf_counter() - start:.0f} s)\n\n"
              + spread_table(raw), "Mean test Dice per task, small islands removed\n\n" + spread_table(removed)]
    tables += [f"Test Dice of {label}, small islands removed\n\n" + spread_table(removed, label) for label in labels]
    rules = [f"- seed {seed}, {model}: " + "; ".join(f"{task}: " + ", ".join(f"{n} < {s:.0f}" for n, s in sizes.items())
                                                     for task, sizes in tasks.items())
             for seed, models in kept.items() for model, tasks in models.items()]
    report = "\n\n".join(tables) + "\n\nRules kept (label < mm³)\n\n" + "\n".join(rules) + "\n"
    (args.out / "report.md").write_text(report)
    print(report)
    return 0 if all(np.isfinite(t["mean_dice"]) for m in removed.values() for r in m.values() for t in r.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
