"""Keeping look-alike tasks apart (issue #9): different structures on different shared labels,
each left out of the other's softmax; opt-in, stored with the plan."""

from __future__ import annotations

import json

import pytest

from labelsharing.errors import LabelSharingError
from labelsharing.plan import plan_table
from labelsharing.plan.shared_labels import LabelStats, SharedLabelPlan


def stats(**sizes: float) -> dict[str, LabelStats]:
    return {name: LabelStats(value=i + 1, relative_size=size, presence=1.0) for i, (name, size) in enumerate(sizes.items())}


def shared(plan: SharedLabelPlan, task: str) -> dict[str, int]:
    return {n: a.shared for n, a in plan.labels(task).items()}


# Like the real CT pair: abdomen's vertebrae and chest's heart rank first; both label the liver.
TASKS = {"abdomen": stats(vertebrae=0.3, liver=0.2), "chest": stats(heart=0.4, liver=0.1),
         "knee": stats(femur=0.5, tibia=0.1)}
GROUPS = [["abdomen", "chest"]]


def test_default_plan_mixes_look_alike_structures_on_one_shared_label():
    plan = SharedLabelPlan.build(TASKS, look_alike=GROUPS)
    assert shared(plan, "abdomen") == {"vertebrae": 1, "liver": 2} and shared(plan, "chest") == {"heart": 1, "liver": 2}
    assert plan.n_shared == 2 and plan.left_out("abdomen") == [] and "apart" not in plan.to_dict()
    assert any("look alike" in w and "vertebrae" in w for w in plan.warnings)
    assert SharedLabelPlan.build(TASKS, look_alike=GROUPS, keep_apart=False) == plan


def test_apart_puts_unmatched_labels_on_distinct_shared_labels_and_grows():
    plan = SharedLabelPlan.build(TASKS, look_alike=GROUPS, keep_apart=True)
    assert shared(plan, "abdomen") == {"vertebrae": 1, "liver": 2}
    assert shared(plan, "chest") == {"liver": 2, "heart": 3}  # the matched liver still shared
    assert plan.n_shared == 3 and plan.apart == GROUPS
    assert shared(plan, "knee") == {"femur": 1, "tibia": 2}  # outside the group: as without the mode
    assert not any("look alike" in w for w in plan.warnings)  # nothing mixed left to warn about


def test_apart_tasks_leave_their_partners_channels_out_of_the_softmax():
    plan = SharedLabelPlan.build(TASKS, look_alike=GROUPS, keep_apart=True)
    assert plan.left_out("abdomen") == [3] and plan.left_out("chest") == [1] and plan.left_out("knee") == []


def test_user_pins_win_and_the_rest_still_avoids_them():
    plan = SharedLabelPlan.build(TASKS, pins={"chest": {"heart": 1}}, look_alike=GROUPS, keep_apart=True)
    assert shared(plan, "chest") == {"heart": 1, "liver": 2}
    assert shared(plan, "abdomen") == {"liver": 2, "vertebrae": 3}
    mixed = SharedLabelPlan.build(TASKS, pins={"chest": {"heart": 1}, "abdomen": {"vertebrae": 1}},
                                  look_alike=GROUPS, keep_apart=True)
    assert shared(mixed, "chest")["heart"] == shared(mixed, "abdomen")["vertebrae"] == 1 and mixed.n_shared == 2
    assert mixed.left_out("abdomen") == [] and any("look alike" in w for w in mixed.warnings)


def test_apart_without_look_alike_groups_plans_as_today_but_keeps_the_mode():
    plan = SharedLabelPlan.build(TASKS, keep_apart=True)
    assert plan.to_dict() == {**SharedLabelPlan.build(TASKS).to_dict(), "apart": []}
    assert SharedLabelPlan.from_dict(plan.to_dict()).apart == []


def test_apart_groups_round_trip_through_json(tmp_path):
    plan = SharedLabelPlan.build(TASKS, look_alike=GROUPS, keep_apart=True)
    assert plan.to_dict()["apart"] == GROUPS
    plan.save_json(tmp_path / "plan.json")
    loaded = SharedLabelPlan.load_json(tmp_path / "plan.json")
    assert loaded == plan and loaded.left_out("chest") == [1]
    assert SharedLabelPlan.from_dict({**plan.to_dict(), "apart": []}).left_out("chest") == []


@pytest.mark.parametrize("groups", [[["abdomen"]], [["abdomen", "lungs"]], [["abdomen", "chest"], ["chest", "knee"]]])
def test_from_dict_refuses_broken_apart_groups(groups):
    data = {**SharedLabelPlan.build(TASKS, look_alike=GROUPS, keep_apart=True).to_dict(), "apart": groups}
    with pytest.raises(LabelSharingError, match="kept apart"):
        SharedLabelPlan.from_dict(data)


