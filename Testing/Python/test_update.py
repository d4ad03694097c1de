"""``update``: a task of a trained model learns its added cases; held-out cases stay fixed, nothing is lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from labelsharing.data import add_case, read_task_dataset
from labelsharing.demo import make_demo_datasets
from labelsharing.errors import LabelSharingError
from labelsharing.train import TrainingOptions, train, update

TINY = dict(batch_size=4, steps_per_epoch=10, input_size=32, features=4, device="cpu", seed=0)
QUIET = dict(log=lambda message: None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A model trained on ChestXR (4 cases: 1 held out) and KneeXR, and two more ChestXR cases to add."""
    root = tmp_path_factory.mktemp("update")
    folders = make_demo_datasets(root / "demo", cases=4, seed=2)
    more = make_demo_datasets(root / "more", cases=3, seed=9)[3]
    model = root / "model"
    train([folders[3], folders[2]], model, TrainingOptions(epochs=1, val_fraction=0.25, **TINY), **QUIET)
    return {"chest": folders[3], "knee": folders[2], "more": more, "model": model}


@pytest.fixture
def grown(trained, tmp_path) -> Path:
    """A copy of the ChestXR folder with two cases added (chestxr_006 and chestxr_007, the next free ids)."""
    chest = shutil.copytree(trained["chest"], tmp_path / "ChestXR")
    for index in (0, 1):
        case = f"chestxr_{index:03d}"
        add_case(chest, *_more(trained, case))
    return chest


def _more(trained: dict, case: str) -> tuple[Path, Path]:
    """Image and label of a case of the second ChestXR set."""
    return trained["more"] / "imagesTr" / f"{case}_0000.mha", trained["more"] / "labelsTr" / f"{case}.mha"


def _config(model: Path) -> dict:
    return json.loads((model / "model.json").read_text())


def _weights(model: Path) -> bytes:
    return (model / "model.safetensors").read_bytes()


def test_added_cases_are_trained_on_recorded_and_the_held_out_cases_stay(trained, grown, tmp_path):
    parent = _config(trained["model"])["tasks"]["ChestXR"]
    messages: list[str] = []
    update(trained["model"], "ChestXR", grown, tmp_path / "updated", TrainingOptions(epochs=2, **TINY),
           log=messages.append)
    config = _config(tmp_path / "updated")
    task, record = config["tasks"]["ChestXR"], config["history"][-1]
    added = sorted(set(c.case_id for c in read_task_dataset(grown).training) - set(parent["training_cases"])
                   - set(parent["validation_cases"]))
    assert len(added) == 2
    assert task["validation_cases"] == parent["validation_cases"]
    assert sorted(task["training_cases"]) == sorted(parent["training_cases"] + added)
    assert record["kind"] == "update" and record["tasks"] == ["ChestXR"] and record["added_cases"] == added
    assert set(record["forgetting"]) == {"ChestXR", "KneeXR"}
    assert config["parent"] == str(trained["model"].resolve()) and len(config["history"]) == 2
    assert any("(updated)" in m for m in messages) and any("2 added" in m for m in messages)

    # A second update holds out a newly added case: it joins the held-out cases, the old ones stay.
    add_case(grown, *_more(trained, "chestxr_002"), case_id="kept_apart")
    with pytest.raises(LabelSharingError, match="trained on these cases"):
        update(tmp_path / "updated", "ChestXR", grown, tmp_path / "again", TrainingOptions(epochs=1, **TINY),
               validation_cases=[added[0]], **QUIET)
    update(tmp_path / "updated", "ChestXR", grown, tmp_path / "again", TrainingOptions(epochs=1, **TINY),
           validation_cases=["kept_apart"], **QUIET)
    again = _config(tmp_path / "again")
    assert again["tasks"]["ChestXR"]["validation_cases"] == parent["validation_cases"] + ["kept_apart"]
    assert "kept_apart" not in again["tasks"]["ChestXR"]["training_cases"]
    assert again["history"][-1]["added_cases"] == [] and again["history"][-1]["validation_added"] == ["kept_apart"]


