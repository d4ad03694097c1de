"""The Flower App of federated label sharing: a ServerApp (the coordinator) and a ClientApp (a site).

Flower's deployment runtime runs them: the SuperLink starts :data:`server_app` for a run (``flwr
run``), each site's SuperNode starts :data:`client_app` for each message it receives. The messages:

====================  ======================================  ===============================================
message (type/kind)   coordinator sends                       site answers
====================  ======================================  ===============================================
query ``statistics``  nothing                                 per task: label names, sizes, presence, slice side
query ``prepare``     plan, input size, options               its tasks' ``model.json`` entries (normalisation
                                                              statistics, slicing, labels, held-out case ids)
train                 global weights, ``model.json``, options, trained weights, ``num-examples`` (slices), loss
                      task shares, round, rounds
evaluate              global weights, ``model.json``          mean Dice; Dice per task and label (JSON)
====================  ======================================  ===============================================

Every reply is checked on arrival (:func:`check_reply`): weights must be exactly the network's
parameters (names and shapes), other records numbers or short text; anything else stops the run.
What each site sent is recorded per round in the model's history. Aggregation is Flower's own
:class:`~flwr.serverapp.strategy.FedAvg`, or :class:`~flwr.serverapp.strategy.FedProx` when
``proximal-mu`` > 0, each site weighted as the coordinator decides
(:func:`~labelsharing.federated.coordination.site_weights`: by default the sum of its tasks'
shares, every task equal, as pooled ``train`` draws tasks; or by training slices), never by a
number the site sends.

With ``add-to`` (a parent model) a joining site's task is added as ``add-task`` adds it: the
plan and network extended (:func:`~labelsharing.federated.coordination.joining_federation`),
the new task trained at its site and the old tasks replayed at theirs (the replay share is the
old tasks' weight in the average), every task's Dice measured before round 1 and after the last
round, the forgetting table stored in the history.

Sites are named by anonymous ids (``site-1``, ...: in the order of their first task's name), never
by address or folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx

from labelsharing.errors import LabelSharingError
from labelsharing.federated.coordination import EQUAL_REPLAY, SITE_WEIGHTINGS, Checkpoint, Federation, \
    history_entry, joining_federation, new_federation, round_record, site_weights
from labelsharing.federated.site_work import evaluate_locally, prepare_for_model, prepare_site, site_model, \
    site_statistics, train_locally
from labelsharing.model import SegmentationModel
from labelsharing.plan import SharedLabelPlan, read_pins
from labelsharing.train import TrainingOptions, forgetting_table

__all__ = ["server_app", "client_app", "check_reply", "DEFAULT_SETTINGS", "make_strategy", "average_round",
           "evaluation_replies"]

server_app = ServerApp()
client_app = ClientApp()

#: The run's settings (``[tool.flwr.app.config]`` of the app, ``flwr run --run-config`` overrides).
DEFAULT_SETTINGS: dict[str, object] = {
    "out": "", "rounds": 30, "local-epochs": 1, "steps-per-epoch": 10, "batch-size": 16, "lr": 2e-3,
    "features": 16, "seed": 0, "val-fraction": 0.2, "sites": 2, "min-sites": 2, "proximal-mu": 0.0,
    "pins": "", "round-timeout": 3600.0, "wait-timeout": 600.0, "force": False, "site-weighting": "tasks",
    "add-to": "", "replay": EQUAL_REPLAY,
}
#: Longest text a site may send in one record value (the statistics and task entries are JSON text).
MAX_TEXT = 1_000_000


# ----------------------------------------------------------------------------------------- site
def _datasets(context: Context) -> list[str]:
    """The site's dataset folders: the SuperNode's ``--node-config 'datasets="A:B"'`` (os.pathsep)."""
    folders = [f for f in str(context.node_config.get("datasets", "")).split(os.pathsep) if f]
    if not folders:
        raise LabelSharingError('This SuperNode has no datasets: start it with --node-config \'datasets="FOLDER"\'.')
    return folders


def _options(config: Mapping) -> TrainingOptions:
    return TrainingOptions(**json.loads(config["options"]))


def _site_id(config: Mapping, context: Context) -> str:
    return json.loads(config["sites"])[str(context.node_id)]


@client_app.query()
def answer_query(message: Message, context: Context) -> Message:
    """``statistics``: the site's label statistics; ``prepare``: its tasks' ``model.json`` entries."""
    config = message.content["config"]
    if config["kind"] == "statistics":
        answer = {"statistics": json.dumps(site_statistics(_datasets(context)))}
    else:
        plan = SharedLabelPlan.from_dict(json.loads(config["plan"]))
        _, entries = prepare_site(_datasets(context), plan, int(config["input-size"]), _options(config),
                                  _site_id(config, context))
        answer = {"tasks": json.dumps(entries)}
    return Message(RecordDict({"answer": ConfigRecord(answer)}), reply_to=message)


def _site_model_and_tasks(message: Message, context: Context):
    import torch  # noqa: F401  (Flower's to_torch_state_dict needs torch imported)

    config = message.content["config"]
    model_config = json.loads(config["model"])
    options = _options(config)
    model = site_model(model_config, message.content["arrays"].to_torch_state_dict(),
                       str(context.node_config.get("device", "auto")))
    return model, prepare_for_model(_datasets(context), model), options, config


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """Local epochs of the round from the global weights; the trained weights and the number of training slices."""
    model, tasks, options, config = _site_model_and_tasks(message, context)
    state, metrics = train_locally(model, tasks, options, float(config.get("proximal-mu", 0.0)),
                                   int(config["server-round"]), int(config["rounds"]), json.loads(config["shares"]))
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics)}), reply_to=message)


@client_app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Dice per task and label of the global weights on the site's held-out cases."""
    model, tasks, _, _ = _site_model_and_tasks(message, context)
    dice = evaluate_locally(model, tasks)
    slices = sum(t.validation_slices for t in tasks if t.name in dice)
    mean = sum(d["mean"] for d in dice.values()) / len(dice) if dice else 0.0
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": slices, "dice": float(mean)}),
                               "dice": ConfigRecord({"per-task": json.dumps(dice)})}), reply_to=message)


