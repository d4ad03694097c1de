"""The panel's engine: work for a server goes to that server, everything else to the local engine.

``JobPanel`` runs work through one object with ``WarmEngine``'s surface (``isRunning``,
``start``, ``cancel``, ``stop``, ``endWorker``). :class:`RoutingEngine` is that object: a
``PredictCall`` whose model comes from a server (``call.server``) is sent there by
:class:`~LabelSharingSegLib.ServerClient.ServerClient` in a Python thread (the HTTP request
waits there, never on Slicer's main thread; the thread touches no MRML and no widget), polled by
a ``qt.QTimer`` that reports the end on the main thread, as ``EngineJob`` does for a process. The
server's ``.seg.nrrd`` is written where the local engine would write it, so ``Segmenter.load``
reads either alike. Cancel drops a running request: its answer is discarded and the end is
reported as cancelled (a predict on the server is short and holds no job to end).

A ``ServerJobCall`` (train, add-task) zips its task folders, starts the server's job and follows
it once a second (``GET /v1/jobs/ID``): its progress and new log lines reach the panel as the
local engine's do; cancel ends the job on the server (``POST /v1/jobs/ID/cancel``).

Slicer/Qt calls: ``qt.QTimer()`` with ``setInterval``, ``connect("timeout()", f)``, ``start``,
``stop`` (as ``EngineJob``).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from .EngineCommands import PredictCall, ServerJobCall
from .EngineJob import BUSY
from .EngineProcess import EngineResult, ProgressUpdate
from .ModuleError import ModuleError
from .ServerClient import ServerClient, zipDatasets
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

    def start(self, work: Union[PredictCall, ServerJobCall, Sequence[str]], onFinished: Callable[[EngineResult], None],
              onProgress: Optional[Callable[[ProgressUpdate], None]] = None,
              onLog: Optional[Callable[[str], None]] = None) -> None:
        """Run ``work``: a server model's ``PredictCall`` and a ``ServerJobCall`` on the server, anything else locally.

        Raises:
            ModuleError: other work runs, or the Engine setting lacks the URL or token.
        """
        if self.isRunning:
            raise ModuleError(BUSY)
        if not (isinstance(work, PredictCall) and work.server) and not isinstance(work, ServerJobCall):
            self._local.start(work, onFinished, onProgress=onProgress, onLog=onLog)
            return
        client = self._client()
        if client.url != work.server:
            raise ModuleError(_("The model comes from {model}, but the Engine section now names {engine}; choose the "
                                "model again from the server's list.").format(model=work.server, engine=client.url))
        if isinstance(work, ServerJobCall):
            self._running = _RemoteJob(client, work, onFinished, onProgress, onLog)
            self._timer.start()
            return
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
        """Drop the running server request or cancel its job (reported cancelled), or cancel the local work."""
        if self._running is not None:
            self._running.cancelled = True
        self._local.cancel()

    def stop(self) -> None:
        """End everything for good without reporting (module cleanup). A server job is cancelled by its thread
        if it outlives the module (a reload); at application exit the job goes on on the server."""
        self._timer.stop()
        if self._running is not None:
            self._running.cancelled = True
        self._running = None
        self._local.stop()

    def endWorker(self) -> None:
        self._local.endWorker()

    def _poll(self) -> None:
        running = self._running
        if running is None:
            return
        running.report()
        if running.thread.is_alive():
            return
        self._timer.stop()
        self._running = None
        running.onFinished(running.result())


class _RemoteRequest:
    """One server request running in a daemon thread; its outcome read by the main thread once it ended."""

    def __init__(self, call: Callable[[], Any], onFinished: Callable[[EngineResult], None],
                 onLog: Optional[Callable[[str], None]]) -> None:
        self.onFinished, self.onLog = onFinished, onLog
        self.cancelled = False
        self.error: Optional[ModuleError] = None
        self.written: Any = None
        self._call = call
        self.thread = threading.Thread(target=self._run, name="LabelSharingSeg-server", daemon=True)
        self.thread.start()

    def report(self) -> None:
        """Main thread: pass on what arrived since the last poll (nothing, for one request)."""

    def result(self) -> EngineResult:
        """Main thread, once the thread ended: how it ended."""
        if self.cancelled:
            return EngineResult(None, True)
        if self.error is not None:
            return EngineResult(1, False, str(self.error), self.error.details)
        if self.onLog is not None:
            self.onLog(_("received {file}").format(file=self.written))
        return EngineResult(0, False)

    def _run(self) -> None:
        try:
            self.written = self._call()
        except ModuleError as exc:  # what the client reports to the user; anything else is a bug, left to the thread
            self.error = exc
        except OSError as exc:  # the volume could not be read or the answer written (disk full, permissions)
            self.error = ModuleError(_("Cannot exchange files with the server: {reason}").format(reason=exc))


class _RemoteJob(_RemoteRequest):
    """A server job: zip and upload the task folders, then follow the job until it ends (or cancel it).

    The thread only fills ``_status`` (the last answer of ``GET /v1/jobs/ID``); the main thread
    turns it into progress and log lines (:meth:`report`).
    """

    POLL_SECONDS = 1.0

    def __init__(self, client: ServerClient, call: ServerJobCall, onFinished: Callable[[EngineResult], None],
                 onProgress: Optional[Callable[[ProgressUpdate], None]], onLog: Optional[Callable[[str], None]]) -> None:
        self._client, self._work, self.onProgress = client, call, onProgress
        self._status: Optional[dict] = None
        self._shownLines = 0
        super().__init__(self._follow, onFinished, onLog)

    def _follow(self) -> dict:
        folder = Path(tempfile.mkdtemp(prefix="LabelSharingSeg-upload-"))
        try:
            archive = zipDatasets(self._work.datasets, self._work.pins or None, folder / "datasets.zip")
            status = self._client.submitJob(self._work, archive)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        cancelSent = False
        while status["status"] not in ("done", "failed", "cancelled"):
            self._status = status
            if self.cancelled and not cancelSent:
                self._client.cancelJob(status["id"])
                cancelSent = True
            time.sleep(self.POLL_SECONDS)
            status = self._client.job(status["id"])
        self._status = status
        return status

    def report(self) -> None:
        status = self._status
        if status is None:
            return
        if self.onLog is not None:
            new = min(status["log_total"] - self._shownLines, len(status["log"]))
            for line in status["log"][len(status["log"]) - new:] if new > 0 else []:
                self.onLog(line)
            self._shownLines = status["log_total"]
        if self.onProgress is not None and status["status"] == "running":
            self.onProgress(ProgressUpdate(float(status["progress"]["percent"]), status["progress"]["text"]))

    def result(self) -> EngineResult:
        self.report()
        status = self.written
        if self.error is not None:
            return EngineResult(1, False, str(self.error), self.error.details)
        if status["status"] == "cancelled":  # a job that ended before the cancel arrived reports how it ended
            return EngineResult(None, True)
        if status["status"] == "failed":
            return EngineResult(1, False, _("the server's job failed: {reason}").format(reason=status["error"]),
                                "\n".join(status["log"]))
        if self.onLog is not None:
            self.onLog(_("model {name} written on {url}").format(name=self._work.name, url=self._client.url))
        return EngineResult(0, False)
