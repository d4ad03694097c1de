"""Several processes: torchrun detection, device choice, and real 2-process (gloo) training runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from labelsharing.cli import main
from labelsharing.data import read_task_dataset
from labelsharing.demo import make_demo_datasets
from labelsharing.errors import LabelSharingError
from labelsharing.train.distributed import DistributedContext, Launch, choose_device, launch_from_env, start_distributed

TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, None),
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, Launch(3, 4, 1, 2)),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, Launch(1, 2, 1, 2)),
    ({"WORLD_SIZE": "2", "RANK": "1"}, Launch(1, 2, 1, 2)),
])
def test_launch_from_env(env, expected):
    assert launch_from_env(env) == expected


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2"}, "RANK/LOCAL_RANK are missing"),
    ({"WORLD_SIZE": "two", "RANK": "0"}, "not integers"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "Inconsistent"),
])
def test_invalid_launch_env_is_a_user_error(env, message):
    with pytest.raises(LabelSharingError, match=message):
        launch_from_env(env)


@pytest.mark.parametrize("requested, gpus, local_rank, expected", [
    ("auto", 0, 1, ("cpu", "gloo")),
    ("cpu", 4, 1, ("cpu", "gloo")),
    ("auto", 2, 1, ("cuda:1", "nccl")),
    ("cuda", 2, 0, ("cuda:0", "nccl")),
])
def test_choose_device(requested, gpus, local_rank, expected):
    assert choose_device(requested, Launch(local_rank, 2, local_rank, 2), gpus) == expected


@pytest.mark.parametrize("requested, gpus, message", [
    ("cuda", 0, "no CUDA device"),
    ("mps", 0, "cannot be shared"),
    ("cuda:1", 2, "cannot be shared"),
    ("auto", 1, "--nproc_per_node=1"),
])
def test_invalid_device_under_torchrun(requested, gpus, message):
    with pytest.raises(LabelSharingError, match=message):
        choose_device(requested, Launch(0, 2, 0, 2), gpus)


def test_single_process_context_without_torchrun(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    context = start_distributed("cpu")
    assert (context.rank, context.world_size, context.is_main, str(context.device)) == (0, 1, True, "cpu")
    context.barrier()
    assert context.mean(2.5) == 2.5
    with pytest.raises(ValueError, match="unchanged"):
        with context.together():
            raise ValueError("unchanged")
    context.close()


def test_bad_device_under_torchrun_fails_before_any_process_group(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(LabelSharingError, match="cannot be shared"):
        start_distributed("mps")
    assert not dist.is_initialized()


def test_non_main_context_is_not_main():
    context = DistributedContext("cpu", Launch(1, 2, 1, 2))
    assert not context.is_main and context.world_size == 2 and "rank=1" in repr(context)


# --- real runs: 2 CPU processes over gloo ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tasks_2d(tmp_path_factory) -> list[Path]:
    folders = make_demo_datasets(tmp_path_factory.mktemp("demo"), cases=3, seed=0)
    return [folders[2], folders[3]]  # the two 2D tasks (knee and chest X-ray): fast


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
               "-m", "labelsharing", "--progress", "none", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _weights_layout(model_dir: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as weights:
        return {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}


@pytest.mark.slow
def test_two_processes_train_a_complete_model_like_one_process(tmp_path, tasks_2d):
    from labelsharing.infer import Predictor

    flags = ["--epochs", "1", "--input-size", "32", "--features", "4", "--device", "cpu"]
    run = _torchrun(["train", *map(str, tasks_2d), "--out", str(tmp_path / "ddp"), *flags], cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "in each of 2 processes (gloo)" in run.stdout
    assert run.stdout.count("model written to") == 1 and run.stdout.count("epoch   1/1") == 1  # process 0 only
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["model.json", "model.safetensors"]

    assert main(["--progress", "none", "train", *map(str, tasks_2d), "--out", str(tmp_path / "single"), *flags]) == 0
    ddp, single = (json.loads((tmp_path / name / "model.json").read_text()) for name in ("ddp", "single"))
    assert ddp.keys() == single.keys() and ddp["tasks"] == single["tasks"] and ddp["plan"] == single["plan"]
    assert ddp["history"][0]["processes"] == 2 and single["history"][0]["processes"] == 1
    layout = _weights_layout(tmp_path / "ddp")
    assert layout == _weights_layout(tmp_path / "single") and not any(k.startswith("module.") for k in layout)

    predictor = Predictor.from_model_dir(tmp_path / "ddp", device="cpu")
    case = read_task_dataset(tasks_2d[0]).training[0]
    image = sitk.ReadImage(str(case.image))
    assert predictor.predict_image(image, "KneeXR").shape == sitk.GetArrayFromImage(image).shape


@pytest.mark.slow
def test_an_error_on_the_processes_is_reported_once_and_nothing_hangs(tmp_path, tasks_2d):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dataset.json").write_text("{}")
    run = _torchrun(["train", str(tasks_2d[0]), str(bad), "--out", str(tmp_path / "model"), "--epochs", "1",
                     "--input-size", "32", "--features", "4", "--device", "cpu"], cwd=tmp_path)
    assert run.returncode != 0
    assert run.stderr.count('"labels" must map names') == 1, run.stderr
    assert "stopped because process 0 failed" in run.stderr
    assert not (tmp_path / "model").exists()
