"""Federated label sharing on Flower's deployment runtime: a SuperLink and two SuperNodes as local
processes on 127.0.0.1, two demo tasks (one per site), two rounds, one site killed mid-run; a
third site joining the two-site model (federated add-task)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

pytest.importorskip("flwr")
psutil = pytest.importorskip("psutil")

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict  # noqa: E402
from polling import poll_until  # noqa: E402

from labelsharing.cli import main  # noqa: E402
from labelsharing.demo import make_demo_datasets  # noqa: E402
from labelsharing.errors import LabelSharingError  # noqa: E402
from labelsharing.federated import check_reply, checkpoint_folder_for, plan_from_statistics, run_local, \
    site_statistics, supernode_command  # noqa: E402
from labelsharing.federated.runtime import Processes, flower_environment, free_port  # noqa: E402
from labelsharing.model import SegmentationModel, build_network, default_architecture  # noqa: E402
from labelsharing.plan import plan_task_datasets, summarise_tasks  # noqa: E402
from labelsharing.train import TrainingOptions, extend_model, train  # noqa: E402


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


def _kill_after_first_round(out, home, *words) -> None:
    """Once round 1 is checkpointed, end the Flower processes whose command line holds every one of
    ``words`` (a SuperNode, the SuperLink), each with its whole process group."""
    state = checkpoint_folder_for(out) / "federated.json"
    deadline = time.monotonic() + 400
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    for process in _flower_processes(home):
        try:
            if all(word in " ".join(process.cmdline()) for word in words):
                os.killpg(os.getpgid(process.pid), signal.SIGKILL)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue


def _wait_until_no_flower_process(home: str) -> list:
    deadline = time.monotonic() + 15
    while _flower_processes(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    return _flower_processes(home)


@pytest.mark.slow
def test_two_sites_two_rounds_on_superlink_and_supernodes(tmp_path):
    folders = make_demo_datasets(tmp_path / "data", cases=4)[:2]
    out, work = tmp_path / "model", tmp_path / "work"
    killer = threading.Thread(target=_kill_after_first_round,
                              args=(out, str(work), "flower-supernode", str(folders[1].resolve())))
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
    assert first["weights"] == {"site-1": 0.5, "site-2": 0.5}  # one task each: equal shares, whatever their slices
    assert second["sites"] == ["site-1"] and second["missing"] == ["site-2"]  # the run went on without it
    assert set(first["val_dice"]) == {"AbdomenCT", "BrainMR"}
    parameters = len(model.network.state_dict())
    for record in (first, second):
        for reply in record["replies"].values():  # what each ClientApp returned: weights, two numbers
            assert reply == {"arrays": parameters, "array_bytes": reply["array_bytes"],
                             "metrics": ["loss", "num-examples"], "text": {}}
    assert all(task["dataset"].startswith("federated:site-") for task in model.config["tasks"].values())
    assert not checkpoint_folder_for(out).exists()
    assert _wait_until_no_flower_process(str(work)) == []


@pytest.mark.slow
def test_a_restarted_coordinator_resumes_and_its_model_serves_predict_evaluate_add_task(tmp_path, capsys):
    demo = make_demo_datasets(tmp_path / "data", cases=4)
    folders, out = demo[:2], tmp_path / "model"
    settings = {"rounds": 2, "steps-per-epoch": 2, "batch-size": 4, "features": 4}
    killer = threading.Thread(target=_kill_after_first_round, args=(out, str(tmp_path / "first"), "flower-superlink"))
    killer.start()
    with pytest.raises(LabelSharingError, match="The federated run failed"):  # the coordinator dies after round 1
        run_local(folders, out, settings, work=tmp_path / "first", device="cpu")
    killer.join()
    assert _wait_until_no_flower_process(str(tmp_path / "first")) == []
    saved = json.loads((checkpoint_folder_for(out) / "federated.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [1] and not out.exists()

    capsys.readouterr()
    run_local(folders, out, settings, work=tmp_path / "second", device="cpu")  # the same command again
    assert f"resuming after round 1 from {checkpoint_folder_for(out)}" in capsys.readouterr().out
    [history] = SegmentationModel.load(out).config["history"]
    assert history["rounds"][0] == saved["rounds"][0]  # round 1 was not trained again
    assert [r["round"] for r in history["rounds"]] == [1, 2] and not checkpoint_folder_for(out).exists()

    # An ordinary model folder: the commands use it unchanged.
    image = next((folders[0] / "imagesTs").iterdir())
    assert main(["--progress", "none", "predict", str(out), str(image), "--task", "AbdomenCT",
                 "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    predicted = tmp_path / "pred" / image.name.replace("_0000.nii.gz", ".nii.gz")
    assert predicted.stat().st_size > 0
    assert main(["--progress", "none", "evaluate", str(out), *map(str, folders), "--json", str(tmp_path / "dice.json"),
                 "--device", "cpu"]) == 0
    dice = json.loads((tmp_path / "dice.json").read_text())["tasks"]
    assert set(dice) == {"AbdomenCT", "BrainMR"} and all(d["split"] == "test" for d in dice.values())
    flags = ["--progress", "none", "add-task", str(out), str(demo[2]), "--epochs", "1", "--steps-per-epoch", "2",
             "--batch-size", "4", "--device", "cpu"]
    assert main([*flags, "--out", str(tmp_path / "replayed")]) == 2  # the old tasks' images stay at their sites
    assert "trained federatedly at site-1" in capsys.readouterr().err
    assert main([*flags, "--out", str(tmp_path / "three"), "--replay", "0"]) == 0
    three = SegmentationModel.load(tmp_path / "three")
    assert set(three.config["tasks"]) == {"AbdomenCT", "BrainMR", "KneeXR"}
    assert [h["kind"] for h in three.config["history"]] == ["federated", "add-task"]


@pytest.mark.slow
def test_a_third_site_joins_a_two_site_model_with_replay_at_the_old_sites(tmp_path):
    folders = make_demo_datasets(tmp_path / "data", cases=4)[:3]
    parent_dir, out = tmp_path / "parent", tmp_path / "joined"
    train(folders[:2], parent_dir, TrainingOptions(epochs=1, steps_per_epoch=2, batch_size=4, features=4, device="cpu"),
          log=lambda m: None)  # the two-task model (trained pooled here, to keep the test short)
    run_local(folders, out, {"rounds": 1, "add-to": str(parent_dir), "replay": 0.5, "steps-per-epoch": 2,
                             "batch-size": 4, "features": 4}, work=tmp_path / "second", device="cpu")

    parent, model = SegmentationModel.load(parent_dir), SegmentationModel.load(out)  # ordinary model folders
    summary = summarise_tasks([folders[2]])[0]
    new = summary.task.name
    plan, _, _ = extend_model(parent, new, summary.stats, None, (), summary.task.terminology, log=lambda m: None)
    assert model.config["plan"] == plan.to_dict()  # planned as add-task plans, from the new site's statistics
    assert {t: model.config["tasks"][t] for t in parent.config["tasks"]} == parent.config["tasks"]
    assert model.config["parent"] == str(parent_dir.resolve())
    first, joined = model.config["history"]
    assert first == parent.config["history"][0] and joined["kind"] == "federated"
    assert model.input_size == parent.input_size and model.config["architecture"] == parent.config["architecture"]
    assert joined["added_task"] == new and joined["replay"] == 0.5 and joined["parent"] == str(parent_dir.resolve())
    new_site = next(site for site, tasks in joined["sites"].items() if tasks == [new])
    for record in joined["rounds"]:  # every site trained: the new task at its site, the old ones replayed at theirs
        assert record["sites"] == ["site-1", "site-2", "site-3"]
        assert record["weights"] == {site: 0.5 if site == new_site else 0.25 for site in joined["sites"]}
    forgetting = joined["forgetting"]
    assert set(forgetting) == set(model.config["tasks"])
    assert all(0 <= d["before"] <= 1 and 0 <= d["after"] <= 1 for d in forgetting.values())
    assert {t: d["after"] for t, d in forgetting.items()} == {t: d["mean"] for t, d in joined["rounds"][-1]["val_dice"].items()}
    assert _wait_until_no_flower_process(str(tmp_path / "second")) == []


def _shell(command: str, cwd) -> None:
    subprocess.run(command, shell=True, cwd=cwd, check=True, capture_output=True)


@pytest.mark.slow
def test_a_coordinator_and_a_site_over_tls_with_supernode_authentication(tmp_path):
    if not (shutil.which("openssl") and shutil.which("ssh-keygen")):
        pytest.skip("needs openssl and ssh-keygen")
    (tmp_path / "certs").mkdir()  # README.md, "Several hospitals": the same commands, the host 127.0.0.1
    _shell('openssl req -x509 -newkey rsa:4096 -nodes -days 365 -keyout ca.key -out ca.crt -subj "/CN=labelsharing CA"'
           ' && openssl req -newkey rsa:4096 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1"'
           ' && printf "subjectAltName=IP:127.0.0.1" > san.ext'
           ' && openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -out server.pem'
           ' -extfile san.ext', tmp_path / "certs")
    _shell('ssh-keygen -t ecdsa -b 384 -N "" -f site.key && mv site.key.pub site.pub', tmp_path)
    fleet, control, serverappio = (free_port() for _ in range(3))
    (tmp_path / "sites.toml").write_text(
        f'[superlink]\nfleet-address = "127.0.0.1:{fleet}"\ncontrol-address = "127.0.0.1:{control}"\n'
        f'serverappio-address = "127.0.0.1:{serverappio}"\nca-certificate = "certs/ca.crt"\n'
        'certificate = "certs/server.pem"\nprivate-key = "certs/server.key"\n\n'
        '[sites]\nexpected = 1\npublic-keys = ["site.pub"]\n')
    [folder] = [f for f in make_demo_datasets(tmp_path / "data", cases=3) if f.name.endswith("KneeXR")]
    log = open(tmp_path / "site.log", "wb")
    site = subprocess.Popen(  # started first: it retries until the coordinator has registered its key
        [sys.executable, "-m", "labelsharing", "federated", "site", "--dataset", str(folder), "--superlink",
         f"127.0.0.1:{fleet}", "--root-certificates", "certs/ca.crt", "--auth-private-key", "site.key",
         "--device", "cpu"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, start_new_session=True)
    try:
        assert main(["--progress", "none", "federated", "coordinator", "--sites", str(tmp_path / "sites.toml"),
                     "--out", str(tmp_path / "model"), "--rounds", "1", "--steps-per-epoch", "2", "--batch-size", "4",
                     "--features", "4"]) == 0
    finally:
        os.killpg(site.pid, signal.SIGTERM)
        site.wait(60)
        log.close()
    [history] = SegmentationModel.load(tmp_path / "model").config["history"]
    assert history["sites"] == {"site-1": ["KneeXR"]} and history["rounds"][0]["sites"] == ["site-1"]
    links = (tmp_path / ".model.coordinator" / "logs" / "superlink.log").read_text()
    assert "--insecure" not in " ".join(site.args) and "insecure" not in links.lower()


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


def test_a_site_authenticates_with_its_private_key_alone(tmp_path):
    """Flower 1.32 derives a SuperNode's public key from its private key and warns that
    ``--auth-supernode-public-key`` is deprecated (flwr/supernode/cli/flower_supernode.py)."""
    command = supernode_command("coordinator:9092", [tmp_path], "cpu", "127.0.0.1:9094", "ca.crt", "site.key")
    assert command[command.index("--auth-supernode-private-key") + 1] == "site.key"
    assert "--auth-supernode-public-key" not in command and "--insecure" not in command
    with pytest.raises(SystemExit):
        main(["federated", "site", "--dataset", str(tmp_path), "--superlink", "h:1", "--auth-public-key", "site.pub"])


def test_a_superlink_whose_port_was_taken_meanwhile_starts_again_on_other_ports(tmp_path, monkeypatch):
    """A CI run failed when another program took a port between ``free_port`` and the SuperLink's bind
    ("Port in server address 127.0.0.1:39119 is already in use", then "ended at start")."""
    from labelsharing.federated import launch, runtime

    taken = socket.socket()  # bound, not listening: nothing answers there, and no one else can bind it
    taken.bind(("127.0.0.1", 0))
    first_try = [free_port(), taken.getsockname()[1], free_port()]  # Fleet, Control (taken), ServerAppIo
    given = iter(first_try)
    monkeypatch.setattr(runtime, "free_port", lambda: next(given, None) or free_port())
    try:
        with Processes(flower_environment(tmp_path / "home"), tmp_path / "logs") as processes:
            fleet, control = launch.start_local_superlink(processes)
            assert next(given, None) is None  # the first SuperLink got the taken port and ended
            assert control != f"127.0.0.1:{first_try[1]}"
            with socket.create_connection(("127.0.0.1", int(control.rsplit(":", 1)[1])), timeout=5):
                pass  # the second one listens
    finally:
        taken.close()


def test_a_supernode_whose_port_was_taken_meanwhile_starts_again_on_another_port(tmp_path, monkeypatch):
    """As the SuperLink's: another program takes a SuperNode's ClientAppIo port between ``free_port`` and the
    SuperNode's bind ("Port in server address ... is already in use"); that site's SuperNode ended at start
    and ``flwr run`` waited for it."""
    from labelsharing.federated import launch, runtime

    taken = socket.socket()  # bound, not listening: nothing answers there, and no one else can bind it
    taken.bind(("127.0.0.1", 0))
    first_try = [free_port(), free_port(), free_port(), taken.getsockname()[1]]  # the SuperLink's 3, site-1's
    given = iter(first_try)
    monkeypatch.setattr(runtime, "free_port", lambda: next(given, None) or free_port())
    found = {}

    def both_listen() -> bool:
        for process in _flower_processes(str(tmp_path / "work")):
            command = process.cmdline()
            if "flower-supernode" in " ".join(command):
                address = command[command.index("--clientappio-api-address") + 1]
                try:
                    with socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=1):
                        found[command[command.index("--node-config") + 1]] = address
                except OSError:
                    pass
        return len(found) == 2

    def the_supernodes_listen(app, control, settings, env, insecure):  # instead of ``flwr run``
        assert next(given, None) is None  # site-1 got the taken port first
        poll_until(both_listen, timeout=120, interval=0.5,  # a hang guard: a SuperNode on the taken port never listens
                   what=lambda: f"SuperNodes listening: {found or 'none'}")

    monkeypatch.setattr(launch, "run_flower_app", the_supernodes_listen)
    try:
        launch.run_local([tmp_path / "a", tmp_path / "b"], tmp_path / "model", work=tmp_path / "work", device="cpu")
    finally:
        taken.close()
    assert len(found) == 2  # each site's SuperNode listened, site-1's on another port
    assert f"127.0.0.1:{first_try[3]}" not in found.values()
    assert _wait_until_no_flower_process(str(tmp_path / "work")) == []


def test_a_site_starts_its_supernode_again_on_a_fresh_clientappio_port(tmp_path, monkeypatch):
    """``federated site`` restarts its SuperNode when it stops; the old code reused the first ClientAppIo
    port, so a port taken by another program failed every restart while the message blamed the coordinator."""
    from labelsharing.federated import launch

    dataset = make_demo_datasets(tmp_path / "demo", cases=2, seed=0)[2]
    addresses, codes = [], iter([1, 1, 0])  # stopped twice (e.g. its port was taken), then ends normally

    def supernode(command, env):
        addresses.append(command[command.index("--clientappio-api-address") + 1])
        return subprocess.CompletedProcess(command, next(codes))

    monkeypatch.setattr(subprocess, "run", supernode)
    assert launch.run_site([dataset], "127.0.0.1:9092", insecure=True, retry_seconds=0) == 0
    assert len(addresses) == 3 and len(set(addresses)) == 3
