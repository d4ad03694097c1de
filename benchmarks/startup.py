"""How long the command line takes to start (issue 11, benchmark 4).

Each command runs in a fresh process, best of ``--repeats`` runs (wall time, as a user waits):

* ``labelsharing --help`` and ``labelsharing info MODEL`` (goal: < 0.5 s, torch not imported;
  the imports are listed with ``python -X importtime``), next to the floor ``python -c pass``;
* time to the first slice: ``labelsharing predict`` on a single 512 x 512 slice, per backend
  (the backend's graph already cached, as after the first run), next to the floor of any
  PyTorch pipeline: a ``python -c`` that imports torch and MONAI, builds the same UNet and runs
  it once on one slice. The first run ever of ``auto`` (which converts and caches the OpenVINO
  graph) is timed too.

The model is the default architecture (untrained; weights do not change start-up) unless
``--model`` names one.

Example::

    python benchmarks/startup.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from inference_speed import _model

HEAVY = ("torch", "monai", "openvino", "numpy", "SimpleITK")


def _run(command: list[str]) -> tuple[float, str]:
    """(wall seconds, stderr) of one run; fails loudly."""
    environment = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}  # as the CLI sets
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return wall, result.stderr


def _best(command: list[str], repeats: int) -> float:
    return min(_run(command)[0] for _ in range(repeats))


def _imported(arguments: list[str]) -> list[str]:
    """Which of :data:`HEAVY` a ``labelsharing`` command imports (from ``-X importtime``)."""
    _, log = _run([sys.executable, "-X", "importtime", "-m", "labelsharing", *arguments])
    names = {line.rsplit("|", 1)[-1].strip() for line in log.splitlines() if line.startswith("import time:")}
    return [name for name in HEAVY if name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the default architecture, untrained, input 256)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per command; the best is kept (5)")
    args = parser.parse_args()
    python, cli = sys.executable, [sys.executable, "-m", "labelsharing"]

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model_dir = Path(args.model) if args.model else _model(256, 16).save(work / "model")
        image = sitk.GetImageFromArray(np.random.default_rng(0).normal(40, 30, (1, 512, 512)).astype(np.int16))
        image.SetSpacing((0.8, 0.8, 1.5))
        sitk.WriteImage(image, str(work / "slice.nii.gz"), useCompression=True)
        task = _first_task(model_dir)
        predict = [*cli, "--progress", "none", "predict", str(model_dir), str(work / "slice.nii.gz"), "--task", task,
                   "--out", str(work / "out"), "--force", "--device", "cpu"]
        print(f"load average {os.getloadavg()[0]:.1f} at the start; best of {args.repeats} fresh processes\n")

        floor = _best([python, "-c", "pass"], args.repeats)
        print(f"{'python -c pass (the floor)':<44} {floor:6.2f} s")
        looks = (("labelsharing --help", ["--help"]), ("labelsharing info MODEL", ["info", str(model_dir)]))
        for name, arguments in looks:
            seconds = _best([*cli, *arguments], args.repeats)
            imported = _imported(arguments)
            print(f"{name:<44} {seconds:6.2f} s  ({seconds - floor:+.2f} s over the floor; goal < 0.5 s; "
                  f"imports {', '.join(imported) or 'none'} of {', '.join(HEAVY)})")

        architecture = _model(256, 16).config["architecture"]["kwargs"]
        network_floor = _best([python, "-c", (
            "import torch\nfrom monai.networks.nets import UNet\n"
            f"net = UNet(**{architecture!r}).eval()\n"
            "with torch.inference_mode():\n    net(torch.zeros(1, 1, 256, 256))")], args.repeats)
        print(f"\n{'torch + MONAI UNet, one slice (the floor)':<44} {network_floor:6.2f} s")
        cache = model_dir / ".cache"
        first_ever = None
        if not cache.exists():
            first_ever = _run([*predict, "--backend", "auto"])[0]
        for backend in ("torch", "auto"):
            seconds = _best([*predict, "--backend", backend], args.repeats)
            print(f"{'first slice: predict --backend ' + backend:<44} {seconds:6.2f} s  "
                  f"({seconds / network_floor:.2f} x the floor)")
        if first_ever is not None:
            print(f"{'first run ever of --backend auto':<44} {first_ever:6.2f} s  (builds and caches the graph)")
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


def _first_task(model_dir: Path) -> str:
    import json

    return next(iter(json.loads((model_dir / "model.json").read_text())["tasks"]))


if __name__ == "__main__":
    main()
