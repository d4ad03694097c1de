"""Re-score a trained model's task recognition under other reference rules, without retraining (issue 15).

An experiment harness, not engine code: it measures every volume of the model's task folders
(training, held-out, test, and altered test copies as in ``task_recognition.py``) prepared as
every task, once (cached in ``--out/signatures.pkl``; the network runs only then), and then scores
the test volumes under two rules:

* ``stored``: the references stored in ``model.json``, scored by the engine
  (:func:`~labelsharing.infer.relative_distance`, :func:`~labelsharing.infer.recognise_task`);
* ``nn+negatives+raw`` (prototype): the distance of a slice is to its *nearest* training slice
  (z-scored by the task's spread) instead of to the mean slice, so that a task whose volumes
  differ (slabs of different levels, mostly-empty slabs) is not a wide Gaussian that attracts
  every image; a task's limit is lowered to the geometric mean of its own largest unseen distance
  and the nearest other task's volumes when those lie farther (a one-class limit calibrated with
  the other tasks' training volumes as negatives); and tasks whose normalisation keeps a fixed
  scale (``ct``) add the *raw* intensity quantiles of each slice (the HU scale that clipping and
  z-scoring hide).

Prints per test volume the relative distance to every task and the outcome, and the tallies.

Example::

    python benchmarks/task_recognition_refit.py --model /tmp/taskrec_real/model --out /tmp/taskrec_refit
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from task_recognition import CHANGES, _altered

from labelsharing.data import read_image
from labelsharing.errors import LabelSharingError
from labelsharing.infer import MARGIN, MIN_SCORE, POWER, QUANTILES, recognise_task, relative_distance, \
    slice_statistics, volume_signature
from labelsharing.model import SegmentationModel


def _volumes(model: SegmentationModel, seed: int) -> dict:
    """(task, case, role) -> image, role in train / val / test / one of CHANGES."""
    rng = np.random.default_rng(seed)
    images = {}
    for task, entry in model.config["tasks"].items():
        folder = Path(entry["dataset"])
        for path in sorted((folder / "imagesTr").glob("*")) + sorted((folder / "imagesTs").glob("*")):
            case = path.name.split("_0000")[0]
            role = ("train" if case in entry["training_cases"] else
                    "val" if case in entry["validation_cases"] else "test")
            image = images[(task, case, role)] = read_image(path)
            if role == "test":
                for change in CHANGES:
                    images[(task, f"{case}:{change}", change)] = _altered(image, change, rng)
    return images


def _raw_quantiles(image: sitk.Image) -> np.ndarray:
    """(slices, len(QUANTILES)) quantiles of each axial slice's stored intensities."""
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    return np.quantile(array.reshape(len(array), -1), QUANTILES, axis=1).T


def _nearest(values: np.ndarray, per_volume: list, std: np.ndarray) -> float:
    """Mean over ``values``' slices of the RMS z-score to the nearest reference slice."""
    z = (values[:, None, :] - np.concatenate(per_volume)[None]) / std
    return float(np.sqrt((z ** 2).mean(axis=2)).min(axis=1).mean())


def prototype(model: SegmentationModel, images: dict, signatures: dict) -> dict:
    """task -> {cue: (per-volume reference vectors, spread, limit)} under the prototype rule."""
    keys, references = list(images), {}
    for task, entry in model.config["tasks"].items():
        cues = ("features", "intensities") + (("raw",) if entry["normalization"]["scheme"] == "ct" else ())
        references[task] = {}
        for cue in cues:
            def vector(key, cue=cue, task=task):
                return _raw_quantiles(images[key]) if cue == "raw" else getattr(signatures[(key, task)], cue)
            per_volume = [vector(k) for k in keys if k[0] == task and k[2] == "train"]
            spread = slice_statistics(per_volume)[1]
            unseen = [_nearest(vector(k), per_volume, spread) for k in keys if k[0] == task and k[2] == "val"]
            left_out = [per_volume[:i] + per_volume[i + 1:] for i in range(len(per_volume))]
            unseen += [_nearest(v, others, slice_statistics(others)[1]) for v, others in zip(per_volume, left_out)]
            foreign = {}
            for k in keys:
                if k[0] != task and k[2] in ("train", "val"):
                    foreign[k[0]] = min(foreign.get(k[0], np.inf), _nearest(vector(k), per_volume, spread))
            limit = MARGIN * max(unseen)
            separable = [d for d in foreign.values() if d > max(unseen)]
            if separable:
                limit = min(limit, float(np.sqrt(max(unseen) * min(separable))))
            references[task][cue] = (vector, per_volume, spread, limit)
    return references


def _choose(relative: dict) -> str:
    names = list(relative)
    values = np.array([relative[n] for n in names])
    weights = (values / values.min()) ** -POWER
    best = int(values.argmin())
    return names[best] if weights[best] / weights.sum() >= MIN_SCORE and values[best] <= 1 else "REFUSED"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="a trained model folder (read only)")
    parser.add_argument("--out", required=True, type=Path, help="work folder (signature cache)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model = SegmentationModel.load(args.model)
    tasks = list(model.config["tasks"])
    images = _volumes(model, args.seed)
    cache = args.out / "signatures.pkl"
    if cache.is_file():
        signatures = pickle.loads(cache.read_bytes())
    else:
        network = model.network.eval()
        signatures = {(key, t): volume_signature(network, image, model.config["tasks"][t], model.input_size, "cpu")
                      for key, image in images.items() for t in tasks}
        args.out.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps(signatures))
    stored = model.config["familiarity"]["tasks"]
    references = prototype(model, images, signatures)
    tally = {}
    for key in images:
        if key[2] in ("train", "val"):
            continue
        before = {t: relative_distance(signatures[(key, t)], stored[t])[0] for t in tasks}
        after = {t: max(_nearest(vector(key), per, spread) / limit for vector, per, spread, limit in references[t].values())
                 for t in tasks}
        for rule, relative in (("stored", before), ("nn+negatives+raw", after)):
            tally.setdefault((rule, "warned own", key[2]), []).append(relative[key[0]] > 1)
            if key[2] != "test":
                continue
            if rule == "stored":
                try:
                    chosen = recognise_task(relative, tasks).task
                except LabelSharingError:
                    chosen = "REFUSED"
            else:
                chosen = _choose(relative)
            outcome = "right" if chosen == key[0] else "refused" if chosen == "REFUSED" else "wrong"
            tally.setdefault((rule, "recognition", key[0]), []).append(outcome)
            for t in tasks:
                if t != key[0]:
                    tally.setdefault((rule, "other tasks' test images warned", t), []).append(relative[t] > 1)
            print(f"{rule:17} {key[1]:28} -> {chosen:14}", " ".join(f"{t} {r:.2f}" for t, r in relative.items()))
    for (rule, what, name), values in sorted(tally.items()):
        figure = (" ".join(f"{o} {values.count(o)}" for o in ("right", "wrong", "refused")) if what == "recognition"
                  else f"{sum(values)}/{len(values)}")
        print(f"{rule:17} | {what} | {name} | {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
