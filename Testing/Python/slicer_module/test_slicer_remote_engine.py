"""The module's remote mode (issue 13): ``ServerClient``, ``RoutingEngine`` and the Engine section.

The client and the routing engine talk to a real ``labelsharing serve`` on 127.0.0.1 (random
port) serving a tiny random UNet (``Testing/Python/tiny_model.py``); the Engine section runs on the
fake qt/ctk surface (``fakes_qt.py``). Checked: the server's models read as the local ``model.json``
reads; a predict writes the task's ``.seg.nrrd`` where ``Segmenter.load`` reads it; a wrong token, an
unreachable server and an incomplete setting are one readable ``ModuleError`` each; cancel reports
cancelled; the setting is kept in the application settings with the token field masked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import SimpleITK as sitk

from LabelSharingSegLib.EngineCommands import PredictCall, ServerJobCall
from LabelSharingSegLib.ModelInfo import ModelInfo
from LabelSharingSegLib.ModuleError import ModuleError
from LabelSharingSegLib.RemoteEngine import RoutingEngine
from LabelSharingSegLib.ServerClient import LOCAL, SERVER, EngineSettings, ServerClient, zipDatasets

from polling import poll_until

from .fakes_files import readSegNrrdLikeSlicer
from .fakes_qt import FakeButton, FakeComboBox, FakeLineEdit, fakeSettingsClass

pytest.importorskip("fastapi")
REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "LabelSharingSeg"), str(REPO / "Testing" / "Python")])}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``labelsharing serve`` on a folder holding the tiny model ``tiny``: (url, token, models folder)."""
    models = tmp_path_factory.mktemp("served")
    subprocess.run([sys.executable, "-c", "import sys; from tiny_model import make_model; "
                    "make_model(fake=False, input_size=32).save(sys.argv[1])", str(models / "tiny")],
                   env=ENV, check=True, timeout=120)
    process = subprocess.Popen([sys.executable, "-m", "labelsharing", "serve", "--models", str(models), "--port", "0",
                                "--device", "cpu", "--backend", "torch"], env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    url = next(match.group(1) for line in process.stdout
               for match in [re.search(r"on (http://127\.0\.0\.1:\d+)", line)] if match)
    yield url, (models / ".labelsharing-serve" / "token").read_text().strip(), models
    process.terminate()
    process.wait(timeout=30)


class _Timer:
    """``qt.QTimer``'s surface (``setInterval``, ``connect("timeout()", f)``, ``start``, ``stop``); ``fire()``
    calls the slot as Qt's event loop would at each interval."""

    def __init__(self) -> None:
        self.slot, self.active = None, False

    def setInterval(self, ms: int) -> None:
        pass

    def connect(self, signal: str, slot) -> None:
        self.slot = slot

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False


def _runToEnd(engine: RoutingEngine, timer: _Timer, call, timeout: float = 60.0):
    results = []
    engine.start(call, results.append)
    deadline = time.monotonic() + timeout
    while not results and time.monotonic() < deadline:
        if timer.active:
            timer.slot()
        time.sleep(0.02)
    assert results, "the request did not end"
    return results[0]


def _volume(path: Path) -> Path:
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 1, (4, 20, 24)).astype(np.float32))
    image.SetSpacing((0.8, 0.9, 2.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


# ------------------------------------------------------------------------------------ ServerClient
def test_the_servers_models_read_as_their_model_json_reads(server):
    url, token, models = server
    (remote,) = ServerClient(url, token).models()
    local = ModelInfo.load(models / "tiny")
    assert remote.server == url and remote.name == "tiny" and not local.server
    assert remote.tasks == local.tasks and remote.plan["n_shared"] == local.plan["n_shared"]


def test_a_predict_writes_the_tasks_seg_nrrd(server, tmp_path):
    url, token, _ = server
    written = ServerClient(url, token).predict("tiny", "TaskB", _volume(tmp_path / "volume.nrrd"),
                                               tmp_path / "out" / "volume.seg.nrrd")
    segments, _ = readSegNrrdLikeSlicer(written)  # (id, name, colour, tags, mask) each
    assert [(name, color) for _, name, color, _, _ in segments] == [("tiny", (0.5, 0.5, 0.0)), ("large", (0.0, 0.5, 0.5))]
    assert all(mask.shape == (4, 20, 24) for *_, mask in segments)


class _Answer:
    """The surface of ``http.client.HTTPResponse`` that ``ServerClient`` reads (``read()``, ``headers.get``, a
    context manager), as ``urllib.request.urlopen`` returns it (CPython ``Lib/urllib/request.py``)."""

    def __init__(self, body: bytes, headers: dict) -> None:
        self.body, self.headers = body, headers

    def read(self) -> bytes:
        return self.body

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def test_the_engines_prediction_report_is_written_beside_the_result_as_a_local_predict_writes_it(tmp_path):
    report = {"task": "TaskB", "recognition": {"score": 0.93}, "familiarity": {"confidence": 0.7, "warning": None}}
    sent = []
    headers = {"X-Labelsharing-Prediction": json.dumps(report)}
    client = ServerClient("http://127.0.0.1:1", "t", opener=lambda request, timeout: sent.append(request) or
                          _Answer(b"labels", headers))
    written = client.predict("tiny", "auto", _volume(tmp_path / "volume.nrrd"), tmp_path / "out" / "volume.seg.nrrd")
    assert "task=auto" in sent[0].full_url and written.read_bytes() == b"labels"
    assert json.loads((tmp_path / "out" / "volume.prediction.json").read_text()) == report
    headers.clear()  # a model without task references: no report, and none left from before
    client.predict("tiny", "TaskB", tmp_path / "volume.nrrd", tmp_path / "out" / "volume.seg.nrrd")
    assert not (tmp_path / "out" / "volume.prediction.json").exists()


@pytest.mark.parametrize("url, token, message", [
    (None, "wrong", "refused the access token"),
    ("http://127.0.0.1:9", None, "Cannot reach the LabelSharingSeg server at http://127.0.0.1:9"),
    ("", None, "Set the server's URL"),
    ("gpu.hospital.org", None, "Set the server's URL"),
    (None, "", "Set the server's access token"),
])
def test_connection_and_token_problems_are_one_readable_error(server, url, token, message):
    realUrl, realToken, _ = server
    with pytest.raises(ModuleError, match=re.escape(message)):
        ServerClient(realUrl if url is None else url, realToken if token is None else token, timeout=10).models()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_an_untrusted_certificate_is_named_and_ssl_cert_file_makes_it_trusted(tmp_path, monkeypatch):
    """README, 'Server': a certificate of a CA Slicer's Python does not trust -> the dialog says so; starting
    Slicer with SSL_CERT_FILE naming a bundle that holds it is the fix (OpenSSL reads it for default contexts)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    (tmp_path / "models").mkdir()
    process = subprocess.Popen([sys.executable, "-m", "labelsharing", "serve", "--models", str(tmp_path / "models"),
                                "--port", "0", "--tls-cert", str(cert), "--tls-key", str(key)], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = next(match.group(1) for line in process.stdout
                   for match in [re.search(r"on (https://127\.0\.0\.1:\d+)", line)] if match)
        token = (tmp_path / "models" / ".labelsharing-serve" / "token").read_text().strip()
        with pytest.raises(ModuleError, match="certificate is not trusted by this computer"):
            ServerClient(url, token, timeout=10).models()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        assert ServerClient(url, token, timeout=10).models() == []
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_servers_own_message_is_shown_for_a_user_error(server, tmp_path):
    url, token, _ = server
    with pytest.raises(ModuleError, match="answered 400: .*TaskZ"):
        ServerClient(url, token).predict("tiny", "TaskZ", _volume(tmp_path / "volume.nrrd"), tmp_path / "x.seg.nrrd")


# ------------------------------------------------------------------------------------ RoutingEngine
def _routing(url: str, token: str):
    timer, local = _Timer(), mock.MagicMock(name="WarmEngine", isRunning=False)
    qt = mock.MagicMock(name="qt")
    qt.QTimer.return_value = timer
    return RoutingEngine(local, lambda: ServerClient(url, token), qt), timer, local


def test_a_server_models_segmentation_runs_on_the_server_and_lands_where_segmenter_reads(server, tmp_path):
    url, token, _ = server
    engine, timer, local = _routing(url, token)
    call = PredictCall("tiny", "TaskA", str(_volume(tmp_path / "input" / "volume.nrrd")), str(tmp_path / "output"),
                       "auto", url)
    result = _runToEnd(engine, timer, call)
    assert result.succeeded, result.errorMessage
    assert (tmp_path / "output" / "volume.seg.nrrd").is_file() and not engine.isRunning
    local.start.assert_not_called()
    localCall = PredictCall("/models/x", "TaskA", "in.nrrd", "out", "auto")
    engine.start(localCall, print)
    assert local.start.call_args[0][0] is localCall  # a local model goes to the warm engine as before


def test_errors_and_cancel_are_reported_as_the_local_engine_reports_them(server, tmp_path):
    url, token, _ = server
    engine, timer, _ = _routing(url, "wrong")
    call = PredictCall("tiny", "TaskA", str(_volume(tmp_path / "volume.nrrd")), str(tmp_path / "out"), "auto", url)
    failed = _runToEnd(engine, timer, call)
    assert not failed.succeeded and not failed.cancelled and "refused the access token" in failed.errorMessage
    engine, timer, _ = _routing(url, token)
    results = []
    engine.start(call, results.append)
    engine.cancel()
    while not results:
        timer.slot()
        time.sleep(0.02)
    assert results[0].cancelled and not results[0].succeeded
    with pytest.raises(ModuleError, match="choose the model again"):
        _routing("http://127.0.0.1:1", token)[0].start(call, print)


# ------------------------------------------------------------------------------------ Engine section
def test_the_engine_section_keeps_its_setting_masks_the_token_and_lists_the_servers_models(server,
                                                                                        fakeSlicerModules):
    from LabelSharingSegLib.EnginePanel import EnginePanel

    url, token, _ = server
    qt, ctk, slicer = fakeSlicerModules["qt"], fakeSlicerModules["ctk"], fakeSlicerModules["slicer"]
    settings = EngineSettings(fakeSettingsClass()())
    assert settings.engine == LOCAL
    ui, segmentPanel = mock.MagicMock(name="ui"), mock.MagicMock(name="SegmentPanel", model=None)
    panel = EnginePanel(ui, settings, segmentPanel, slicer, qt, ctk)
    assert isinstance(panel.tokenEdit, FakeLineEdit) and panel.tokenEdit.echoMode == FakeLineEdit.Password
    assert isinstance(panel.connectButton, FakeButton) and not panel.connectButton.enabled  # local engine
    panel.engineCombo.setCurrentIndex(1)
    panel.urlEdit.text, panel.tokenEdit.text = url + "/", token
    panel.tokenEdit.finishEditing()
    assert (settings.engine, settings.url, settings.token) == (SERVER, url + "/", token)
    assert EngineSettings(settings._settings).token == token  # kept, as Slicer keeps QSettings
    panel.connectButton.click()
    assert isinstance(panel.modelCombo, FakeComboBox) and panel.modelCombo.items == ["tiny"]
    chosen = segmentPanel.useModel.call_args[0][0]
    assert chosen.name == "tiny" and chosen.server == url
    segmentPanel.model = chosen
    panel.engineCombo.setCurrentIndex(0)  # back to this computer: the Segment section reloads its folder's model
    segmentPanel.onModelFolderChanged.assert_called_once_with(ui.modelPathLineEdit.currentPath)
    assert settings.engine == LOCAL and not panel.connectButton.enabled


def test_a_failed_connection_is_one_dialog(fakeSlicerModules):
    from LabelSharingSegLib.EnginePanel import EnginePanel

    qt, ctk, slicer = fakeSlicerModules["qt"], fakeSlicerModules["ctk"], fakeSlicerModules["slicer"]
    settings = EngineSettings(fakeSettingsClass()())
    settings.save(SERVER, "http://127.0.0.1:9", "token")
    panel = EnginePanel(mock.MagicMock(name="ui"), settings, mock.MagicMock(name="SegmentPanel"), slicer, qt, ctk)
    panel.connectButton.click()
    (call,) = slicer.util.errorDisplay.call_args_list
    assert "Cannot reach the LabelSharingSeg server at http://127.0.0.1:9" in call[0][0]
    assert panel.modelCombo.items == []


# ------------------------------------------------------------------------------------ training on the server
def _taskZipFolders(root: Path) -> list:
    """Two tiny nnU-Net task folders written by the engine tests' own helper (``Testing/Python/conftest.py``)."""
    code = ("import sys; from pathlib import Path; from conftest import boxes, write_task; root = Path(sys.argv[1]); "
            "write_task(root / 'TaskA', {'big': 1, 'mid': 2, 'small': 3}, [boxes((12, 12), {1: 50, 2: 30, 3: 12})] * 3); "
            "write_task(root / 'TaskB', {'tiny': 1, 'large': 2}, [boxes((12, 12), {1: 8, 2: 40})] * 3)")
    subprocess.run([sys.executable, "-c", code, str(root)], env=ENV, check=True, timeout=120)
    return [str(root / "TaskA"), str(root / "TaskB")]


TINY = (("epochs", 1), ("steps_per_epoch", 2), ("batch_size", 2), ("input_size", 32), ("features", 4))


@pytest.mark.slow
def test_a_training_job_on_the_server_reports_progress_and_log_and_ends_with_its_model(server, tmp_path,
                                                                                       monkeypatch):
    from LabelSharingSegLib import RemoteEngine as remote

    url, token, models = server
    monkeypatch.setattr(remote._RemoteJob, "POLL_SECONDS", 0.2)
    engine, timer, local = _routing(url, token)
    call = ServerJobCall("train", tuple(_taskZipFolders(tmp_path)), "fromslicer", url, TINY)
    logs, progress, results = [], [], []
    engine.start(call, results.append, onProgress=progress.append, onLog=logs.append)
    deadline = time.monotonic() + 180
    while not results and time.monotonic() < deadline:
        timer.slot()
        time.sleep(0.05)
    assert results and results[0].succeeded, (results, logs[-5:])
    assert any(line.startswith("epoch   1/1 | step 2") for line in logs) and len(logs) == len(set(logs))
    assert logs[-1] == f"model fromslicer written on {url}"
    assert "fromslicer" in [model.name for model in ServerClient(url, token).models()]
    local.start.assert_not_called()


def test_cancel_ends_the_servers_job(server, tmp_path, monkeypatch):
    from LabelSharingSegLib import RemoteEngine as remote

    url, token, models = server
    monkeypatch.setattr(remote._RemoteJob, "POLL_SECONDS", 0.2)
    engine, timer, _ = _routing(url, token)
    call = ServerJobCall("train", tuple(_taskZipFolders(tmp_path)), "cancelled", url, (("epochs", 10000),) + TINY[1:])
    results = []
    engine.start(call, results.append)
    poll_until(lambda: (engine._running._status or {}).get("status") == "running", timer.slot, 120,
               "the server job never reported running", interval=0.05)
    deadline = time.monotonic() + 120
    engine.cancel()
    while not results and time.monotonic() < deadline:
        timer.slot()
        time.sleep(0.05)
    assert results and results[0].cancelled
    assert not (models / "cancelled").exists()


def _serverWidget(fakeSlicerModules, server, tmp_path):
    """The module's widget with the Engine section connected to ``server`` (its model ``tiny`` chosen)."""
    from .widget_harness import buildWidget, loadModuleFile

    url, token, _ = server
    slicer = fakeSlicerModules["slicer"]
    slicer.app.temporaryPath = str(tmp_path)
    slicer.app.slicerUserSettingsFilePath = str(tmp_path / "settings" / "Slicer.ini")
    widget = buildWidget(loadModuleFile(), slicer)
    panel = widget.enginePanel
    panel.engineCombo.setCurrentIndex(1)
    panel.urlEdit.text, panel.tokenEdit.text = url, token
    panel.connectButton.click()
    assert widget.segmentPanel.model.server == url
    return widget, slicer


def test_with_a_server_engine_train_and_add_task_become_server_jobs(fakeSlicerModules, server, tmp_path):
    url, token, _ = server
    widget, slicer = _serverWidget(fakeSlicerModules, server, tmp_path)
    panel, node = widget.enginePanel, widget._parameterNode
    node.modelName, node.trainEpochs, node.addTaskEpochs, node.replay = "abdomen", 3, 2, 0.25
    widget.trainPanel.addDatasetFolder(str(tmp_path / "TaskC"))
    widget.ui.trainButton.click()
    work = widget.fakeJob.work
    assert isinstance(work, ServerJobCall) and (work.kind, work.name, work.server) == ("train", "abdomen", url)
    assert work.datasets == (str(tmp_path / "TaskC"),) and dict(work.options) == {"epochs": 3}
    with mock.patch.object(panel, "onServerModelWritten") as written:
        widget.fakeJob.finish(0)
    written.assert_called_once_with("abdomen")
    assert node.modelName == "abdomen_2"
    widget.ui.trainDatasetsListWidget.setCurrentRow(0)
    widget.ui.addTaskButton.click()
    work = widget.fakeJob.work
    assert (work.kind, work.model, work.name, dict(work.options)) == (
        "add-task", widget.segmentPanel.model.name, "abdomen_2", {"epochs": 2, "replay": 0.25})
    widget.fakeJob.isRunning = False
    panel.engineCombo.setCurrentIndex(0)  # this computer, while the server's model is still chosen: refused
    widget.segmentPanel.model = ServerClient(url, token).models()[0]
    widget.ui.addTaskButton.click()
    assert "must be where the Engine section runs" in slicer.util.errorDisplay.call_args[0][0]


def test_keep_look_alikes_apart_becomes_the_server_jobs_option_only_when_checked(fakeSlicerModules, server, tmp_path):
    widget, _ = _serverWidget(fakeSlicerModules, server, tmp_path)
    node = widget._parameterNode
    node.modelName, node.trainEpochs, node.addTaskEpochs, node.replay = "abdomen", 3, 2, 0.25
    widget.trainPanel.addDatasetFolder(str(tmp_path / "TaskC"))
    options = {}
    for checked in (False, True):
        node.keepLookAlikesApart = checked
        for button in (widget.ui.trainButton, widget.ui.addTaskButton):
            button.click()
            options[checked, widget.fakeJob.work.kind] = dict(widget.fakeJob.work.options)
            widget.fakeJob.cancel()
    assert options[False, "train"] == {"epochs": 3} and options[False, "add-task"] == {"epochs": 2, "replay": 0.25}
    for kind in ("train", "add-task"):
        assert options[True, kind] == {**options[False, kind], "keep_look_alikes_apart": True}


@pytest.mark.slow
def test_keep_look_alikes_apart_as_the_module_sends_it_trains_a_model_that_keeps_tasks_apart(server, tmp_path):
    """The option as ``ServerClient`` sends it (a Python True, urlencoded as "True") reaches the engine: the model's
    plan has its ``apart`` entry, present (even empty) only in a plan made with the flag (docs/CONTRACTS.md)."""
    url, token, models = server
    client = ServerClient(url, token)
    call = ServerJobCall("train", tuple(_taskZipFolders(tmp_path)), "apart", url,
                         TINY + (("keep_look_alikes_apart", True),))
    job = client.submitJob(call, zipDatasets(call.datasets, None, tmp_path / "datasets.zip"))
    poll_until(lambda: client.job(job["id"])["status"] in ("done", "failed", "cancelled"), timeout=180,
               what="the training job never ended")
    assert client.job(job["id"])["status"] == "done", client.job(job["id"])["log"][-5:]
    assert json.loads((models / "apart" / "model.json").read_text(encoding="utf-8"))["plan"]["apart"] == []


def test_the_servers_models_appear_in_the_model_library_beside_the_local_ones(fakeSlicerModules, server, tmp_path):
    from .widget_harness import buildWidget, loadModuleFile, writeModel

    url, token, _ = server
    slicer = fakeSlicerModules["slicer"]
    slicer.app.temporaryPath = str(tmp_path)
    slicer.app.slicerUserSettingsFilePath = str(tmp_path / "settings" / "Slicer.ini")
    widget = buildWidget(loadModuleFile(), slicer)
    widget.library.open(writeModel(tmp_path / "local"))
    panel, tree = widget.enginePanel, widget.libraryPanel.tree
    panel.engineCombo.setCurrentIndex(1)
    panel.urlEdit.text, panel.tokenEdit.text = url, token
    panel.connectButton.click()
    texts = [tree.topLevelItem(i).text(0) for i in range(tree.topLevelItemCount())]
    assert texts[0] == "local" and "tiny (server)" in texts
    server_item = tree.topLevelItem(texts.index("tiny (server)"))
    widget.segmentPanel.useModel(widget.logic.loadModel(tmp_path / "local"))
    tree.click(server_item.child(1))  # the task TaskB of the server's model
    assert widget.segmentPanel.model.server == url and widget.segmentPanel.model.name == "tiny"
    assert widget.ui.taskComboBox.currentText == "TaskB"
    panel.engineCombo.setCurrentIndex(0)  # this computer: the server's models leave the library
    assert [tree.topLevelItem(i).text(0) for i in range(tree.topLevelItemCount())] == ["local"]
