"""Slicer's Apply, cold and warm, against ``predict`` alone (issue 11).

Drives the Slicer module's own client code (``LabelSharingSegLib``: ``WarmEngine``,
``EngineJob``, ``EngineProcess``) without Slicer: a stand-in for ``qt.QTimer`` calls the timer
slots at their intervals as Qt's event loop would, and this Python takes the place of
``PythonSlicer`` in the engine's command line (``engineCommand``; nothing else changes). On the
same volume and model it times:

* **predict alone**: ``Predictor.predict_files`` in this process, model loaded and warmed up
  (read the input file, predict, write the label file): the work any Apply has to wait for;
* **cold Apply**: the first Apply of a session: the worker process starts, imports torch, loads
  the model and predicts. Its start-up cost is reported as cold minus warm;
* **warm Apply**: a later Apply, answered by the same worker (goal: at most 1.2 x predict alone).
  The worker's own prediction time (its ``ok`` reply's ``seconds``) is printed too: the warm
  Apply minus it is what the round trip adds (polling, pipes); predict alone in this process
  and in the worker differ only by how the machine shares its cores between the two processes;
* **one-shot Apply**: ``labelsharing predict`` in a new process, what every Apply cost before.

An Apply is timed from ``start`` to its result in the caller, polling included; Slicer's own
work around it (writing the volume, loading the labels into segments) is the same for every
kind and is left out. The model is trained for two steps with the command line on the built-in
demo tasks (weights do not change the cost); the volume is a synthetic CT.

Example::

    python benchmarks/slicer_round_trip.py                       # 48 x 256 x 256 CT, 5 warm Applies
    python benchmarks/slicer_round_trip.py --size 512 --slices 100 --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Callable, List, Optional, Tuple

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the command line does, so both sides compare fairly

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parents[1] / "LabelSharingSeg"
sys.path.insert(0, str(MODULE_DIR))

from LabelSharingSegLib.EngineCommands import PredictCall  # noqa: E402
from LabelSharingSegLib.EngineJob import EngineJob  # noqa: E402
from LabelSharingSegLib.EngineProcess import EngineResult, engineCommand  # noqa: E402
from LabelSharingSegLib.WarmEngine import PREDICTED_IN, WarmEngine  # noqa: E402

TASK = "AbdomenCT"


class _Timer:
    """``qt.QTimer``'s surface used by the module: ``connect("timeout()", f)``, ``setInterval``, ``start``, ``stop``."""

    all: List["_Timer"] = []

    def __init__(self) -> None:
        self.interval, self.due, self.slot = 0, None, None
        _Timer.all.append(self)

    def connect(self, signal: str, slot: Callable[[], None]) -> None:
        self.slot = slot

    def setInterval(self, ms: int) -> None:
        self.interval = ms
        if self.due is not None:  # QTimer::setInterval restarts an active timer
            self.start()

    def start(self) -> None:
        self.due = time.perf_counter() + self.interval / 1000.0

    def stop(self) -> None:
        self.due = None


def _run_until(done: Callable[[], bool], timeout: float = 1800.0) -> None:
    """Qt's event loop, for timers only: sleep to the next due timer, call its slot, reschedule."""
    deadline = time.perf_counter() + timeout
    while not done():
        active = [t for t in _Timer.all if t.due is not None]
        if not active:
            raise RuntimeError("nothing runs and nothing will: no timer is active")
        timer = min(active, key=lambda t: t.due)
        time.sleep(max(0.0, timer.due - time.perf_counter()))
        timer.due += timer.interval / 1000.0
        timer.slot()
        if time.perf_counter() > deadline:
            raise TimeoutError("the Apply did not end")


class _Job(EngineJob):
    """``EngineJob`` with this Python in place of ``PythonSlicer`` (the rest of the command line as in Slicer)."""

    def command(self, args):
        prefix, env = engineCommand(sys.executable, str(MODULE_DIR), os.environ)
        return prefix + list(args), env


def _engine() -> WarmEngine:
    qt = types.SimpleNamespace(QTimer=_Timer)
    slicer = types.SimpleNamespace(util=types.SimpleNamespace(startupEnvironment=lambda: dict(os.environ)))
    return WarmEngine(_Job(str(MODULE_DIR), slicer, qt), qt)


