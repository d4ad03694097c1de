"""Long work (train, add-task) as jobs: a queue, one subprocess per job, progress, log tail, cancel.

A job runs the command line users run (``python -m labelsharing --progress lines train ...``) in
its own process group: cancel ends the whole group (real cancel, as the Slicer module does), and
a training never holds the server's threads, so predictions go on beside it. ``workers`` jobs
run at once (default 1: one GPU job at a time; the admin chooses more). The job's folder (its
unpacked datasets: patient data) is removed when the job ends, whatever the outcome; only the
model it wrote stays, in the models folder, written by the CLI's own rules (never over an
existing model: no ``--force`` is ever passed).

Progress comes from the ``PROGRESS <percent> <text>`` lines (step, ``epoch=e/E``; one per 1 % of
the run) and the epoch lines (``epoch e/E | step s | ... val Dice ... | mean d``); the last :data:`LOG_LINES` lines are kept as the log tail.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from labelsharing.serve.security import NotFound

__all__ = ["Job", "JobQueue", "LOG_LINES"]

LOG_LINES = 200
_PROGRESS = re.compile(r"PROGRESS (\d+(?:\.\d+)?) (.*)")
_STEP = re.compile(r"(\d+)/(\d+)")
_EPOCH = re.compile(r"epoch=(\d+)/(\d+)")
_EPOCH_LINE = re.compile(r"epoch +(\d+)/(\d+) \| step (\d+)")
_DICE = re.compile(r"val Dice .*\| mean (\d\.\d+)")
_STATES_DONE = ("done", "failed", "cancelled")


@dataclass
class Job:
    """One queued or running command; ``status`` is queued, running, done, failed or cancelled."""

    id: str
    kind: str
    model: str
    argv: list[str]
    folder: Path
    out: Path
    status: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    percent: float = 0.0
    text: str = ""
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    dice: float | None = None
    error: str | None = None
    log: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LOG_LINES))
    log_total: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)
    cancel_requested: bool = False

    def to_dict(self, log_lines: int = 50) -> dict:
        """The job's state as the API returns it: the last ``log_lines`` lines of its log, and
        ``log_total``, the lines logged so far (a client polling it knows which lines are new)."""
        return {"id": self.id, "kind": self.kind, "model": self.model, "status": self.status,
                "created": self.created, "started": self.started, "finished": self.finished,
                "progress": {"percent": self.percent, "text": self.text, "epoch": self.epoch, "epochs": self.epochs,
                             "step": self.step, "steps": self.steps, "dice": self.dice},
                "error": self.error, "log": list(self.log)[-log_lines:] if log_lines > 0 else [],
                "log_total": self.log_total}

    def read_line(self, line: str) -> None:
        """Take one output line of the job's process into its progress and log."""
        line = line.rstrip("\n")
        match = _PROGRESS.fullmatch(line)
        if match:
            self.percent, self.text = float(match.group(1)), match.group(2)
            step, epoch = _STEP.search(self.text), _EPOCH.search(self.text)
            if step:
                self.step, self.steps = int(step.group(1)), int(step.group(2))
            if epoch:
                self.epoch, self.epochs = int(epoch.group(1)), int(epoch.group(2))
            return
        epoch, dice = _EPOCH_LINE.match(line), _DICE.search(line)
        if epoch:  # progress lines come every 1 % of the run; epoch lines every epoch
            self.epoch, self.epochs = int(epoch.group(1)), int(epoch.group(2))
            self.step = max(self.step or 0, int(epoch.group(3)))
        if dice:
            self.dice = float(dice.group(1))
        self.log.append(line)
        self.log_total += 1


