"""Adding tasks: mapping onto existing shared labels, output growth, replay, forgetting."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from labelsharing.demo import make_demo_datasets
from labelsharing.errors import LabelSharingError
from labelsharing.model import build_network, default_architecture, grow_output_channels
from labelsharing.train import TrainingOptions, add_task, train

TINY = dict(epochs=1, batch_size=8, input_size=32, features=4, device="cpu", seed=0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    folders = make_demo_datasets(tmp_path_factory.mktemp("demo"), cases=3, seed=2)
    return {f.name.split("_", 1)[1]: f for f in folders}


@pytest.fixture(scope="module")
def chest_model(demo, tmp_path_factory) -> Path:
    """A tiny model trained on ChestXR only (3 labels -> 3 shared labels)."""
    out = tmp_path_factory.mktemp("models") / "chest"
    train([demo["ChestXR"]], out, TrainingOptions(**TINY), log=lambda m: None)
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_grown_network_keeps_old_outputs_identical():
    architecture = default_architecture(4, features=4)
    network = build_network(architecture).eval()
    grown, grown_architecture = grow_output_channels(network, architecture, 6)
    grown.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        old, new = network(x), grown(x)
    assert grown_architecture["kwargs"]["out_channels"] == 6 and architecture["kwargs"]["out_channels"] == 4
    torch.testing.assert_close(new[:, :4], old, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new[:, 4], old[:, 0], atol=1e-5, rtol=1e-5)  # new channels start as background


@pytest.mark.parametrize(
    "new_task, n_shared, grew",
    [("BrainMR", 3, False),   # equal label count
     ("KneeXR", 4, True)],    # more labels than n*: the output layer grows
)
def test_add_task_maps_onto_shared_labels_and_leaves_input_untouched(demo, chest_model, tmp_path, new_task,
                                                                     n_shared, grew):
    before = _digest(chest_model)
    messages: list[str] = []
    add_task(chest_model, demo[new_task], tmp_path / "new", TrainingOptions(**TINY), replay=0.5,
             log=messages.append)
    assert _digest(chest_model) == before
    config = json.loads((tmp_path / "new" / "model.json").read_text())
    parent = json.loads((chest_model / "model.json").read_text())
    assert config["plan"]["n_shared"] == n_shared
    assert config["architecture"]["kwargs"]["out_channels"] == n_shared + 1
    assert config["plan"]["tasks"]["ChestXR"] == parent["plan"]["tasks"]["ChestXR"]  # old mapping untouched
    shared = sorted(entry["shared"] for entry in config["plan"]["tasks"][new_task]["labels"].values())
    assert shared == list(range(1, len(shared) + 1))
    assert config["parent"] == str(chest_model.resolve())
    record = config["history"][-1]
    assert record["kind"] == "add-task" and record["replay"] == 0.5
    assert set(record["forgetting"]) == {"ChestXR", new_task}
    assert any("output layer grows" in m for m in messages) == grew


def test_fewer_labels_than_shared(demo, tmp_path):
    knee = tmp_path / "knee"
    train([demo["KneeXR"]], knee, TrainingOptions(**TINY), log=lambda m: None)
    add_task(knee, demo["ChestXR"], tmp_path / "new", TrainingOptions(**TINY), replay=0.3, log=lambda m: None)
    config = json.loads((tmp_path / "new" / "model.json").read_text())
    assert config["plan"]["n_shared"] == 4 and len(config["plan"]["tasks"]["ChestXR"]["labels"]) == 3


def test_missing_old_data_needs_replay_zero(demo, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo["ChestXR"], data / "ChestXR")
    train([data / "ChestXR"], tmp_path / "m", TrainingOptions(**TINY), log=lambda m: None)
    shutil.rmtree(data)
    with pytest.raises(LabelSharingError, match="pass --replay 0"):
        add_task(tmp_path / "m", demo["KneeXR"], tmp_path / "n", TrainingOptions(**TINY), replay=0.5,
                 log=lambda m: None)
    messages: list[str] = []
    add_task(tmp_path / "m", demo["KneeXR"], tmp_path / "n", TrainingOptions(**TINY), replay=0.0,
             log=messages.append)
    assert any("not guarded against" in m for m in messages)


def test_invalid_add_task_requests(demo, chest_model, tmp_path):
    with pytest.raises(LabelSharingError, match="is an input of this command.*never replaced"):
        add_task(chest_model, demo["KneeXR"], chest_model, TrainingOptions(**TINY))
    with pytest.raises(LabelSharingError, match="already has a task named 'ChestXR'"):
        add_task(chest_model, demo["ChestXR"], tmp_path / "x", TrainingOptions(**TINY), log=lambda m: None)
    with pytest.raises(LabelSharingError, match="replay must lie"):
        add_task(chest_model, demo["KneeXR"], tmp_path / "x", TrainingOptions(**TINY), replay=1.0)


@pytest.mark.slow
def test_incremental_run_does_not_collapse_old_task(tmp_path):
    """Train on KneeXR, add ChestXR with replay: knee Dice must stay close to where it was."""
    demo = {f.name.split("_", 1)[1]: f for f in make_demo_datasets(tmp_path / "demo", cases=16, seed=4)}
    options = TrainingOptions(epochs=25, batch_size=8, input_size=48, features=8, device="cpu", seed=0)
    train([demo["KneeXR"]], tmp_path / "knee", options, log=lambda m: None)
    fine_tune = TrainingOptions(epochs=8, batch_size=8, learning_rate=5e-4, device="cpu", seed=0)
    add_task(tmp_path / "knee", demo["ChestXR"], tmp_path / "both", fine_tune, replay=0.5, log=lambda m: None)
    forgetting = json.loads((tmp_path / "both" / "model.json").read_text())["history"][-1]["forgetting"]
    knee = forgetting["KneeXR"]
    assert knee["before"] > 0.4, knee
    assert knee["after"] > knee["before"] - 0.1, knee
    assert forgetting["ChestXR"]["after"] > forgetting["ChestXR"]["before"] + 0.2, forgetting


def test_add_task_without_validation_cases_trains_and_reports_the_written_weights(demo, chest_model, tmp_path):
    """A new task too small for a validation split, replay 0: nothing to select on. The old code kept
    the parent's weights (best epoch 0) and reported the forgetting of weights it did not write."""
    from safetensors.torch import load_file

    from labelsharing.data import read_task_dataset
    from labelsharing.infer import Predictor
    from labelsharing.model import SegmentationModel
    from labelsharing.train import prepare_task
    from labelsharing.train.validation import validation_dice

    single = tmp_path / "OneCase"
    shutil.copytree(demo["BrainMR"], single)
    for folder, keep in (("imagesTr", "_0000"), ("labelsTr", "")):
        for path in sorted((single / folder).iterdir())[1:]:
            path.unlink()
    meta = json.loads((single / "dataset.json").read_text())
    (single / "dataset.json").write_text(json.dumps({**meta, "numTraining": 1}))

    out = tmp_path / "grown"
    add_task(chest_model, single, out, TrainingOptions(**{**TINY, "epochs": 2}), replay=0.0, log=lambda m: None)
    parent = load_file(str(chest_model / "model.safetensors"))
    written = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(parent[k], written[k]) for k in parent), "the written model is its parent"
    record = json.loads((out / "model.json").read_text())["history"][-1]
    assert record["best_epoch"] == 2  # the last epoch, as nothing could be validated

    model = SegmentationModel.load(out)
    chest = prepare_task(read_task_dataset(demo["ChestXR"]), model.plan, model.input_size, 0.2, TINY["seed"],
                         normalization=model.config["tasks"]["ChestXR"]["normalization"])
    measured = validation_dice(Predictor(model, "cpu"), [chest])
    assert record["forgetting"]["ChestXR"]["after"] == pytest.approx(measured["ChestXR"]["mean"])