# ---------------------------------------------------------------------------------- coordinator
def check_reply(content: RecordDict, network_shapes: Mapping[str, tuple] | None = None) -> dict:
    """What a site sent, summarised; refuses anything but the network's weights, numbers and short text.

    Args:
        content: a reply's records.
        network_shapes: parameter name -> shape of the network; ``None`` when no weights are expected.

    Returns:
        ``{"arrays": number of arrays, "array_bytes": bytes, "metrics": [keys], "text": {key: characters}}``.

    Raises:
        LabelSharingError: an array that is not one of the network's parameters with its shape, or
            a text value longer than :data:`MAX_TEXT`.
    """
    summary: dict = {"arrays": 0, "array_bytes": 0, "metrics": [], "text": {}}
    for record in content.array_records.values():
        for name, array in record.items():
            expected = None if network_shapes is None else network_shapes.get(name)
            if expected is None or tuple(array.shape) != tuple(expected):
                raise LabelSharingError(f"A site sent an array '{name}' of shape {tuple(array.shape)} that is not a "
                                        "parameter of the network; the run stops (only weights may leave a site).")
            summary["arrays"] += 1
            summary["array_bytes"] += len(array.data)
    for record in content.metric_records.values():
        summary["metrics"] += sorted(record.keys())
    for record in content.config_records.values():
        for key, value in record.items():
            if not isinstance(value, (str, int, float, bool)) or (isinstance(value, str) and len(value) > MAX_TEXT):
                raise LabelSharingError(f"A site sent '{key}' ({type(value).__name__}) where only numbers and short "
                                        "text are expected; the run stops.")
            summary["text"][key] = len(value) if isinstance(value, str) else 1
    return summary


def _log(text: str) -> None:
    print(f"[labelsharing] {text}", flush=True)


def _wait_for_sites(grid: Grid, wanted: int, minimum: int, timeout: float) -> list[int]:
    """The connected SuperNodes once ``wanted`` are there, or at least ``minimum`` after ``timeout`` s."""
    start = time.monotonic()
    while True:
        nodes = sorted(grid.get_node_ids())
        waited = time.monotonic() - start
        if len(nodes) >= wanted or (waited >= timeout and len(nodes) >= minimum):
            return nodes
        if waited >= timeout:
            raise LabelSharingError(f"Only {len(nodes)} site(s) connected within {timeout:g} s; at least {minimum} "
                                    "are needed (--min-sites). Start the sites' SuperNodes, then run again.")
        time.sleep(1.0)


