"""How familiar an image looks to each task of a model: the measure behind ``--task auto`` and
the out-of-distribution warning.

A volume is prepared exactly as a task prepares its images for prediction (the task's
normalisation, slicing and square fit), :data:`SAMPLED_SLICES` evenly spaced slices are run
through the network, and each slice gives two feature vectors:

* the **encoder features**: the UNet's bottleneck output, average-pooled on a
  :data:`GRID` x :data:`GRID` grid (so layout counts: a flipped image moves features between cells);
* the **intensities**: quantiles :data:`QUANTILES` of the normalised slice inside the image
  (padding left out), per cell of the same grid: they see what normalisation hides from the
  network (a CT in wrong units) and where bright and dark parts lie;
* the **raw intensities**: quantiles of the slice's stored values, before normalisation; used
  only by tasks whose normalisation has a fixed scale (``ct``), where they keep the HU scale
  that clipping hides (an MR slice's background and a CT's air both become the lower clip).

A task's reference (stored in ``model.json`` under ``familiarity``, fitted at the end of
training by :mod:`labelsharing.train.familiarity_fit`) holds, per vector, the spread over its
training volumes' sampled slices, up to :data:`REFERENCE_SLICES` of those slices, and a limit.
The **distance** of a volume to a task is, per vector, the mean over its slices of the
root-mean-square z-score to the *nearest* reference slice: a task whose volumes differ (slabs
of different levels, some mostly empty) is described by its slices, not by a mean slice that an
unrelated image can lie closer to than the task's own. (Models whose references hold no slices
use their mean slice.) A limit is :data:`MARGIN` times the largest distance of the task's own
unseen volumes (held-out, and each training volume left out), lowered to the geometric mean of
that distance and the nearest other task's volumes when those lie farther (the other tasks'
training volumes calibrate the limit as negatives; look-alike tasks, inside it, leave it alone).
The **relative distance** is the largest distance over its limit, so below 1 means "as close as
the task's own images". The volume's **confidence** is the mean, over its sampled slices' image
region, of the largest softmax probability.

* The out-of-distribution check (:func:`familiarity_report`) warns when the relative distance
  exceeds 1 or the confidence falls below the task's floor (its own volumes' lowest minus
  :data:`CONFIDENCE_SLACK`); it never blocks.
* Task recognition (:func:`recognise_task`) scores every task in proportion to
  ``relative ** -POWER`` (scores sum to 1) and picks the best if its score is at least
  :data:`MIN_SCORE` and the image is familiar to it; otherwise it refuses, listing the tasks with
  their scores. With two candidates, a score of 0.8 means the chosen task is 1.41x closer.

What it cannot do: two tasks whose images look alike (the look-alike warning of training) are
close to both references, so recognition refuses between them rather than guess.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from labelsharing.data import Slicing, intensity_normalizer
from labelsharing.errors import LabelSharingError
from labelsharing.plan import visible_tasks

__all__ = ["pack_rows", "unpack_rows", "slice_statistics",
           "AUTO_TASK", "SAMPLED_SLICES", "GRID", "QUANTILES", "MARGIN", "POWER", "MIN_SCORE", "VolumeSignature",
           "TaskChoice", "volume_signature", "reference_entry", "relative_distance", "familiarity_report",
           "recognise_task", "examine_image", "dimension_mismatch", "bottleneck"]

#: The ``--task`` value that asks for the task to be recognised from the image.
AUTO_TASK = "auto"

#: Slices per volume run through the network (evenly spaced, ends included).
SAMPLED_SLICES = 16
#: Encoder features are pooled on a GRID x GRID grid.
GRID = 2
#: Quantiles of a slice's normalised intensities.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: A task's distance limit is MARGIN times the largest distance of its own volumes.
MARGIN = 1.25
#: Training slices a reference keeps per vector (evenly chosen), for nearest-slice distances.
REFERENCE_SLICES = 64
#: The signature's vectors: reference key prefix -> VolumeSignature attribute.
CUES = {"feature": "features", "intensity": "intensities", "raw": "raw"}
#: Confidence floor below the lowest confidence of a task's own volumes.
CONFIDENCE_SLACK = 0.05
#: Task scores are proportional to relative distance ** -POWER.
POWER = 4
#: ``--task auto`` picks a task only with at least this score.
MIN_SCORE = 0.8
#: Pseudo-samples of the mean variance added to every feature's variance (see ``_spread``).
SHRINKAGE = 10
_STD_FLOOR = 1e-3


@dataclass(frozen=True)
class VolumeSignature:
    """What one volume looks like to one task.

    Attributes:
        features: (n, C * GRID * GRID) pooled bottleneck features of the sampled slices.
        intensities: (n, GRID * GRID * len(QUANTILES)) normalised intensity quantiles of the
            sampled slices' grid cells.
        confidence: mean largest softmax probability over the sampled slices' image region.
        raw: (n, len(QUANTILES)) quantiles of the sampled slices' stored (raw) intensities, or
            None (signatures made by hand).
    """

    features: np.ndarray
    intensities: np.ndarray
    confidence: float
    raw: np.ndarray | None = None


@dataclass(frozen=True)
class TaskChoice:
    """The outcome of :func:`recognise_task`: the chosen task, its score and every task's figures."""

    task: str
    score: float
    scores: dict
    relative: dict

    def describe(self) -> str:
        return f"task '{self.task}' recognised (score {self.score:.2f}; " + ", ".join(
            f"{t} {s:.2f}" for t, s in sorted(self.scores.items(), key=lambda item: -item[1])) + ")"