def test_add_task_to_an_apart_group_grows_the_old_partners_left_out():
    parent = SharedLabelPlan.build(TASKS, look_alike=GROUPS, keep_apart=True)
    plan = parent.add_task("thorax", stats(heart=0.3, rib=0.2), look_alike=["chest"])
    assert shared(plan, "thorax") == {"heart": 3, "rib": 4}  # heart matched; rib off every partner's labels
    assert plan.n_shared == 4 and plan.apart == [["abdomen", "chest", "thorax"]]
    assert plan.left_out("abdomen") == [3, 4] and plan.left_out("chest") == [1, 4] and plan.left_out("thorax") == [1, 2]
    for task in TASKS:
        assert shared(plan, task) == shared(parent, task)  # old tasks keep their mapping


def test_add_task_keeps_the_mode_and_can_switch_it_on():
    parent = SharedLabelPlan.build(TASKS, look_alike=GROUPS, keep_apart=True)
    outside = parent.add_task("hand", stats(bone=0.3))
    assert outside.apart == GROUPS and shared(outside, "hand") == {"bone": 1}
    today = SharedLabelPlan.build(TASKS)
    assert today.add_task("thorax", stats(rib=0.3), look_alike=["chest"]).apart is None
    switched = today.add_task("thorax", stats(rib=0.3), look_alike=["chest"], keep_apart=True)
    assert switched.apart == [["thorax", "chest"]] and shared(switched, "thorax") == {"rib": 3}
    assert switched.left_out("chest") == [3] and switched.left_out("thorax") == [1, 2]


def test_split_siblings_join_their_first_sub_tasks_apart_group():
    tasks = {"abdomen": stats(vertebrae=0.3), "C/1": stats(lung=0.4), "C/2": stats(nodule=0.01)}
    plan = SharedLabelPlan.build(tasks, look_alike=[["abdomen", "C/1"]], splits={"C": ["C/1", "C/2"]}, keep_apart=True)
    assert plan.apart == [["abdomen", "C/1", "C/2"]]
    assert shared(plan, "C/1") == {"lung": 1} and shared(plan, "C/2") == {"nodule": 2}
    assert shared(plan, "abdomen") == {"vertebrae": 3}
    assert plan.left_out("C/2") == [1, 3] and plan.left_out("abdomen") == [1, 2]


def test_plan_table_notes_each_apart_group():
    table = plan_table(SharedLabelPlan.build(TASKS, look_alike=GROUPS, keep_apart=True))
    assert "[apart] abdomen, chest look alike: their different structures are on different shared labels" in table
    assert "[apart]" not in plan_table(SharedLabelPlan.build(TASKS, look_alike=GROUPS))


# ----------------------------------------------------------------------------- model.json and prediction
def test_model_json_stores_the_groups_and_the_grown_n_shared(tmp_path):
    from tiny_model import make_model

    from labelsharing.model import SegmentationModel
    from labelsharing.model.schema import FORMAT_VERSION

    folder = make_model(fake=False, apart=True).save(tmp_path / "model")
    config = json.loads((folder / "model.json").read_text())
    assert config["format_version"] == FORMAT_VERSION and config["plan"]["apart"] == [["TaskA", "TaskB"]]
    assert config["plan"]["n_shared"] == 5 and config["architecture"]["kwargs"]["out_channels"] == 6
    plan = SegmentationModel.load(folder).plan
    assert plan.left_out("TaskA") == [4, 5] and plan.left_out("TaskB") == [1, 2, 3]


@pytest.mark.parametrize("n_shared", [4, 6])
def test_model_json_n_shared_of_an_apart_plan_is_its_highest_shared_label(n_shared):
    from tiny_model import make_config

    from labelsharing.model.schema import validate_model_config

    config = make_config(apart=True)
    config["plan"]["n_shared"], config["architecture"]["kwargs"]["out_channels"] = n_shared, n_shared + 1
    rule = r"the largest label count of any task or split task or the highest shared label of plan.tasks \(5\)"
    with pytest.raises(LabelSharingError, match=f"plan.n_shared is {n_shared}; the rule is {rule}"):
        validate_model_config(config)


def test_predictor_leaves_a_partners_channel_out():
    """Intensity 3.6: the partner-only shared label 4 has the largest logit, TaskA's own label 3 the next."""
    import numpy as np
    import SimpleITK as sitk
    from tiny_model import make_model

    from labelsharing.infer import Predictor

    image = sitk.GetImageFromArray(np.full((2, 16, 16), 3.6, dtype=np.float32))
    predictor = Predictor(make_model(fake=True, apart=True), "cpu")
    labels, probabilities = predictor.predict_probabilities(image, "TaskA")
    assert (labels == 3).all()  # 'small' (shared 3), not background (what shared 4 maps to in TaskA)
    assert (predictor.predict_image(image, "TaskA") == 3).all()  # the lean argmax path too
    assert probabilities[3].min() > 0.99  # shared labels 4 and 5 hold no probability
    today = Predictor(make_model(fake=True), "cpu")  # without the mode TaskA has no shared label 4 or 5
    assert today.plan.n_shared == 3 and (today.predict_image(image, "TaskA") == 3).all()


