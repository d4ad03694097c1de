"""The warm engine behind Apply (issue 11): one worker reused between Applies, ended on cleanup,
scene close, idle time and model change, replaced after it died, and a one-shot ``predict`` when it
dies during a request.

FAKE slicer/qt surface (fakes.py: ``qt.QTimer`` is a mock, so the tests call the timer slots
themselves). Real processes: the lifecycle tests run a stand-in worker (below: the protocol of
docs/CONTRACTS.md, no torch) behind a launcher process, as ``PythonSlicer`` launches the real
interpreter as its child (CTK AppLauncher ``ctkAppLauncherPrivate::runProcess``, which forwards
standard input and output: ``ForwardedInputChannel``, ``ForwardedChannels``); the widget test runs
the real ``labelsharing worker`` on a tiny model.
"""

from __future__ import annotations

import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

from LabelSharingSegLib.EngineCommands import PredictCall
from LabelSharingSegLib.EngineJob import EngineJob
from LabelSharingSegLib.ModuleError import ModuleError
from LabelSharingSegLib.WarmEngine import WarmEngine

from polling import poll_until

from .fakes import FakeSegmentationNode, FakeVolumeNode
from .widget_harness import buildWidget, buildWidgetWithRealEngine, loadModuleFile, writeModel

_STAND_IN = textwrap.dedent("""
    import json, os, sys, time
    args = sys.argv[1:]
    if args[0] == "predict":  # the one-shot command
        print("PROGRESS 100 predicting 1/1 (one-shot)", flush=True)
        sys.exit(0)
    print(json.dumps({"status": "log", "id": None, "text": "device: stand-in"}), flush=True)
    print("a warning on stderr", file=sys.stderr, flush=True)
    print(json.dumps({"status": "ready", "id": None}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        task = request["task"]
        if task == "crash":
            print("error: internal error (stand-in crash)", file=sys.stderr, flush=True)
            os._exit(1)
        if task == "slow":
            time.sleep(600)
        if task == "bad":
            print(json.dumps({"status": "error", "id": request["id"], "error": "Unknown task 'bad'."}), flush=True)
            continue
        print(json.dumps({"status": "progress", "id": request["id"], "percent": 100.0, "text": "predicting 1/1"}),
              flush=True)
        print(json.dumps({"status": "ok", "id": request["id"], "written": [request["out"] + "/volume.seg.nrrd"]}),
              flush=True)
""")
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call([sys.executable, *sys.argv[1:]]))"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def standInCommands(tmp_path, monkeypatch):
    """Every engine command runs the stand-in behind a launcher; the list of their arguments."""
    standIn = tmp_path / "stand_in.py"
    standIn.write_text(_STAND_IN)
    commands = []

    def command(self, args):
        commands.append(list(args))
        return [sys.executable, "-c", _LAUNCHER, str(standIn), *args], None

    monkeypatch.setattr(EngineJob, "command", command)
    return commands


@pytest.fixture
def engine(fakeSlicerModules, standInCommands):
    """A WarmEngine on the stand-in; yields it, ends it after."""
    commands = standInCommands
    clock = Clock()
    job = EngineJob("unused", fakeSlicerModules["slicer"], fakeSlicerModules["qt"])
    warm = WarmEngine(job, fakeSlicerModules["qt"], idleSeconds=60.0, clock=clock)
    warm.commands, warm.clock = commands, clock
    yield warm
    warm.stop()


def _call(tmp_path, task="liver", model="m1", device="cpu") -> PredictCall:
    return PredictCall(str(tmp_path / model), task, str(tmp_path / "in" / "volume.nrrd"), str(tmp_path / "out"), device)


def _run(warm: WarmEngine, call, timeout: float = 180.0):
    """Start ``call`` and poll both timers' slots until it ends: (result, progress texts, log lines)."""
    results, progress, log = [], [], []
    warm.start(call, results.append, onProgress=lambda u: progress.append(u.text), onLog=log.append)
    poll_until(lambda: results, lambda: (warm._poll(), warm._job._poll()), timeout, lambda: f"no result; log: {log}")
    return results[0], progress, log


def _engineOf(warm: WarmEngine) -> psutil.Process:
    """The stand-in engine: the launcher's child."""
    launcher = psutil.Process(warm.workerPid)
    poll_until(launcher.children, timeout=30, what="the launcher started no engine")
    return launcher.children()[0]


def _ended(process: psutil.Process) -> bool:
    gone, alive = psutil.wait_procs([process], timeout=5)
    return not alive


