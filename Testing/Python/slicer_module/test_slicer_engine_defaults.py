"""The panel's training defaults and limits: asked from the engine's command line, once per session.

The engine runs as the panel runs it (``engineCommand``: the bundled package first on
``PYTHONPATH``), with this interpreter standing in for ``PythonSlicer``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from unittest import mock

import pytest

from labelsharing.cli import build_parser
from LabelSharingSegLib import EngineDefaults
from LabelSharingSegLib.EngineDefaults import DEFAULTS_ARGS, OptionLimits, askEngine, sessionTrainingDefaults
from LabelSharingSegLib.EngineProcess import engineCommand
from LabelSharingSegLib.ModuleError import ModuleError

from .fakes import MODULE_DIR


def realEngine(args):
    """The command line and environment of the bundled engine under this interpreter."""
    prefix, env = engineCommand(sys.executable, str(MODULE_DIR), os.environ)
    return prefix + list(args), env


def scriptEngine(code: str):
    """A stand-in engine: this interpreter running ``code`` (whatever the arguments)."""
    return lambda args: ([sys.executable, "-c", code], None)


def test_training_defaults_are_the_parsers_and_its_limits():
    defaults = askEngine(realEngine)
    train = build_parser().parse_args(["train", "d", "--out", "m"])
    add = build_parser().parse_args(["add-task", "m", "d", "--out", "n"])
    assert defaults["train"]["epochs"].default == train.epochs and defaults["add-task"]["epochs"].default == add.epochs
    assert defaults["add-task"]["replay"].default == add.replay and defaults["train"]["lr"].default == train.lr
    replay = defaults["add-task"]["replay"]
    low, high = replay.spinBoxRange(decimals=2)
    build_parser().parse_args(["add-task", "m", "d", "--out", "n", "--replay", f"{high}"])  # the highest offered
    with pytest.raises(SystemExit):
        build_parser().parse_args(["add-task", "m", "d", "--out", "n", "--replay", f"{high + 0.01}"])
    assert defaults["train"]["epochs"].spinBoxRange() == (1, 2**31 - 1)
    assert OptionLimits(0.002, 0.0, 1.0, minimumExclusive=True).spinBoxRange(3) == (0.001, 1.0)


def test_defaults_command_prints_them():
    text = subprocess.run([sys.executable, "-m", "labelsharing", "defaults"], capture_output=True, text=True,
                          check=True, timeout=120).stdout
    assert "add-task --replay 0.5; within [0, 1)" in text and "train --epochs 25; at least 1" in text
    data = json.loads(subprocess.run([sys.executable, "-m", "labelsharing", "defaults", "--json"], capture_output=True,
                                     text=True, check=True, timeout=120).stdout)
    assert set(data) == {"train", "add-task", "update"} and data["add-task"]["replay"]["maximum_exclusive"] is True
    assert "update --replay 0.5; within [0, 1)" in text and "update --epochs 10; at least 1" in text


def test_update_defaults_are_the_parsers():
    """``update`` fine-tunes as ``add-task`` does; its defaults and limits are listed too (issue 16)."""
    defaults = askEngine(realEngine)
    update = build_parser().parse_args(["update", "m", "d", "--task", "t", "--out", "n"])
    assert defaults["update"]["epochs"].default == update.epochs and defaults["update"]["lr"].default == update.lr
    assert defaults["update"]["replay"].default == update.replay
    assert defaults["update"]["replay"].spinBoxRange(decimals=2) == (0.0, 0.99)


@pytest.mark.parametrize("code, message, details", [
    ("import sys; print('error: the engine is broken', file=sys.stderr); sys.exit(2)",
     "did not report its training defaults: the engine is broken", "error: the engine is broken"),
    ("print('PROGRESS 10 not json')", "could not be read", "PROGRESS 10 not json"),
    ("print('[1, 2]')", "could not be read", "[1, 2]"),
])
def test_an_engine_that_cannot_say_gives_a_readable_error(code, message, details):
    with pytest.raises(ModuleError, match=message) as caught:
        askEngine(scriptEngine(code))
    assert "no limits" in str(caught.value) and details in caught.value.details


def test_a_missing_interpreter_or_a_hung_engine_is_an_error_not_a_crash(tmp_path):
    with pytest.raises(ModuleError, match="did not report its training defaults"):
        askEngine(lambda args: ([str(tmp_path / "no-such-python")], None))
    with pytest.raises(ModuleError, match="did not finish within 0.5 s"):
        askEngine(scriptEngine("import time; time.sleep(30)"), timeout=0.5)


def test_the_engine_is_asked_once_per_session_even_when_it_failed(monkeypatch):
    monkeypatch.setattr(EngineDefaults, "_SESSION", {})
    calls = []

    def counted(command):
        def run(args):
            calls.append(list(args))
            return command(args)
        return run

    first = sessionTrainingDefaults("engine-a", counted(realEngine))
    assert sessionTrainingDefaults("engine-a", counted(realEngine)) == first
    assert calls == [list(DEFAULTS_ARGS)]
    broken = counted(scriptEngine("import sys; sys.exit(3)"))
    for _ in range(2):
        with pytest.raises(ModuleError, match="exit code 3"):
            sessionTrainingDefaults("engine-b", broken)
    assert calls == [list(DEFAULTS_ARGS)] * 2


def test_loading_the_module_file_starts_no_process(fakeSlicerModules):
    """Slicer imports every module file at startup: that must not start the engine."""
    from .widget_harness import loadModuleFile

    with mock.patch("subprocess.Popen", side_effect=AssertionError("a process was started")) as popen:
        loadModuleFile()
    popen.assert_not_called()