def bottleneck(network):
    """The module whose output is the UNet's bottleneck (the innermost skip connection's body)."""
    from monai.networks.layers import SkipConnection

    skips = [m for m in network.modules() if isinstance(m, SkipConnection)]
    if not skips:
        raise ValueError("the network has no skip connection; familiarity needs a MONAI UNet")
    inner = skips[-1].submodule
    deeper = [m for m in inner.modules() if isinstance(m, SkipConnection)]
    if deeper:
        raise ValueError("unexpected UNet layout: the last skip connection is not the innermost")
    return inner


def volume_signature(network, image, entry: Mapping, input_size: int, device, slices: int = SAMPLED_SLICES,
                     grid: int = GRID, quantiles: Sequence[float] = QUANTILES) -> VolumeSignature:
    """Prepare ``image`` as the task of ``entry`` does and measure its sampled slices.

    Args:
        network: the torch UNet (eval mode), on ``device``.
        image: a 2D or 3D SimpleITK image.
        entry: the task's ``model.json`` entry (normalisation, plane, target spacing).
        input_size: the network's input side S.
        slices, grid, quantiles: how many slices to sample, the pooling grid, the intensity
            quantiles (a model's stored ``familiarity`` settings; default the current ones).
    """
    import SimpleITK as sitk
    import torch

    stored = sitk.GetArrayViewFromImage(image)
    normalize = intensity_normalizer(stored, entry["normalization"])
    slicing = Slicing.from_config(entry)
    cut = slicing.slices(stored, image)
    chosen = np.unique(np.linspace(0, len(cut) - 1, min(len(cut), slices)).round().astype(int))
    fit = slicing.square_fit(image, input_size)
    captured = []
    hook = bottleneck(network).register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        with torch.inference_mode():
            batch = fit.forward(torch.from_numpy(np.ascontiguousarray(normalize(cut[chosen])))[:, None].to(device))
            probabilities = fit.crop(network(batch).float().softmax(dim=1))
    finally:
        hook.remove()
    pooled = torch.nn.functional.adaptive_avg_pool2d(captured[0].float(), grid).flatten(1)
    cells = _grid_cells(fit.crop(batch)[:, 0].float(), grid)  # (n, grid * grid, pixels per cell)
    levels = torch.quantile(cells, torch.tensor(list(quantiles), device=cells.device), dim=2)  # (q, n, cells)
    raw = np.quantile(np.asarray(cut[chosen], np.float64).reshape(len(chosen), -1), list(quantiles), axis=1).T
    return VolumeSignature(pooled.cpu().numpy().astype(np.float64),
                           levels.permute(1, 2, 0).flatten(1).cpu().numpy().astype(np.float64),
                           float(probabilities.max(dim=1).values.mean()), raw)


