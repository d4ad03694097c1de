"""Nothing lost to an interruption: end-of-epoch checkpoints, --resume, and runs that fail cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labelsharing.cli import main
from labelsharing.demo import make_demo_datasets
from labelsharing.errors import LabelSharingError
from labelsharing.train import TrainingOptions, train, work_folder_for

TINY_FLAGS = ["--batch-size", "8", "--input-size", "32", "--features", "4", "--device", "cpu", "--seed", "3"]


@pytest.fixture(scope="module")
def xr_tasks(tmp_path_factory) -> list[str]:
    return [str(p) for p in make_demo_datasets(tmp_path_factory.mktemp("demo"), cases=4, seed=1)[2:4]]


def _weights(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labelsharing", "--progress", "none", *args],
                          capture_output=True, text=True)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_weights(xr_tasks, tmp_path):
    epochs = ["--epochs", "40"]
    reference = _cli("train", *xr_tasks, "--out", str(tmp_path / "reference"), *epochs, *TINY_FLAGS)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    command = ["train", *xr_tasks, "--out", str(out), *epochs, *TINY_FLAGS]
    process = subprocess.Popen([sys.executable, "-m", "labelsharing", "--progress", "none", *command],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run_file = work_folder_for(out) / "run.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if run_file.is_file() and json.loads(run_file.read_text() or "{}").get("epochs_done", 0) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed; give it more epochs"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()  # the model folder appears only when training finished

    again = _cli(*command)
    assert again.returncode == 2 and "--resume" in again.stderr and str(work_folder_for(out)) in again.stderr

    resumed = _cli(*command, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stdout
    assert _weights(out) == _weights(tmp_path / "reference")
    assert not work_folder_for(out).exists()
    history = json.loads((out / "model.json").read_text())["history"][0]
    assert [e["epoch"] for e in history["epochs"]] == list(range(1, 41))


def test_resume_after_an_interrupted_epoch_matches_and_refuses_another_run(xr_tasks, tmp_path, monkeypatch):
    import labelsharing.train.trainer as training

    options = TrainingOptions(epochs=4, batch_size=8, input_size=32, features=4, device="cpu", seed=3)
    train(xr_tasks, tmp_path / "reference", options, log=lambda m: None)

    calls = {"n": 0}
    real_validation = training.validation_dice

    def validation_interrupted_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_validation(*args, **kwargs)

    monkeypatch.setattr(training, "validation_dice", validation_interrupted_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(xr_tasks, tmp_path / "model", options, log=lambda m: None)
    monkeypatch.undo()

    other = TrainingOptions(**{**vars(options), "learning_rate": 1e-3})
    with pytest.raises(LabelSharingError, match="must repeat the interrupted run.*learning_rate"):
        train(xr_tasks, tmp_path / "model", other, log=lambda m: None, resume=True)
    messages: list[str] = []
    train(xr_tasks, tmp_path / "model", options, log=messages.append, resume=True)
    assert any(m.startswith("resuming after epoch 2") for m in messages)
    assert _weights(tmp_path / "model") == _weights(tmp_path / "reference")


def test_resume_without_an_interrupted_run_is_refused(xr_tasks, tmp_path):
    with pytest.raises(LabelSharingError, match="Nothing to resume"):
        train(xr_tasks, tmp_path / "model", TrainingOptions(epochs=1, device="cpu"), resume=True)


def test_a_loss_that_becomes_nan_stops_the_run_and_writes_nothing(xr_tasks, tmp_path, monkeypatch):
    import torch

    import labelsharing.train.task_data as training_data

    real_batch = training_data.PooledSlices.batch

    def nan_batch(self, indices):
        batch = real_batch(self, indices)
        batch["image"] = torch.full_like(batch["image"], float("nan"))
        return batch

    monkeypatch.setattr(training_data.PooledSlices, "batch", nan_batch)
    options = TrainingOptions(epochs=2, batch_size=8, input_size=32, features=4, device="cpu")
    with pytest.raises(LabelSharingError, match=r"epoch 1, step 1: the loss became nan.*lower --lr"):
        train(xr_tasks, tmp_path / "model", options, log=lambda m: None)
    assert not (tmp_path / "model").exists()


def test_non_finite_weights_are_never_written(xr_tasks, tmp_path, monkeypatch):
    """Even if a non-finite weight slipped past the loss check, the model folder is not written."""
    import torch

    from labelsharing.train import Trainer

    real_fit = Trainer.fit

    def fit_with_a_broken_weight(self):
        result = real_fit(self)
        name = next(iter(result.best_state))
        result.best_state[name] = torch.full_like(result.best_state[name], float("inf"))
        return result

    monkeypatch.setattr(Trainer, "fit", fit_with_a_broken_weight)
    options = TrainingOptions(epochs=1, batch_size=8, input_size=32, features=4, device="cpu")
    with pytest.raises(LabelSharingError, match="hold NaN or infinite values"):
        train(xr_tasks, tmp_path / "model", options, log=lambda m: None)
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("flags, message", [
    (["--lr", "-1"], "argument --lr: must lie in (0, 1]"),
    (["--lr", "nan"], "argument --lr: must be a finite number"),
    (["--lr", "inf"], "argument --lr: must be a finite number"),
    (["--lr", "abc"], "argument --lr: must be a number"),
    (["--seed", "-1"], "argument --seed: must be an integer from 0"),
    (["--val-fraction", "nan"], "argument --val-fraction: must be a finite number"),
    (["--epochs", "0"], "argument --epochs: must be at least 1"),
    (["--input-size", "-16"], "argument --input-size: must be at least 1"),
])
def test_invalid_numeric_options_are_one_line_errors(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path), "--out", str(tmp_path / "m"), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].endswith(message) or message in err.strip().splitlines()[-1]
    assert "Traceback" not in err


@pytest.mark.parametrize("flags, message", [
    (["--replay", "1.5"], "argument --replay: must lie in [0, 1)"),
    (["--replay", "inf"], "argument --replay: must be a finite number"),
    (["--lr", "0"], "argument --lr: must lie in (0, 1]"),
])
def test_invalid_add_task_options_are_one_line_errors(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["add-task", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "m"), *flags])
    assert message in capsys.readouterr().err


def test_api_refuses_non_finite_learning_rate():
    for lr in (float("nan"), float("inf"), -1.0):
        with pytest.raises(LabelSharingError, match="--lr"):
            TrainingOptions(learning_rate=lr)
    with pytest.raises(LabelSharingError, match="--seed"):
        TrainingOptions(seed=-1)


def test_internal_errors_say_so_and_keep_the_traceback_in_a_file(monkeypatch, capsys, two_tasks):
    import labelsharing.plan.planner as planning

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(planning, "plan_task_datasets", broken)
    assert main(["--progress", "none", "plan", str(two_tasks[0])]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: internal error (ZeroDivisionError: a bug); the traceback was written to ")
    path = Path(err.split("written to ", 1)[1].split(". Please", 1)[0])
    assert "ZeroDivisionError: a bug" in path.read_text() and "Traceback" in path.read_text()
    path.unlink()
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "--progress", "none", "plan", str(two_tasks[0])])


def test_os_errors_name_the_file(tmp_path, capsys, two_tasks):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["--progress", "none", "plan", str(two_tasks[0]), "--json", str(blocker / "plan.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(blocker) in err and "Traceback" not in err
