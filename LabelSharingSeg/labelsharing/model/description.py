"""``labelsharing info``: a readable description of a model folder (no torch needed)."""

from __future__ import annotations

from pathlib import Path

from labelsharing.model.folder import read_model_config
from labelsharing.plan import SharedLabelPlan, plan_table, visible_tasks
from labelsharing.utils import format_table

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
        "weights      " + (f"SHA-256 {config['weights_sha256'][:16]}... (checked on every load)" if "weights_sha256" in config
                           else "no checksum (format 1): damage cannot be detected"),
        "",
        "Tasks",
        format_table(["task", "modality", "slicing", "normalisation", "labels"], _task_rows(config["tasks"], plan)),
        "",
        "Shared labels",
        plan_table(plan),
    ]
    lines += _island_lines(config)
    lines += _history_lines(config.get("history", []))
    versions = config.get("versions", {})
    if versions:
        lines += ["", "Built with " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    return "\n".join(lines)


def _task_rows(tasks: dict, plan: SharedLabelPlan) -> list[list[str]]:
    """One row per task; a task split by overlapping segments is a row of its own above its sub-tasks' rows."""
    rows = []
    for name in visible_tasks(plan.task_names, plan.splits):
        subtasks = plan.subtasks(name)
        if name in plan.splits:
            first = tasks[subtasks[0]]
            rows.append([name, first["modality"], _slicing(first), first["normalization"]["scheme"],
                         f"overlapping segments in {len(subtasks)} layers: one layered .seg.nrrd per image"])
        for sub in subtasks:
            task = tasks[sub]
            label = f"  {sub} [layer {sub[len(name) + 1:]}]" if name in plan.splits else sub
            rows.append([label, task["modality"], _slicing(task), task["normalization"]["scheme"],
                         ", ".join(f"{label}={entry['value']}" for label, entry in task["labels"].items())])
    return rows


def _island_lines(config: dict) -> list[str]:
    """Which labels lose their small islands after prediction (``predict --keep-small-islands`` keeps them)."""
    if "small_islands" not in config:
        return []
    rows = [[task, label, f"{size:,.1f} {'mm²' if config['tasks'][task].get('plane', 0) is None else 'mm³'}"]
            for task, sizes in config["small_islands"].items() for label, size in sizes.items()]
    return ["", "Small islands removed after prediction (--keep-small-islands keeps them)",
            format_table(["task", "label", "islands under"], rows) if rows else "none: no label passed the held-out check"]


def _history_lines(history: list) -> list[str]:
    """The history table and the best epoch's (or a federated run's last round's) Dice; history
    records are free-form in ``model.json``, so anything missing or malformed is shown as ``?``
    or left out."""
    records = [h for h in history if isinstance(h, dict)]
    if not records:
        return []
    lines = ["", "History", format_table(
        ["run", "date", "tasks", "epochs", "device", "seconds", "best mean Dice"],
        [[h.get("kind", "?"), h.get("date", "?"), ", ".join(map(str, _list(h.get("tasks")))), _length(h),
          h.get("device", "?"), h.get("seconds", "?"), _fmt(h.get("best_mean_dice"))] for h in records],
    )]
    for record in records:
        if record.get("kind") == "federated":
            lines += _federated_lines(record)
    federated = records[-1].get("kind") == "federated"
    step = "round" if federated else "epoch"
    epochs = [e for e in _list(records[-1].get(step + "s")) if isinstance(e, dict)]
    best = next((e for e in epochs if e.get(step) == records[-1].get("best_epoch")), None)
    try:
        rows = [[task, label, f"{d:.3f}"] for task, v in best["val_dice"].items() for label, d in v["labels"].items()]
    except (TypeError, KeyError, AttributeError, ValueError):  # no best epoch, or a record edited by hand
        rows = []
    if rows:
        title = f"after the last round ({best['round']})" if federated else f"at the best epoch ({best['epoch']})"
        lines += ["", f"Validation Dice {title}", format_table(["task", "label", "Dice"], rows)]
    return lines


def _length(record: dict) -> str | int:
    """A run's length: its epochs, or ``3 rounds`` for a federated run (local epochs happen at the sites)."""
    if record.get("kind") == "federated":
        return f"{len(_list(record.get('rounds')))} rounds"
    return len(_list(record.get("epochs")))


def _federated_lines(record: dict) -> list[str]:
    """A federated run: its settings, the sites by anonymous id with their tasks, and per round who
    answered, who was missing, the loss, each task's validation Dice and the megabytes of weights
    sent each way."""
    options = record.get("options") if isinstance(record.get("options"), dict) else {}
    sites = record.get("sites") if isinstance(record.get("sites"), dict) else {}
    tasks = [str(t) for t in _list(record.get("tasks"))]
    mu = options.get("proximal-mu", 0)
    aggregation = f"FedProx (mu {mu:g})" if isinstance(mu, (int, float)) and mu > 0 else "FedAvg"
    rows = []
    for r in (r for r in _list(record.get("rounds")) if isinstance(r, dict)):
        dice = r.get("val_dice") if isinstance(r.get("val_dice"), dict) else {}
        rows.append([r.get("round", "?"), ", ".join(map(str, _list(r.get("sites")))) or "-",
                     ", ".join(map(str, _list(r.get("missing")))) or "-", _fmt(r.get("loss")),
                     *[_fmt(dice[t].get("mean")) if isinstance(dice.get(t), dict) else "-" for t in tasks],
                     _megabytes(r.get("bytes_to_sites")), _megabytes(r.get("bytes_from_sites")), r.get("seconds", "?")])
    weighting = ("each task an equal share" if options.get("site-weighting") == "tasks"  # runs before the option:
                 else "weighted by training slices")  # slices
    lines = ["", f"Federated run of {record.get('date', '?')}: {len(sites)} sites, {aggregation} {weighting}, "
             f"{options.get('local-epochs', '?')} local epoch(s) of {options.get('steps-per-epoch', '?')} steps "
             f"per round, at least {options.get('min-sites', '?')} sites per round"]
    forgetting = record.get("forgetting") if isinstance(record.get("forgetting"), dict) else {}
    if record.get("added_task"):
        added = record["added_task"]
        lines.append(f"A joining site added '{added}' (replay {record.get('replay', '?')}; the old tasks trained at "
                     "their sites). Dice on held-out cases, before -> after:")
        lines.append(format_table(["task", "before", "after", "change"], [
            [task + (" (new)" if task == added else ""), _fmt(d.get("before")), _fmt(d.get("after")),
             f"{d['after'] - d['before']:+.3f}" if all(isinstance(d.get(k), (int, float)) for k in ("before", "after"))
             else "-"] for task, d in forgetting.items() if isinstance(d, dict)]))
    return lines + [
        format_table(["site", "tasks"], [[site, ", ".join(map(str, _list(t)))] for site, t in sites.items()]),
        "", format_table(["round", "sites", "missing", "loss", *(f"{t} Dice" for t in tasks), "MB to sites",
                          "MB from sites", "seconds"], rows)]


def _megabytes(value) -> str:
    return f"{value / 1e6:.2f}" if isinstance(value, (int, float)) else "-"


def _slicing(task: dict) -> str:
    """``axial, 0.8 x 0.8 mm``; ``2D``; ``axis 2 (as stored)`` for models before ``plane``."""
    if "plane" not in task:
        return "2D" if task["axis"] is None else f"axis {task['axis']} (as stored)"
    spacing = task.get("target_spacing")
    text = task["plane"] or "2D"
    return text + (f", {spacing[0]:g} x {spacing[1]:g} mm" if spacing else "")


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and value == value else "-"
