"""Federated label sharing on Flower's deployment runtime: a SuperLink and two SuperNodes as local
processes on 127.0.0.1, two demo tasks (one per site), two rounds, one site killed mid-run."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

pytest.importorskip("flwr")
psutil = pytest.importorskip("psutil")

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict  # noqa: E402

from labelsharing.demo import make_demo_datasets  # noqa: E402
from labelsharing.errors import LabelSharingError  # noqa: E402
from labelsharing.federated import check_reply, checkpoint_folder_for, plan_from_statistics, run_local, \
    site_statistics  # noqa: E402
from labelsharing.model import SegmentationModel, build_network, default_architecture  # noqa: E402
from labelsharing.plan import plan_task_datasets  # noqa: E402


def _flower_processes(home: str) -> list:
    """Processes whose FLWR_HOME lies in ``home`` (the SuperLink, SuperNodes, SuperExecs, apps)."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get("FLWR_HOME", "").startswith(home) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _kill_site_after_first_round(out, dataset, home) -> None:
    """Once round 1 is checkpointed, end the SuperNode serving ``dataset`` with its whole process group."""
    state = checkpoint_folder_for(out) / "federated.json"
    deadline = time.monotonic() + 400
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    for process in _flower_processes(home):
        try:
            if "flower-supernode" in " ".join(process.cmdline()) and str(dataset) in " ".join(process.cmdline()):
                os.killpg(os.getpgid(process.pid), signal.SIGKILL)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue


@pytest.mark.slow
def test_two_sites_two_rounds_on_superlink_and_supernodes(tmp_path):
    folders = make_demo_datasets(tmp_path / "data", cases=4)[:2]
    out, work = tmp_path / "model", tmp_path / "work"
    killer = threading.Thread(target=_kill_site_after_first_round, args=(out, folders[1].resolve(), str(work)))
    killer.start()
    run_local(folders, out, {"rounds": 2, "steps-per-epoch": 2, "batch-size": 4, "features": 4, "min-sites": 1},
              work=work, device="cpu")
    killer.join()

    model = SegmentationModel.load(out)  # an ordinary model folder: validated model.json, checked weights
    pooled, _, _ = plan_task_datasets(folders, log=lambda message: None)
    assert model.config["plan"] == pooled.to_dict()
    [history] = model.config["history"]
    assert history["kind"] == "federated" and history["sites"] == {"site-1": ["AbdomenCT"], "site-2": ["BrainMR"]}
    first, second = history["rounds"]
    assert first["sites"] == ["site-1", "site-2"] and first["missing"] == []
    assert second["sites"] == ["site-1"] and second["missing"] == ["site-2"]  # the run went on without it
    assert set(first["val_dice"]) == {"AbdomenCT", "BrainMR"}
    parameters = len(model.network.state_dict())
    for record in (first, second):
        for reply in record["replies"].values():  # what each ClientApp returned: weights, two numbers
            assert reply == {"arrays": parameters, "array_bytes": reply["array_bytes"],
                             "metrics": ["loss", "num-examples"], "text": {}}
    assert all(task["dataset"].startswith("federated:site-") for task in model.config["tasks"].values())
    assert not checkpoint_folder_for(out).exists()
    deadline = time.monotonic() + 15
    while _flower_processes(str(work)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _flower_processes(str(work)) == []


def test_the_plan_from_site_statistics_is_the_pooled_plan(tmp_path):
    folders = make_demo_datasets(tmp_path / "data", cases=3)
    statistics = {f"site-{i}": site_statistics([folder]) for i, folder in enumerate(folders, 1)}
    pins = {"KneeXR": {"femur": 2}}
    pooled, _, appearance = plan_task_datasets(folders, pins, log=lambda message: None)
    assert appearance.groups() == []  # the demo tasks look different: no look-alike pins either way
    assert plan_from_statistics(statistics, pins).to_dict() == pooled.to_dict()
    sent = [entry for entries in statistics.values() for entry in entries]
    assert {key for entry in sent for key in entry} == {"name", "modality", "cases", "slice_side", "labels",
                                                        "terminology", "colors"}


def test_one_task_name_at_two_sites_is_refused(tmp_path):
    [folder] = make_demo_datasets(tmp_path / "data", cases=2)[:1]
    statistics = site_statistics([folder])
    with pytest.raises(LabelSharingError, match="task names must be unique across sites"):
        plan_from_statistics({"site-1": statistics, "site-2": statistics})


def test_a_reply_holding_anything_but_the_network_weights_is_refused():
    network = build_network(default_architecture(3, 4))
    shapes = {name: tuple(t.shape) for name, t in network.state_dict().items()}
    weights = network.state_dict()
    good = RecordDict({"arrays": ArrayRecord(weights), "metrics": MetricRecord({"num-examples": 10, "loss": 0.5})})
    assert check_reply(good, shapes)["arrays"] == len(shapes)
    image = RecordDict({"arrays": ArrayRecord({**weights, "slice": torch.zeros(96, 96)})})
    with pytest.raises(LabelSharingError, match="'slice' of shape \\(96, 96\\) that is not a parameter"):
        check_reply(image, shapes)
    with pytest.raises(LabelSharingError, match="not a parameter"):
        check_reply(good)  # no weights expected (a planning answer)
    with pytest.raises(LabelSharingError, match="only numbers and short text"):
        check_reply(RecordDict({"answer": ConfigRecord({"labels": [1, 2, 3]})}))
