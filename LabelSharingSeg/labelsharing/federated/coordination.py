"""What the coordinator decides from the sites' numbers: the plan, the input size, round records,
and the per-round checkpoint that lets a restarted coordinator resume.

No Flower here: :mod:`labelsharing.federated.flower_apps` moves the messages, this module decides.

The plan is :meth:`SharedLabelPlan.build <labelsharing.plan.SharedLabelPlan.build>` on the label
statistics the sites sent, tasks in name order, the user's pins applied: the same call a pooled
``plan`` of the same datasets makes, so both give the same plan JSON whenever the pooled look-alike
check pins nothing (it compares image thumbnails, which never leave a site).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from labelsharing.data import choose_input_size
from labelsharing.errors import LabelSharingError
from labelsharing.plan import LabelStats, SharedLabelPlan
from labelsharing.utils import write_atomically, write_json_atomically

__all__ = ["plan_from_statistics", "input_size_from_statistics", "Checkpoint", "checkpoint_folder_for",
           "round_record", "history_entry"]

STATE_FILE = "federated.json"
WEIGHTS_FILE = "global.safetensors"


def _tasks_by_name(statistics: Mapping[str, Sequence[Mapping]]) -> dict[str, Mapping]:
    """task name -> its statistics, in name order; a task name claimed by two sites is refused."""
    owner: dict[str, str] = {}
    tasks: dict[str, Mapping] = {}
    for site, entries in statistics.items():
        for entry in entries:
            if entry["name"] in owner:
                raise LabelSharingError(
                    f"Task '{entry['name']}' is held by {owner[entry['name']]} and {site}; task names must be unique "
                    "across sites (set a distinct 'name' in one of the dataset.json files).")
            owner[entry["name"]] = site
            tasks[entry["name"]] = entry
    return dict(sorted(tasks.items()))


def plan_from_statistics(statistics: Mapping[str, Sequence[Mapping]],
                         pins: Mapping[str, Mapping[str, int]] | None = None) -> SharedLabelPlan:
    """The shared-label plan of every site's tasks, from label statistics only.

    Args:
        statistics: site id -> its tasks' statistics (:func:`~labelsharing.federated.site_work.site_statistics`).
        pins: the user's pins, task -> label -> shared label.

    Raises:
        LabelSharingError: no tasks, a task name held by two sites, invalid pins.
    """
    tasks = _tasks_by_name(statistics)
    stats = {name: {label: LabelStats(**values) for label, values in entry["labels"].items()}
             for name, entry in tasks.items()}
    return SharedLabelPlan.build(stats, pins, (), {name: entry["terminology"] for name, entry in tasks.items()})


def input_size_from_statistics(statistics: Mapping[str, Sequence[Mapping]]) -> int:
    """The network's input size from each task's median slice side, as ``train`` chooses it."""
    return choose_input_size([(entry["slice_side"],) * 2 for entry in _tasks_by_name(statistics).values()])


def checkpoint_folder_for(out: str | Path) -> Path:
    """Where a federated run writing ``out`` keeps its per-round checkpoint: ``<parent>/.<name>.federated``."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.federated"


class Checkpoint:
    """The coordinator's state after each round: the global weights and ``federated.json``
    (settings, sites, plan, model config, rounds so far), each written atomically.

    A coordinator that restarts with the same settings continues after the last saved round;
    other settings are refused rather than mixed into the old run.
    """

    def __init__(self, out: str | Path):
        self.folder = checkpoint_folder_for(out)

    def load(self, settings: Mapping) -> tuple[dict, dict] | None:
        """``(state, weights)`` of the last saved round, or ``None`` when there is none.

        Raises:
            LabelSharingError: the saved run had other settings.
        """
        state_path = self.folder / STATE_FILE
        if not state_path.exists():
            return None
        from safetensors.numpy import load_file

        state = json.loads(state_path.read_text())
        if state["settings"] != json.loads(json.dumps(settings)):
            raise LabelSharingError(
                f"{self.folder} holds an interrupted federated run with other settings "
                f"({_difference(state['settings'], settings)}). Run again with that run's settings to resume it, "
                f"or delete {self.folder} to start afresh.")
        return state, load_file(str(self.folder / WEIGHTS_FILE))

    def save(self, state: Mapping, weights: Mapping) -> None:
        """Save the round's state and global weights (numpy arrays by parameter name)."""
        from safetensors.numpy import save_file

        write_atomically(self.folder / WEIGHTS_FILE, lambda path: save_file(dict(weights), str(path)))
        write_json_atomically(self.folder / STATE_FILE, dict(state))

    def remove(self) -> None:
        """Delete the checkpoint once the model folder is written."""
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def _difference(saved: Mapping, now: Mapping) -> str:
    keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    return ", ".join(f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in keys[:4])


def round_record(number: int, asked: Sequence[str], trained: Sequence[str], loss: float | None,
                 dice: Mapping[str, Mapping], bytes_down: int, bytes_up: int, seconds: float) -> dict:
    """One round of the model's history: who was asked, who answered, what the sites measured,
    and how many bytes the weights took each way."""
    return {"round": number, "sites": list(trained), "missing": sorted(set(asked) - set(trained)),
            "loss": loss, "val_dice": dict(dice), "bytes_to_sites": bytes_down, "bytes_from_sites": bytes_up,
            "seconds": round(seconds, 1)}


def history_entry(settings: Mapping, sites: Mapping[str, Sequence[str]], rounds: Sequence[Mapping]) -> dict:
    """The ``model.json`` history record of a federated run: settings, sites by anonymous id with
    their tasks, and every round."""
    last = rounds[-1]["val_dice"] if rounds else {}
    return {"kind": "federated", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tasks": sorted(task for tasks in sites.values() for task in tasks),
            "sites": {site: list(tasks) for site, tasks in sites.items()}, "options": dict(settings),
            "device": "sites", "seconds": round(sum(r["seconds"] for r in rounds), 1),
            "best_epoch": len(rounds), "best_mean_dice": float(np.mean([d["mean"] for d in last.values()]))
            if last else float("nan"), "rounds": list(rounds)}
