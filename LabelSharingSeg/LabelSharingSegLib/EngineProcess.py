"""Run one ``labelsharing`` command in a child process and follow it without blocking.

Kept over ``qt.QProcess`` (issue 17): Slicer 5.8's Qt 5 QProcess cannot start the child in a new session or process group (``setChildProcessModifier`` is Qt 6.0, ``UnixProcessParameters`` Qt 6.6, ``setupChildProcess`` a C++-only override), and its ``kill()`` ends only the ``PythonSlicer`` launcher, not the interpreter the launcher starts; plain ``subprocess`` also runs in the tests without Slicer.

The engine prints ``PROGRESS <percent> <text>`` lines on stdout (``--progress lines``) and, on a
user error, ``error: <message>`` on stderr with exit code 2 (see ``docs/CONTRACTS.md``).

``EngineProcess`` is plain Python: two reader threads move the child's output lines into a
queue, and the owner calls :meth:`EngineProcess.poll` from the main thread (in Slicer, from a
``qt.QTimer``; see ``EngineJob``), where the callbacks run. Threads never touch MRML or Qt.
Cancel kills the whole process tree: ``PythonSlicer`` is a launcher whose child is the real
interpreter, and Slicer ships no ``psutil``, so the child starts as the leader of a new process
group (POSIX: a new session; Windows: a new process group) and Cancel ends the group
(``killpg`` / ``taskkill /T``), which the engine's own children (data-loader workers) join too.

A long-lived child that reads requests (``labelsharing worker``, see ``WarmEngine``) is started
with ``interactive=True``: its standard input is a pipe fed by :meth:`EngineProcess.send`, and its
standard output, where it speaks its own protocol, goes to ``onStdout`` instead of the progress parser.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from .Translation import tr as _

__all__ = [
    "ProgressUpdate",
    "EngineResult",
    "EngineProcess",
    "parseProgressLine",
    "parseErrorLine",
    "engineCommand",
    "killProcessTree",
]

_PROGRESS = re.compile(r"^PROGRESS\s+([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(.*)$")
_ERROR = re.compile(r"^error:\s*(.*)$")
_STDOUT, _STDERR = "stdout", "stderr"


@dataclass(frozen=True)
class ProgressUpdate:
    """One progress line: ``percent`` clamped to 0..100 and its free text."""

    percent: float
    text: str


@dataclass
class EngineResult:
    """How a run ended. ``errorMessage`` is readable; ``log`` is the full output, for details."""

    returnCode: Optional[int]
    cancelled: bool
    errorMessage: str = ""
    log: str = ""

    @property
    def succeeded(self) -> bool:
        return self.returnCode == 0 and not self.cancelled


def parseProgressLine(line: str) -> Optional[ProgressUpdate]:
    """Parse ``PROGRESS <percent> <text>``; ``None`` for any other line.

    Example:
        >>> parseProgressLine("PROGRESS 12.5 epoch 1/8")
        ProgressUpdate(percent=12.5, text='epoch 1/8')
    """
    match = _PROGRESS.match(line.strip())
    if not match:
        return None
    percent = min(100.0, max(0.0, float(match.group(1))))
    return ProgressUpdate(percent, match.group(2).strip())


def parseErrorLine(line: str) -> Optional[str]:
    """The message of an ``error: <message>`` line; ``None`` for any other line."""
    match = _ERROR.match(line.strip())
    return match.group(1).strip() if match else None


def engineCommand(python: str, moduleDir: str, environment: Mapping[str, str]) -> Tuple[List[str], Dict[str, str]]:
    """The command prefix and environment that run the engine bundled with the module.

    Args:
        python: the Python executable (``PythonSlicer`` inside Slicer).
        moduleDir: folder holding the ``labelsharing`` package (the module's folder).
        environment: base environment (Slicer's startup environment).

    Returns:
        ``[python, "-m", "labelsharing", "--progress", "lines"]`` and the environment with
        ``moduleDir`` first on ``PYTHONPATH``, unbuffered UTF-8 output.
    """
    env = dict(environment)
    paths = [moduleDir] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    # the reader threads decode UTF-8: make the child write it whatever the system's locale
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONUTF8"] = "1"
    return [python, "-m", "labelsharing", "--progress", "lines"], env


@dataclass
class _Callbacks:
    onProgress: Optional[Callable[[ProgressUpdate], None]] = None
    onLog: Optional[Callable[[str], None]] = None
    onFinished: Optional[Callable[[EngineResult], None]] = None
    onStdout: Optional[Callable[[str], None]] = None


@dataclass
class _State:
    log: List[str] = field(default_factory=list)
    stderrTail: Deque[str] = field(default_factory=lambda: deque(maxlen=20))
    errors: List[str] = field(default_factory=list)
    openStreams: int = 2


class EngineProcess:
    """One child process, followed by :meth:`poll` from the owner's (main) thread.

    Args:
        onProgress: called with each ``ProgressUpdate``.
        onLog: called with every output line (stdout and stderr, progress lines included).
        onFinished: called once with the ``EngineResult`` when the process has ended and its
            output is read.
        onStdout: if given, receives every stdout line in place of the progress parser and
            ``onLog`` (a child speaking its own protocol there); ``onLog`` then gets stderr only.
        maxLogLines: lines kept for the log shown to the user (the oldest are dropped).

    Example:
        >>> process = EngineProcess()
        >>> process.start(["python", "-c", "print('PROGRESS 50 half')"])
        >>> process.wait().returnCode
        0
        >>> process.progress
        ProgressUpdate(percent=50.0, text='half')
    """

    def __init__(
        self,
        onProgress: Optional[Callable[[ProgressUpdate], None]] = None,
        onLog: Optional[Callable[[str], None]] = None,
        onFinished: Optional[Callable[[EngineResult], None]] = None,
        maxLogLines: int = 5000,
        onStdout: Optional[Callable[[str], None]] = None,
    ) -> None:
        self._callbacks = _Callbacks(onProgress, onLog, onFinished, onStdout)
        self._maxLogLines = maxLogLines
        self._process: Optional[subprocess.Popen] = None
        self._queue: "queue.Queue[tuple[str, Optional[str]]]" = queue.Queue()
        self._state = _State()
        self._cancelled = False
        self.progress: Optional[ProgressUpdate] = None
        self.result: Optional[EngineResult] = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, command: Sequence[str], env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
              interactive: bool = False) -> None:
        """Start ``command`` (with ``interactive``, its standard input is a pipe for :meth:`send`).

        Raises ``RuntimeError`` if this object already ran a process.
        """
        if self._process is not None:
            raise RuntimeError("EngineProcess runs one command; create a new one for the next command.")
        creationFlags = 0
        if os.name == "nt":
            creationFlags = subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP
        self._process = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            universal_newlines=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            creationflags=creationFlags,
            start_new_session=os.name != "nt",  # its own process group, which Cancel ends as a whole
        )
        for name, stream in ((_STDOUT, self._process.stdout), (_STDERR, self._process.stderr)):
            threading.Thread(target=self._readLines, args=(name, stream), daemon=True).start()

    @property
    def isRunning(self) -> bool:
        """True from :meth:`start` until :meth:`poll` has delivered the result."""
        return self._process is not None and self.result is None

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process is not None else None

    def poll(self) -> Optional[EngineResult]:
        """Handle the output received so far; return the result once the run has ended."""
        if self._process is None or self.result is not None:
            return self.result
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._state.openStreams -= 1
            else:
                self._handleLine(name, line)
        if self._state.openStreams == 0 and self._process.poll() is not None:
            if self._process.stdin is not None:
                with contextlib.suppress(OSError):  # unread requests of a process that has ended
                    self._process.stdin.close()
            self.result = self._makeResult(self._process.returncode)
            if self._callbacks.onFinished:
                self._callbacks.onFinished(self.result)
        return self.result

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> EngineResult:
        """Poll until the run ends (for scripts and tests). Cancels and raises ``TimeoutError`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            result = self.poll()
            if result is not None:
                return result
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"engine command did not finish within {timeout} s")
            time.sleep(interval)

    def send(self, line: str) -> None:
        """Write one line to the standard input of an ``interactive`` process.

        A process that has closed its input is ending: nothing is written, and :meth:`poll`
        delivers its result as for any end.
        """
        if self._process is None or self._process.stdin is None:
            raise RuntimeError("send() needs a process started with interactive=True.")
        try:
            self._process.stdin.write(line.rstrip("\n") + "\n")
            self._process.stdin.flush()
        except (BrokenPipeError, ValueError):  # ValueError: the pipe object is already closed
            pass

    def cancel(self) -> None:
        """Kill the process and all its descendants. The result then says ``cancelled``."""
        if self._process is None or self.result is not None:
            return
        self._cancelled = True
        killProcessTree(self._process)

    # ------------------------------------------------------------------ internals
    def _readLines(self, name: str, stream) -> None:
        for line in stream:
            self._queue.put((name, line.rstrip("\r\n")))
        stream.close()
        self._queue.put((name, None))

    def _handleLine(self, name: str, line: str) -> None:
        if name == _STDOUT and self._callbacks.onStdout is not None:
            self._callbacks.onStdout(line)
            return
        state = self._state
        state.log.append(line)
        if len(state.log) > self._maxLogLines:
            del state.log[0]
        if self._callbacks.onLog:
            self._callbacks.onLog(line)
        if name == _STDOUT:
            update = parseProgressLine(line)
            if update is not None:
                self.progress = update
                if self._callbacks.onProgress:
                    self._callbacks.onProgress(update)
            return
        state.stderrTail.append(line)
        message = parseErrorLine(line)
        if message is not None:
            state.errors.append(message)

    def _makeResult(self, returnCode: int) -> EngineResult:
        state = self._state
        log = "\n".join(state.log)
        if self._cancelled:
            return EngineResult(returnCode, True, _("Cancelled."), log)
        if returnCode == 0:
            return EngineResult(returnCode, False, "", log)
        if state.errors:
            message = state.errors[-1]
        else:
            tail = [line for line in state.stderrTail if line.strip()]
            if tail:
                message = _("The engine stopped with exit code {code}. Last message: {message}").format(
                    code=returnCode, message=tail[-1].strip())
            else:
                message = _("The engine stopped with exit code {code}.").format(code=returnCode)
        return EngineResult(returnCode, False, message, log)


def killProcessTree(process: subprocess.Popen) -> None:
    """Kill ``process``, started by :class:`EngineProcess` as a process-group leader, and its group.

    POSIX: ``SIGKILL`` to the group, which outlives a launcher that died first. Windows:
    ``taskkill /F /T`` ends the process and its descendants.
    """
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # the whole group has already ended
            pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