def test_two_applies_use_one_worker(engine, tmp_path):
    first, progress, log = _run(engine, _call(tmp_path))
    assert first.succeeded and progress == ["predicting 1/1"] and "device: stand-in" in log
    pid = engine.workerPid
    second, _, _ = _run(engine, _call(tmp_path))
    assert second.succeeded and engine.workerPid == pid
    assert engine.commands == [["worker", str(tmp_path / "m1"), "--device", "cpu"]]  # started once
    assert not engine.isRunning


def test_an_error_reply_fails_the_apply_and_keeps_the_worker(engine, tmp_path):
    result, _, _ = _run(engine, _call(tmp_path, task="bad"))
    assert not result.succeeded and not result.cancelled and result.errorMessage == "Unknown task 'bad'."
    pid = engine.workerPid
    assert _run(engine, _call(tmp_path))[0].succeeded and engine.workerPid == pid


def test_another_model_or_device_replaces_the_worker(engine, tmp_path):
    _run(engine, _call(tmp_path))
    old = _engineOf(engine)
    _run(engine, _call(tmp_path, model="m2"))
    assert _ended(old), "the first model's worker outlived the change of model"
    second = _engineOf(engine)
    _run(engine, _call(tmp_path, model="m2", device="auto"))
    assert _ended(second)
    assert [c[1:] for c in engine.commands] == [[str(tmp_path / m), "--device", d]
                                                for m, d in (("m1", "cpu"), ("m2", "cpu"), ("m2", "auto"))]


def test_an_apply_with_another_model_started_when_the_last_one_finished_runs_to_its_end(engine, tmp_path):
    """The next Apply started from the finished one's callback (Compare: old model, then new) replaces the
    worker while the old worker's poll is still under way; the old worker's end is not the new request's."""
    results = []
    engine.start(_call(tmp_path, model="m1"), lambda result: (
        results.append(result), engine.start(_call(tmp_path, model="m2"), results.append)))
    poll_until(lambda: len(results) == 2 and not engine.isRunning, lambda: (engine._poll(), engine._job._poll()), 120,
               lambda: f"two applies did not end: {results}")
    assert [r.succeeded for r in results] == [True, True] and len(results) == 2
    assert [c[1] for c in engine.commands] == [str(tmp_path / "m1"), str(tmp_path / "m2")]


def test_module_cleanup_ends_the_worker_tree_without_reporting(engine, tmp_path):
    """Cleanup (ScriptedLoadableModuleWidget.cleanup, on moduleAboutToBeUnloaded) during a request."""
    results = []
    engine.start(_call(tmp_path, task="slow"), results.append)
    worker = _engineOf(engine)
    engine.stop()
    assert _ended(worker) and engine.workerPid is None and not engine.isRunning
    engine._poll()
    assert results == []


def test_scene_close_reports_the_running_apply_cancelled_and_ends_the_worker(engine, tmp_path):
    results = []
    engine.start(_call(tmp_path, task="slow"), results.append)
    worker = _engineOf(engine)
    engine.endWorker()
    assert _ended(worker)
    assert len(results) == 1 and results[0].cancelled and not engine.isRunning


def test_cancel_kills_the_worker_and_the_next_apply_starts_another(engine, tmp_path):
    results = []
    engine.start(_call(tmp_path, task="slow"), results.append)
    worker = _engineOf(engine)
    engine.cancel()
    while not results:
        engine._poll()
        time.sleep(0.02)
    assert results[0].cancelled and _ended(worker)
    assert _run(engine, _call(tmp_path))[0].succeeded
    assert len(engine.commands) == 2 and _engineOf(engine).pid != worker.pid


def test_a_worker_that_dies_during_an_apply_is_replaced_by_one_predict(engine, tmp_path):
    result, progress, log = _run(engine, _call(tmp_path, task="crash"))
    assert result.succeeded, result.errorMessage
    assert any("warm engine stopped (internal error (stand-in crash))" in line for line in log)
    assert progress == ["predicting 1/1 (one-shot)"]
    assert engine.commands[-1] == _call(tmp_path, task="crash").args  # the one-shot predict of the same call
    assert engine.workerPid is None


def test_a_worker_that_died_while_idle_is_restarted_at_the_next_apply(engine, tmp_path):
    _run(engine, _call(tmp_path))
    worker = _engineOf(engine)
    worker.kill()
    assert _ended(worker)
    # the idle timer notices the end (a few ticks)
    poll_until(lambda: engine.workerPid is None, engine._poll, 30, "the worker's end went unnoticed")
    result, progress, _ = _run(engine, _call(tmp_path))
    assert result.succeeded and progress == ["predicting 1/1"]  # a new worker, not the one-shot
    assert [c[0] for c in engine.commands] == ["worker", "worker"]


def test_an_idle_worker_ends_after_the_idle_time(engine, tmp_path):
    _run(engine, _call(tmp_path))
    worker = _engineOf(engine)
    engine.clock.now += 59.0
    engine._poll()
    assert engine.workerPid is not None
    engine.clock.now += 2.0
    engine._poll()
    assert engine.workerPid is None and _ended(worker)
    engine._timer.stop.assert_called()