def _ask(grid: Grid, nodes: Iterable[int], message_type: str, records: RecordDict, timeout: float) -> dict[int, Message]:
    """Send one message to each node; node id -> its reply (failures logged, left out)."""
    messages = [Message(records, dst_node_id=node, message_type=message_type) for node in nodes]
    answers = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            _log(f"a site failed to answer ({reply.error.reason})")
        else:
            answers[reply.metadata.src_node_id] = reply
    return answers


@server_app.main()
def coordinate(grid: Grid, context: Context) -> None:
    """Plan from the sites' statistics (or extend ``add-to``), train ``rounds`` rounds, write the model folder."""
    settings = {**DEFAULT_SETTINGS, **dict(context.run_config)}
    try:
        run_federation(grid, settings)
    except LabelSharingError as exc:
        _log(f"error: {exc}")
        raise


def make_strategy(settings: Mapping, minimum: int) -> FedAvg:
    """Flower's FedAvg, or FedProx when ``proximal-mu`` > 0, averaging by the ``weight`` the
    coordinator writes into each reply (:func:`average_round`)."""
    mu = float(settings["proximal-mu"])
    kind = dict(min_train_nodes=minimum, min_evaluate_nodes=minimum, min_available_nodes=minimum,
                weighted_by_key="weight")
    return FedProx(proximal_mu=mu, **kind) if mu > 0 else FedAvg(**kind)


def average_round(strategy: FedAvg, number: int, replies: Sequence[Message], weights: Sequence[float]):
    """The strategy's average of the replies' weights, reply ``i`` weighted by ``weights[i]``.

    Each weight is written into its reply's metrics as ``weight`` (the strategy's
    ``weighted_by_key``) by the coordinator, so no site chooses its own weight.

    Returns:
        ``(ArrayRecord, MetricRecord)``: the averaged weights, and the weighted mean of the metrics.
    """
    for reply, weight in zip(replies, weights, strict=True):
        reply.content["metrics"]["weight"] = float(weight)
    return strategy.aggregate_train(number, list(replies))


def _evaluate(grid: Grid, strategy: FedAvg, number: int, arrays: ArrayRecord, config: ConfigRecord,
              nodes: set[int], timeout: float, site_of: Mapping[int, str]) -> dict:
    """Dice per task of ``arrays`` on the sites' held-out cases (task -> ``{"mean", "labels"}``); a site
    that fails or does not answer is named in the log."""
    messages = [m for m in strategy.configure_evaluate(number, arrays, config, grid) if m.metadata.dst_node_id in nodes]
    dice, problems = evaluation_replies(grid.send_and_receive(messages, timeout=timeout),
                                        [m.metadata.dst_node_id for m in messages], site_of)
    for problem in problems:
        _log(f"round {number}: {problem}" if number else f"before round 1: {problem}")
    return dice


def evaluation_replies(replies: Iterable, asked: Sequence[int], site_of: Mapping[int, str]) -> tuple[dict, list[str]]:
    """Dice per task from the sites' evaluation replies, and one line per site that failed or did not answer.

    Args:
        replies: Flower ``Message`` replies (``has_error()``, ``error.reason``, ``metadata.src_node_id``, ``content``).
        asked: the node ids asked to evaluate.
        site_of: node id -> anonymous site id.
    """
    dice: dict = {}
    problems, answered = [], set()
    for reply in replies:
        node = reply.metadata.src_node_id
        answered.add(node)
        if reply.has_error():
            problems.append(f"{site_of.get(node, node)} could not evaluate: {reply.error.reason}")
            continue
        check_reply(reply.content)
        dice.update(json.loads(reply.content["dice"]["per-task"]))
    problems += [f"no evaluation from {site_of.get(node, node)}" for node in asked if node not in answered]
    return dice, problems


