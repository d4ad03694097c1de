"""Keep one engine worker alive between Applies, so only the first Apply pays for starting it.

Each Apply used to start ``PythonSlicer -m labelsharing predict``: a new process that imports
torch and loads the model (seconds) before a prediction that takes a fraction of that on a
small volume. :class:`WarmEngine` starts ``labelsharing worker MODEL --device D`` at the first
Apply, through the same command line as every engine command (``EngineJob.command``), and sends
it one JSON request per Apply on its standard input; the worker runs ``predict``'s own code with
the same output rules and answers on its standard output (``docs/CONTRACTS.md``, "Worker
protocol"). Every other command still runs once, through the wrapped ``EngineJob``.

Lifetime: one worker at a time. It ends on module cleanup (:meth:`stop`) and scene close
(:meth:`endWorker`), after ``idleSeconds`` without a request, and when an Apply needs another
model folder or device (the old one ends before the new one starts). Ending kills its process
group as Cancel does (``killProcessTree``): ``PythonSlicer`` is a launcher whose child is the
real interpreter. Cancel of a running request kills the worker (a prediction cannot be
interrupted otherwise); the next Apply starts a new one. If the worker ends during a request
without being cancelled, the request runs again as a one-shot ``predict``, so a broken worker
never costs the user a result, only time; a worker that died while idle is replaced at the next Apply.

Slicer facts: ``PythonSlicer`` forwards its standard input and output to the interpreter it
launches (CTK AppLauncher dcb7a7e, ``Base/ctkAppLauncher.cpp``, ``ctkAppLauncherPrivate::runProcess``:
``setProcessChannelMode(QProcess::ForwardedChannels)`` when no splash screen is shown, and
``setInputChannelMode(QProcess::ForwardedInputChannel)``; Slicer configures ``PythonSlicer`` with
``SPLASHSCREEN_DISABLED`` in ``SuperBuild/python_configure_python_launcher.cmake``), so the
worker's pipes reach the engine. The polling timer is a ``qt.QTimer`` with ``connect("timeout()", f)``, as in ``EngineJob``;
callbacks run on the main thread, from that timer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from .EngineCommands import PredictCall
from .EngineJob import BUSY, EngineJob
from .EngineProcess import EngineProcess, EngineResult, ProgressUpdate
from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["WarmEngine", "PREDICTED_IN"]

#: the worker answered a request with an error: the exit code ``predict`` gives a user error
_USER_ERROR = 2
#: start of the log line giving the seconds the worker spent on a request (the rest is the round trip)
PREDICTED_IN = "warm engine: predicted in"


@dataclass
class _Request:
    """The request being answered, with its caller's callbacks and its log lines."""

    id: int
    call: PredictCall
    onFinished: Callable[[EngineResult], None]
    onProgress: Optional[Callable[[ProgressUpdate], None]]
    onLog: Optional[Callable[[str], None]]
    log: List[str] = field(default_factory=list)


