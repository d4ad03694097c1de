"""What a federated round computes, without Flower's runtime: each site's weight in the average,
the learning-rate schedule of a round, and the plan of a site joining a trained model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402

from labelsharing.demo import make_demo_datasets  # noqa: E402
from labelsharing.errors import LabelSharingError  # noqa: E402
from labelsharing.federated import DEFAULT_SETTINGS, average_round, evaluation_replies, joining_federation, \
    make_strategy, plan_from_statistics, prepare_site, site_model, site_statistics, site_weights, train_locally  # noqa: E402
from labelsharing.model import SegmentationModel, build_model_config, default_architecture  # noqa: E402
from labelsharing.plan import summarise_tasks  # noqa: E402
from labelsharing.train import TrainingOptions, extend_model, train  # noqa: E402

TINY = dict(batch_size=2, input_size=32, features=4, device="cpu")


def _reply(value: float, slices: int) -> Message:
    """A site's training reply: every weight ``value``, ``slices`` training slices."""
    weights = {"w": torch.full((3, 3), value), "b": torch.full((3,), value)}
    return Message(RecordDict({"arrays": ArrayRecord(weights),
                               "metrics": MetricRecord({"num-examples": slices, "loss": value})}),
                   dst_node_id=1, message_type="train")


def test_sites_are_averaged_with_equal_shares_per_task_not_by_training_slices():
    # The demo's CT site trains on 166 slices, an X-ray site on 12: weighted by slices the X-ray
    # task counts for 7 % of the average, where pooled train draws both tasks equally.
    sites, slices = {"site-1": ["AbdomenCT"], "site-2": ["KneeXR"]}, {"site-1": 166, "site-2": 12}
    shares = {"AbdomenCT": 0.5, "KneeXR": 0.5}
    strategy = make_strategy(DEFAULT_SETTINGS, minimum=2)
    assert DEFAULT_SETTINGS["site-weighting"] == "tasks"

    weights = site_weights(sites, shares, slices)
    assert weights == {"site-1": 0.5, "site-2": 0.5}
    arrays, metrics = average_round(strategy, 1, [_reply(1.0, 166), _reply(0.0, 12)], list(weights.values()))
    assert all(torch.allclose(t, torch.full_like(t, 0.5)) for t in arrays.to_torch_state_dict().values())
    assert metrics["loss"] == pytest.approx(0.5)

    by_slices = site_weights(sites, shares, slices, "slices")  # the option: FedAvg's usual weighting
    arrays, _ = average_round(strategy, 1, [_reply(1.0, 166), _reply(0.0, 12)], list(by_slices.values()))
    assert arrays.to_torch_state_dict()["w"][0, 0].item() == pytest.approx(166 / 178)

    # A site with two tasks weighs two shares; add-task's replay shares weigh the joining site.
    assert site_weights({"site-1": ["A", "B"], "site-2": ["C"]}, {"A": 1 / 3, "B": 1 / 3, "C": 1 / 3}, {}) == \
        pytest.approx({"site-1": 2 / 3, "site-2": 1 / 3})
    assert site_weights({"site-1": ["A"], "site-2": ["B"], "site-3": ["New"]},
                        {"New": 0.5, "A": 0.25, "B": 0.25}, {}) == {"site-1": 0.25, "site-2": 0.25, "site-3": 0.5}
    with pytest.raises(LabelSharingError, match="--site-weighting must be one of tasks, slices"):
        site_weights(sites, shares, slices, "cases")


def _expected_rates(lr: float, steps: range, total: int, warmup: int) -> list[float]:
    """MONAI's WarmupCosineSchedule written out: linear warm-up from 0, then half a cosine to 0."""
    return [lr * (s / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
            for s in steps]


def test_a_round_continues_the_whole_runs_learning_rate_schedule(tmp_path):
    [folder] = [f for f in make_demo_datasets(tmp_path / "data", cases=3) if f.name.endswith("KneeXR")]
    statistics = {"site-1": site_statistics([folder])}
    plan = plan_from_statistics(statistics)
    options = TrainingOptions(epochs=1, steps_per_epoch=4, learning_rate=1e-3, warmup_fraction=0.25, seed=3, **TINY)
    tasks, entries = prepare_site([folder], plan, 32, options, "site-1")
    config = build_model_config(default_architecture(plan.n_shared + 1, 4), 32, plan, entries)
    rates = []
    hook = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: rates.append(optimizer.param_groups[0]["lr"]))
    try:  # round 2 of 3, one local epoch of 4 steps: global steps 4..7 of 12, warm-up 3 steps
        state, metrics = train_locally(site_model(config, None, "cpu"), tasks, options, round_number=2, rounds=3,
                                       log=lambda message: None)
    finally:
        hook.remove()
    assert rates == pytest.approx(_expected_rates(1e-3, range(4, 8), total=12, warmup=3))
    assert metrics["num-examples"] == sum(len(t.images) for t in tasks)