def run_federation(grid: Grid, settings: Mapping) -> SegmentationModel:
    """The coordinator's whole run (see the module docstring); returns the model written to ``settings["out"]``."""
    import torch

    if not settings["out"]:
        raise LabelSharingError("No output folder: set the run's 'out' (labelsharing federated ... --out MODEL).")
    weighting = str(settings["site-weighting"])
    if weighting not in SITE_WEIGHTINGS:
        raise LabelSharingError(f"--site-weighting must be one of {', '.join(SITE_WEIGHTINGS)}, got {weighting!r}.")
    if settings["add-to"] and weighting == "slices":
        raise LabelSharingError("Adding a task weights the sites by --replay's task shares; --site-weighting slices "
                                "would override them. Leave --site-weighting at tasks.")
    out, timeout = Path(str(settings["out"])), float(settings["round-timeout"])
    minimum = int(settings["min-sites"])
    nodes = _wait_for_sites(grid, max(minimum, int(settings["sites"])), minimum, float(settings["wait-timeout"]))
    replies = _ask(grid, nodes, "query", RecordDict({"config": ConfigRecord({"kind": "statistics"})}), timeout)
    for content in (r.content for r in replies.values()):
        check_reply(content)
    by_node = {node: json.loads(r.content["answer"]["statistics"]) for node, r in replies.items()}
    order = sorted(by_node, key=lambda node: min(task["name"] for task in by_node[node]))
    site_of = {node: f"site-{i}" for i, node in enumerate(order, 1)}
    node_of = {site: node for node, site in site_of.items()}
    statistics = {site_of[node]: by_node[node] for node in order}
    sites = {site: [task["name"] for task in tasks] for site, tasks in statistics.items()}
    _log(f"{len(sites)} site(s): " + "; ".join(f"{s}: {', '.join(t)}" for s, t in sites.items()))
    pins = read_pins(settings["pins"]) if settings["pins"] else None
    base = dict(epochs=int(settings["local-epochs"]), steps_per_epoch=int(settings["steps-per-epoch"]),
                batch_size=int(settings["batch-size"]), learning_rate=float(settings["lr"]),
                features=int(settings["features"]), seed=int(settings["seed"]),
                val_fraction=float(settings["val-fraction"]))
    anonymous = json.dumps({str(node): site for node, site in site_of.items()})

    def prepare(asked: Sequence[str], plan: SharedLabelPlan, input_size: int) -> dict:
        _log(f"plan: {plan.n_shared} shared labels for {len(plan.task_names)} tasks; input {input_size}x{input_size}")
        options = json.dumps(vars(TrainingOptions(**base, input_size=input_size)))
        prepared = _ask(grid, [node_of[site] for site in asked], "query", RecordDict({"config": ConfigRecord(
            {"kind": "prepare", "plan": json.dumps(plan.to_dict()), "input-size": input_size, "sites": anonymous,
             "options": options})}), timeout)
        if len(prepared) < len(asked):
            raise LabelSharingError("A site failed while preparing its tasks (see the log above); nothing was trained.")
        entries = {}
        for reply in prepared.values():
            check_reply(reply.content)
            entries.update(json.loads(reply.content["answer"]["tasks"]))
        return entries

    torch.manual_seed(int(settings["seed"]))
    if settings["add-to"]:
        replay = settings["replay"] if settings["replay"] == EQUAL_REPLAY else float(settings["replay"])
        federation = joining_federation(str(settings["add-to"]), statistics, pins, replay, prepare, _log)
    else:
        federation = new_federation(statistics, pins, int(settings["features"]), prepare)
    return _train_rounds(grid, settings, federation, sites, site_of, out, timeout, minimum, base, anonymous)