def _grid_cells(slices, grid: int):
    """(n, h, w) -> (n, grid * grid, pixels): the slices cut into a grid of equal cells (edges dropped)."""
    n, height, width = slices.shape
    ch, cw = max(1, height // grid), max(1, width // grid)
    repeat = -(-grid // min(height, width)) if min(height, width) < grid else 1
    if repeat > 1:  # slices narrower than the grid: repeat pixels
        slices = slices.repeat_interleave(repeat, 1).repeat_interleave(repeat, 2)
        ch, cw = ch * repeat, cw * repeat
    cells = slices[:, :ch * grid, :cw * grid].reshape(n, grid, ch, grid, cw).permute(0, 1, 3, 2, 4)
    return cells.reshape(n, grid * grid, ch * cw)


def _distance(values: np.ndarray, slices: np.ndarray, std: Sequence[float]) -> float:
    """Mean over the (n, d) ``values``' rows of the root-mean-square z-score to the nearest of
    the (m, d) reference ``slices``."""
    z = (values[:, None, :] - np.asarray(slices)[None]) / np.asarray(std)
    return float(np.sqrt((z ** 2).mean(axis=2)).min(axis=1).mean())


def reference_entry(training: Sequence[VolumeSignature], held_out: Sequence[VolumeSignature],
                    foreign: Mapping[str, Sequence[VolumeSignature]] | None = None, fixed_scale: bool = False) -> dict:
    """A task's reference (its ``familiarity.tasks`` entry of ``model.json``) from its volumes.

    The limits must hold for images the reference has not seen, so each training volume's
    distance is measured to the *other* training volumes' slices (leave one volume out) and each
    held-out volume's to all, every distance in the spread of all training slices (the one test
    images are measured in: the others' own spread is nil when they are a single slice, a 2D task
    with two training images, and its floor made the limit ~100x too wide); a limit is
    :data:`MARGIN` times the largest, lowered to the geometric mean of that largest and the nearest
    ``foreign`` task's distance when every volume of that task lies farther than the largest (a
    task inside it is a look-alike and changes nothing).

    Args:
        training: signatures of the task's training volumes (the reference slices and spread).
        held_out: signatures of its held-out volumes (they and ``training`` set the limits).
        foreign: other task -> signatures of its volumes prepared as this task (negatives).
        fixed_scale: the task's normalisation keeps the intensity scale (``ct``): the raw
            intensities are a cue too.
    """
    if not training:
        raise ValueError("a reference needs at least one training volume")
    entry = {"volumes": len(training) + len(held_out),
             "confidence_floor": max(0.0, min(s.confidence for s in [*training, *held_out]) - CONFIDENCE_SLACK)}
    for kind, attribute in CUES.items():
        if kind == "raw" and not fixed_scale:
            continue
        per_volume = [getattr(s, attribute) for s in training]
        mean, std, slices = slice_statistics(per_volume)
        entry[f"{kind}_mean"], entry[f"{kind}_std"] = _rounded(mean), _rounded(std)
        entry[f"{kind}_slices"] = pack_rows(slices)
        slices = unpack_rows(entry[f"{kind}_slices"])  # the limits are measured against what is stored
        unseen = [_distance(getattr(s, attribute), slices, std) for s in held_out]
        if len(training) > 1:  # in the stored spread: the one test images are measured in (see the docstring)
            for i, values in enumerate(per_volume):
                unseen.append(_distance(values, slice_statistics(per_volume[:i] + per_volume[i + 1:])[2], std))
        else:  # nothing to leave out with
            unseen += [_distance(per_volume[0], slices, std)]
        nearest_other = [min(_distance(getattr(s, attribute), slices, std) for s in volumes)
                         for volumes in (foreign or {}).values() if volumes]
        separable = [d for d in nearest_other if d > max(unseen)]
        limit = MARGIN * max(unseen)
        entry[f"{kind}_limit"] = min(limit, float(np.sqrt(max(unseen) * min(separable)))) if separable else limit
    return entry


def pack_rows(rows: np.ndarray) -> dict:
    """(n, d) reference rows as ``{"shape": [n, d], "dtype", "base64"}`` (little-endian float16 when every
    value fits it, else float32): 64 slices of 512 features a task, written as JSON numbers, made
    ``model.json`` megabytes long and slow to read and check; packed they are a fifth of that, read at once."""
    rows = np.asarray(rows, dtype=np.float64)
    dtype = "float16" if np.abs(rows).max(initial=0.0) < 6e4 else "float32"
    data = rows.astype("<f2" if dtype == "float16" else "<f4").tobytes()
    return {"shape": list(rows.shape), "dtype": dtype, "base64": base64.b64encode(data).decode("ascii")}


def unpack_rows(packed: Mapping) -> np.ndarray:
    """The (n, d) float64 rows of :func:`pack_rows`' ``packed``."""
    dtype = "<f2" if packed["dtype"] == "float16" else "<f4"
    return np.frombuffer(base64.b64decode(packed["base64"]), dtype=dtype).astype(np.float64).reshape(packed["shape"])


def _rounded(values: np.ndarray) -> list[float]:
    return [float(f"{v:.5g}") for v in values]


def slice_statistics(per_volume: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, floored spread and up to :data:`REFERENCE_SLICES` evenly chosen rows of several
    volumes' (n_i, d) vectors."""
    values = np.concatenate(per_volume)
    keep = np.unique(np.linspace(0, len(values) - 1, min(len(values), REFERENCE_SLICES)).round().astype(int))
    return values.mean(axis=0), _spread(values), values[keep]


def _spread(values: np.ndarray) -> np.ndarray:
    """Per-column standard deviation of (n, d) ``values``, shrunk towards the columns' mean
    variance as if :data:`SHRINKAGE` more samples had it (a few slices, e.g. of a 2D task, give
    columns of near-zero spread by chance), and floored (a constant feature must not divide by zero)."""
    variance = values.var(axis=0)
    n = len(values)
    std = np.sqrt((n * variance + SHRINKAGE * variance.mean()) / (n + SHRINKAGE))
    return np.maximum(std, _STD_FLOOR)


def relative_distance(signature: VolumeSignature, reference: Mapping) -> tuple[float, float, float, float | None]:
    """``(relative, feature, intensity, raw distance or None)`` of a volume to one task's reference."""
    distances = {}
    for kind, attribute in CUES.items():
        if f"{kind}_limit" in reference:
            packed = reference.get(f"{kind}_slices")  # older models store only the mean slice
            slices = unpack_rows(packed) if packed else [reference[f"{kind}_mean"]]
            distances[kind] = _distance(getattr(signature, attribute), slices, reference[f"{kind}_std"])
    relative = max(d / reference[f"{kind}_limit"] for kind, d in distances.items())
    return relative, distances["feature"], distances["intensity"], distances.get("raw")


def dimension_mismatch(image, entry: Mapping) -> str | None:
    """Why ``image`` cannot be like the task's training images by its dimension alone, or None.

    A task whose ``plane`` is null was trained on 2D images; a 3D volume (no axis of size 1) is
    unlike them, and a 2D image is unlike a 3D task's volumes. Models before ``plane`` say nothing.
    """
    if "plane" not in entry:
        return None
    volume = image.GetDimension() == 3 and 1 not in image.GetSize()
    if entry["plane"] is None and volume:
        return "it is a 3D volume and the task's training images are 2D"
    if entry["plane"] is not None and not volume:
        return "it is a 2D image and the task's training images are 3D volumes"
    return None


def familiarity_report(signature: VolumeSignature, reference: Mapping, task: str, modality: str,
                       mismatch: str | None = None) -> dict:
    """The out-of-distribution figures of one volume predicted as ``task`` (for the sidecar JSON).

    ``mismatch`` (:func:`dimension_mismatch`) makes the volume unfamiliar whatever its distance.

    Returns:
        ``{"relative_distance", "feature_distance", "feature_limit", "intensity_distance",
        "intensity_limit", "confidence", "confidence_floor", "familiar", "warning"}`` and, for a
        task with a raw-intensity reference, ``"raw_distance", "raw_limit"``;
        ``warning`` is ``None`` when the volume looks like the task's training images.
    """
    relative, feature, intensity, raw = relative_distance(signature, reference)
    low_confidence = signature.confidence < reference["confidence_floor"]
    familiar = relative <= 1.0 and not low_confidence and mismatch is None
    reasons = [mismatch] if mismatch else []
    if feature > reference["feature_limit"]:
        reasons.append(f"the network's features lie {feature / reference['feature_limit']:.1f}x farther than "
                       "the task's own images")
    if intensity > reference["intensity_limit"]:
        reasons.append(f"the intensities after normalisation lie {intensity / reference['intensity_limit']:.1f}x "
                       "farther (check the modality, units and rescale slope/intercept)")
    if raw is not None and raw > reference["raw_limit"]:
        reasons.append(f"the stored intensities lie {raw / reference['raw_limit']:.1f}x farther than the task's "
                       "own images' (another modality or units?)")
    if low_confidence:
        reasons.append(f"the mean softmax confidence {signature.confidence:.2f} is below "
                       f"{reference['confidence_floor']:.2f}")
    warning = None if familiar else (
        f"this {modality} image looks unlike the training images of task '{task}' ({'; '.join(reasons)}): check "
        "the result, the task chosen, and the image's orientation, spacing and body part.")
    return {"relative_distance": round(relative, 4), "feature_distance": round(feature, 4),
            "feature_limit": round(reference["feature_limit"], 4), "intensity_distance": round(intensity, 4),
            "intensity_limit": round(reference["intensity_limit"], 4), "confidence": round(signature.confidence, 4),
            "confidence_floor": round(reference["confidence_floor"], 4), "familiar": familiar, "warning": warning,
            **({"raw_distance": round(raw, 4), "raw_limit": round(reference["raw_limit"], 4)} if raw is not None else {})}


def recognise_task(relative: Mapping[str, float], all_tasks: Sequence[str]) -> TaskChoice:
    """Pick the task an image belongs to from its relative distances to each task's reference.

    Args:
        relative: task -> relative distance (:func:`relative_distance`), for the tasks with a reference.
        all_tasks: every task of the model (those without a reference are named in a refusal).

    Raises:
        LabelSharingError: no task scores :data:`MIN_SCORE` or the best is unfamiliar; the message
            lists every task with its score so that the user can name one with ``--task``.
    """
    names = list(relative)
    if not names:
        raise LabelSharingError("This model stores no task references, so it cannot recognise the task "
                                f"(models trained before labelsharing stored them). Name one with --task: "
                                f"{', '.join(all_tasks)}.")
    values = np.array([relative[n] for n in names])
    weights = (np.maximum(values, 1e-9) / max(values.min(), 1e-9)) ** -POWER
    scores = {n: float(w) for n, w in zip(names, weights / weights.sum())}
    best = names[int(np.argmin(values))]
    choice = TaskChoice(best, scores[best], scores, {n: float(relative[n]) for n in names})
    if scores[best] >= MIN_SCORE and relative[best] <= 1.0:
        return choice
    listed = "; ".join(f"{n}: score {scores[n]:.2f}, relative distance {relative[n]:.2f}"
                       for n in sorted(names, key=lambda n: -scores[n]))
    missing = [t for t in all_tasks if t not in relative]  # no reference, or another image dimension
    why = (f"it looks unlike the training images of every task (closest: '{best}', relative distance "
           f"{relative[best]:.2f} > 1)" if relative[best] > 1.0 else
           f"no task scores {MIN_SCORE:.2f} or more (the tasks' images may look alike)")
    raise LabelSharingError(f"Cannot recognise the task of this image: {why}. Candidates: {listed}"
                            + (f"; not scored (no reference, or images of another dimension): {', '.join(missing)}"
                               if missing else "")
                            + ". Name the task with --task.")


def examine_image(model, network, image, task: str, device) -> dict:
    """Recognise the task of ``image`` (if ``task`` is :data:`AUTO_TASK`) and measure how familiar
    it looks to that task: the record written beside the prediction (sidecar JSON).

    Args:
        model: the :class:`~labelsharing.model.SegmentationModel` (its ``familiarity`` references).
        network: its torch network, in eval mode on ``device``.
        image: the SimpleITK image to predict.
        task: a task name, or :data:`AUTO_TASK`.

    Returns:
        ``{"task", "recognition", "familiarity"}``: the task to predict; ``None`` or
        ``{"score", "scores", "relative_distance"}``; ``None`` (no reference for the task) or the
        :func:`familiarity_report`.

    Raises:
        LabelSharingError: unknown task, or the task cannot be recognised (:func:`recognise_task`).
    """
    stored = model.config.get("familiarity") or {}
    references = stored.get("tasks", {})

    def measure(name: str) -> VolumeSignature:
        return volume_signature(network, image, model.task(name), model.input_size, device, stored["slices"],
                                stored["grid"], stored["quantiles"])

    # A task split by overlapping segments is one candidate, its first sub-task standing for it (same images).
    plan = model.plan
    shown = {plan.subtasks(name)[0]: name for name in visible_tasks(plan.task_names, plan.splits)}
    signatures, recognition = {}, None
    if task == AUTO_TASK and task not in model.config["tasks"]:
        signatures = {shown[name]: measure(name) for name in references
                      if name in shown and dimension_mismatch(image, model.config["tasks"][name]) is None}
        choice = recognise_task({n: relative_distance(s, references[plan.subtasks(n)[0]])[0]
                                 for n, s in signatures.items()}, list(shown.values()))
        task = choice.task
        recognition = {"score": round(choice.score, 4), "scores": {n: round(s, 4) for n, s in choice.scores.items()},
                       "relative_distance": {n: round(r, 4) for n, r in choice.relative.items()}}
    measured = plan.subtasks(task)[0]  # raises LabelSharingError with a suggestion
    entry = model.task(measured)
    familiarity = None
    if measured in references:
        signature = signatures.get(task) or measure(measured)
        familiarity = familiarity_report(signature, references[measured], task, entry["modality"],
                                         dimension_mismatch(image, entry))
    return {"task": task, "recognition": recognition, "familiarity": familiarity}