# ----------------------------------------------------------------------------- datasets, CLI, training
@pytest.fixture
def look_alike_tasks(tmp_path):
    """Two 2D tasks with the same images (the look-alike check groups them): 'spine' labels the
    largest structure as vertebrae, 'chest' the same structure as heart; both label the liver."""
    from conftest import boxes, write_task

    arrays = [boxes((32, 32), {1: 400, 2: 200})] * 3
    return [write_task(tmp_path / "spine", {"vertebrae": 1, "liver": 2}, arrays, channel="XR"),
            write_task(tmp_path / "chest", {"heart": 1, "liver": 2}, arrays, channel="XR")]


def test_cli_plan_keeps_look_alikes_apart_only_when_asked(look_alike_tasks, tmp_path, capsys):
    from labelsharing.cli import main

    folders = [str(f) for f in look_alike_tasks]
    assert main(["--progress", "none", "plan", *folders, "--json", str(tmp_path / "today.json")]) == 0
    today = json.loads((tmp_path / "today.json").read_text())
    assert "put differently named structures on one shared label" in capsys.readouterr().err
    assert today["tasks"]["chest"]["labels"]["heart"]["shared"] == 1 and "apart" not in today
    assert main(["--progress", "none", "plan", *folders, "--keep-look-alikes-apart",
                 "--json", str(tmp_path / "apart.json")]) == 0
    printed = capsys.readouterr()
    assert "[apart] spine, chest look alike" in printed.out and "differently named" not in printed.err
    assert "--keep-look-alikes-apart" in printed.err  # the look-alike warning names the remedy
    apart = json.loads((tmp_path / "apart.json").read_text())
    assert apart["apart"] == [["spine", "chest"]] and apart["n_shared"] == 3
    assert {n: e["shared"] for n, e in apart["tasks"]["chest"]["labels"].items()} == {"liver": 2, "heart": 3}


def test_cli_train_and_add_task_pass_the_flag(monkeypatch):
    from labelsharing import train as train_stage
    from labelsharing.cli import main

    calls = []
    monkeypatch.setattr(train_stage, "train", lambda *args, **kwargs: calls.append(("train", kwargs["keep_apart"])))
    monkeypatch.setattr(train_stage, "add_task", lambda *args, **kwargs: calls.append(("add", kwargs["keep_apart"])))
    assert main(["train", "a", "b", "--out", "m", "--keep-look-alikes-apart"]) == 0
    assert main(["train", "a", "b", "--out", "m"]) == 0
    assert main(["add-task", "m", "c", "--out", "n", "--keep-look-alikes-apart"]) == 0
    assert calls == [("train", True), ("train", False), ("add", True)]


@pytest.mark.slow
def test_trained_apart_model_predicts_and_its_training_leaves_partner_channels_alone(look_alike_tasks, tmp_path):
    """Train with keep_apart, predict, then update 'chest' alone (replay 0): the output weights of the
    channel only 'spine' uses (vertebrae, shared 1) get no gradient, those of chest's heart do."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    from labelsharing.infer import Predictor
    from labelsharing.model import SegmentationModel
    from labelsharing.train import TrainingOptions, train, update

    options = dict(batch_size=4, steps_per_epoch=10, input_size=32, features=4, device="cpu", seed=0,
                   weight_decay=0.0, val_fraction=0.34)
    model = train(look_alike_tasks, tmp_path / "model", TrainingOptions(epochs=2, **options), log=lambda m: None,
                  keep_apart=True)
    assert model.plan.apart == [["spine", "chest"]] and model.plan.n_shared == 3
    assert model.plan.left_out("spine") == [3] and model.plan.left_out("chest") == [1]
    predictor = Predictor(SegmentationModel.load(tmp_path / "model"), "cpu")
    for folder, labels in zip(look_alike_tasks, ({0, 1, 2}, {0, 1, 2})):
        image = sitk.ReadImage(str(next((folder / "imagesTr").iterdir())))
        assert set(np.unique(predictor.predict_image(image, folder.name))) <= labels

    def output_weights(folder):
        network = SegmentationModel.load(folder).network
        last = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        assert last.out_channels == 4  # background + 3 shared labels
        return last.weight.detach().clone(), last.bias.detach().clone()

    update(tmp_path / "model", "chest", look_alike_tasks[1], tmp_path / "updated",
           TrainingOptions(epochs=1, learning_rate=1e-2, **options), replay=0.0, log=lambda m: None)
    (weight, bias), (new_weight, new_bias) = output_weights(tmp_path / "model"), output_weights(tmp_path / "updated")
    assert torch.equal(weight[1], new_weight[1]) and bias[1] == new_bias[1]  # vertebrae: left out of chest's softmax
    assert not torch.equal(weight[3], new_weight[3])  # heart: trained
