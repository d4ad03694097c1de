"""``labelsharing serve`` under load: N clients predicting at once, alone and beside a training job (issue 13).

Starts the server (the command users run) on 127.0.0.1 only, with a random port, and for each
number of clients (1, 4, 16 by default) lets every client send predict requests back to back for
``--duration`` seconds (bounded: nothing leaves this machine, every phase ends on time). Then the
same while a training job (the demo tasks, submitted through the API) runs on the server, and
cancels it. Per phase it prints:

* throughput (predicts per second) and its ratio to **predict alone**, ``Predictor.predict_files``
  warm in this process (read, predict, write: the work any request needs), measured in the same run;
* p50 and p95 latency (request sent to label file received), p50 as a ratio to predict alone;
* errors (goal: none) and the server's peak resident memory (RSS, sampled every 50 ms; the
  training job's processes are counted apart).

``labelsharing predict`` in a new process (start-up included: what a client without a server
pays per volume) is printed once for scale. The model is trained for two steps with the command
line on the built-in demo tasks (weights do not change the cost); the volume is a synthetic CT.
Latencies under N clients include queueing: predictions on one model run one at a time.

Example::

    python benchmarks/server_load.py                              # 60 s per phase, 1/4/16 clients
    python benchmarks/server_load.py --duration 10 --clients 1,4 --device cuda
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the command line does

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import SimpleITK as sitk  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parents[1] / "LabelSharingSeg"
sys.path.insert(0, str(MODULE_DIR))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(MODULE_DIR), os.environ.get("PYTHONPATH", "")])}
TASK = "AbdomenCT"


def _cli(*args: str) -> float:
    """Run the command line; its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "labelsharing", "--progress", "none", *args], env=ENV, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


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


class _Server:
    """``labelsharing serve`` on 127.0.0.1 in a subprocess, and the peak RSS of its process."""

    def __init__(self, models: Path, device: str, backend: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "labelsharing", "serve", "--models", str(models),
                                         "--port", "0", "--device", device, "--backend", backend], env=ENV,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.process.stdout:
            match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            if match:
                self.url = match.group(1)
                break
        else:
            raise SystemExit("the server did not start")
        token = (models / ".labelsharing-serve" / "token").read_text().strip()
        self.headers = {"Authorization": f"Bearer {token}"}
        self.peak = {"server": 0, "jobs": 0}
        self._sampling = False

    def sample_memory(self) -> None:
        """Sample RSS every 50 ms (server; its job subprocesses apart) until ``stop_sampling``."""
        self.peak, self._sampling = {"server": 0, "jobs": 0}, True
        server = psutil.Process(self.process.pid)

        def loop() -> None:
            while self._sampling:
                try:
                    jobs = sum(child.memory_info().rss for child in server.children(recursive=True))
                    self.peak["server"] = max(self.peak["server"], server.memory_info().rss)
                    self.peak["jobs"] = max(self.peak["jobs"], jobs)
                except psutil.Error:  # a job process ended between listing and reading
                    pass
                time.sleep(0.05)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop_sampling(self) -> dict:
        self._sampling = False
        self._thread.join()
        return self.peak

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def _phase(server: _Server, clients: int, duration: float, image: Path) -> dict:
    """``clients`` threads predicting back to back for ``duration`` s: latencies and errors."""
    body = image.read_bytes()
    latencies: List[float] = []
    errors: List[str] = []
    lock = threading.Lock()
    end = time.perf_counter() + duration

    def client() -> None:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=600) as http:
            while time.perf_counter() < end:
                start = time.perf_counter()
                try:
                    answer = http.post("/v1/models/model/predict", content=body,
                                       params={"task": TASK, "format": "nrrd", "filename": image.name})
                    failure = None if answer.status_code == 200 else f"{answer.status_code} {answer.text[:80]}"
                except httpx.HTTPError as exc:
                    failure = f"{type(exc).__name__}: {exc}"
                with lock:
                    (errors.append(failure) if failure else latencies.append(time.perf_counter() - start))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "errors": errors, "seconds": time.perf_counter() - started}


def _demo_zip(demo: Path) -> bytes:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for path in sorted(demo.rglob("*")):
            archive.write(path, str(path.relative_to(demo)))
    return stream.getvalue()