class WarmEngine:
    """Runs ``PredictCall``s in a warm worker and any other engine command once (``EngineJob``'s interface).

    Args:
        engineJob: runs one-shot commands and builds the worker's command line.
        qtModule: injected by tests; imported when omitted.
        idleSeconds: a worker without a request for this long is ended (its memory, GPU
            memory included, comes back).
        busyIntervalMs: polling interval while a request runs: a reply waits up to this long
            before the caller hears of it (50 ms against predictions of 0.1 s and more).
        idleIntervalMs: polling interval of an idle worker (its end and the idle time are noticed).
        clock: seconds, monotonic (tests inject one).
    """

    def __init__(self, engineJob: EngineJob, qtModule: Any = None, idleSeconds: float = 600.0,
                 busyIntervalMs: int = 50, idleIntervalMs: int = 1000, clock: Callable[[], float] = time.monotonic) -> None:
        if qtModule is None:
            import qt as qtModule
        self._job = engineJob
        self._idleSeconds = idleSeconds
        self._clock = clock
        self._worker: Optional[EngineProcess] = None
        self._workerKey: Optional[Tuple[str, ...]] = None
        self._request: Optional[_Request] = None
        self._nextId = 1
        self._lastUsed = clock()
        self._intervalsMs = (busyIntervalMs, idleIntervalMs)
        self._timer = qtModule.QTimer()
        self._timer.connect("timeout()", self._poll)

    # ------------------------------------------------------------------ EngineJob's interface
    @property
    def isRunning(self) -> bool:
        """A request or a one-shot command is running (an idle worker is not)."""
        return self._request is not None or self._job.isRunning

    @property
    def workerPid(self) -> Optional[int]:
        """Process id of the living worker (the launcher's, inside Slicer), else None."""
        return self._worker.pid if self._worker is not None else None

    def start(self, work: Union[PredictCall, Sequence[str]], onFinished: Callable[[EngineResult], None],
              onProgress: Optional[Callable[[ProgressUpdate], None]] = None,
              onLog: Optional[Callable[[str], None]] = None) -> None:
        """Run ``work``: a ``PredictCall`` in the warm worker, engine arguments once (``EngineJob.start``).

        ``onFinished`` runs on the main thread with an ``EngineResult``, as for ``EngineJob``.

        Raises:
            ModuleError: another job runs, or ``PythonSlicer`` is not found.
        """
        if self.isRunning:
            raise ModuleError(BUSY)
        if not isinstance(work, PredictCall):
            self._job.start(work, onFinished, onProgress=onProgress, onLog=onLog)
            return
        self._ensureWorker(work)
        self._request = _Request(self._nextId, work, onFinished, onProgress, onLog)
        self._nextId += 1
        self._updateTimer()
        self._worker.send(json.dumps({"id": self._request.id, **work.request()}))  # a dead worker's end is polled

    def cancel(self) -> None:
        """Cancel the running request (its worker is killed) or one-shot command; the end is reported as cancelled."""
        if self._request is not None and self._worker is not None:
            self._worker.cancel()
        self._job.cancel()

    def stop(self) -> None:
        """End everything for good without reporting (module cleanup: the widgets are going)."""
        self._request = None
        self.endWorker()
        self._job.stop()

    def endWorker(self) -> None:
        """End the worker now (scene close, idle, another model); a running request is reported cancelled."""
        worker, self._worker, self._workerKey = self._worker, None, None
        self._updateTimer()
        if worker is not None:
            worker.cancel()  # kills the process group and reaps the process
            self._drain(worker)

    # ------------------------------------------------------------------ internals
    def _ensureWorker(self, call: PredictCall) -> None:
        key = tuple(call.workerArgs)
        if self._worker is not None:
            self._worker.poll()  # a worker that died while idle is noticed (and dropped) here
        if self._worker is not None and key != self._workerKey:
            self.endWorker()  # another model or device: one worker at a time
        if self._worker is not None:
            return
        command, env = self._job.command(call.workerArgs)
        worker = EngineProcess(onLog=self._onWorkerLog, onStdout=self._onReply, onFinished=self._onWorkerEnded)
        worker.start(command, env=env, interactive=True)
        self._worker, self._workerKey = worker, key

    def _updateTimer(self) -> None:
        """Poll often while a request runs, seldom while the worker idles, not at all without a worker.

        ``QTimer::start()`` restarts a running timer, and ``setInterval`` restarts an active one
        with the new interval (qtbase ``src/corelib/kernel/qtimer.cpp`` at 051488c, ``QTimer::start``,
        ``QTimer::setInterval``).
        """
        if self._worker is None:
            self._timer.stop()
            return
        self._timer.setInterval(self._intervalsMs[0] if self._request is not None else self._intervalsMs[1])
        self._timer.start()

    def _poll(self) -> None:
        if self._worker is not None:
            self._worker.poll()
        if self._request is None and self._worker is not None and \
                self._clock() - self._lastUsed >= self._idleSeconds:
            self.endWorker()

    def _onReply(self, line: str) -> None:
        """One stdout line of the worker: a reply to the running request (or its log), else ignored."""
        request = self._request
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):  # not the protocol: keep it in the log
            self._onWorkerLog(line)
            return
        status, replyId = reply.get("status"), reply.get("id")
        if request is None or replyId not in (request.id, None):
            return  # nothing runs, or a late reply to a request already ended
        if status == "log":  # id null: the worker loading the model for this request
            self._onWorkerLog(str(reply.get("text", "")))
        elif replyId is None:
            return  # "ready"
        elif status == "progress" and request.onProgress is not None:
            percent = min(100.0, max(0.0, float(reply.get("percent", 0.0))))
            request.onProgress(ProgressUpdate(percent, str(reply.get("text", ""))))
        elif status == "ok":
            self._onWorkerLog(f"{PREDICTED_IN} {float(reply.get('seconds', 0.0)):.3f} s")
            self._finish(EngineResult(0, False, "", "\n".join(request.log)))
        elif status == "error":
            self._finish(EngineResult(_USER_ERROR, False, str(reply.get("error", "")), "\n".join(request.log)))

    def _onWorkerLog(self, line: str) -> None:
        request = self._request
        if request is not None:
            request.log.append(line)
            if request.onLog is not None:
                request.onLog(line)

    def _onWorkerEnded(self, result: EngineResult) -> None:
        """The worker process ended: drop it; a request it was answering ends cancelled or runs once.

        A replaced worker's end (another model's Apply started from the finished one's callback, while
        the old worker's ``poll`` was still under way) is not reported: the running request is the new worker's.
        """
        if self._worker is not None and self._worker.result is not result:
            return
        self._worker, self._workerKey = None, None
        request, self._request = self._request, None
        self._updateTimer()
        if request is None:
            return
        if result.cancelled:
            self._lastUsed = self._clock()
            request.onFinished(EngineResult(result.returnCode, True, _("Cancelled."), "\n".join(request.log)))
            return
        reason = result.errorMessage or f"exit code {result.returnCode}"
        if request.onLog is not None:
            request.onLog(f"The warm engine stopped ({reason}); running predict once instead.")
        try:
            self._job.start(request.call.args, request.onFinished, onProgress=request.onProgress, onLog=request.onLog)
        except ModuleError as exc:  # runs from the timer: report it rather than lose it
            request.onFinished(EngineResult(None, False, str(exc), "\n".join(request.log)))

    def _finish(self, result: EngineResult) -> None:
        request, self._request = self._request, None
        self._lastUsed = self._clock()
        self._updateTimer()
        request.onFinished(result)

    @staticmethod
    def _drain(worker: EngineProcess) -> None:
        """Deliver a killed worker's end (a running request learns it was cancelled)."""
        try:
            worker.wait(timeout=10)
        except TimeoutError:  # its pipes stayed open (a grandchild outside the group): stop waiting
            pass
