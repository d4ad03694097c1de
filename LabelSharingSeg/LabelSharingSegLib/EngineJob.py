"""Slicer glue of ``EngineProcess``: the engine command under ``PythonSlicer``, polled by a QTimer.

Slicer facts used: ``PythonSlicer`` is on ``PATH`` inside Slicer (``shutil.which("PythonSlicer")``,
as ``slicer.util.executePythonModule`` does) and ``slicer.util.startupEnvironment()`` gives the
environment Slicer was started with, which ``PythonSlicer`` (itself a launcher) expects
(``Base/Python/slicer/util.py``). The timer uses ``qt.QTimer`` with ``connect("timeout()", f)``,
as Slicer's scripted modules do. One command runs at a time.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .EngineProcess import EngineProcess, EngineResult, ProgressUpdate, engineCommand
from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["EngineJob", "BUSY"]

#: translated when the module is loaded (Slicer has started by then)
BUSY = _("Another LabelSharingSeg job is running; wait for it or cancel it first.")


class EngineJob:
    """Runs ``PythonSlicer -m labelsharing --progress lines <args>`` without blocking the UI.

    Args:
        moduleDir: folder holding the bundled ``labelsharing`` package (put on ``PYTHONPATH``).
        slicerModule, qtModule: injected by tests; imported when omitted.
        intervalMs: polling interval of the timer.
    """

    def __init__(self, moduleDir: str, slicerModule: Any = None, qtModule: Any = None, intervalMs: int = 200) -> None:
        if slicerModule is None:
            import slicer as slicerModule
        if qtModule is None:
            import qt as qtModule
        self._slicer = slicerModule
        self._moduleDir = str(Path(moduleDir))
        self._process: Optional[EngineProcess] = None
        self._timer = qtModule.QTimer()
        self._timer.setInterval(intervalMs)
        self._timer.connect("timeout()", self._poll)

    @property
    def isRunning(self) -> bool:
        return self._process is not None and self._process.isRunning

    def start(
        self,
        args: Sequence[str],
        onFinished: Callable[[EngineResult], None],
        onProgress: Optional[Callable[[ProgressUpdate], None]] = None,
        onLog: Optional[Callable[[str], None]] = None,
    ) -> None:
        """Start an engine command; ``onFinished`` runs on the main thread when it ends.

        Raises:
            ModuleError: if another command is running or ``PythonSlicer`` is not found.
        """
        if self.isRunning:
            raise ModuleError(BUSY)

        def finished(result: EngineResult) -> None:
            self._timer.stop()
            onFinished(result)

        command, env = self.command(args)
        self._process = EngineProcess(onProgress=onProgress, onLog=onLog, onFinished=finished)
        self._process.start(command, env=env)
        self._timer.start()

    def command(self, args: Sequence[str]) -> Tuple[List[str], Dict[str, str]]:
        """The full command line and environment for engine arguments ``args``."""
        python = shutil.which("PythonSlicer")
        if not python:
            raise ModuleError(_("PythonSlicer was not found on PATH; is this running inside 3D Slicer?"))
        prefix, env = engineCommand(python, self._moduleDir, self._slicer.util.startupEnvironment())
        return prefix + list(args), env

    def cancel(self) -> None:
        """Kill the running command and its children; ``onFinished`` then reports it cancelled."""
        if self._process is not None:
            self._process.cancel()

    def stop(self) -> None:
        """End the running command and its children for good, without calling ``onFinished``.

        For module cleanup and application exit, when the widgets the callbacks update are going away.
        """
        self._timer.stop()
        process, self._process = self._process, None
        if process is not None and process.isRunning:
            process.cancel()  # kills the whole process group and reaps the child (EngineProcess)

    def runBlocking(self, args: Sequence[str], onLog: Optional[Callable[[str], None]] = None) -> EngineResult:
        """Run a command to its end, keeping the application responsive (scripts, self-test)."""
        results = []
        self.start(args, results.append, onLog=onLog)
        while not results:
            self._slicer.app.processEvents()
            time.sleep(0.05)
        return results[0]

    def _poll(self) -> None:
        if self._process is not None:
            self._process.poll()
