"""Task recognition (``predict --task auto``) and the unfamiliar-image warning, measured (issue 15).

Trains one model on the given task folders (default: the four demo tasks, written with
``make_demo_datasets``), then, on every task's test images (``imagesTs``; ``imagesTr`` held-out
cases if a task has none):

* **recognition**: the task ``auto`` picks, per volume: right, wrong or refused; per task;
* **warning rate on own images**: each test image predicted as its own task (should not warn);
* **warning rate on unfamiliar images**: each test image predicted as every *other* task, and
  altered copies predicted as their own task: flipped (all axes), zoomed 2x (the centre half
  stretched to the whole grid), intensities x3, and pure noise of the image's range (should warn).

Prints the tables (Markdown) and writes ``results.json`` into ``--out``.

Example::

    python benchmarks/task_recognition.py --out /tmp/taskrec --epochs 20
    python benchmarks/task_recognition.py --out /tmp/taskrec_real --datasets /tmp/rd1/work/data/*
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from labelsharing.data import read_image, read_task_dataset
from labelsharing.demo import make_demo_datasets
from labelsharing.errors import LabelSharingError
from labelsharing.infer import AUTO_TASK, Predictor
from labelsharing.model import SegmentationModel
from labelsharing.train import TrainingOptions, train


def _altered(image: sitk.Image, change: str, rng: np.random.Generator) -> sitk.Image:
    """A copy of ``image`` with its array flipped, zoomed 2x, scaled x3 or replaced by noise."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if change == "flipped":
        array = np.flip(array, tuple(range(array.ndim))).copy()
    elif change == "zoomed":
        crop = tuple(slice(s // 4, s // 4 + max(1, s // 2)) if s > 4 else slice(None) for s in array.shape)
        small = sitk.GetImageFromArray(array[crop])
        factors = [a / b for a, b in zip(array.shape[::-1], small.GetSize())]
        small.SetSpacing([1.0 / f for f in factors])
        reference = sitk.GetImageFromArray(array)
        array = sitk.GetArrayFromImage(sitk.Resample(small, reference, sitk.Transform(), sitk.sitkLinear))
    elif change == "intensity x3":
        array = array * 3
    elif change == "noise":
        array = rng.uniform(float(array.min()), float(array.max()), array.shape).astype(np.float32)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


CHANGES = ("flipped", "zoomed", "intensity x3", "noise")


def _test_images(folder: Path, held_out: tuple[str, ...]) -> list[Path]:
    tests = sorted((folder / "imagesTs").glob("*")) if (folder / "imagesTs").is_dir() else []
    if tests:
        return tests
    dataset = read_task_dataset(folder)
    return [case.image for case in dataset.training if case.case_id in held_out]


def run(datasets: list[Path], out: Path, epochs: int, device: str, seed: int, log: Callable[[str], None]) -> dict:
    model_dir = out / "model"
    if not (model_dir / "model.json").is_file():
        options = TrainingOptions(epochs=epochs, device=device, seed=seed)
        train(datasets, model_dir, options, log=log)
    model = SegmentationModel.load(model_dir)
    predictor = Predictor(model, device=device)
    tasks = list(model.config["tasks"])
    rng = np.random.default_rng(seed)
    recognition = {t: {"right": 0, "wrong": 0, "refused": 0, "scores": []} for t in tasks}
    own = {t: [0, 0] for t in tasks}  # warned, volumes
    own_relative = {t: [] for t in tasks}  # relative distance of each own test image to its task
    other = {t: [0, 0] for t in tasks}
    altered = {c: {t: [0, 0] for t in tasks} for c in CHANGES}
    start = time.perf_counter()
    for folder in datasets:
        name = read_task_dataset(folder).name
        entry = model.config["tasks"][name]
        for path in _test_images(folder, tuple(entry.get("validation_cases", ()))):
            image = read_image(path)
            try:
                record = predictor.examine(image, AUTO_TASK)
                outcome = "right" if record["task"] == name else "wrong"
                recognition[name]["scores"].append(record["recognition"]["score"])
            except LabelSharingError as exc:
                outcome = "refused"
                log(f"{path.name}: {exc}")
            recognition[name][outcome] += 1
            for task in tasks:
                familiarity = predictor.examine(image, task)["familiarity"]
                warned = familiarity["warning"] is not None
                if task == name:
                    own_relative[name].append(familiarity["relative_distance"])
                tally = own[name] if task == name else other[task]
                tally[0] += warned
                tally[1] += 1
            for change in CHANGES:
                warned = predictor.examine(_altered(image, change, rng), name)["familiarity"]["warning"] is not None
                altered[change][name][0] += warned
                altered[change][name][1] += 1
    return {"tasks": tasks, "recognition": recognition, "own": own, "own_relative": own_relative, "other": other,
            "altered": altered,
            "seconds": time.perf_counter() - start, "epochs": epochs}


def report(result: dict) -> str:
    lines = ["| task | test volumes | right | wrong | refused | mean score (recognised) |", "|---|---|---|---|---|---|"]
    for task, r in result["recognition"].items():
        n = r["right"] + r["wrong"] + r["refused"]
        score = f"{np.mean(r['scores']):.3f}" if r["scores"] else "-"
        lines.append(f"| {task} | {n} | {r['right']} | {r['wrong']} | {r['refused']} | {score} |")
    lines += ["", "| predicted as task | own test images warned | own: largest relative distance "
              "| other tasks' test images warned |", "|---|---|---|---|"]
    for task in result["tasks"]:
        (ow, on), (xw, xn) = result["own"][task], result["other"][task]
        relative = result["own_relative"][task]
        largest = f"{max(relative):.2f}" if relative else "-"
        lines.append(f"| {task} | {ow}/{on} | {largest} | {xw}/{xn} |")
    lines += ["", "| altered test image, predicted as its own task: warned | " + " | ".join(result["tasks"]) + " |",
              "|---|" + "---|" * len(result["tasks"])]
    for change, per_task in result["altered"].items():
        lines.append(f"| {change} | " + " | ".join(f"{w}/{n}" for w, n in per_task.values()) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="work folder (model, demo data, results.json)")
    parser.add_argument("--datasets", nargs="*", type=Path, help="task folders (default: the demo tasks)")
    parser.add_argument("--cases", type=int, default=20, help="demo cases per task (20)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    datasets = args.datasets or make_demo_datasets(args.out / "data", cases=args.cases, seed=args.seed)
    result = run(list(datasets), args.out, args.epochs, args.device, args.seed, print)
    text = report(result)
    print(text)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
