"""How lean is ``labelsharing predict`` around the network? (issue 11, benchmark 2)

A synthetic CT-like volume, 512 x 512 x 300 int16 by default (air, fat, soft tissue, liver,
spleen, kidneys, aorta, spine, noise; generated at run time), and the default 2D UNet (width
16, input 256) fitted for a few dozen steps to the phantom's organs: a trained network's label
map has organ boundaries, an untrained one's is salt-and-pepper (``--untrained`` shows that
case; it makes the label step dearer, not the network). Then, in one process and for each CPU
backend (PyTorch eager; ``auto``, i.e. OpenVINO when installed):

* **network**: the volume's slices, prepared beforehand (normalised and fitted to 256), through
  the backend alone in batches of 16: the floor any pipeline pays for these slices;
* **end-to-end**: ``Predictor.predict_files`` on the ``.nii.gz`` file, what ``labelsharing
  predict`` runs after start-up (read, orient, normalise, resize, network, labels, write);
* their ratio, network / end-to-end (issue 11's goal: >= 0.9), best of ``--repeats`` runs each,
  alternated so that a load change hits both;
* the stages one by one (``--no-stages`` skips them, e.g. to time an older engine).

The model carries the small-island rules (``model.json`` ``small_islands``) that training would
fit on the phantom (1 % of each organ's volume), so end-to-end includes their removal.

Then ``labelsharing predict`` itself, in a subprocess per backend: wall time (start-up included)
and peak RSS (goal < 2 GB). The load average is printed before and after: the machine may be
shared.

Example::

    python benchmarks/inference_speed.py --work bench_output/predict    # phantom + model kept there
    python benchmarks/inference_speed.py --slices 64 --repeats 1        # a quick look
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# as the command line does (labelsharing.cli.main), before torch starts its threads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import SimpleITK as sitk
import torch

from labelsharing.data import Slicing, SquareFit, normalize_intensities, read_image, write_label
from labelsharing.infer import Predictor, candidate_min_sizes, remove_small_islands
from labelsharing.model import SegmentationModel, build_model_config, build_network, default_architecture
from labelsharing.plan import LabelStats, SharedLabelPlan
from labelsharing.utils import describe_device

LABELS = {"liver": 1, "spleen": 2, "kidney": 3, "aorta": 4}
SPACING = (0.8, 0.8, 1.5)  # (x, y, z) mm


def _model(input_size: int, features: int) -> SegmentationModel:
    """The default architecture for one CT task with :data:`LABELS`, axial, untrained (seed 0)."""
    plan = SharedLabelPlan.build({"CT": {n: LabelStats(v, 0.1 / v, 1.0) for n, v in LABELS.items()}})
    architecture = default_architecture(plan.n_shared + 1, features)
    config = build_model_config(architecture, input_size, plan, {
        "CT": {"modality": "CT", "plane": "axial", "target_spacing": list(SPACING[:2]),
               "normalization": {"scheme": "ct", "clip": [-200, 300], "mean": 60, "std": 80},
               "labels": {n: {"value": v, "shared": plan.labels("CT")[n].shared, "color": [1, 0, 0]}
                          for n, v in LABELS.items()}}})
    torch.manual_seed(0)
    return SegmentationModel(config=config, network=build_network(architecture).eval())


def ct_phantom(slices: int, size: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(volume, labels), (z, y, x) int16 HU and uint8 :data:`LABELS`: organs come and go along z."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:size, :size]
    centre = size / 2
    volume = np.empty((slices, size, size), np.int16)
    labels = np.zeros((slices, size, size), np.uint8)

    def ellipse(cy, cx, ry, rx):
        return ((yy - centre - cy * size) / (ry * size)) ** 2 + ((xx - centre - cx * size) / (rx * size)) ** 2 < 1

    for z in range(slices):
        t, hu, label = z / slices, np.full((size, size), -1000.0), labels[z]
        hu[ellipse(0, 0, 0.36, 0.45)] = -90  # fat
        hu[ellipse(0, 0, 0.32, 0.41)] = 40  # soft tissue
        bulge = np.sin(np.pi * t)
        organs = [((0.12, 0, 0.045, 0.05), 500, 0),  # spine (bone, not a label)
                  ((0.06, 0.03, 0.025, 0.025), 250, LABELS["aorta"])]
        if t < 0.65:
            organs.append(((-0.05, -0.18, 0.10 + 0.08 * bulge, 0.13 + 0.06 * bulge), 70, LABELS["liver"]))
        if 0.1 < t < 0.45:
            organs.append(((-0.02, 0.24, 0.07, 0.05), 110, LABELS["spleen"]))
        if 0.3 < t < 0.75:
            organs += [((0.12, side * 0.14, 0.05, 0.035), 150, LABELS["kidney"]) for side in (-1, 1)]
        for shape, value, name in organs:
            mask = ellipse(*shape)
            hu[mask] = value
            label[mask] = name
        volume[z] = np.clip(hu + rng.normal(0, 12, hu.shape), -1024, 3000)
    return volume, labels


def fit_to_phantom(model: SegmentationModel, volume: np.ndarray, labels: np.ndarray, steps: int) -> float:
    """A few Adam steps (cross-entropy, learning rate annealed to 0) on every 10th fitted slice.

    Not the engine's training: just enough for organ-shaped label maps. Returns the seconds spent.
    """
    start = time.perf_counter()
    fit = SquareFit(volume.shape[1], volume.shape[2], model.input_size)
    chosen = slice(0, len(volume), 10)
    normalization = model.task("CT")["normalization"]
    images = fit.forward(torch.from_numpy(normalize_intensities(volume[chosen], normalization))[:, None])
    to_shared = torch.zeros(max(LABELS.values()) + 1, dtype=torch.int64)
    for assignment in model.plan.labels("CT").values():
        to_shared[assignment.value] = assignment.shared
    targets = to_shared[fit.forward_labels(torch.from_numpy(labels[chosen].astype(np.int64))[:, None])[:, 0]]
    network, generator = model.network.train(), torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    for _ in range(steps):
        pick = torch.randint(0, len(images), (4,), generator=generator)
        loss = torch.nn.functional.cross_entropy(network(images[pick]), targets[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    network.eval()
    return time.perf_counter() - start


def _timed(function) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all the process's threads) of one call.

    On a shared machine the wall time swings with the other jobs; the CPU time, the work done,
    much less (threads wait passively: OMP_WAIT_POLICY=PASSIVE), so both are reported.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def _network_seconds(predictor: Predictor, batches: list) -> tuple[float, float]:
    """The backend alone over prepared (B, 1, S, S) batches: (wall, CPU) seconds."""
    with torch.inference_mode():
        return _timed(lambda: [predictor.backend(batch) for batch in batches])


def _compare(predictor: Predictor, image: sitk.Image, path: Path, out: Path, args) -> None:
    """Print the network alone against ``predict_files`` end-to-end, best of ``args.repeats`` each."""
    config = predictor.model.task("CT")
    fit = Slicing.from_config(config).square_fit(image, args.input_size)
    array = normalize_intensities(sitk.GetArrayViewFromImage(image), config["normalization"])
    batches = [fit.forward(torch.from_numpy(array[i : i + args.batch_size])[:, None])
               for i in range(0, len(array), args.batch_size)]
    del array
    predictor.predict_files([path], "CT", out, force=True)  # warm-up (allocator, kernels, graph)
    network, end_to_end = [], []
    for _ in range(args.repeats):  # alternated: a change of load hits both
        network.append(_network_seconds(predictor, batches))
        end_to_end.append(_timed(lambda: predictor.predict_files([path], "CT", out, force=True)))
    del batches
    bare, bare_cpu = (min(values) for values in zip(*network))
    whole, whole_cpu = (min(values) for values in zip(*end_to_end))
    slices = len(Slicing.from_config(config).slices(sitk.GetArrayViewFromImage(image), image))
    print(f"\n{predictor.backend.describe():<26} {'wall':>24} {'CPU (all threads)':>20}")
    print(f"  network alone         {bare:7.2f} s {bare / slices * 1e3:5.1f} ms/slice {bare_cpu:9.2f} s")
    print(f"  predict end-to-end    {whole:7.2f} s {whole / slices * 1e3:5.1f} ms/slice {whole_cpu:9.2f} s   "
          f"(wall of each run: {', '.join(f'{w:.2f}' for w, _ in end_to_end)})")
    print(f"  network / end-to-end  {bare / whole:7.2f} {'':>15} {bare_cpu / whole_cpu:9.2f}     (goal >= 0.9)")
    if not args.no_stages:
        stages = _stages(predictor, path, out)
        print("  CPU seconds by stage, one after the other: " + ", ".join(
            f"{name} {seconds:.2f} ({seconds / stages['network']:.0%})" for name, seconds in stages.items())
              + f"; sum {sum(stages.values()):.2f} (percentages: of the network)")


def _stages(predictor: Predictor, path: Path, out: Path) -> dict[str, float]:
    """CPU seconds (all threads) of each stage of ``predict_files``, run one after the other."""
    from labelsharing.data import intensity_normalizer, resampled_argmax

    seconds = dict.fromkeys(["read", "view + normalise", "fit to the input", "network", "labels", "small islands",
                             "write"], 0.0)
    start = time.process_time()
    image = read_image(path)
    seconds["read"] = time.process_time() - start
    config = predictor.model.task("CT")
    stored = sitk.GetArrayViewFromImage(image)
    slicing = Slicing.from_config(config)
    slices, fit = slicing.slices(stored, image), slicing.square_fit(image, predictor.model.input_size)
    output = np.zeros(stored.shape, np.uint8)
    out_slices = slicing.slices(output, image)
    lookup = torch.from_numpy(predictor.plan.from_shared("CT", np.arange(predictor.plan.n_shared + 1))).to(torch.uint8)
    clock = time.process_time()
    normalize = intensity_normalizer(stored, config["normalization"])
    _add(seconds, "view + normalise", clock)
    with torch.inference_mode():
        for first in range(0, len(slices), predictor.batch_size):
            part = slice(first, first + predictor.batch_size)
            clock = time.process_time()
            batch = torch.from_numpy(np.ascontiguousarray(normalize(slices[part])))[:, None]
            clock = _add(seconds, "view + normalise", clock)
            fitted = fit.forward(batch)
            clock = _add(seconds, "fit to the input", clock)
            logits = predictor.backend(fitted)
            clock = _add(seconds, "network", clock)
            out_slices[part] = resampled_argmax(fit.crop(logits.float()), (fit.height, fit.width), lookup).numpy()
            _add(seconds, "labels", clock)
    start = time.process_time()
    rules = predictor.model.config.get("small_islands", {}).get("CT", {})
    remove_small_islands(output, image.GetSpacing(), {LABELS[name]: size for name, size in rules.items()})
    seconds["small islands"] = time.process_time() - start
    start = time.process_time()
    write_label(output, image, out / "stages.nii.gz", predictor.task_labels("CT"))
    seconds["write"] = time.process_time() - start
    return seconds


def _add(seconds: dict, key: str, since: float) -> float:
    now = time.process_time()
    seconds[key] += now - since
    return now


def _cli(model_dir: Path, path: Path, out: Path, backend: str) -> tuple[float, float]:
    """``labelsharing predict`` in a subprocess: (wall seconds, peak RSS in GB)."""
    command = [sys.executable, "-m", "labelsharing", "--progress", "none", "predict", str(model_dir), str(path),
               "--task", "CT", "--out", str(out), "--force", "--device", "cpu", "--backend", backend]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()}")
    return wall, usage.ru_maxrss / 2**20


def _prepare(work: Path, args) -> tuple[Path, Path, str]:
    """The phantom file and the fitted model folder in ``work`` (made once, then reused)."""
    tag = f"{args.size}x{args.size}x{args.slices}"
    path = work / f"ct_{tag}.nii.gz"
    model_dir = work / (f"model_s{args.input_size}_f{args.features}_" + ("untrained" if args.untrained else
                                                                         f"fitted{args.fit_steps}"))
    note = []
    if not path.exists() or not model_dir.exists():
        start = time.perf_counter()
        volume, labels = ct_phantom(args.slices, args.size)
        note.append(f"phantom generated in {time.perf_counter() - start:.1f} s")
        if not path.exists():
            image = sitk.GetImageFromArray(volume)
            image.SetSpacing(SPACING)
            sitk.WriteImage(image, str(path), useCompression=True)
        if not model_dir.exists():
            model = _model(args.input_size, args.features)
            voxel = float(np.prod(SPACING))  # the small-island rules a fit on the phantom would give
            model.config["small_islands"] = {"CT": candidate_min_sizes(
                {name: [np.count_nonzero(labels == value) * voxel] for name, value in LABELS.items()})}
            if not args.untrained:
                note.append(f"network fitted to it for {args.fit_steps} steps in "
                            f"{fit_to_phantom(model, volume, labels, args.fit_steps):.0f} s")
            model.save(model_dir)
    return path, model_dir, "; ".join(note) or f"phantom and model reused from {work}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="in-plane size of the volume (512)")
    parser.add_argument("--slices", type=int, default=300, help="number of slices (300)")
    parser.add_argument("--input-size", type=int, default=256, help="network input size (256)")
    parser.add_argument("--features", type=int, default=16, help="UNet width (16: the default model)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per batch (16, the CLI's default)")
    parser.add_argument("--fit-steps", type=int, default=120, help="steps fitting the network to the phantom (120)")
    parser.add_argument("--untrained", action="store_true", help="keep the network untrained (noisy label maps)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of network and end-to-end (2)")
    parser.add_argument("--backends", nargs="+", default=["torch", "auto"], help="backends to time (torch auto)")
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage breakdown")
    parser.add_argument("--work", help="folder keeping the phantom and the model between runs (default: temporary)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work or temporary)
        work.mkdir(parents=True, exist_ok=True)
        out = Path(temporary) / "out"
        path, model_dir, note = _prepare(work, args)
        print(f"load average {os.getloadavg()[0]:.1f} at the start; {note}")
        image = read_image(path)
        voxels = image.GetNumberOfPixels()
        print(f"device: {describe_device('cpu')}; volume {' x '.join(map(str, image.GetSize()))} int16 "
              f"({path.stat().st_size / 2**20:.0f} MB .nii.gz), input {args.input_size}, width {args.features}, "
              f"batch {args.batch_size}, best of {args.repeats}")
        for backend in args.backends:
            _compare(Predictor.from_model_dir(model_dir, "cpu", args.batch_size, backend, log=lambda line: None),
                     image, path, out, args)
        print()
        for backend in args.backends:
            wall, rss = _cli(model_dir, path, out, backend)
            print(f"labelsharing predict --backend {backend:<5}: {wall:6.2f} s wall (start-up included), peak RSS "
                  f"{rss:.2f} GB (goal < 2 GB; the volume is {voxels * 2 / 2**30:.2f} GB as int16, its float32 "
                  f"logits would be {voxels * 5 * 4 / 2**30:.2f} GB)")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
