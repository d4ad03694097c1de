"""``labelsharing worker``: one process keeps a model loaded and predicts request after request.

Every ``labelsharing predict`` starts Python, imports torch and loads the model before its first
slice: seconds, where predicting a small volume takes a fraction of one. A program that predicts
again and again (the Slicer module's Apply) keeps a worker per model instead and sends it one
JSON request per line on its standard input; the worker answers with JSON lines on its standard
output. A request runs ``predict``'s own code, :meth:`Predictor.predict_files`, with the same
rules for outputs (checked before anything is predicted, never an input, an existing file only
with ``force``, written atomically), so a request writes what ``predict`` would have written.

The protocol (``docs/CONTRACTS.md``, "Worker protocol"), in short::

    -> {"id": 1, "task": "abdomen", "inputs": ["/tmp/ct.nrrd"], "out": "/tmp/out", "format": "nrrd"}
    <- {"status": "progress", "id": 1, "percent": 100.0, "text": "predicting 1/1 case=ct"}
    <- {"status": "log", "id": 1, "text": "wrote /tmp/out/ct.nrrd"}
    <- {"status": "ok", "id": 1, "written": ["/tmp/out/ct.nrrd"], "seconds": 0.41}
    -> {"id": 2, "command": "quit"}
    <- {"status": "ok", "id": 2}

A request that fails (a user error: unknown task, missing input, existing output) gets an
``error`` reply and the worker reads the next one. Anything else is a bug: it ends the worker as
it ends ``predict`` (exit 1, traceback in a file). End of input ends the worker with exit 0.
Standard output carries replies only, log lines included (``log`` replies, in order with the
others); whatever else would be printed there, by this package or a library, goes to standard
error with the warnings.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

from labelsharing import __version__
from labelsharing.errors import LabelSharingError, file_error_message
from labelsharing.utils import ProgressReporter

__all__ = ["PredictRequest", "RequestError", "files_signature", "parse_request", "serve", "standard_streams"]

_FIELDS = {"id", "command", "task", "inputs", "out", "format", "probabilities", "force"}
_COMMANDS = ("predict", "quit")


class RequestError(LabelSharingError):
    """A request line that cannot be read; ``request_id`` is its ``id`` when that could be read."""

    def __init__(self, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True)
class PredictRequest:
    """One request line. ``command`` is ``predict`` (the other fields as ``predict``'s options) or ``quit``."""

    id: Any = None
    command: str = "predict"
    task: str = ""
    inputs: tuple[str, ...] = ()
    out: str = ""
    format: str = "nii.gz"
    probabilities: bool = False
    force: bool = False


def parse_request(line: str) -> PredictRequest:
    """Read one request line.

    Raises:
        RequestError: not a JSON object, an unknown field or command, a missing or mistyped
            field; its ``request_id`` (the line's ``id`` when it could be read) goes in the error reply.

    Example:
        >>> parse_request('{"id": 7, "task": "abdomen", "inputs": ["ct.nrrd"], "out": "out"}').inputs
        ('ct.nrrd',)
    """
    try:
        body = json.loads(line)
    except ValueError as exc:
        raise RequestError(f"A request must be one JSON object per line; this line is not JSON ({exc}).") from None
    if not isinstance(body, dict):
        raise RequestError("A request must be a JSON object, e.g. {\"id\": 1, \"task\": ..., \"inputs\": [...], ...}.")
    request_id = body.get("id")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise RequestError(f"Unknown request field(s): {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}.",
                           request_id)
    command = body.get("command", "predict")
    if command not in _COMMANDS:
        raise RequestError(f"Unknown command {command!r}; choose one of {', '.join(_COMMANDS)}.", request_id)
    if command == "quit":
        return PredictRequest(id=request_id, command="quit")
    task, out, inputs = body.get("task"), body.get("out"), body.get("inputs")
    if not isinstance(task, str) or not task:
        raise RequestError("The request needs \"task\": the task's name (see 'labelsharing info MODEL').", request_id)
    if not isinstance(out, str) or not out:
        raise RequestError("The request needs \"out\": the output folder.", request_id)
    if not isinstance(inputs, list) or not inputs or not all(isinstance(p, str) and p for p in inputs):
        raise RequestError("The request needs \"inputs\": a list of image file paths.", request_id)
    flags = {name: body.get(name, False) for name in ("probabilities", "force")}
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise RequestError(f"\"{name}\" must be true or false, not {value!r}.", request_id)
    file_format = body.get("format", "nii.gz")
    if not isinstance(file_format, str):
        raise RequestError(f"\"format\" must be a string, not {file_format!r}.", request_id)
    return PredictRequest(request_id, "predict", task, tuple(inputs), out, file_format, **flags)


def serve(model: str | Path, requests: Iterable[str], replies: TextIO, device: str = "auto", backend: str = "auto",
          precision: str = "fp32", batch_size: int = 16) -> int:
    """Load ``model`` once, then answer ``requests`` (lines) on ``replies`` until a quit or their end.

    Args:
        model: the model folder; loaded again before a request if its files changed on disk
            (a model re-trained into the same folder), so replies never come from a stale model.
        requests: request lines (the worker's standard input).
        replies: where reply lines are written and flushed (the worker's standard output).
        device, backend, precision, batch_size: as ``predict``'s options, for every request.

    The lines ``predict`` prints (device, graph built, files written) and reloads are ``log``
    replies, with the id of the request they belong to (``null`` while the model first loads).

    Returns:
        0, the exit code.

    Raises:
        LabelSharingError: the model cannot be loaded at start (nothing is served).
    """
    log = _LogReplies(replies)
    loader = _ModelLoader(Path(model), dict(device=device, batch_size=batch_size, backend=backend,
                                            precision=precision), log)
    loader.current()
    _reply(replies, "ready", None, model=str(Path(model).resolve()), device=loader.device, backend=loader.backend,
           version=__version__)
    for line in requests:
        if not line.strip():
            continue
        try:
            request = parse_request(line)
        except RequestError as exc:
            _reply(replies, "error", exc.request_id, error=str(exc))
            continue
        if request.command == "quit":
            _reply(replies, "ok", request.id)
            break
        log.request_id = request.id
        try:
            written, seconds = _predict(loader, request, replies)
        except LabelSharingError as exc:
            _reply(replies, "error", request.id, error=str(exc))
            continue
        except OSError as exc:
            message = file_error_message(exc)
            if message is None:  # names no file: not the user's doing, a bug as in ``predict``
                raise
            _reply(replies, "error", request.id, error=message)
            continue
        for path in written:
            log(f"wrote {path}")
        _reply(replies, "ok", request.id, written=[str(path) for path in written], seconds=round(seconds, 4))
    return 0


def _predict(loader: "_ModelLoader", request: PredictRequest, replies: TextIO) -> tuple[list[Path], float]:
    """Run ``predict``'s code for one request; the files written and the seconds it took."""
    start = time.perf_counter()
    written = loader.current().predict_files(
        request.inputs, request.task, request.out, file_format=request.format, probabilities=request.probabilities,
        progress=_ReplyProgress(replies, request.id), force=request.force,
    )
    return written, time.perf_counter() - start


def standard_streams() -> tuple[TextIO, TextIO]:
    """(requests, replies): standard input, and a private copy of standard output for the replies.

    File descriptor 1 is pointed at standard error afterwards, so output that is not a reply
    (``print``, a library writing to C's ``stdout``) cannot break the protocol. Both streams are
    UTF-8, whatever the locale; replies are written line by line.
    """
    sys.stdout.flush()
    replies_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    replies = os.fdopen(replies_fd, "w", encoding="utf-8", buffering=1)
    return requests, replies


class _ModelLoader:
    """The predictor of a model folder, loaded again when ``model.json`` or the weights change."""

    def __init__(self, folder: Path, options: dict, log: Callable[[str], None]) -> None:
        self.folder, self.options, self.log = folder, options, log
        self._signature: tuple | None = None
        self._predictor = None
        self.device = self.backend = ""

    def current(self):
        from labelsharing.infer import Predictor
        from labelsharing.utils import describe_device

        signature = files_signature(self.folder)
        if self._predictor is None or signature != self._signature:
            if self._predictor is not None:
                self.log(f"the model in {self.folder} changed on disk; loading it again")
                self._predictor = None  # a failed reload must not leave the old model in use
            self._predictor = Predictor.from_model_dir(self.folder, log=self.log, **self.options)
            self._signature = signature
            self.device = describe_device(self._predictor.device)
            self.backend = self._predictor.backend.describe()
            self.log(f"device: {self.device}; backend: {self.backend}")
        return self._predictor


def files_signature(folder: Path) -> tuple:
    """(modification time, size, inode) of ``model.json`` and the weights; None for a missing file."""
    from labelsharing.model import CONFIG_FILE, WEIGHTS_FILE

    signature = []
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            stat = (folder / name).stat()
        except FileNotFoundError:
            signature.append(None)
            continue
        signature.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
    return tuple(signature)


class _LogReplies:
    """A log function sending each line as a ``log`` reply of the current request."""

    def __init__(self, replies: TextIO) -> None:
        self.replies = replies
        self.request_id: Any = None

    def __call__(self, line: str) -> None:
        _reply(self.replies, "log", self.request_id, text=line)


class _ReplyProgress(ProgressReporter):
    """``lines`` progress sent as ``progress`` replies of one request."""

    def __init__(self, replies: TextIO, request_id: Any) -> None:
        super().__init__("lines")
        self._replies, self._id = replies, request_id

    def emit_line(self, percent: float, text: str) -> None:
        _reply(self._replies, "progress", self._id, percent=round(percent, 1), text=text)


def _reply(replies: TextIO, status: str, request_id: Any, **fields: Any) -> None:
    replies.write(json.dumps({"status": status, "id": request_id, **fields}) + "\n")
    replies.flush()