def test_one_job_at_a_time(engine, tmp_path):
    engine.start(_call(tmp_path, task="slow"), lambda result: None)
    for work in (_call(tmp_path), ["train", "unused"]):
        with pytest.raises(ModuleError, match="Another LabelSharingSeg job is running"):
            engine.start(work, lambda result: None)
    assert engine.commands == [["worker", str(tmp_path / "m1"), "--device", "cpu"]]


def test_other_commands_run_once_through_the_engine_job(engine, tmp_path):
    results = []
    engine.start(["predict", "unused"], results.append)
    while not results:
        engine._job._poll()
        time.sleep(0.02)
    assert results[0].succeeded and engine.workerPid is None and engine.commands == [["predict", "unused"]]


# ----------------------------------------------------------------------------- the module
@pytest.mark.parametrize("event", ["cleanup", "scene close"])
def test_the_module_ends_its_warm_worker_on_cleanup_and_scene_close(fakeSlicerModules, standInCommands, tmp_path,
                                                                     event):
    """Module cleanup (ScriptedLoadableModuleWidget.cleanup) and the scene's StartCloseEvent end the idle worker."""
    slicer = fakeSlicerModules["slicer"]
    slicer.app.temporaryPath = str(tmp_path)
    widget = buildWidget(loadModuleFile(), slicer)
    widget.jobs._job = widget.engine  # the module's own runner, not the harness's fake
    widget.logic.dependencies.missing = lambda distributions=None: []
    widget.logic.segmenter.load = lambda request: FakeSegmentationNode("result")  # the stand-in writes no file
    node = widget._parameterNode
    node.inputVolume = FakeVolumeNode(np.zeros((2, 4, 4), dtype=np.int16), np.eye(4), "ct")
    widget.ui.modelPathLineEdit.currentPath = str(writeModel(tmp_path / "model"))
    widget.ui.applyButton.click()
    while widget.jobs.isRunning:
        widget.engine._poll()
        time.sleep(0.02)
    assert widget.ui.statusLabel.text == "Segmentation: done." and standInCommands[0][0] == "worker"
    worker = _engineOf(widget.engine)
    if event == "cleanup":
        widget.cleanup()
    else:
        widget.onSceneStartClose(None, None)
    assert _ended(worker) and widget.engine.workerPid is None
    slicer.util.errorDisplay.assert_not_called()


# ----------------------------------------------------------------------------- the module with the real engine
@pytest.fixture
def tinyModel(tmp_path):
    from tiny_model import make_model  # torch: in the test process only, never in the module's

    return make_model(fake=False, input_size=32).save(tmp_path / "model")


def test_two_applies_in_the_module_reuse_the_real_worker_until_cleanup(fakeSlicerModules, tmp_path, tinyModel,
                                                                        monkeypatch):
    """The widget's Apply path with ``labelsharing worker`` as Slicer would run it: ``PythonSlicer`` found
    with ``shutil.which`` and the environment from ``slicer.util.startupEnvironment()`` (util.py line 380)."""
    slicer = fakeSlicerModules["slicer"]
    widget = buildWidgetWithRealEngine(slicer, tmp_path, monkeypatch)
    node = widget._parameterNode
    volume = FakeVolumeNode(np.random.default_rng(0).normal(0, 100, (4, 20, 24)).astype(np.int16),
                            np.diag([0.8, 0.9, 2.5, 1.0]), "ct")
    slicer.mrmlScene.nodes.append(volume)
    node.inputVolume = volume
    widget.ui.modelPathLineEdit.currentPath = str(tinyModel)
    node.task = "TaskA"
    widget.ui.taskComboBox.setCurrentIndex(widget.ui.taskComboBox.findText("TaskA"))
    pids = []
    for _ in range(2):
        widget.ui.applyButton.click()
        poll_until(lambda: not widget.jobs.isRunning, widget.engine._poll, 300,
                   lambda: f"the Apply is still running: {widget.ui.statusLabel.text}", interval=0.05)
        slicer.util.errorDisplay.assert_not_called()
        assert widget.ui.statusLabel.text == "Segmentation: done."
        segments = node.outputSegmentation.GetSegmentation()
        names = [segments.GetSegment(segments.GetNthSegmentID(i)).GetName() for i in range(segments.GetNumberOfSegments())]
        assert names == ["big", "mid", "small"]
        pids.append(widget.engine.workerPid)
    assert pids[0] is not None and pids[0] == pids[1]
    worker = psutil.Process(pids[0])
    widget.cleanup()
    assert _ended(worker) and widget.engine.workerPid is None