def test_a_joining_sites_task_is_planned_as_add_task_plans_it(tmp_path):
    folders = make_demo_datasets(tmp_path / "data", cases=3)
    parent_dir = tmp_path / "parent"
    train(folders[:2], parent_dir, TrainingOptions(epochs=1, steps_per_epoch=1, **TINY), log=lambda m: None)
    parent = SegmentationModel.load(parent_dir, device="cpu")
    statistics = {f"site-{i}": site_statistics([f]) for i, f in enumerate(folders[:3], 1)}
    new = statistics["site-3"][0]["name"]
    asked = []

    def prepare(sites, plan, input_size):
        asked.append(sites)
        tasks, entries = prepare_site(folders[2:3], plan, input_size, TrainingOptions(**TINY), "site-3")
        return entries

    federation = joining_federation(parent_dir, statistics, None, 0.5, prepare, log=lambda m: None)
    summary = summarise_tasks([folders[2]])[0]
    plan, _, architecture = extend_model(parent, new, summary.stats, None, (), summary.task.terminology,
                                         log=lambda m: None)
    assert federation.config["plan"] == plan.to_dict()  # the same call add-task makes, from statistics alone
    assert federation.config["architecture"] == architecture and asked == [["site-3"]]
    assert {t: federation.config["tasks"][t] for t in parent.config["tasks"]} == parent.config["tasks"]
    assert federation.shares == {new: 0.5, **{t: 0.25 for t in parent.config["tasks"]}}
    assert federation.added == new and federation.config["history"] == parent.config["history"]

    with pytest.raises(LabelSharingError, match="exactly one task the model .* lacks; the sites hold 2"):
        joining_federation(parent_dir, {**statistics, "site-4": site_statistics([folders[3]])}, None, 0.5, prepare,
                           log=lambda m: None)
    without_old = {"site-1": statistics["site-1"], "site-3": statistics["site-3"]}
    with pytest.raises(LabelSharingError, match="no site holds"):
        joining_federation(parent_dir, without_old, None, 0.5, prepare, log=lambda m: None)
    assert joining_federation(parent_dir, without_old, None, 0.0, prepare, log=lambda m: None).shares[new] == 1.0
    # the default: every task an equal share, the joining one included (as --site-weighting tasks weighs a round)
    assert DEFAULT_SETTINGS["replay"] == "tasks"
    equal = joining_federation(parent_dir, statistics, None, "tasks", prepare, log=lambda m: None)
    assert equal.shares == pytest.approx({new: 1 / 3, **{t: 1 / 3 for t in parent.config["tasks"]}})
    assert equal.replay == pytest.approx(2 / 3)
    with pytest.raises(LabelSharingError, match="--replay must be 'tasks' or lie in"):
        joining_federation(parent_dir, statistics, None, "most", prepare, log=lambda m: None)


def test_a_site_joining_a_model_that_keeps_look_alikes_apart_keeps_its_groups(tmp_path, monkeypatch):
    """The coordinator has no images, so no look-alike check: the joining task is outside every group,
    and the parent's groups (with their left-out channels) are kept."""
    from labelsharing.data import Appearance

    folders = make_demo_datasets(tmp_path / "data", cases=3)
    names = [f.name.split("_", 1)[1] for f in folders]
    monkeypatch.setattr(Appearance, "groups", lambda self: [names[:2]])  # as if the CT and MR tasks looked alike
    parent_dir = tmp_path / "parent"
    train(folders[:2], parent_dir, TrainingOptions(epochs=1, steps_per_epoch=1, **TINY), log=lambda m: None,
          keep_apart=True)
    parent = SegmentationModel.load(parent_dir, device="cpu")
    assert parent.plan.apart == [names[:2]] and parent.plan.n_shared == 7  # 4 + 3 labels, none matched
    statistics = {f"site-{i}": site_statistics([f]) for i, f in enumerate(folders[:3], 1)}

    def prepare(sites, plan, input_size):
        return prepare_site(folders[2:3], plan, input_size, TrainingOptions(**TINY), "site-3")[1]

    federation = joining_federation(parent_dir, statistics, None, 0.5, prepare, log=lambda m: None)
    plan = SegmentationModel(config=federation.config, network=federation.network).plan
    assert federation.config["plan"]["apart"] == [names[:2]] and plan.n_shared == 7
    assert plan.left_out(names[0]) == parent.plan.left_out(names[0]) == [5, 6, 7] and plan.left_out(names[2]) == []


def test_a_site_that_fails_or_skips_an_evaluation_is_named():
    """A last round measured at one site of four once wrote a forgetting table of that site's task alone,
    and the log named no one. Replies fake only what the coordinator reads of Flower's ``Message``."""
    from types import SimpleNamespace

    def reply(node, dice=None, reason=None):
        content = None if dice is None else RecordDict({"dice": ConfigRecord({"per-task": json.dumps(dice)})})
        return SimpleNamespace(metadata=SimpleNamespace(src_node_id=node), content=content,
                               has_error=lambda: reason is not None, error=SimpleNamespace(reason=reason))

    site_of = {11: "site-1", 12: "site-2", 13: "site-3"}
    dice, problems = evaluation_replies([reply(11, {"A": {"mean": 0.9}}), reply(12, reason="ClientApp crashed")],
                                        [11, 12, 13], site_of)
    assert dice == {"A": {"mean": 0.9}}
    assert problems == ["site-2 could not evaluate: ClientApp crashed", "no evaluation from site-3"]