def _apply(engine: WarmEngine, work) -> Tuple[float, Optional[float]]:
    """Seconds from ``start`` to the result, and the seconds the warm worker says it predicted (if it did)."""
    results: List[EngineResult] = []
    start = time.perf_counter()
    engine.start(work, results.append)
    _run_until(lambda: bool(results))
    seconds = time.perf_counter() - start
    if not results[0].succeeded:
        raise RuntimeError(f"the Apply failed: {results[0].errorMessage}\n{results[0].log}")
    inWorker = [float(line.split()[-2]) for line in results[0].log.splitlines() if line.startswith(PREDICTED_IN)]
    return seconds, (inWorker[0] if inWorker else None)


def _cli(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(MODULE_DIR), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "labelsharing", "--progress", "none", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def _volume(path: Path, slices: int, size: int) -> Path:
    """A CT-like int16 volume: air, a body of soft tissue with noise, a brighter organ."""
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:slices, :size, :size]
    body = ((y - size / 2) / (0.45 * size)) ** 2 + ((x - size / 2) / (0.4 * size)) ** 2 < 1
    organ = ((y - 0.45 * size) / (0.12 * size)) ** 2 + ((x - 0.4 * size) / (0.15 * size)) ** 2 < 1
    hu = np.where(body, 40.0, -1000.0) + np.where(organ & body, 60.0, 0.0) + rng.normal(0, 15, (slices, size, size))
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="in-plane size of the volume (256)")
    parser.add_argument("--slices", type=int, default=48, help="number of slices (48)")
    parser.add_argument("--warm", type=int, default=5, help="warm Applies and predict-alone runs timed (5)")
    parser.add_argument("--cold", type=int, default=2, help="cold and one-shot Applies timed (2)")
    parser.add_argument("--device", default="cpu", help="cpu (default) | cuda | mps | auto")
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="slicer_round_trip-"))
    model = work / "model"
    if not (model / "model.json").is_file():
        _cli("demo-data", str(work / "demo"), "--cases", "3")
        _cli("train", *sorted(str(p) for p in (work / "demo").iterdir()), "--out", str(model), "--epochs", "1",
             "--steps-per-epoch", "2", "--device", args.device)
    image = _volume(work / "volume.nrrd", args.slices, args.size)
    runs, outputs = iter(range(10**6)), Path(tempfile.mkdtemp(prefix="outputs-", dir=work))

    def call() -> PredictCall:  # each Apply writes into a new folder, as the module's Segmenter does
        return PredictCall(str(model), TASK, str(image), str(outputs / f"out{next(runs)}"), args.device)

    from labelsharing.infer import Predictor
    from labelsharing.utils import describe_device

    predictor = Predictor.from_model_dir(model, device=args.device)  # builds a backend's cached graph if any

    def alone() -> float:
        out = call()
        start = time.perf_counter()
        predictor.predict_files([image], TASK, out.outFolder, file_format="nrrd")
        return time.perf_counter() - start

    alone()  # warm-up, as the cold Apply warms its worker up
    times = {"alone": [], "warm": [], "inWorker": [], "cold": [], "oneShot": []}
    for _ in range(args.cold):
        engine = _engine()
        times["cold"].append(_apply(engine, call())[0])
        for _ in range(args.warm):  # interleaved, so both see the same load on a shared machine
            times["alone"].append(alone())
            seconds, inWorker = _apply(engine, call())
            times["warm"].append(seconds)
            times["inWorker"].append(inWorker)
        engine.stop()
        times["oneShot"].append(_apply(_engine(), call().args)[0])

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"volume {args.slices} x {args.size} x {args.size}; model input {predictor.model.input_size}; "
          f"device {describe_device(predictor.device)}; backend {predictor.backend.describe()}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"predict alone, this process     {median['alone']:7.3f} s  (median of {len(times['alone'])})")
    print(f"predict alone, in the worker    {median['inWorker']:7.3f} s  (the worker's own time for the warm Applies)")
    print(f"warm Apply (same worker)        {median['warm']:7.3f} s  (median of {len(times['warm'])})  "
          f"{median['warm'] / median['alone']:.2f} x predict alone in this process (goal <= 1.2), "
          f"{median['warm'] / median['inWorker']:.2f} x in the worker")
    print(f"cold Apply (worker starts)      {median['cold']:7.3f} s  (median of {len(times['cold'])})  "
          f"start-up cost {median['cold'] - median['warm']:.2f} s")
    print(f"one-shot Apply (predict CLI)    {median['oneShot']:7.3f} s  (median of {len(times['oneShot'])})  "
          f"{median['oneShot'] / median['warm']:.1f} x warm Apply")


if __name__ == "__main__":
    main()