def test_update_draws_the_other_tasks_in_the_replay_share(trained, grown, tmp_path, monkeypatch):
    """Guards against ignoring --replay: a quarter of the draws must come from KneeXR."""
    from labelsharing.train import Trainer

    drawn: list[int] = []

    def forward(self, network, images, task_indices):
        drawn.extend(task_indices.tolist())
        return network(images)

    monkeypatch.setattr(Trainer, "forward", forward)
    update(trained["model"], "ChestXR", grown, tmp_path / "m", TrainingOptions(epochs=4, **TINY), replay=0.25, **QUIET)
    other = float(np.mean(np.asarray(drawn) != 0))  # the updated task is index 0
    assert len(drawn) == 160 and 0.12 < other < 0.38, f"share of draws from the other task: {other:.2f}"


def test_an_existing_output_needs_force_and_an_interrupted_update_resumes(trained, grown, tmp_path, monkeypatch):
    import labelsharing.train.trainer as training
    from labelsharing.cli import main

    options = TrainingOptions(epochs=3, **TINY)
    update(trained["model"], "ChestXR", grown, tmp_path / "reference", options, **QUIET)
    with pytest.raises(LabelSharingError, match="exists"):
        update(trained["model"], "ChestXR", grown, tmp_path / "reference", options, **QUIET)
    assert main(["update", str(trained["model"]), "--task", "ChestXR", str(grown), "--out",
                 str(tmp_path / "reference"), "--epochs", "1"]) == 2

    calls = {"n": 0}
    real = training.validation_dice

    def interrupted_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "validation_dice", interrupted_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        update(trained["model"], "ChestXR", grown, tmp_path / "model", options, **QUIET)
    monkeypatch.undo()
    assert not (tmp_path / "model").exists()
    with pytest.raises(LabelSharingError, match="interrupted run"):
        update(trained["model"], "ChestXR", grown, tmp_path / "model", options, **QUIET)
    messages: list[str] = []
    update(trained["model"], "ChestXR", grown, tmp_path / "model", options, log=messages.append, resume=True)
    assert any(m.startswith("resuming after epoch 1") for m in messages)
    assert _weights(tmp_path / "model") == _weights(tmp_path / "reference")

    # the command line writes an update; --force replaces a model folder
    assert main(["--progress", "none", "update", str(trained["model"]), "--task", "ChestXR", str(grown), "--out",
                 str(tmp_path / "short"), "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4",
                 "--device", "cpu"]) == 0
    update(trained["model"], "ChestXR", grown, tmp_path / "model", TrainingOptions(epochs=1, **TINY), force=True,
           **QUIET)
    assert _weights(tmp_path / "model") != _weights(tmp_path / "reference")


def test_resuming_after_more_cases_were_added_is_refused(trained, grown, tmp_path, monkeypatch):
    """The checkpoint learnt from the cases of the interrupted run; more cases would be another run."""
    import labelsharing.train.trainer as training

    calls = {"n": 0}
    real = training.validation_dice

    def interrupted_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "validation_dice", interrupted_in_epoch_2)
    options = TrainingOptions(epochs=2, **TINY)
    with pytest.raises(KeyboardInterrupt):
        update(trained["model"], "ChestXR", grown, tmp_path / "model", options, **QUIET)
    monkeypatch.undo()
    add_case(grown, *_more(trained, "chestxr_002"))
    with pytest.raises(LabelSharingError, match="must repeat the interrupted run.*cases"):
        update(trained["model"], "ChestXR", grown, tmp_path / "model", options, resume=True, **QUIET)


def test_update_refuses_another_task_or_other_labels(trained, grown, tmp_path):
    options = TrainingOptions(epochs=1, **TINY)
    with pytest.raises(LabelSharingError, match="not a task of this model.*add-task"):
        update(trained["model"], "BrainMR", grown, tmp_path / "m", options, **QUIET)
    with pytest.raises(LabelSharingError, match="holds task 'KneeXR', not 'ChestXR'"):
        update(trained["model"], "ChestXR", trained["knee"], tmp_path / "m", options, **QUIET)
    meta = json.loads((grown / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "left_lung": 1, "right_lung": 2, "heart": 3, "spine": 4}
    (grown / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(LabelSharingError, match="declares the labels.*spine.*add-task"):
        update(trained["model"], "ChestXR", grown, tmp_path / "m", options, **QUIET)
    with pytest.raises(LabelSharingError, match="no such training case"):
        update(trained["model"], "ChestXR", trained["chest"], tmp_path / "m", options, validation_cases=["nope"],
               **QUIET)
    assert not (tmp_path / "m").exists() and not (tmp_path / ".m.work").exists()