def _train_rounds(grid: Grid, settings: Mapping, federation: Federation, sites: Mapping[str, list], site_of: Mapping,
                  out: Path, timeout: float, minimum: int, base: Mapping, anonymous: str) -> SegmentationModel:
    """The rounds (resumed from the checkpoint if there is one), then the model folder."""
    import torch

    config, network = federation.config, federation.network
    options = TrainingOptions(**base, input_size=int(config["input_size"][0]))
    shapes = {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}
    checkpoint = Checkpoint(out)
    identity = {**{k: v for k, v in settings.items() if k not in ("round-timeout", "wait-timeout", "force")},
                "sites": sites, "plan": config["plan"]}
    saved = checkpoint.load(identity)
    rounds: list[dict] = []
    before: dict | None = None
    arrays = ArrayRecord(network.state_dict())
    if saved is not None:
        state, weights = saved
        rounds, before = state["rounds"], state.get("before")
        arrays = ArrayRecord({name: torch.from_numpy(weights[name]) for name in shapes})
        _log(f"resuming after round {len(rounds)} from {checkpoint.folder}")
    strategy = make_strategy(settings, minimum)
    train_config = ConfigRecord({"model": json.dumps(config), "sites": anonymous, "options": json.dumps(vars(options)),
                                 "shares": json.dumps(federation.shares), "rounds": int(settings["rounds"])})
    planned = set(site_of)
    trainers = {node for node in planned if any(federation.shares.get(t, 0) > 0 for t in sites[site_of[node]])}
    if federation.added and before is None:  # add-task's "before": the parent (grown) on every held-out case
        before = _evaluate(grid, strategy, 0, arrays, train_config, planned, timeout, site_of)
        _log("before round 1: val Dice " + "  ".join(f"{t} {d['mean']:.3f}" for t, d in sorted(before.items())))
        checkpoint.save({"settings": identity, "rounds": rounds, "before": before},
                        {name: tensor.numpy() for name, tensor in arrays.to_torch_state_dict().items()})
    for number in range(len(rounds) + 1, int(settings["rounds"]) + 1):
        _log(f"round {number}/{settings['rounds']}")
        start = time.monotonic()
        messages = [m for m in strategy.configure_train(number, arrays, train_config, grid)
                    if m.metadata.dst_node_id in trainers]
        asked = [site_of[m.metadata.dst_node_id] for m in messages]
        answered = []
        for reply in grid.send_and_receive(messages, timeout=timeout):
            if reply.has_error():
                _log(f"round {number}: {site_of.get(reply.metadata.src_node_id, 'a site')} failed: {reply.error.reason}")
            else:
                answered.append(reply)
        summaries = {site_of[r.metadata.src_node_id]: check_reply(r.content, shapes) for r in answered}
        missing = sorted(set(asked) - set(summaries))
        if missing:
            _log(f"round {number}: no answer from {', '.join(missing)}; the round goes on with "
                 f"{', '.join(sorted(summaries)) or 'no site'}")
        if len(answered) < min(minimum, len(trainers)):  # with --replay 0 only the joining site trains
            raise LabelSharingError(f"Round {number}: {len(answered)} site(s) answered, fewer than --min-sites "
                                    f"{minimum}. The rounds so far are saved in {checkpoint.folder}; start the sites "
                                    "again and rerun the same command to resume.")
        answering = [site_of[r.metadata.src_node_id] for r in answered]
        weights = site_weights({site: sites[site] for site in answering}, federation.shares,
                               {site_of[r.metadata.src_node_id]: int(r.content["metrics"]["num-examples"])
                                for r in answered}, str(settings["site-weighting"]))
        arrays, train_metrics = average_round(strategy, number, answered, [weights[site] for site in answering])
        dice = _evaluate(grid, strategy, number, arrays, train_config, planned, timeout, site_of)
        bytes_down = arrays.count_bytes() * len(messages)
        record = round_record(number, asked, sorted(summaries), float(train_metrics["loss"]), dice,
                              bytes_down, sum(s["array_bytes"] for s in summaries.values()),
                              time.monotonic() - start)
        total = sum(weights.values())
        record["weights"] = {site: round(weights[site] / total, 4) for site in sorted(weights)}
        record["replies"] = summaries
        rounds.append(record)
        _log(f"round {number}: loss {record['loss']:.3f} | val Dice "
             + "  ".join(f"{t} {d['mean']:.3f}" for t, d in sorted(dice.items())))
        checkpoint.save({"settings": identity, "rounds": rounds, "before": before},
                        {name: tensor.numpy() for name, tensor in arrays.to_torch_state_dict().items()})

    network.load_state_dict(arrays.to_torch_state_dict())
    entry = history_entry(settings, sites, rounds)
    if federation.added:
        after = dict(rounds[-1]["val_dice"]) if rounds else {}
        unmeasured = {node for node in planned
                      if any(t in (before or {}) and t not in after for t in sites[site_of[node]])}
        if rounds and unmeasured:  # the table must come from the written weights: ask those sites once more
            _log("measuring the written weights again at " + ", ".join(sorted(site_of[n] for n in unmeasured)))
            after.update(_evaluate(grid, strategy, len(rounds), arrays, train_config, unmeasured, timeout, site_of))
        for task in sorted(set(before or {}) - set(after)):
            _log(f"warning: {task} was not measured after the last round (its site did not answer); it is left out "
                 "of the forgetting table")
        forgetting = {task: {"before": before[task]["mean"], "after": after[task]["mean"]}
                      for task in after if task in before}
        entry.update(added_task=federation.added, replay=federation.replay, parent=federation.parent,
                     forgetting=forgetting)
        _log(forgetting_table(forgetting, new_task=federation.added))
    config["history"].append(entry)
    model = SegmentationModel(config=config, network=network)
    model.save(out, overwrite=bool(settings["force"]))
    checkpoint.remove()
    _log(f"model written to {out}")
    return model
