"""The Flower App of federated label sharing: a ServerApp (the coordinator) and a ClientApp (a site).

Flower's deployment runtime runs them: the SuperLink starts :data:`server_app` for a run (``flwr
run``), each site's SuperNode starts :data:`client_app` for each message it receives. The messages:

====================  ======================================  ===============================================
message (type/kind)   coordinator sends                       site answers
====================  ======================================  ===============================================
query ``statistics``  nothing                                 per task: label names, sizes, presence, slice side
query ``prepare``     plan, input size, options               its tasks' ``model.json`` entries (normalisation
                                                              statistics, slicing, labels, held-out case ids)
train                 global weights, ``model.json``, options trained weights, ``num-examples`` (slices), loss
evaluate              global weights, ``model.json``          mean Dice; Dice per task and label (JSON)
====================  ======================================  ===============================================

Every reply is checked on arrival (:func:`check_reply`): weights must be exactly the network's
parameters (names and shapes), other records numbers or short text; anything else stops the run.
What each site sent is recorded per round in the model's history. Aggregation is Flower's own
:class:`~flwr.serverapp.strategy.FedAvg` (weighted by training slices), or
:class:`~flwr.serverapp.strategy.FedProx` when ``proximal-mu`` > 0.

Sites are named by anonymous ids (``site-1``, ...: in the order of their first task's name), never
by address or folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx

from labelsharing.errors import LabelSharingError
from labelsharing.federated.coordination import Checkpoint, history_entry, input_size_from_statistics, \
    plan_from_statistics, round_record
from labelsharing.federated.site_work import evaluate_locally, prepare_site, site_model, site_statistics, train_locally
from labelsharing.model import SegmentationModel, build_model_config, build_network, default_architecture, \
    package_versions
from labelsharing.plan import SharedLabelPlan, read_pins
from labelsharing.train import TrainingOptions

__all__ = ["server_app", "client_app", "check_reply", "DEFAULT_SETTINGS"]

server_app = ServerApp()
client_app = ClientApp()

#: The run's settings (``[tool.flwr.app.config]`` of the app, ``flwr run --run-config`` overrides).
DEFAULT_SETTINGS: dict[str, object] = {
    "out": "", "rounds": 5, "local-epochs": 1, "steps-per-epoch": 50, "batch-size": 16, "lr": 2e-3,
    "features": 16, "seed": 0, "val-fraction": 0.2, "sites": 2, "min-sites": 2, "proximal-mu": 0.0,
    "pins": "", "round-timeout": 3600.0, "wait-timeout": 600.0, "force": False,
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
    tasks, _ = prepare_site(_datasets(context), model.plan, model.input_size, options, _site_id(config, context))
    return model, tasks, options, config


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """Local epochs from the global weights; the trained weights and the number of training slices."""
    model, tasks, options, config = _site_model_and_tasks(message, context)
    state, metrics = train_locally(model, tasks, options, float(config.get("proximal-mu", 0.0)))
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
    """Plan from the sites' statistics, train ``rounds`` rounds, write the model folder."""
    settings = {**DEFAULT_SETTINGS, **dict(context.run_config)}
    try:
        run_federation(grid, settings)
    except LabelSharingError as exc:
        _log(f"error: {exc}")
        raise


