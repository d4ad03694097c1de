"""The panel's engine: a segmentation of a server's model goes to that server, everything else to the local engine.

``JobPanel`` runs work through one object with ``WarmEngine``'s surface (``isRunning``,
``start``, ``cancel``, ``stop``, ``endWorker``). :class:`RoutingEngine` is that object: a
``PredictCall`` whose model comes from a server (``call.server``) is sent there by
:class:`~LabelSharingSegLib.ServerClient.ServerClient` in a Python thread (the HTTP request
waits there, never on Slicer's main thread; the thread touches no MRML and no widget), polled by
a ``qt.QTimer`` that reports the end on the main thread, as ``EngineJob`` does for a process. The
server's ``.seg.nrrd`` is written where the local engine would write it, so ``Segmenter.load``
reads either alike. Cancel drops a running request: its answer is discarded and the end is
reported as cancelled (a predict on the server is short and holds no job to end).

Slicer/Qt calls: ``qt.QTimer()`` with ``setInterval``, ``connect("timeout()", f)``, ``start``,
``stop`` (as ``EngineJob``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from .EngineCommands import PredictCall
from .EngineJob import BUSY
from .EngineProcess import EngineResult, ProgressUpdate
from .ModuleError import ModuleError
from .ServerClient import ServerClient
from .Translation import tr as _

__all__ = ["RoutingEngine"]


class RoutingEngine:
    """Runs server predicts itself and hands everything else to ``local``.

    Args:
        local: the local engine (the module's ``WarmEngine``).
        client: returns the ``ServerClient`` of the Engine setting (raises ``ModuleError`` when it is incomplete).
        qtModule: injected by tests; imported when omitted.
        intervalMs: how often the running request is polled.
    """

    def __init__(self, local: Any, client: Callable[[], ServerClient], qtModule: Any = None,
                 intervalMs: int = 100) -> None:
        if qtModule is None:
            import qt as qtModule
        self._local, self._client = local, client
        self._running: Optional[_RemoteRequest] = None
        self._timer = qtModule.QTimer()
        self._timer.setInterval(intervalMs)
        self._timer.connect("timeout()", self._poll)

    @property
    def isRunning(self) -> bool:
        return self._running is not None or self._local.isRunning

    def start(self, work: Union[PredictCall, Sequence[str]], onFinished: Callable[[EngineResult], None],
              onProgress: Optional[Callable[[ProgressUpdate], None]] = None,
              onLog: Optional[Callable[[str], None]] = None) -> None:
        """Run ``work``: a server model's ``PredictCall`` on its server, anything else locally.

        Raises:
            ModuleError: other work runs, or the Engine setting lacks the URL or token.
        """
        if self.isRunning:
            raise ModuleError(BUSY)
        if not (isinstance(work, PredictCall) and work.server):
            self._local.start(work, onFinished, onProgress=onProgress, onLog=onLog)
            return
        client = self._client()
        if client.url != work.server:
            raise ModuleError(_("The model comes from {model}, but the Engine section now names {engine}; choose the "
                                "model again from the server's list.").format(model=work.server, engine=client.url))
        case = Path(work.inputFile).name.rsplit(".", 1)[0]
        outFile = Path(work.outFolder) / f"{case}.seg.nrrd"
        if onLog is not None:
            onLog(_("sending the volume to {url} (model {model}, task {task})").format(
                url=client.url, model=work.modelFolder, task=work.task))
        if onProgress is not None:
            onProgress(ProgressUpdate(10.0, _("segmenting on the server")))
        self._running = _RemoteRequest(lambda: client.predict(work.modelFolder, work.task, Path(work.inputFile),
                                                              outFile), onFinished, onLog)
        self._timer.start()

    def cancel(self) -> None:
        """Drop the running server request (reported cancelled) or cancel the local work."""
        if self._running is not None:
            self._running.cancelled = True
        self._local.cancel()

    def stop(self) -> None:
        """End everything for good without reporting (module cleanup)."""
        self._timer.stop()
        self._running = None
        self._local.stop()

    def endWorker(self) -> None:
        self._local.endWorker()

    def _poll(self) -> None:
        running = self._running
        if running is None or running.thread.is_alive():
            return
        self._timer.stop()
        self._running = None
        if running.cancelled:
            result = EngineResult(None, True)
        elif running.error is not None:
            result = EngineResult(1, False, str(running.error), running.error.details)
        else:
            if running.onLog is not None:
                running.onLog(_("received {file}").format(file=running.written))
            result = EngineResult(0, False)
        running.onFinished(result)


class _RemoteRequest:
    """One server request running in a daemon thread; its outcome read by the main thread once it ended."""

    def __init__(self, call: Callable[[], Path], onFinished: Callable[[EngineResult], None],
                 onLog: Optional[Callable[[str], None]]) -> None:
        self.onFinished, self.onLog = onFinished, onLog
        self.cancelled = False
        self.error: Optional[ModuleError] = None
        self.written: Optional[Path] = None
        self._call = call
        self.thread = threading.Thread(target=self._run, name="LabelSharingSeg-server", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.written = self._call()
        except ModuleError as exc:  # what the client reports to the user; anything else is a bug, left to the thread
            self.error = exc
        except OSError as exc:  # the volume could not be read or the answer written (disk full, permissions)
            self.error = ModuleError(_("Cannot exchange files with the server: {reason}").format(reason=exc))