def _report(label: str, result: dict, alone: float, peak: dict) -> None:
    latencies = sorted(result["latencies"])
    throughput = len(latencies) / result["seconds"]
    if latencies:
        p50 = statistics.median(latencies)
        p95 = latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))]
        timing = (f"{throughput:6.2f}/s ({throughput * alone:4.2f} x alone)  p50 {p50:6.3f} s ({p50 / alone:5.2f} x "
                  f"alone)  p95 {p95:6.3f} s")
    else:
        timing = "no request answered"
    jobs = f"; training job {peak['jobs'] / 2**20:5.0f} MB" if peak["jobs"] else ""
    print(f"{label:<28} {len(latencies):5d} predicts  {timing}  errors {len(result['errors'])}  "
          f"server peak RSS {peak['server'] / 2**20:5.0f} MB{jobs}", flush=True)
    for error in sorted(set(result["errors"]))[:3]:
        print(f"    error: {error}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase (60)")
    parser.add_argument("--clients", default="1,4,16", help="numbers of clients, comma-separated (1,4,16)")
    parser.add_argument("--size", type=int, default=256, help="in-plane size of the volume (256)")
    parser.add_argument("--slices", type=int, default=48, help="number of slices (48)")
    parser.add_argument("--device", default="cpu", help="cpu (default) | cuda | mps | auto")
    parser.add_argument("--backend", default="auto", help="the server's and predict alone's backend (auto)")
    parser.add_argument("--no-training", action="store_true", help="skip the phases beside a training job")
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.clients.split(",")]

    work = Path(args.work or tempfile.mkdtemp(prefix="server_load-"))
    models, demo = work / "models", work / "demo"
    model = models / "model"
    if not (model / "model.json").is_file():
        _cli("demo-data", str(demo), "--cases", "3")
        _cli("train", *sorted(str(p) for p in demo.iterdir()), "--out", str(model), "--epochs", "1",
             "--steps-per-epoch", "2", "--device", args.device)
    image = _volume(work / "volume.nrrd", args.slices, args.size)

    from labelsharing.infer import Predictor
    from labelsharing.utils import describe_device

    predictor = Predictor.from_model_dir(model, device=args.device, backend=args.backend)
    outputs = Path(tempfile.mkdtemp(prefix="alone-", dir=work))

    def alone(run: int) -> float:
        start = time.perf_counter()
        predictor.predict_files([image], TASK, outputs / str(run), file_format="nrrd")
        return time.perf_counter() - start

    alone(0)  # warm-up (graph built or loaded), as the server's first request warms its model
    alone_seconds = statistics.median(alone(run) for run in range(1, 4))
    one_shot = _cli("predict", str(model), str(image), "--task", TASK, "--out", str(outputs / "cli"), "--format",
                    "nrrd", "--device", args.device, "--backend", args.backend)
    print(f"volume {args.slices} x {args.size} x {args.size}; model input {predictor.model.input_size}; device "
          f"{describe_device(predictor.device)}; backend {predictor.backend.describe()}; {args.duration:g} s per "
          f"phase; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"predict alone (warm, this process) {alone_seconds:.3f} s = {1 / alone_seconds:.2f}/s; labelsharing "
          f"predict one-shot {one_shot:.2f} s ({one_shot / alone_seconds:.1f} x alone, start-up included)")
    del predictor

    server = _Server(models, args.device, args.backend)
    try:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=600) as http:
            http.post("/v1/models/model/predict", content=image.read_bytes(),
                      params={"task": TASK, "format": "nrrd", "filename": image.name}).raise_for_status()  # warm
            phases = [(False, n) for n in counts] + ([] if args.no_training else [(True, n) for n in counts])
            job_id = None
            for training, clients in phases:
                if training and job_id is None:
                    if not demo.is_dir():
                        _cli("demo-data", str(demo), "--cases", "3")
                    answer = http.post("/v1/jobs/train", content=_demo_zip(demo),
                                       params={"name": "training", "epochs": 100000, "steps_per_epoch": 10})
                    answer.raise_for_status()
                    job_id = answer.json()["id"]
                    while http.get(f"/v1/jobs/{job_id}").json()["progress"]["epoch"] is None:
                        time.sleep(0.2)  # until the job trains: its first epoch (10 steps) ended
                server.sample_memory()
                result = _phase(server, clients, args.duration, image)
                peak = server.stop_sampling()
                _report(f"{clients:2d} client(s)" + (" + training" if training else ""), result, alone_seconds, peak)
            if job_id is not None:
                progress = http.post(f"/v1/jobs/{job_id}/cancel").json()["progress"]
                print(f"training job cancelled in epoch {progress['epoch'] + 1} ({progress['step']} steps done beside "
                      "the predictions)")
    finally:
        server.stop()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
