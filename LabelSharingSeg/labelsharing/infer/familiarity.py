"""How familiar an image looks to each task of a model: the measure behind ``--task auto`` and
the out-of-distribution warning.

A volume is prepared exactly as a task prepares its images for prediction (the task's
normalisation, slicing and square fit), :data:`SAMPLED_SLICES` evenly spaced slices are run
through the network, and each slice gives two feature vectors:

* the **encoder features**: the UNet's bottleneck output, average-pooled on a
  :data:`GRID` x :data:`GRID` grid (so layout counts: a flipped image moves features between cells);
* the **intensities**: quantiles :data:`QUANTILES` of the normalised slice inside the image
  (padding left out), which see what normalisation hides from the network (a CT in wrong units).

A task's reference (stored in ``model.json`` under ``familiarity``, fitted at the end of
training by :mod:`labelsharing.train.familiarity_fit`) is the mean and spread of both vectors over its
training volumes' sampled slices, and a limit for each: :data:`MARGIN` times the largest distance
of its own volumes (held-out and training). The **distance** of a volume to a task is, per
vector, the mean over its slices of the root-mean-square z-score; the **relative distance**
is the larger of the two distances over their limits, so below 1 means "as close as the task's
own images". The volume's **confidence** is the mean, over its sampled slices' image region, of
the largest softmax probability.

* The out-of-distribution check (:func:`familiarity_report`) warns when the relative distance
  exceeds 1 or the confidence falls below the task's floor (its own volumes' lowest minus
  :data:`CONFIDENCE_SLACK`); it never blocks.
* Task recognition (:func:`recognise_task`) scores every task by ``softmax(-relative / TEMPERATURE)``
  and picks the best if its score is at least :data:`MIN_SCORE` and the image is familiar to it;
  otherwise it refuses, listing the tasks with their scores.

What it cannot do: two tasks whose images look alike (the look-alike warning of training) are
close to both references, so recognition refuses between them rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from labelsharing.data import Slicing, intensity_normalizer
from labelsharing.errors import LabelSharingError

__all__ = ["AUTO_TASK", "SAMPLED_SLICES", "GRID", "QUANTILES", "MARGIN", "TEMPERATURE", "MIN_SCORE", "VolumeSignature",
           "TaskChoice", "volume_signature", "reference_entry", "relative_distance", "familiarity_report",
           "recognise_task", "examine_image", "bottleneck"]

#: The ``--task`` value that asks for the task to be recognised from the image.
AUTO_TASK = "auto"

#: Slices per volume run through the network (evenly spaced, ends included).
SAMPLED_SLICES = 16
#: Encoder features are pooled on a GRID x GRID grid.
GRID = 2
#: Quantiles of a slice's normalised intensities.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: A task's distance limit is MARGIN times the largest distance of its own volumes.
MARGIN = 1.5
#: Confidence floor below the lowest confidence of a task's own volumes.
CONFIDENCE_SLACK = 0.05
#: Softmax temperature over relative distances for the task scores.
TEMPERATURE = 0.25
#: ``--task auto`` picks a task only with at least this score.
MIN_SCORE = 0.8
_STD_FLOOR = 1e-3


@dataclass(frozen=True)
class VolumeSignature:
    """What one volume looks like to one task.

    Attributes:
        features: (n, C * GRID * GRID) pooled bottleneck features of the sampled slices.
        intensities: (n, len(QUANTILES)) normalised intensity quantiles of the sampled slices.
        confidence: mean largest softmax probability over the sampled slices' image region.
    """

    features: np.ndarray
    intensities: np.ndarray
    confidence: float


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
    inside = fit.crop(batch)[:, 0].flatten(1).float()
    quantiles = torch.quantile(inside, torch.tensor(list(quantiles), device=inside.device), dim=1).T
    return VolumeSignature(pooled.cpu().numpy().astype(np.float64), quantiles.cpu().numpy().astype(np.float64),
                           float(probabilities.max(dim=1).values.mean()))


def _distance(values: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> float:
    """Mean over slices of the root-mean-square z-score of ``values`` (n, d)."""
    z = (values - np.asarray(mean)) / np.asarray(std)
    return float(np.sqrt((z ** 2).mean(axis=1)).mean())


def reference_entry(training: Sequence[VolumeSignature], held_out: Sequence[VolumeSignature]) -> dict:
    """A task's reference (its ``familiarity.tasks`` entry of ``model.json``) from its volumes.

    Args:
        training: signatures of the task's training volumes (mean and spread are taken from them).
        held_out: signatures of its held-out volumes (they and ``training`` set the limits).
    """
    if not training:
        raise ValueError("a reference needs at least one training volume")
    features = np.concatenate([s.features for s in training])
    intensities = np.concatenate([s.intensities for s in training])
    entry = {
        "feature_mean": features.mean(axis=0), "feature_std": _spread(features),
        "intensity_mean": intensities.mean(axis=0), "intensity_std": _spread(intensities),
    }
    entry = {key: [float(f"{v:.5g}") for v in value] for key, value in entry.items()}
    own = [*training, *held_out]
    entry["feature_limit"] = MARGIN * max(_distance(s.features, entry["feature_mean"], entry["feature_std"])
                                          for s in own)
    entry["intensity_limit"] = MARGIN * max(_distance(s.intensities, entry["intensity_mean"],
                                                      entry["intensity_std"]) for s in own)
    entry["confidence_floor"] = max(0.0, min(s.confidence for s in own) - CONFIDENCE_SLACK)
    entry["volumes"] = len(own)
    return entry


def _spread(values: np.ndarray) -> np.ndarray:
    """Per-column standard deviation, floored (a constant feature must not divide by zero)."""
    std = values.std(axis=0)
    return np.maximum(std, _STD_FLOOR + 0.01 * float(std.mean()))


def relative_distance(signature: VolumeSignature, reference: Mapping) -> tuple[float, float, float]:
    """``(relative, feature distance, intensity distance)`` of a volume to one task's reference."""
    feature = _distance(signature.features, reference["feature_mean"], reference["feature_std"])
    intensity = _distance(signature.intensities, reference["intensity_mean"], reference["intensity_std"])
    return max(feature / reference["feature_limit"], intensity / reference["intensity_limit"]), feature, intensity


