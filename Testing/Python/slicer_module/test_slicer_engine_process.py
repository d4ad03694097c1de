"""The background process runner, with real child processes (no Slicer, no fakes)."""

from __future__ import annotations

import os
import sys
import textwrap

import psutil
import pytest

from LabelSharingSegLib.EngineProcess import EngineProcess, engineCommand, parseErrorLine, parseProgressLine

PY = sys.executable


@pytest.mark.parametrize(
    "line, expected",
    [
        ("PROGRESS 12.5 epoch 1/8", (12.5, "epoch 1/8")),
        ("PROGRESS 100", (100.0, "")),
        ("PROGRESS 150 overshoot", (100.0, "overshoot")),
        ("  PROGRESS 0.0   loading  ", (0.0, "loading")),
        ("PROGRESS 1e1 sci", (10.0, "sci")),
        ("progress 10 lower-case", None),
        ("PROGRESS abc", None),
        ("Epoch 1: loss 0.3", None),
    ],
)
def test_parse_progress_line(line, expected):
    update = parseProgressLine(line)
    assert (None if update is None else (update.percent, update.text)) == expected


def test_parse_error_line():
    assert parseErrorLine("error: Task 'x' not in model") == "Task 'x' not in model"
    assert parseErrorLine("warning: something") is None


def test_engine_command_puts_module_dir_first_on_pythonpath():
    command, env = engineCommand("/opt/Slicer/bin/PythonSlicer", "/ext/LabelSharingSeg", {"PYTHONPATH": "/a", "X": "1"})
    assert command == ["/opt/Slicer/bin/PythonSlicer", "-m", "labelsharing", "--progress", "lines"]
    assert env["PYTHONPATH"].split(os.pathsep) == ["/ext/LabelSharingSeg", "/a"]
    assert env["X"] == "1" and env["PYTHONUNBUFFERED"] == "1"


def test_progress_lines_and_log_are_delivered_in_order():
    script = "import sys\nfor p in (0, 50, 100):\n    print(f'PROGRESS {p} step {p}', flush=True)\nprint('plain', file=sys.stderr)"
    updates, lines, finished = [], [], []
    process = EngineProcess(onProgress=updates.append, onLog=lines.append, onFinished=finished.append)
    process.start([PY, "-c", script])
    result = process.wait(timeout=60)
    assert result.succeeded and finished == [result]
    assert [(u.percent, u.text) for u in updates] == [(0.0, "step 0"), (50.0, "step 50"), (100.0, "step 100")]
    assert "plain" in lines and "PROGRESS 50 step 50" in result.log
    assert not process.isRunning


def test_failing_command_surfaces_its_error_message():
    script = "import sys\nprint('PROGRESS 10 reading')\nprint('error: Model folder /x has no model.json', file=sys.stderr)\nsys.exit(2)"
    process = EngineProcess()
    process.start([PY, "-c", script])
    result = process.wait(timeout=60)
    assert result.returnCode == 2 and not result.succeeded and not result.cancelled
    assert result.errorMessage == "Model folder /x has no model.json"
    assert "PROGRESS 10 reading" in result.log


def test_crash_without_error_line_reports_exit_code_and_last_message():
    process = EngineProcess()
    process.start([PY, "-c", "raise RuntimeError('boom')"])
    result = process.wait(timeout=60)
    assert result.returnCode == 1
    assert "exit code 1" in result.errorMessage and "RuntimeError: boom" in result.errorMessage


def test_cancel_kills_the_whole_process_tree(tmp_path):
    pidFile = tmp_path / "grandchild.pid"
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pidFile)!r}, "w").write(str(child.pid))
        print("PROGRESS 5 started", flush=True)
        time.sleep(600)
    """)
    process = EngineProcess()
    process.start([PY, "-c", script])
    while process.progress is None:  # wait for the grandchild to exist (no timing assertion)
        assert process.poll() is None, "the parent ended early"
        psutil.wait_procs([], timeout=0.05)
    grandchild = psutil.Process(int(pidFile.read_text()))
    process.cancel()
    result = process.wait(timeout=60)
    assert result.cancelled and not result.succeeded and result.errorMessage == "Cancelled."
    gone, alive = psutil.wait_procs([grandchild], timeout=30)
    assert grandchild in gone and not alive


def test_cancel_ends_the_launchers_tree_without_psutil(tmp_path, monkeypatch):
    """Slicer ships no psutil, and PythonSlicer is a launcher that starts the real interpreter as
    its child (Slicer's AppLauncher: ctkAppLauncher starts the launched program with QProcess and
    waits for it). Cancel must still end the whole tree within 5 s."""
    pidFile = tmp_path / "engine.pid"
    engine = f"import os, time; open({str(pidFile)!r}, 'w').write(str(os.getpid())); print('PROGRESS 1 up', flush=True); time.sleep(600)"
    launcher = f"import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', {engine!r}]))"
    process = EngineProcess()
    process.start([PY, "-c", launcher])
    while process.progress is None:
        assert process.poll() is None, "the launcher ended early"
        psutil.wait_procs([], timeout=0.05)
    engineProcess = psutil.Process(int(pidFile.read_text()))
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "psutil", None)  # as in Slicer: "import psutil" raises ImportError
        process.cancel()
    gone, alive = psutil.wait_procs([engineProcess], timeout=5)
    assert not alive, "the engine outlived Cancel"
    assert process.wait(timeout=10).cancelled


def test_engine_command_sets_utf8_for_the_child():
    _, env = engineCommand("/opt/Slicer/bin/PythonSlicer", "/ext/LabelSharingSeg", {"LANG": "C"})
    assert env["PYTHONIOENCODING"] == "utf-8" and env["PYTHONUTF8"] == "1"


def test_a_process_object_runs_one_command():
    process = EngineProcess()
    process.start([PY, "-c", "pass"])
    process.wait(timeout=60)
    with pytest.raises(RuntimeError):
        process.start([PY, "-c", "pass"])


def test_an_interactive_process_reads_sent_lines_and_its_stdout_goes_to_onStdout():
    """The warm engine's transport: lines in on stdin, stdout to ``onStdout`` only, stderr to ``onLog``."""
    script = ("import sys\nfor line in sys.stdin:\n    print('echo ' + line.strip(), flush=True)\n"
              "    print('seen', file=sys.stderr, flush=True)")
    stdout, log = [], []
    process = EngineProcess(onLog=log.append, onStdout=stdout.append)
    process.start([PY, "-c", script], interactive=True)
    process.send("one")
    process.send("two\n")
    while len(stdout) < 2 or len(log) < 2:
        assert process.poll() is None, "the child ended early"
        psutil.wait_procs([], timeout=0.02)
    assert stdout == ["echo one", "echo two"] and log == ["seen", "seen"]
    process.cancel()
    result = process.wait(timeout=60)
    assert result.cancelled and "echo one" not in result.log
    process.send("after the end")  # a closed pipe: nothing to write, nothing raised
