"""What the coordinator decides from the sites' numbers: the plan (of a new model, or of a model a
joining site's task is added to), the input size, each site's weight in the average, round
records, and the per-round checkpoint that lets a restarted coordinator resume.

No Flower here: :mod:`labelsharing.federated.flower_apps` moves the messages, this module decides.

The plan is :meth:`SharedLabelPlan.build <labelsharing.plan.SharedLabelPlan.build>` on the label
statistics the sites sent, tasks in name order, the user's pins applied: the same call a pooled
``plan`` of the same datasets makes, so both give the same plan JSON whenever the pooled look-alike
check pins nothing (it compares image thumbnails, which never leave a site).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from labelsharing.data import choose_input_size
from labelsharing.errors import LabelSharingError
from labelsharing.model import SegmentationModel, build_model_config, build_network, default_architecture, \
    package_versions
from labelsharing.plan import LabelStats, SharedLabelPlan
from labelsharing.train import extend_model, replay_shares
from labelsharing.utils import write_atomically, write_json_atomically

__all__ = ["plan_from_statistics", "input_size_from_statistics", "Checkpoint", "checkpoint_folder_for",
           "round_record", "history_entry", "Federation", "new_federation", "joining_federation", "site_weights",
           "SITE_WEIGHTINGS", "EQUAL_REPLAY"]

#: How sites are weighted in the average: ``tasks`` (each task an equal share, or its replay share
#: when a task is added; a site weighs the sum of its tasks' shares, as pooled ``train`` draws tasks
#: equally) or ``slices`` (FedAvg's usual weighting by training examples).
SITE_WEIGHTINGS = ("tasks", "slices")
#: ``--replay`` of a federated add-task that gives every task, the joining one included, an equal share.
EQUAL_REPLAY = "tasks"

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
    stats = {name: _label_stats(entry) for name, entry in tasks.items()}
    return SharedLabelPlan.build(stats, pins, (), {name: entry["terminology"] for name, entry in tasks.items()})


def _owners(statistics: Mapping[str, Sequence[Mapping]]) -> dict[str, str]:
    """task name -> the site holding it."""
    return {entry["name"]: site for site, entries in statistics.items() for entry in entries}


def _label_stats(entry: Mapping) -> dict[str, LabelStats]:
    return {label: LabelStats(**values) for label, values in entry["labels"].items()}


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


#: ``prepare(sites, plan, input_size) -> {task: model.json entry}``: the coordinator asks ``sites``
#: to prepare their tasks under ``plan`` (:func:`~labelsharing.federated.site_work.prepare_site`).
Prepare = Callable[[Sequence[str], SharedLabelPlan, int], dict]


@dataclass
class Federation:
    """What the rounds train.

    Attributes:
        config: the ``model.json`` document (history: the parent's, if any).
        network: the starting weights (fresh, or the parent's, grown if the plan grew).
        shares: task -> its share of the average (sums to 1); a task with no share is not trained.
        added: the task a joining site brings to ``parent`` (federated ``add-task``), else ``None``.
        parent: the parent model's folder when a task is added, else ``None``.
        replay: the old tasks' share of the average when a task is added (``--replay`` resolved), else ``None``.
    """

    config: dict
    network: object
    shares: dict[str, float]
    added: str | None = None
    parent: str | None = None
    replay: float | None = None


def new_federation(statistics: Mapping[str, Sequence[Mapping]], pins: Mapping | None, features: int,
                   prepare: Prepare) -> Federation:
    """A new model of every site's tasks: the plan and input size from the statistics, a fresh
    network (seed the torch generator first), every task an equal share."""
    plan = plan_from_statistics(statistics, pins)
    input_size = input_size_from_statistics(statistics)
    entries = prepare(list(statistics), plan, input_size)
    architecture = default_architecture(plan.n_shared + 1, features)
    network = build_network(architecture)
    config = build_model_config(architecture, input_size, plan,
                                dict(sorted(entries.items())), parameters=sum(p.numel() for p in network.parameters()),
                                versions=package_versions())
    return Federation(config, network, {task: 1.0 / len(plan.task_names) for task in plan.task_names})


def joining_federation(parent_dir: str | Path, statistics: Mapping[str, Sequence[Mapping]], pins: Mapping | None,
                       replay: float | str, prepare: Prepare, log) -> Federation:
    """The model at ``parent_dir`` extended by the one task a site holds that the model lacks, as
    ``add-task`` extends it (:func:`labelsharing.train.extend_model`: old tasks keep their shared
    labels, the output layer grows if needed; no look-alike check, which needs images), and the
    shares of ``add-task``'s replay: ``1 - replay`` for the new task, ``replay`` split evenly over
    the old tasks, each replayed at its own site.

    ``replay`` :data:`EQUAL_REPLAY` (``"tasks"``, the default) gives every task, the new one
    included, an equal share: ``K / (K + 1)`` for K replayed old tasks. Federated sites drift
    apart within a round, so the joining site's pull weighs more than a replayed batch does in
    pooled ``add-task``: with a fixed 0.5, three old demo tasks and one joining site, the other
    X-ray task lost 0.062 held-out Dice in 15 rounds; with equal shares 0.011 (0.008 at 27 of 30
    rounds), ``benchmarks/README.md``.

    Raises:
        LabelSharingError: not exactly one new task; an old task no site holds while ``replay`` > 0;
            ``replay`` neither ``"tasks"`` nor in [0, 1).
    """
    if replay != EQUAL_REPLAY and not (isinstance(replay, (int, float)) and 0 <= replay < 1):
        raise LabelSharingError(f"--replay must be '{EQUAL_REPLAY}' or lie in [0, 1), got {replay!r}.")
    parent_dir = Path(parent_dir)
    parent = SegmentationModel.load(parent_dir, device="cpu")
    tasks, owners = _tasks_by_name(statistics), _owners(statistics)
    new = [task for task in tasks if task not in parent.config["tasks"]]
    if len(new) != 1:
        raise LabelSharingError(
            f"Adding a task federatedly needs exactly one task the model {parent_dir} lacks; the sites hold "
            f"{len(new)} ({', '.join(new) or 'none'}). Start the joining site with its one new task and the old "
            "sites with their tasks of the model.")
    name = new[0]
    absent = [task for task in parent.config["tasks"] if task not in tasks]
    if absent and replay != 0:
        raise LabelSharingError(
            f"Replay trains the old tasks at their own sites, but no site holds {', '.join(absent)}. Start those "
            "sites too, or pass --replay 0 (forgetting is then not guarded against).")
    plan, network, architecture = extend_model(parent, name, _label_stats(tasks[name]), (pins or {}).get(name), (),
                                               tasks[name]["terminology"], log)
    for note in plan.warnings[len(parent.plan.warnings):]:
        log(f"warning: {note}")
    entries = prepare([owners[name]], plan, parent.input_size)
    config = build_model_config(architecture, parent.input_size, plan, {**parent.config["tasks"], name: entries[name]},
                                parent=str(parent_dir.resolve()), parameters=sum(p.numel() for p in network.parameters()),
                                versions=package_versions(), history=copy.deepcopy(parent.config["history"]))
    replayed = [task for task in parent.config["tasks"] if task in tasks]
    if replay == EQUAL_REPLAY:
        replay = len(replayed) / (len(replayed) + 1)
    return Federation(config, network, replay_shares(name, replayed, replay), added=name,
                      parent=str(parent_dir.resolve()), replay=float(replay))


def site_weights(sites: Mapping[str, Sequence[str]], shares: Mapping[str, float], slices: Mapping[str, int],
                 weighting: str = "tasks") -> dict[str, float]:
    """Each answering site's weight in the average of a round.

    Args:
        sites: the sites that answered -> their tasks.
        shares: task -> share (:attr:`Federation.shares`).
        slices: site -> the training slices it trained on (its ``num-examples``).
        weighting: ``tasks``: a site weighs the sum of its tasks' shares, so each task counts
            equally however many slices it has (as pooled ``train`` draws tasks); ``slices``:
            FedAvg's weighting by training slices (a 3D task with 166 slices then outweighs a
            2D task of 12 fourteen-fold).

    Example:
        >>> site_weights({"site-1": ["CT"], "site-2": ["XR"]}, {"CT": 0.5, "XR": 0.5}, {"site-1": 166, "site-2": 12})
        {'site-1': 0.5, 'site-2': 0.5}
    """
    if weighting not in SITE_WEIGHTINGS:
        raise LabelSharingError(f"--site-weighting must be one of {', '.join(SITE_WEIGHTINGS)}, got {weighting!r}.")
    if weighting == "slices":
        return {site: float(slices[site]) for site in sites}
    return {site: float(sum(shares.get(task, 0.0) for task in tasks)) for site, tasks in sites.items()}
