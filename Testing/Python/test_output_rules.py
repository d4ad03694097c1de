"""train and add-task claim their --out before any work: never an input, --force only over a model
folder, a writable place, one writer at a time."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from labelsharing.demo import make_demo_datasets
from labelsharing.errors import LabelSharingError
from labelsharing.train import TrainingOptions, add_task, train
from polling import poll_until

TINY = dict(epochs=1, batch_size=8, input_size=32, features=4, device="cpu", seed=0)


@pytest.fixture(scope="module")
def knee(tmp_path_factory) -> Path:
    return make_demo_datasets(tmp_path_factory.mktemp("demo"), cases=3, seed=2)[2]


@pytest.fixture(scope="module")
def knee_model(knee, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "sub" / "knee"
    train([knee], out, TrainingOptions(**TINY), log=lambda m: None)
    return out


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any training starts: every refusal must come before the work."""
    from labelsharing.train import Trainer

    def must_not_run(*args, **kwargs):
        raise AssertionError("training started although the output was refused")

    monkeypatch.setattr(Trainer, "fit", must_not_run)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_with_force_never_replaces_its_dataset(knee, no_training):
    before = _digest(knee)
    with pytest.raises(LabelSharingError, match="is an input of this command"):
        train([knee], knee, TrainingOptions(**TINY), force=True, log=lambda m: None)
    assert _digest(knee) == before


def test_train_with_force_never_replaces_a_folder_holding_its_dataset(knee, no_training):
    before = _digest(knee.parent)
    with pytest.raises(LabelSharingError, match="contains .*an input of this command"):
        train([knee], knee.parent, TrainingOptions(**TINY), force=True, log=lambda m: None)
    assert _digest(knee.parent) == before


def test_add_task_with_force_never_replaces_the_folder_of_its_input_model(knee, knee_model, no_training):
    before = _digest(knee_model.parent)
    with pytest.raises(LabelSharingError, match="contains .*an input of this command"):
        add_task(knee_model, knee, knee_model.parent, TrainingOptions(**TINY), force=True, log=lambda m: None)
    assert _digest(knee_model.parent) == before


def test_force_replaces_only_a_model_folder(knee, tmp_path, no_training):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("irreplaceable")
    with pytest.raises(LabelSharingError, match="--force replaces only a labelsharing model folder"):
        train([knee], notes, TrainingOptions(**TINY), force=True, log=lambda m: None)
    assert (notes / "thesis.txt").read_text() == "irreplaceable"


def test_an_output_that_cannot_be_written_is_refused_before_training(knee, tmp_path, no_training):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(LabelSharingError, match=str(blocker)):
        train([knee], blocker / "model", TrainingOptions(**TINY), log=lambda m: None)


def test_a_second_writer_of_the_same_output_is_refused_at_once(knee, tmp_path, monkeypatch):
    """Refused by the lock before any work: the second run never reads a dataset."""
    import labelsharing.train.train_model as train_model

    def no_work(*args, **kwargs):
        raise AssertionError("the second writer started planning before it was refused")

    monkeypatch.setattr(train_model, "plan_task_datasets", no_work)
    out = tmp_path / "model"
    first = subprocess.Popen(
        [sys.executable, "-m", "labelsharing", "--progress", "none", "train", str(knee), "--out", str(out),
         "--epochs", "500", "--batch-size", "8", "--input-size", "32", "--features", "4", "--device", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        run_file = out.parent / ".model.work" / "run.json"
        # the first run holds the lock from before its working folder exists
        poll_until(lambda: run_file.is_file() or first.poll() is not None, timeout=120,
                   what="the first run wrote no run.json", interval=0.05)
        assert first.poll() is None, first.stderr.read()
        with pytest.raises(LabelSharingError, match=f"another labelsharing process \\(pid {first.pid}\\)"):
            train([knee], out, TrainingOptions(**TINY), force=True, log=lambda m: None)
        assert first.poll() is None  # refused while the first run holds the output, not after it ended
    finally:
        first.kill()
        first.wait()
    assert not out.exists()


def test_the_model_written_records_its_checksum_and_reads_back(knee_model):
    from labelsharing.model import SegmentationModel

    config = json.loads((knee_model / "model.json").read_text())
    digest = hashlib.sha256((knee_model / "model.safetensors").read_bytes()).hexdigest()
    assert config["weights_sha256"] == digest
    SegmentationModel.load(knee_model)
