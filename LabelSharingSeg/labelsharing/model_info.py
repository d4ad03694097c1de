"""``labelsharing info``: a readable description of a model folder (no torch needed)."""

from __future__ import annotations

from pathlib import Path

from labelsharing.model import read_model_config
from labelsharing.plan import SharedLabelPlan
from labelsharing.planning import plan_table
from labelsharing.tables import format_table

__all__ = ["describe_model"]


def describe_model(folder: str | Path) -> str:
    """Tasks, labels, shared labels, preprocessing and training history of a model folder."""
    config = read_model_config(folder)
    plan = SharedLabelPlan.from_dict(config["plan"])
    arch = config["architecture"]
    kwargs = arch.get("kwargs", {})
    lines = [
        f"model        {Path(folder).resolve()}",
        f"format       {config['format_version']} (labelsharing {config.get('labelsharing_version', '?')})",
        f"network      {arch['name']} 2D, channels {kwargs.get('channels')}, {kwargs.get('out_channels')} outputs"
        + (f", {config['parameters']:,} parameters" if "parameters" in config else ""),
        f"input size   {config['input_size'][0]} x {config['input_size'][1]}",
        f"parent       {config.get('parent') or '-'}",
        "",
        "Tasks",
        format_table(
            ["task", "modality", "slicing", "normalisation", "labels"],
            [[name, t["modality"], "2D" if t["axis"] is None else f"axis {t['axis']}", t["normalization"]["scheme"],
              ", ".join(f"{label}={entry['value']}" for label, entry in t["labels"].items())]
             for name, t in config["tasks"].items()],
        ),
        "",
        "Shared labels",
        plan_table(plan),
    ]
    history = config.get("history", [])
    if history:
        lines += ["", "History", format_table(
            ["run", "date", "tasks", "epochs", "device", "seconds", "best mean Dice"],
            [[h["kind"], h["date"], ", ".join(h["tasks"]), len(h.get("epochs", [])), h["device"], h["seconds"],
              _fmt(h.get("best_mean_dice"))] for h in history],
        )]
        last = history[-1].get("epochs", [])
        best = next((e for e in last if e["epoch"] == history[-1].get("best_epoch")), None)
        if best and best.get("val_dice"):
            lines += ["", f"Validation Dice at the best epoch ({best['epoch']})", format_table(
                ["task", "label", "Dice"],
                [[task, label, f"{d:.3f}"] for task, v in best["val_dice"].items() for label, d in v["labels"].items()],
            )]
    versions = config.get("versions", {})
    if versions:
        lines += ["", "Built with " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"