def familiarity_report(signature: VolumeSignature, reference: Mapping, task: str, modality: str) -> dict:
    """The out-of-distribution figures of one volume predicted as ``task`` (for the sidecar JSON).

    Returns:
        ``{"relative_distance", "feature_distance", "feature_limit", "intensity_distance",
        "intensity_limit", "confidence", "confidence_floor", "familiar", "warning"}``;
        ``warning`` is ``None`` when the volume looks like the task's training images.
    """
    relative, feature, intensity = relative_distance(signature, reference)
    low_confidence = signature.confidence < reference["confidence_floor"]
    familiar = relative <= 1.0 and not low_confidence
    reasons = []
    if feature > reference["feature_limit"]:
        reasons.append(f"the network's features lie {feature / reference['feature_limit']:.1f}x farther than "
                       "the task's own images")
    if intensity > reference["intensity_limit"]:
        reasons.append(f"the intensities after normalisation lie {intensity / reference['intensity_limit']:.1f}x "
                       "farther (check the modality, units and rescale slope/intercept)")
    if low_confidence:
        reasons.append(f"the mean softmax confidence {signature.confidence:.2f} is below "
                       f"{reference['confidence_floor']:.2f}")
    warning = None if familiar else (
        f"this {modality} image looks unlike the training images of task '{task}' ({'; '.join(reasons)}): check "
        "the result, the task chosen, and the image's orientation, spacing and body part.")
    return {"relative_distance": round(relative, 4), "feature_distance": round(feature, 4),
            "feature_limit": round(reference["feature_limit"], 4), "intensity_distance": round(intensity, 4),
            "intensity_limit": round(reference["intensity_limit"], 4), "confidence": round(signature.confidence, 4),
            "confidence_floor": round(reference["confidence_floor"], 4), "familiar": familiar, "warning": warning}


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
    weights = np.exp(-(values - values.min()) / TEMPERATURE)
    scores = {n: float(w) for n, w in zip(names, weights / weights.sum())}
    best = names[int(np.argmin(values))]
    choice = TaskChoice(best, scores[best], scores, {n: float(relative[n]) for n in names})
    if scores[best] >= MIN_SCORE and relative[best] <= 1.0:
        return choice
    listed = "; ".join(f"{n}: score {scores[n]:.2f}, relative distance {relative[n]:.2f}"
                       for n in sorted(names, key=lambda n: -scores[n]))
    missing = [t for t in all_tasks if t not in relative]
    why = (f"it looks unlike the training images of every task (closest: '{best}', relative distance "
           f"{relative[best]:.2f} > 1)" if relative[best] > 1.0 else
           f"no task scores {MIN_SCORE:.2f} or more (the tasks' images may look alike)")
    raise LabelSharingError(f"Cannot recognise the task of this image: {why}. Candidates: {listed}"
                            + (f"; without a reference: {', '.join(missing)}" if missing else "")
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

    signatures, recognition = {}, None
    if task == AUTO_TASK and task not in model.config["tasks"]:
        signatures = {name: measure(name) for name in references}
        choice = recognise_task({n: relative_distance(s, references[n])[0] for n, s in signatures.items()},
                                model.plan.task_names)
        task = choice.task
        recognition = {"score": round(choice.score, 4), "scores": {n: round(s, 4) for n, s in choice.scores.items()},
                       "relative_distance": {n: round(r, 4) for n, r in choice.relative.items()}}
    entry = model.task(task)  # raises LabelSharingError with a suggestion
    familiarity = None
    if task in references:
        signature = signatures.get(task) or measure(task)
        familiarity = familiarity_report(signature, references[task], task, entry["modality"])
    return {"task": task, "recognition": recognition, "familiarity": familiarity}
