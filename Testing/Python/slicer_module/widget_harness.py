"""Build the module's widget on the FAKE slicer/qt surface (fakes.py, fakes_qt.py), for action tests.

Widgets whose behaviour matters are behaviour fakes (buttons, the task combo box, path line
edits, the checkable segmentation selector, tables); the others are ``MagicMock``s. The engine
job is replaced by :class:`FakeEngineJob`, which records the arguments and lets the test end
the run; tests of the real process tree use ``EngineJob`` itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from unittest import mock

from LabelSharingSegLib import EngineJob as EngineJobModule
from LabelSharingSegLib.EngineCommands import PredictCall, ServerJobCall
from LabelSharingSegLib.EngineJob import EngineJob
from LabelSharingSegLib.EngineProcess import EngineResult, engineCommand

from .fakes import MODULE_DIR
from .fakes_qt import (
    FakeButton, FakeCheckableNodeComboBox, FakeCollapsibleButton, FakeComboBox, FakeListWidget, FakePathLineEdit,
    FakeSegmentEditorWidget, FakeShow3DButton, FakeTableWidget,
)
from .test_slicer_ui_and_parameters import uiWidgets

_BEHAVIOUR = {"QPushButton": FakeButton, "ctkPathLineEdit": FakePathLineEdit, "QTableWidget": FakeTableWidget,
              "qMRMLCheckableNodeComboBox": FakeCheckableNodeComboBox, "QListWidget": FakeListWidget,
              "qMRMLSegmentEditorWidget": FakeSegmentEditorWidget, "qMRMLSegmentationShow3DButton": FakeShow3DButton,
              "ctkCollapsibleButton": FakeCollapsibleButton}


class FakeEngineJob:
    """Stands in for the panel's runner (``WarmEngine``): records ``start`` and lets the test finish the run."""

    def __init__(self) -> None:
        self.args: Optional[List[str]] = None
        self._finished = None
        self.isRunning = False

    def start(self, args, onFinished, onProgress=None, onLog=None) -> None:
        """``args``: engine arguments, the ``PredictCall`` of an Apply (recorded as its ``predict`` arguments) or a
        ``ServerJobCall`` (``work`` holds the call itself)."""
        self.work = args
        self.args = args.args if isinstance(args, (PredictCall, ServerJobCall)) else list(args)
        self._finished, self.isRunning = onFinished, True
        self.onLog = onLog

    def finish(self, returnCode: int = 0) -> None:
        self.isRunning = False
        self._finished(EngineResult(returnCode, False, "" if returnCode == 0 else "engine failed", ""))

    def cancel(self) -> None:
        self.isRunning = False
        self._finished(EngineResult(-9, True, "Cancelled.", ""))

    def stop(self) -> None:
        self.isRunning = False


def loadModuleFile() -> types.ModuleType:
    """Import LabelSharingSeg.py (the fakes must already be in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location("LabelSharingSeg", MODULE_DIR / "LabelSharingSeg.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["LabelSharingSeg"] = module
    spec.loader.exec_module(module)
    return module


def engineUnderThisPython(args: List[str]) -> Tuple[List[str], Dict[str, str]]:
    """``EngineJob.command`` with this interpreter standing in for ``PythonSlicer``."""
    prefix, env = engineCommand(sys.executable, str(MODULE_DIR), os.environ)
    return prefix + list(args), env


def fakeUi() -> types.SimpleNamespace:
    widgets, _ = uiWidgets()
    ui = {}
    for name, cls in widgets.items():
        if name == "taskComboBox":
            ui[name] = FakeComboBox()
        else:
            ui[name] = _BEHAVIOUR.get(cls, lambda n=name: mock.MagicMock(name=n))()
    ui["replaySpinBox"].decimals = 2  # as in the .ui
    return types.SimpleNamespace(**ui)


def buildWidget(module: types.ModuleType, slicer: Any) -> Any:
    """The widget after ``setup()``, with a fake ui and a :class:`FakeEngineJob`.

    The training defaults come from the real engine (``labelsharing defaults --json``) run by this
    interpreter in place of ``PythonSlicer``, once per test session (``sessionTrainingDefaults``).
    """
    ui = fakeUi()
    slicer.util.childWidgetVariables = lambda widget: ui
    widget = module.LabelSharingSegWidget(mock.MagicMock())
    with mock.patch.object(EngineJob, "command", lambda self, args: engineUnderThisPython(args)):
        widget.setup()
    widget.fakeJob = FakeEngineJob()
    widget.jobs._job = widget.fakeJob
    return widget


def buildWidgetWithRealEngine(slicer: Any, temporaryPath: Path, monkeypatch: Any) -> Any:
    """The widget whose jobs run the module's own runner (``WarmEngine``) on the real engine.

    ``PythonSlicer`` is this interpreter, found with ``shutil.which`` (as ``EngineJob`` looks it up), and
    the engine's environment is ``slicer.util.startupEnvironment()`` (Base/Python/slicer/util.py).
    """
    slicer.app.temporaryPath = str(temporaryPath)
    slicer.util.startupEnvironment = lambda: dict(os.environ)
    monkeypatch.setattr(EngineJobModule.shutil, "which", lambda name: sys.executable if name == "PythonSlicer" else None)
    widget = buildWidget(loadModuleFile(), slicer)
    widget.jobs._job = widget.engine  # the module's own runner, not the harness's fake
    widget.logic.dependencies.missing = lambda distributions=None: []
    return widget


def writeModel(folder: Path, tasks=("first", "second")) -> Path:
    """A model folder with ``model.json`` only (enough for the panel; docs/CONTRACTS.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    body = {name: {"modality": "CT", "labels": {"organ": {"value": 1, "shared": 1, "color": [1, 0, 0]}}}
            for name in tasks}
    plan = {"n_shared": 1, "tasks": {name: {"labels": {"organ": {"value": 1, "relative_size": 0.2, "presence": 1.0,
                                                                 "shared": 1}}} for name in tasks}}
    (folder / "model.json").write_text(json.dumps({"tasks": body, "plan": plan}))
    return folder


def actionButtons(widget: Any) -> List[Any]:
    return list(widget.jobs._buttons)