def test_old_tasks_keep_their_own_validation_split_across_add_tasks(demo, tmp_path):
    """Each task's held-out cases are stored and reused; re-deriving them from the first run's seed
    and fraction would turn cases a task trained on into its 'validation'."""
    from labelsharing.data import read_task_dataset
    from labelsharing.model import SegmentationModel
    from labelsharing.train import split_cases
    from labelsharing.train.fine_tuning import prepare_other_tasks

    first = tmp_path / "first"
    train([demo["ChestXR"]], first, TrainingOptions(**TINY), log=lambda m: None)
    second = tmp_path / "second"
    add_task(first, demo["KneeXR"], second, TrainingOptions(**{**TINY, "seed": 7, "val_fraction": 0.6}),
             log=lambda m: None)
    knee_cases = read_task_dataset(demo["KneeXR"]).training
    expected = [c.case_id for c in split_cases(knee_cases, 0.6, 7)[1]]
    assert expected != [c.case_id for c in split_cases(knee_cases, 0.2, 0)[1]]  # the two seeds disagree

    model = SegmentationModel.load(second)
    assert model.config["tasks"]["KneeXR"]["validation_cases"] == expected
    old = {t.name: t for t in prepare_other_tasks(model, model.plan, 0.5, log=lambda m: None)}
    assert list(old["KneeXR"].validation_ids) == expected
    assert list(old["ChestXR"].validation_ids) == model.config["tasks"]["ChestXR"]["validation_cases"]


def test_without_replay_old_tasks_are_read_only_as_far_as_their_validation_needs(demo, chest_model, tmp_path,
                                                                                 monkeypatch):
    """--replay 0 does not train on old tasks: reading all their cases would only cost memory."""
    import labelsharing.train.task_data as training_data

    real_load = training_data.load_case
    loaded: list[tuple[str, str]] = []

    def counting_load(task, case):
        loaded.append((task.name, case.case_id))
        return real_load(task, case)

    monkeypatch.setattr(training_data, "load_case", counting_load)
    add_task(chest_model, demo["KneeXR"], tmp_path / "m", TrainingOptions(**TINY), replay=0.0, log=lambda m: None)
    validation = json.loads((chest_model / "model.json").read_text())["tasks"]["ChestXR"]["validation_cases"]
    assert {c for t, c in loaded if t == "ChestXR"} == set(validation)  # read at each validation, nothing else
    forgetting = json.loads((tmp_path / "m" / "model.json").read_text())["history"][-1]["forgetting"]
    assert "ChestXR" in forgetting  # still measured
