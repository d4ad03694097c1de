"""Markdown report of the real-data check (``benchmarks/real_data_check.py``).

Tables of mean and per-label test Dice per method (the engine's convention and nnU-Net's),
the step accounting with training seconds and best epochs, and the look-alike check.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["present_dice", "markdown_report"]


def present_dice(per_case: Mapping[str, Mapping[str, Sequence[int]]], label: str) -> tuple[float | None, int, int]:
    """Dice of ``label`` over the cases where it is not absent from both maps (nnU-Net's convention).

    Args:
        per_case: case -> label -> [intersection, predicted voxels, reference voxels].

    Returns:
        (mean Dice over those cases or None if there are none, number of cases with the label in
        the reference, number of cases with a false positive: predicted but absent from the reference).

    Example:
        >>> present_dice({"c1": {"a": [0, 0, 0]}, "c2": {"a": [3, 4, 4]}, "c3": {"a": [0, 5, 0]}}, "a")
        (0.375, 1, 1)
    """
    counts = [case[label] for case in per_case.values()]
    scores = [2 * i / (p + r) for i, p, r in counts if p + r]
    return (float(np.mean(scores)) if scores else None, sum(1 for _, _, r in counts if r),
            sum(1 for _, p, r in counts if p and not r))


def _md(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _dice(runs: Mapping, method: str, task: str, label: str | None = None) -> float | None:
    body = runs[method]["test"].get(task)
    if body is None:
        return None
    return body["mean_dice"] if label is None else body["labels"][label]["dice"]


def _f(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def _delta(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else _f(a - b, signed=True)


def _swing(curve: Sequence[Sequence[float]]) -> str:
    """Lowest..highest validation Dice over the second half of the epochs (how noisy selection is)."""
    late = [row[3] for row in curve[len(curve) // 2:]]
    return f"{min(late):.2f}..{max(late):.2f}" if late else "-"


def markdown_report(results: Mapping) -> str:
    """The check's tables as markdown (see the module docstring)."""
    runs, budget, tasks = results["runs"], results["budget"], results["tasks"]
    machine = results["machine"]
    out = [f"Command: `{results['command']}`", "",
           f"Machine: {machine['cpu']}, {machine['cores']} cores (shared with other jobs), {machine['os']}; "
           f"Python {machine['python']}, torch {machine['torch']} ({machine['torch_threads']} threads, "
           f"OMP_WAIT_POLICY={machine['omp_wait_policy']}), MONAI {machine['monai']}. "
           f"Total wall time {results['seconds']:.0f} s.", "",
           f"Options: input {results['options']['input_size']}, features {results['options']['features']}, "
           f"batch {budget['batch_size']}, validation fraction {results['options']['val_fraction']}, "
           f"seed {results['options']['seed']}, device cpu; add-task: replay {results['add_task']['replay']}, "
           f"peak learning rate {results['add_task']['learning_rate']}.", "",
           "### Mean test Dice per task", ""]
    rows = []
    for task in tasks:
        pt, ls = _dice(runs, "per_task", task), _dice(runs, "label_sharing", task)
        base, inc = _dice(runs, "incremental_base", task), _dice(runs, "incremental", task)
        rows.append([task + (" (added)" if task == budget["added"] else ""), _f(pt), _f(ls), _delta(ls, pt),
                     _f(base), _f(inc), _delta(inc, pt), _delta(inc, base)])
    out += [_md(["task", "per-task", "label sharing", "LS - per-task", "incr. base", "incr. after add",
                 "after - per-task", "after - base"], rows), "", "### Test Dice per label", ""]
    shared = runs["label_sharing"]["shared_labels"]
    rows = []
    for task in tasks:
        for label in runs["per_task"]["test"][task]["labels"]:
            pt, ls = _dice(runs, "per_task", task, label), _dice(runs, "label_sharing", task, label)
            base, inc = _dice(runs, "incremental_base", task, label), _dice(runs, "incremental", task, label)
            rows.append([task, label, shared[task][label], _f(pt), _f(ls), _delta(ls, pt), _f(base), _f(inc),
                         _delta(inc, pt)])
    out += [_md(["task", "label", "shared label (LS)", "per-task", "label sharing", "LS - per-task", "incr. base",
                 "incr. after add", "after - per-task"], rows), "",
            "### Test Dice per label, nnU-Net convention (cases where the label is absent from both maps are "
            "left out)", "",
            "Each label's Dice averaged only over the test cases where the reference or the prediction holds "
            "it. Since issue 9 (defect 5) the engine's own Dice follows this convention, so the means equal the "
            "table above (engines before it counted a label absent from both maps as 1.0); this table adds "
            "`ref` = test cases holding the label and `FP` = cases where the method predicts it but the "
            "reference has none (each such case scores 0).", ""]
    rows = []
    methods = ("per_task", "label_sharing", "incremental")
    for task in tasks:
        scores: dict[str, list[float]] = {m: [] for m in methods}
        for label in runs["per_task"]["test"][task]["labels"]:
            row: list[object] = [task, label]
            for method in methods:
                dice, n_ref, n_fp = present_dice(runs[method]["test"][task]["per_case"], label)
                scores[method] += [] if dice is None else [dice]
                row += [_f(dice), n_fp]
            rows.append(row[:2] + [n_ref] + row[2:])
        rows.append([task, "**(mean)**", "", *[c for m in methods for c in (_f(float(np.mean(scores[m])))
                                                                            if scores[m] else "-", "")]])
    out += [_md(["task", "label", "ref", "per-task", "FP", "label sharing", "FP", "incr. after add", "FP"], rows), "",
            "### Compute (optimisation steps) and time", ""]
    rows = [[f"per-task {t}", t, m["epochs"], m["steps"], m["train_seconds"], f"{m['best_epoch']}/{m['epochs']}",
             _f(m["best_val_dice"]), _swing(m["curve"])] for t, m in runs["per_task"]["models"].items()]
    rows.append(["per-task, all models", f"{len(tasks)} x 1", "-", budget["per_task_total"],
                 round(sum(m["train_seconds"] for m in runs["per_task"]["models"].values()), 1), "-", "-", "-"])
    for method, label, what in (("label_sharing", "label sharing", "all"), ("incremental_base", "incremental base",
                                                                           "all but the last"),
                                ("incremental", f"add-task {budget['added']}", "all (replay)")):
        m = runs[method]
        rows.append([label, what, m["epochs"], m["steps"], m["train_seconds"], f"{m['best_epoch']}/{m['epochs']}",
                     _f(m["best_val_dice"]), _swing(m["curve"])])
    incremental_seconds = runs["incremental_base"]["train_seconds"] + runs["incremental"]["train_seconds"]
    rows.append(["incremental, total", "-", "-", budget["incremental_total"], round(incremental_seconds, 1), "-", "-",
                 "-"])
    out += [_md(["model", "tasks", "epochs", "steps", "train s", "best epoch", "best val Dice",
                 "val Dice, 2nd half"], rows), "",
            "Training slices per task (after the validation split): "
            + ", ".join(f"{t} {n}" for t, n in results["slices"].items())
            + ". Steps of an epoch = ceil(slices / batch); a per-task model's steps = epochs x its steps per epoch; "
              "label sharing and incremental get whole epochs within the per-task models' total. Train seconds "
              "include reading, preprocessing and per-epoch validation. Best epoch and validation Dice: the "
              "engine's best-epoch selection on the held-out training case(s) of each task; the last column is "
              "the lowest..highest validation mean Dice over the second half of the epochs.", "",
            "### Look-alike check (case left out, `labelsharing.data.appearance`)", "",
            _md(["task \\ nearest slice in", *tasks],
                [[t, *[("-" if v is None else f"{v:.2f}") for v in row]] for t, row in zip(tasks, results["lookalike"]["confusion"])]), ""]
    warnings = results["lookalike"]["warnings"]
    out += ["Warnings: " + ("none (the check stayed silent)." if not warnings else ""), *[f"- {w}" for w in warnings],
            "", "### Shared-label plan (label sharing model)", "", "```", results["plan_table"], "```"]
    return "\n".join(out) + "\n"