class JobQueue:
    """Runs jobs in order, ``workers`` at a time, each in its own process group.

    Args:
        work_root: where job folders are made (``<models>/.labelsharing-serve/jobs``).
        workers: jobs run at once.
        log: receives a line when a job starts or ends.
    """

    def __init__(self, work_root: str | Path, workers: int = 1, log: Callable[[str], None] = print) -> None:
        self.work_root = Path(work_root)
        self.work_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log = log
        self._jobs: dict[str, Job] = {}
        self._pending: collections.deque[str] = collections.deque()
        self._condition = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"labelsharing-job-{i}", daemon=True)
                         for i in range(max(1, int(workers)))]
        for thread in self._threads:
            thread.start()

    def new_folder(self) -> tuple[str, Path]:
        """A new job id and its empty folder (mode 0700), for the uploads of a job being submitted."""
        job_id = uuid.uuid4().hex
        folder = self.work_root / job_id
        folder.mkdir(mode=0o700)
        return job_id, folder

    def submit(self, job_id: str, folder: Path, kind: str, out: Path, arguments: Sequence[str]) -> Job:
        """Queue ``labelsharing --progress lines <arguments>``, run in ``folder``, writing the model folder ``out``."""
        argv = [sys.executable, "-m", "labelsharing", "--progress", "lines", *arguments]
        job = Job(job_id, kind, out.name, argv, folder, out)
        with self._condition:
            self._jobs[job_id] = job
            self._pending.append(job_id)
            self._condition.notify()
        return job

    def get(self, job_id: str) -> Job:
        """The job of that id. Raises ``NotFound`` for an unknown one."""
        with self._condition:
            if job_id not in self._jobs:
                raise NotFound(f"No job {job_id!r} on this server; GET /v1/jobs lists them.")
            return self._jobs[job_id]

    def jobs(self) -> list[Job]:
        with self._condition:
            return list(self._jobs.values())

    def claims(self, model: str) -> bool:
        """Whether a queued or running job will write model ``model``."""
        return any(job.model == model and job.status not in _STATES_DONE for job in self.jobs())

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one never starts; a running one's process group is ended."""
        job = self.get(job_id)
        with self._condition:
            if job.status in _STATES_DONE:
                return job
            job.cancel_requested = True
            if job.status == "queued":
                self._pending.remove(job_id)
                self._finish(job, "cancelled")
                return job
        _end_process_group(job.process)
        return job

    def close(self) -> None:
        """Cancel every job (the server is stopping) and remove their folders."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        for job in self.jobs():
            self.cancel(job.id)
        for thread in self._threads:
            thread.join(timeout=15)

    # ---------------------------------------------------------------------------- running
    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                job = self._jobs[self._pending.popleft()]
                job.status, job.started = "running", time.time()
                job.process = _start(job.argv, job.folder)
            self.log(f"job {job.id} ({job.kind} -> {job.model}) started")
            assert job.process.stdout is not None
            for line in job.process.stdout:
                job.read_line(line)
            code = job.process.wait()
            with self._condition:
                if job.cancel_requested:
                    self._finish(job, "cancelled")
                elif code == 0:
                    self._finish(job, "done")
                else:
                    errors = [line for line in job.log if line.startswith("error: ")]
                    self._finish(job, "failed", errors[-1][len("error: "):] if errors else f"exit code {code}")
            self.log(f"job {job.id} {job.status}" + (f": {job.error}" if job.error else ""))

    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        from labelsharing.train import work_folder_for

        job.status, job.error, job.finished = status, error, time.time()
        shutil.rmtree(job.folder, ignore_errors=True)  # the uploaded patient data goes with the job,
        if status != "done":  # and so do the slices and checkpoints of a run that will not be resumed
            shutil.rmtree(work_folder_for(job.out), ignore_errors=True)


def _start(argv: list[str], folder: Path) -> subprocess.Popen:
    """The job's process, alone in a new process group (session), output merged into one pipe."""
    options: dict = {"start_new_session": True} if os.name == "posix" else \
        {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return subprocess.Popen(argv, cwd=folder, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", **options)


def _end_process_group(process: subprocess.Popen | None, grace: float = 5.0) -> None:
    """End ``process`` and its children: SIGTERM to the group, SIGKILL after ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    if os.name != "posix":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