def run_federation(grid: Grid, settings: Mapping) -> SegmentationModel:
    """The coordinator's whole run (see the module docstring); returns the model written to ``settings["out"]``."""
    import torch

    if not settings["out"]:
        raise LabelSharingError("No output folder: set the run's 'out' (labelsharing federated ... --out MODEL).")
    out, timeout = Path(str(settings["out"])), float(settings["round-timeout"])
    minimum = int(settings["min-sites"])
    nodes = _wait_for_sites(grid, max(minimum, int(settings["sites"])), minimum, float(settings["wait-timeout"]))
    replies = _ask(grid, nodes, "query", RecordDict({"config": ConfigRecord({"kind": "statistics"})}), timeout)
    for content in (r.content for r in replies.values()):
        check_reply(content)
    by_node = {node: json.loads(r.content["answer"]["statistics"]) for node, r in replies.items()}
    order = sorted(by_node, key=lambda node: min(task["name"] for task in by_node[node]))
    site_of = {node: f"site-{i}" for i, node in enumerate(order, 1)}
    statistics = {site_of[node]: by_node[node] for node in order}
    sites = {site: [task["name"] for task in tasks] for site, tasks in statistics.items()}
    _log(f"{len(sites)} site(s): " + "; ".join(f"{s}: {', '.join(t)}" for s, t in sites.items()))
    plan = plan_from_statistics(statistics, read_pins(settings["pins"]) if settings["pins"] else None)
    input_size = input_size_from_statistics(statistics)
    options = TrainingOptions(epochs=int(settings["local-epochs"]), steps_per_epoch=int(settings["steps-per-epoch"]),
                              batch_size=int(settings["batch-size"]), learning_rate=float(settings["lr"]),
                              features=int(settings["features"]), seed=int(settings["seed"]),
                              val_fraction=float(settings["val-fraction"]), input_size=input_size)
    shared = {"sites": json.dumps({str(node): site for node, site in site_of.items()}),
              "options": json.dumps(vars(options))}
    _log(f"plan: {plan.n_shared} shared labels for {len(plan.task_names)} tasks; input {input_size}x{input_size}")

    prepared = _ask(grid, order, "query", RecordDict({"config": ConfigRecord(
        {"kind": "prepare", "plan": json.dumps(plan.to_dict()), "input-size": input_size, **shared})}), timeout)
    entries = {}
    for reply in prepared.values():
        check_reply(reply.content)
        entries.update(json.loads(reply.content["answer"]["tasks"]))
    if len(prepared) < len(order):
        raise LabelSharingError("A site failed while preparing its tasks (see the log above); nothing was trained.")
    torch.manual_seed(options.seed)
    architecture = default_architecture(plan.n_shared + 1, options.features)
    network = build_network(architecture)
    config = build_model_config(architecture, input_size, plan, dict(sorted(entries.items())),
                                parameters=sum(p.numel() for p in network.parameters()), versions=package_versions())
    shapes = {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}

    checkpoint = Checkpoint(out)
    identity = {**{k: v for k, v in settings.items() if k not in ("round-timeout", "wait-timeout", "force")},
                "sites": sites, "plan": plan.to_dict()}
    saved = checkpoint.load(identity)
    rounds: list[dict] = []
    arrays = ArrayRecord(network.state_dict())
    if saved is not None:
        state, weights = saved
        rounds = state["rounds"]
        arrays = ArrayRecord({name: torch.from_numpy(weights[name]) for name in shapes})
        _log(f"resuming after round {len(rounds)} from {checkpoint.folder}")
    mu = float(settings["proximal-mu"])
    kind = dict(min_train_nodes=minimum, min_evaluate_nodes=minimum, min_available_nodes=minimum)
    strategy = FedProx(proximal_mu=mu, **kind) if mu > 0 else FedAvg(**kind)
    train_config = ConfigRecord({"model": json.dumps(config), **shared})
    planned = set(order)
    for number in range(len(rounds) + 1, int(settings["rounds"]) + 1):
        _log(f"round {number}/{settings['rounds']}")
        start = time.monotonic()
        messages = [m for m in strategy.configure_train(number, arrays, train_config, grid)
                    if m.metadata.dst_node_id in planned]
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
        if len(answered) < minimum:
            raise LabelSharingError(f"Round {number}: {len(answered)} site(s) answered, fewer than --min-sites "
                                    f"{minimum}. The rounds so far are saved in {checkpoint.folder}; start the sites "
                                    "again and rerun the same command to resume.")
        new_arrays, train_metrics = strategy.aggregate_train(number, answered)
        arrays = new_arrays
        evaluations = list(grid.send_and_receive(
            [m for m in strategy.configure_evaluate(number, arrays, train_config, grid)
             if m.metadata.dst_node_id in planned], timeout=timeout))
        strategy.aggregate_evaluate(number, evaluations)  # Flower's weighted mean, logged by the strategy
        dice = {}
        for reply in (r for r in evaluations if not r.has_error()):
            check_reply(reply.content)
            dice.update(json.loads(reply.content["dice"]["per-task"]))
        bytes_down = arrays.count_bytes() * len(messages)
        record = round_record(number, asked, sorted(summaries), float(train_metrics["loss"]), dice,
                              bytes_down, sum(s["array_bytes"] for s in summaries.values()),
                              time.monotonic() - start)
        record["replies"] = summaries
        rounds.append(record)
        _log(f"round {number}: loss {record['loss']:.3f} | val Dice "
             + "  ".join(f"{t} {d['mean']:.3f}" for t, d in sorted(dice.items())))
        checkpoint.save({"settings": identity, "rounds": rounds},
                        {name: tensor.numpy() for name, tensor in arrays.to_torch_state_dict().items()})

    network.load_state_dict(arrays.to_torch_state_dict())
    config["history"].append(history_entry(settings, sites, rounds))
    model = SegmentationModel(config=config, network=network)
    model.save(out, overwrite=bool(settings["force"]))
    checkpoint.remove()
    _log(f"model written to {out}")
    return model
