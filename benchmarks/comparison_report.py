"""Tables, chart and machine description of the paper comparison (``results.md``, PNG)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["machine_info", "short_task", "markdown_report", "summary_table", "plot_dice"]


def machine_info() -> dict:
    """CPU model and cores, OS, Python and package versions of this machine."""
    import monai
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "monai": monai.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.is_available()}


def short_task(name: str) -> str:
    """``Dataset001_AbdomenCT`` -> ``AbdomenCT``."""
    return name.split("_", 1)[1] if name.startswith("Dataset") and "_" in name else name


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(results: Mapping) -> str:
    """One row per method: Dice per task and mean, parameters, outputs, time, peak memory."""
    tasks = results["tasks"]
    header = ["Method", *[short_task(t) for t in tasks], "Mean", "Parameters", "Outputs", "Train time (s)",
              "Peak RSS (MB)"]
    rows = []
    for method in results["methods"].values():
        if method.get("error"):
            rows.append([method["name"], *["-"] * (len(tasks) + 1), "-", "-", "-", "-"])
            continue
        dice = [method["tasks"].get(t, {}).get("mean_dice") for t in tasks]
        rows.append([method["name"], *[_fmt(d) for d in dice], _fmt(method["mean_dice"]),
                     f"{method['parameters']:,}", _fmt(method.get("outputs")), f"{method['train_seconds']:.0f}",
                     f"{method['peak_rss_mb']:.0f}"])
    return _table(header, rows)


def label_table(results: Mapping) -> str:
    """Dice per task label (rows) and method (columns)."""
    methods = [m for m in results["methods"].values() if not m.get("error")]
    rows = []
    for task, labels in results["tasks"].items():
        for label in labels:
            rows.append([short_task(task), label,
                         *[_fmt(m["tasks"].get(task, {}).get("labels", {}).get(label)) for m in methods]])
    return _table(["Task", "Label", *[m["name"] for m in methods]], rows)


def forgetting_table(results: Mapping) -> str | None:
    """Old tasks' test Dice before (base model) and after adding the last task."""
    base = results["methods"].get("incremental_base")
    adds = [m for k, m in results["methods"].items() if k.startswith("incremental_") and k != "incremental_base"
            and not m.get("error")]
    if not base or base.get("error") or not adds:
        return None
    rows = []
    for task in results["tasks"]:
        before = base["tasks"].get(task, {}).get("mean_dice")
        cells = [short_task(task), _fmt(before)]
        for add in adds:
            after = add["tasks"].get(task, {}).get("mean_dice")
            change = "" if before is None or after is None else f" ({after - before:+.3f})"
            cells.append(_fmt(after) + change)
        rows.append(cells)
    epochs = results["budget"]["epochs"]
    header = [f"After: {m['name']}" + (f", best epoch {m['add_task_history']['best_epoch']} of {epochs}"
                                       if m.get("add_task_history", {}).get("best_epoch") else "") for m in adds]
    return _table(["Task", "Before (base model, tasks 1..K-1)", *header], rows)


def label_sharing_losses(results: Mapping, margin: float = 0.02) -> str | None:
    """Labels where label sharing's Dice is more than ``margin`` below another method's."""
    methods = results["methods"]
    ours = methods.get("label_sharing")
    if not ours or ours.get("error"):
        return None
    rivals = [k for k in ("per_task", "merged", "dodnet") if k in methods and not methods[k].get("error")]
    rows = []
    for task, labels in results["tasks"].items():
        for label in labels:
            mine = ours["tasks"][task]["labels"][label]
            worse = [(methods[k]["name"], methods[k]["tasks"][task]["labels"][label]) for k in rivals
                     if methods[k]["tasks"][task]["labels"][label] > mine + margin]
            if worse:
                rows.append([short_task(task), label, _fmt(mine), ", ".join(f"{n} {d:.3f}" for n, d in worse)])
    if not rows:
        return f"Label sharing is within {margin:.2f} Dice of every other method on every label."
    return _table(["Task", "Label", "Label sharing", f"Better by > {margin:.2f}"], rows)


def markdown_report(results: Mapping) -> str:
    """The whole ``results.md``: command, machine, budget, tables and reading notes."""
    machine, budget = results["machine"], results["budget"]
    parts = [
        "# Paper comparison on the built-in demo tasks",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['os']}; Python {machine['python']}, "
        f"torch {machine['torch']} ({machine['torch_threads']} threads, OMP_WAIT_POLICY="
        f"{machine.get('omp_wait_policy', 'unset')}), MONAI {machine['monai']}, "
        f"GPU: {'yes' if machine['gpu'] else 'no'}. Total run time {results['total_seconds']:.0f} s.",
        "",
        f"Budget (every method): {budget['cases']} training cases + {budget['test_cases']} test cases per task "
        f"(demo seed {budget['seed']}), input {budget['input_size']}x{budget['input_size']}, UNet features "
        f"{budget['features']}, batch {budget['batch_size']}, "
        + (f"{budget['epochs']} epochs of {budget['steps_per_epoch']} steps over the pooled "
           if "steps_per_epoch" in budget else f"{budget['epochs']} epochs of the pooled ")
        + f"{budget['pooled_slices']} training slices, i.e. about {budget['draws_per_task']:.0f} slice draws per task "
        + (f"(per-task models get the same draws of their task: {budget['per_task_epochs']}). "
           if budget.get("per_task_budget", "task") == "task" else
           f"(per-task models, --per-task-budget joint, each draw as many slices as one joint model: "
           f"{budget['per_task_epochs']}). ")
        + f"Training seed "
        f"{budget['seed']}, 20 % of the training cases held out for best-epoch selection; Dice on the test split. "
        f"Incremental: `add_task` with the same epochs, peak learning rate {budget['add_lr']:g} "
        f"(the `add-task` default), replay {budget['replay']:g} and 0.",
        "",
        "## Mean Dice per task (test split) and cost",
        "",
        summary_table(results),
        "",
        "## Dice per label",
        "",
        label_table(results),
        "",
    ]
    losses = label_sharing_losses(results)
    if losses:
        parts += ["## Where label sharing loses (per label, test split)", "", losses, ""]
    forgetting = forgetting_table(results)
    if forgetting:
        parts += ["## Incremental learning: old tasks before and after adding the last task", "", forgetting, ""]
    errors = [f"- {m['name']}: {m['error']}" for m in results["methods"].values() if m.get("error")]
    if errors:
        parts += ["## Methods that failed", "", *errors, ""]
    parts += ["## How to read this", "", *[f"- {note}" for note in results.get("notes", [])], ""]
    return "\n".join(parts)


def plot_dice(results: Mapping, path: str | Path) -> Path:
    """Grouped bar chart: tasks (and the mean) on x, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = [m for k, m in results["methods"].items() if not m.get("error") and k != "incremental_base"]
    groups = [*results["tasks"], "mean"]
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(10, 5.2))
    x = np.arange(len(groups))
    for i, method in enumerate(methods):
        values = [method["tasks"].get(t, {}).get("mean_dice", np.nan) for t in results["tasks"]]
        values.append(method["mean_dice"])
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, values, width, label=method["name"])
    ax.set_xticks(x)
    ax.set_xticklabels([short_task(g) for g in groups])
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean Dice (test split)")
    ax.set_title("Dice by method and task (built-in demo tasks)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
