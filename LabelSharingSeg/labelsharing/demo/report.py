"""The demo's report: Markdown with PNG pictures (plan, training curves, Dice, overlays).

Pictures need matplotlib (``pip install matplotlib``; ``make`` installs it). Without it the
report is written with its tables only, and says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from labelsharing.data import TaskDataset, load_case
from labelsharing.infer import format_dice
from labelsharing.plan import SharedLabelPlan, plan_table

__all__ = ["write_report"]


def write_report(out: Path, plan: SharedLabelPlan, model_4: Path, before: Mapping, after: Mapping,
                 tasks: Sequence[TaskDataset], device: str = "auto", seconds: float = 0.0) -> Path:
    """Write ``out/report.md`` and its pictures; returns the report's path.

    The training curves come from the 4-task model's history alone: ``add_task`` carries the
    parent's runs over, so that history already starts with the 3-task model's training.
    """
    history = json.loads((model_4 / "model.json").read_text())["history"]
    lines = [
        "# LabelSharingSeg demo report", "",
        f"Four synthetic tasks, one label-sharing UNet: trained on three, the fourth added with replay. "
        f"Run time {seconds / 60:.1f} min.", "",
        "## Shared-label plan (average relative size of each label)", "", "```", plan_table(plan), "```", "",
        "## Dice on the test splits", "",
        "| task | 3-task model | 4-task model |", "| --- | --- | --- |",
        *[f"| {t} | {_dice(before, t)} | {_dice(after, t)} |" for t in after["tasks"]], "",
        "## Dice per label (4-task model)", "", "| task | label | Dice |", "| --- | --- | --- |",
        *[f"| {t} | {label} | {format_dice(d['dice'])} |"
          for t, r in after["tasks"].items() for label, d in r["labels"].items()],
        "",
    ]
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        lines += ["*Pictures skipped: matplotlib is not installed (`pip install matplotlib`).*", ""]
    else:
        _plot_curves(history, out / "training_curves.png")
        _plot_dice(before, after, out / "dice_per_task.png")
        lines += ["## Training curves", "", "![training curves](training_curves.png)", "",
                  "## Dice per task", "", "![Dice per task](dice_per_task.png)", "", "## One test case per task", ""]
        from labelsharing.infer import Predictor

        predictor = Predictor.from_model_dir(model_4, device=device)
        for task in tasks:
            name = f"overlay_{task.name}.png"
            _plot_overlay(predictor, task, out / name)
            lines += [f"![{task.name}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _dice(result: Mapping, task: str) -> str:
    entry = result["tasks"].get(task)
    return "-" if entry is None else format_dice(entry["mean_dice"])


def _plot_curves(history: Sequence[Mapping], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for run in history:
        epochs = run["epochs"]
        x = [offset + e["epoch"] for e in epochs]
        ax_loss.plot(x, [e["loss"] for e in epochs], label=f"{run['kind']} ({', '.join(run['tasks'])})")
        for task in (epochs[-1]["val_dice"] if epochs else {}):  # validated epochs only (see --val-every)
            validated = [(offset + e["epoch"], e["val_dice"][task]["mean"]) for e in epochs if task in e["val_dice"]]
            ax_dice.plot(*zip(*validated), label=f"{task} ({run['kind']})")
        offset += len(epochs)
    ax_loss.set(xlabel="epoch", ylabel="Dice + CE loss", title="training loss")
    ax_dice.set(xlabel="epoch", ylabel="validation Dice", title="validation Dice per task", ylim=(0, 1))
    ax_loss.legend(fontsize=7)
    ax_dice.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_dice(before: Mapping, after: Mapping, path: Path) -> None:
    import matplotlib.pyplot as plt

    tasks = list(after["tasks"])
    x = np.arange(len(tasks))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(x - 0.2, [before["tasks"].get(t, {}).get("mean_dice", 0) for t in tasks], 0.4, label="3-task model")
    ax.bar(x + 0.2, [after["tasks"][t]["mean_dice"] for t in tasks], 0.4, label="4-task model (added task last)")
    ax.set(xticks=x, xticklabels=tasks, ylim=(0, 1), ylabel="mean test Dice")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_overlay(predictor, task: TaskDataset, path: Path) -> None:
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    case = (task.test or task.training)[0]
    image, label = load_case(task, case)
    prediction = predictor.predict_image(image, task.name)
    array, truth = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)
    if array.ndim == 3:
        middle = int(np.argmax((truth > 0).reshape(truth.shape[0], -1).sum(axis=1)))
        array, truth, prediction = array[middle], truth[middle], prediction[middle]
    colors = np.zeros((max(task.labels.values()) + 1, 4))
    for name, entry in predictor.model.config["tasks"][task.name]["labels"].items():
        colors[entry["value"]] = [*entry["color"], 0.5]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, labels, title in ((axes[0], truth, "reference"), (axes[1], prediction, "prediction")):
        ax.imshow(array, cmap="gray")
        ax.imshow(colors[labels])
        ax.set_title(f"{task.name} {case.case_id}: {title}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
