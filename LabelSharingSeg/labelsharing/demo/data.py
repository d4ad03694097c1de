"""Built-in synthetic segmentation tasks: the project's default (demo) data.

:func:`make_demo_datasets` writes four small tasks in nnU-Net v2 raw layout (see
``docs/CONTRACTS.md``). They differ in modality, dimension, intensity range and texture, so one
network has to tell them apart, and label values are deliberately *not* ordered by structure
size, so label sharing has to rank labels by measured size rather than by value.

* ``Dataset001_AbdomenCT``: 3D CT (``.nii.gz``, int16 HU), 96 x 96 pixels x 12-16 slices,
  spacing about (0.8, 0.8, 3.0) mm. Air, fat, soft tissue, spine and contrast-enhanced organs;
  labels spleen=1, liver=2 (largest), aorta=3 (smallest), left_kidney=4.
* ``Dataset002_BrainMR``: 3D T1-like MR (``.nrrd``, float32, about 0..1000 with a bias field and
  Rician noise), 80 x 80 x 10, spacing about (1, 1, 4) mm; nested labels brain=1 (grey matter),
  white_matter=2, ventricles=3.
* ``Dataset003_KneeXR``: 2D lateral knee radiograph (``.nii.gz``, float32, about 0..4000),
  128 rows x 96 columns, 0.3 mm pixels; labels femur=1, tibia=2, patella=3, fibula=4.
* ``Dataset004_ChestXR``: 2D PA chest radiograph (``.mha``, float32, about 0..255),
  128 x 128, about 2.8 mm pixels, with ribs; labels left_lung=1, right_lung=2 (larger), heart=3.

Every case is drawn from its own generator seeded by (seed, task, split, case), so a given seed
writes byte-identical files and ``cases=2`` writes the first two cases of ``cases=20``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from labelsharing.errors import LabelSharingError

__all__ = ["DEMO_TASK_NAMES", "make_demo_datasets"]

DEMO_TASK_NAMES: tuple[str, ...] = (
    "Dataset001_AbdomenCT",
    "Dataset002_BrainMR",
    "Dataset003_KneeXR",
    "Dataset004_ChestXR",
)

_MARKER = "LabelSharingSeg synthetic demo data"

# One case: image array, label array (same shape, (z, y, x) or (y, x)), spacing and origin in
# SimpleITK order (x, y[, z]).
_Case = Tuple[np.ndarray, np.ndarray, Tuple[float, ...], Tuple[float, ...]]


def make_demo_datasets(out: str | Path, cases: int = 20, seed: int = 0) -> list[Path]:
    """Write the four built-in synthetic tasks into ``out``.

    Each task folder holds ``dataset.json``, ``imagesTr/<case>_0000<ending>``,
    ``labelsTr/<case><ending>`` and a test split ``imagesTs/`` + ``labelsTs/`` of
    ``max(2, cases // 4)`` cases. A task folder that already exists is replaced only if an
    earlier call wrote it.

    Args:
        out: parent folder; created if missing.
        cases: training cases per task, at least 1. Default 20.
        seed: non-negative integer; the same seed gives byte-identical files. Default 0.

    Returns:
        The task folders, in the order of :data:`DEMO_TASK_NAMES`.

    Raises:
        ValueError: if ``cases`` < 1 or ``seed`` < 0.
        LabelSharingError: if a task folder exists, is not empty and was not written by this
            function.

    Example:
        >>> folders = make_demo_datasets("/tmp/demo", cases=2)
        >>> [f.name for f in folders][0]
        'Dataset001_AbdomenCT'
    """
    if int(cases) < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    out = Path(out)
    n_test = max(2, int(cases) // 4)
    folders = []
    for task_index, task in enumerate(_TASKS):
        folder = out / task.name
        _prepare_folder(folder)
        for split, (suffix, count, start) in enumerate((("Tr", int(cases), 0), ("Ts", n_test, int(cases)))):
            for i in range(count):
                rng = np.random.default_rng([int(seed), task_index, split, i])
                image, label, spacing, origin = _draw_case(task, rng)
                case = f"{task.prefix}_{start + i:03d}"
                ref = _write(image, spacing, origin, folder / f"images{suffix}" / f"{case}_0000{task.ending}")
                _write(label, spacing, origin, folder / f"labels{suffix}" / f"{case}{task.ending}", ref)
        meta = {
            "name": task.name.split("_", 1)[1],
            "description": f"{_MARKER}: {task.description}",
            "channel_names": {"0": task.channel},
            "labels": {"background": 0, **task.labels},
            "numTraining": int(cases),
            "file_ending": task.ending,
            "modality": task.modality,
        }
        (folder / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        folders.append(folder)
    return folders


# ----------------------------------------------------------------------------- shape helpers


def _grid(shape: Sequence[int]) -> list[np.ndarray]:
    """Open (broadcastable) coordinate arrays for ``shape`` (z, y, x) or (y, x).

    In-plane axes share one scale (the longer side spans -1..1), so shapes are not distorted;
    z, when present, spans -1..1 over the slices.
    """
    half = [max((n - 1) / 2.0, 1.0) for n in shape]
    scale = half[:-2] + [max(half[-2:])] * 2
    axes = [(np.arange(n, dtype=np.float64) - (n - 1) / 2.0) / s for n, s in zip(shape, scale)]
    return list(np.meshgrid(*axes, indexing="ij", sparse=True))


def _dist(coords: Sequence[np.ndarray], center: Sequence[float], radii: Sequence[float],
          angle: float = 0.0, power: float = 2.0) -> np.ndarray:
    """Normalised superellipse(-oid) distance: <= 1 inside, 1 on the border.

    Args:
        coords: coordinate arrays from :func:`_grid` (any subset ending in y, x).
        center, radii: one value per coordinate array, same order.
        angle: rotation in radians in the (y, x) plane (the last two coordinates).
        power: 2 for an ellipse; larger values give boxier shapes.

    Returns:
        float array broadcast from ``coords``.
    """
    rel = [c - m for c, m in zip(coords, center)]
    cos, sin = np.cos(angle), np.sin(angle)
    rel[-2], rel[-1] = cos * rel[-2] - sin * rel[-1], sin * rel[-2] + cos * rel[-1]
    return sum(np.abs(r / s) ** power for r, s in zip(rel, radii))


def _thickness(d: np.ndarray) -> np.ndarray:
    """Projected thickness of a body with distance ``d`` (1 at the centre, 0 outside)."""
    return np.sqrt(np.clip(1.0 - d, 0.0, 1.0))


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: Sequence[float]) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation, sigma in voxels per axis."""
    noise = rng.standard_normal(tuple(shape))
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape[:-1]], np.fft.rfftfreq(shape[-1]),
                        indexing="ij", sparse=True)
    gain = np.exp(-2.0 * np.pi ** 2 * sum((s * f) ** 2 for s, f in zip(sigma, freqs)))
    axes = tuple(range(len(shape)))
    smooth = np.fft.irfftn(np.fft.rfftn(noise, axes=axes) * gain, s=tuple(shape), axes=axes)
    return smooth / (smooth.std() + 1e-12)


# ----------------------------------------------------------------------------- tasks


def _abdomen_ct(rng: np.random.Generator) -> _Case:
    """One CT case: int16 HU volume and labels, shape (12..16, 96, 96)."""
    u = rng.uniform
    shape = (int(rng.integers(12, 17)), 96, 96)
    z, y, x = _grid(shape)
    body_c, body_r = (u(-0.08, 0.02), u(-0.04, 0.04)), (u(0.62, 0.74), u(0.86, 0.95))
    hu = np.full(shape, -1000.0)
    hu = np.where(_dist((y, x), body_c, body_r, power=2.4) <= 1, -100.0, hu)  # subcutaneous fat
    wall = (body_r[0] - 0.08, body_r[1] - 0.08)
    hu = np.where(_dist((y, x), body_c, wall, power=2.4) <= 1, 45.0, hu)  # muscle wall
    bowel = np.where(_smooth_noise(rng, shape, (0.7, 3, 3)) > 0.2, -90.0, 25.0)
    hu = np.where(_dist((y, x), body_c, (wall[0] - 0.05, wall[1] - 0.05), power=2.4) <= 1, bowel, hu)
    sy, sx = body_c[0] + body_r[0] * 0.5, body_c[1] + u(-0.03, 0.03)  # vertebra centre
    for side in (-1, 1):  # paraspinal muscles
        hu = np.where(_dist((y, x), (sy + 0.14, sx + side * 0.17), (0.12, 0.11)) <= 1, 50.0, hu)
    disc = (np.arange(shape[0])[:, None, None] + int(rng.integers(0, 8))) % 8 < 2  # 24 mm vertebrae
    vert = _dist((y, x), (sy, sx), (0.13, 0.14))
    hu = np.where(vert <= 1, np.where(disc, 90.0, np.where(vert > 0.6, 750.0, 280.0)), hu)
    hu = np.where(_dist((y, x), (sy + 0.2, sx), (0.1, 0.04)) <= 1, 600.0, hu)  # spinous process
    label = np.zeros(shape, np.uint8)
    organs = [  # (value, HU, center (z, y, x), radii (z, y, x), angle, power): largest first
        (2, u(55, 80), (u(-0.3, 0.1), u(-0.25, -0.05), u(-0.5, -0.35)),
         (u(0.8, 1.1), u(0.35, 0.45), u(0.3, 0.4)), u(-0.4, 0.2), u(2.0, 2.6)),
        (1, u(45, 65), (u(-0.3, 0.1), u(0.05, 0.2), u(0.5, 0.6)),
         (u(0.6, 0.8), u(0.22, 0.28), u(0.13, 0.17)), u(0.3, 0.8), 2.0),
        (4, u(140, 190), (u(0.0, 0.4), u(0.22, 0.3), u(0.3, 0.36)),
         (u(0.5, 0.65), u(0.14, 0.17), u(0.09, 0.11)), u(-0.5, -0.2), 2.0),
    ]
    for value, level, center, radii, angle, power in organs:
        inside = _dist((z, y, x), center, radii, angle, power) <= 1
        hu, label = np.where(inside, level, hu), np.where(inside, value, label)
    aorta = _dist((y, x), (sy - 0.23 + 0.02 * z, sx + u(0.04, 0.08)), (u(0.045, 0.06),) * 2) <= 1
    aorta = np.broadcast_to(aorta, shape)
    hu, label = np.where(aorta, u(150, 300), hu), np.where(aorta, 3, label)
    hu = hu + np.where(hu > -900, 8.0 * _smooth_noise(rng, shape, (0.5, 1.5, 1.5)), 0.0)
    hu = hu + rng.normal(0.0, u(8.0, 20.0), shape)
    image = np.round(np.clip(hu, -1024, 3071)).astype(np.int16)
    spacing = (u(0.75, 0.9),) * 2 + (u(2.5, 3.5),)
    origin = (-48 * spacing[0] + u(-5, 5), -48 * spacing[1] + u(-5, 5), u(-200.0, -100.0))
    return image, label, spacing, origin


def _brain_mr(rng: np.random.Generator) -> _Case:
    """One T1-like MR case: float32 volume and labels, shape (10, 80, 80)."""
    u = rng.uniform
    shape = (10, 80, 80)
    z, y, x = _grid(shape)
    c, r, a = (u(-0.1, 0.1), u(-0.05, 0.05), u(-0.05, 0.05)), (u(1.2, 1.4), u(0.85, 0.93), u(0.72, 0.8)), u(-0.15, 0.15)
    head = _dist((z, y, x), c, r, a)
    img = np.where(head <= 1, 850.0, 20.0)  # scalp fat
    for scale, level in ((0.92, 90.0), (0.86, 250.0)):  # skull (dark), CSF
        img = np.where(head <= scale ** 2, level, img)
    brain = head <= 0.82 ** 2
    wm_d = _dist((z, y, x), c, [v * u(0.58, 0.66) for v in r], a) + 0.25 * _smooth_noise(rng, shape, (0.8, 2.5, 2.5))
    wm = brain & (wm_d <= 1)
    label = np.where(brain, 1, 0)
    img = np.where(brain, u(560, 640), img)
    img, label = np.where(wm, u(800, 880), img), np.where(wm, 2, label)
    vy, vx, tilt = c[1] + u(-0.1, 0.02), c[2] + u(0.05, 0.08), u(0.2, 0.45)
    for side in (-1, 1):
        vent = _dist((z, y, x), (c[0], vy, c[2] + side * (vx - c[2])), (u(0.45, 0.6), u(0.2, 0.28), u(0.05, 0.08)),
                     a + side * tilt) <= 1
        img, label = np.where(vent, 180.0, img), np.where(vent, 3, label)
    img = img + 25.0 * _smooth_noise(rng, shape, (0.5, 1.0, 1.0))
    k = rng.uniform(-1, 1, 4)
    img = img * u(0.8, 1.2) * np.exp(0.25 * (k[0] * x + k[1] * y + k[2] * z + k[3] * x * y))  # bias field
    sigma = u(10.0, 25.0)
    img = np.hypot(img + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))  # Rician noise
    spacing = (u(0.95, 1.05),) * 2 + (u(3.6, 4.4),)
    origin = (-40 * spacing[0] + u(-3, 3), -40 * spacing[1] + u(-3, 3), u(-30.0, 10.0))
    return img.astype(np.float32), label, spacing, origin


def _knee_xr(rng: np.random.Generator) -> _Case:
    """One lateral knee radiograph: float32 image and labels, shape (128, 96)."""
    u = rng.uniform
    shape = (128, 96)
    y0, x0 = _grid(shape)
    t = u(-0.15, 0.15)  # whole-leg rotation
    y, x = np.cos(t) * y0 - np.sin(t) * x0, np.sin(t) * y0 + np.cos(t) * x0
    j, xf, xt = u(-0.1, 0.1), u(-0.05, 0.05), u(-0.05, 0.05)  # joint line, femur / tibia axis
    bones = [  # (value, [(center (y, x), radii (y, x), power), ...]): drawn in this order
        (1, [((j - 0.62, xf), (0.5, u(0.12, 0.15)), 4.0), ((j - 0.17, xf + 0.04), (0.19, u(0.28, 0.33)), 2.2)]),
        (2, [((j + 0.2, xt), (0.12, u(0.27, 0.32)), 3.0), ((j + 0.75, xt - 0.02), (0.55, u(0.12, 0.15)), 4.0)]),
        (4, [((j + 0.36, xt + 0.3), (0.07, 0.07), 2.0), ((j + 0.85, xt + 0.33), (0.5, u(0.035, 0.05)), 4.0)]),
        (3, [((j - 0.2 + u(-0.05, 0.05), -0.5 + u(-0.03, 0.03)), (u(0.13, 0.17), u(0.07, 0.09)), 2.0)]),
    ]
    leg = _dist((y, x), (0.0, u(-0.08, 0.08)), (1.6, u(0.62, 0.72)), power=2.5)
    img = u(80, 200) + u(700, 1000) * _thickness(leg)
    label = np.zeros(shape, np.uint8)
    trabecular = 0.08 * _smooth_noise(rng, shape, (1.0, 1.0))
    for value, parts in bones:
        d = np.min([_dist((y, x), c, r, u(-0.1, 0.1), p) for c, r, p in parts], axis=0)
        inside = d <= 1
        img = img + np.where(inside, u(1500, 2200) * (0.55 + 0.45 * d + trabecular), 0.0)  # bright cortex
        label = np.where(inside, value, label)
    img = img * (1.0 + u(-0.1, 0.1) * y0) + rng.normal(0.0, u(20, 40), shape)  # heel effect, noise
    spacing = (u(0.28, 0.32),) * 2
    return img.astype(np.float32), label, spacing, (u(-20, 0), u(-20, 0))


def _chest_xr(rng: np.random.Generator) -> _Case:
    """One PA chest radiograph: float32 image and labels, shape (128, 128)."""
    u = rng.uniform
    shape = (128, 128)
    y, x = _grid(shape)
    img = 5.0 + 130.0 * _thickness(_dist((y, x), (u(0.1, 0.25), u(-0.04, 0.04)), (1.3, u(0.86, 0.95)), power=2.5))
    img = img + 60.0 * _thickness(_dist((y, x), (0.2, u(-0.03, 0.03)), (1.3, u(0.1, 0.13)), power=4))  # spine
    label = np.zeros(shape, np.uint8)
    lungs = [  # (value, center (y, x), radii (y, x), angle): right lung (image left) is larger
        (2, (u(-0.12, -0.02), -u(0.4, 0.46)), (u(0.55, 0.62), u(0.3, 0.34)), u(-0.12, 0.0)),
        (1, (u(-0.12, -0.02), u(0.4, 0.46)), (u(0.5, 0.57), u(0.26, 0.3)), u(0.0, 0.12)),
    ]
    for value, c, r, a in lungs:
        d = _dist((y, x), c, r, a, power=2.6)
        img, label = img - 85.0 * _thickness(d), np.where(d <= 1, value, label)
    vessels = 6.0 * _smooth_noise(rng, shape, (1.5, 1.5))
    img = img + np.where(label > 0, vessels, 0.0)
    y_rib = y - u(0.0, 0.05) - 0.45 * x ** 2 + 0.15 * np.abs(x)  # posterior ribs curve down laterally
    period = u(0.16, 0.19)
    ribs = (np.abs(y_rib % period - period / 2) < 0.022) & (np.abs(x) < 0.85) & (np.abs(y_rib + 0.15) < 0.6)
    img = img + np.where(ribs, 22.0, 0.0)
    heart = _dist((y, x), (u(0.25, 0.35), u(0.08, 0.16)), (u(0.24, 0.3), u(0.28, 0.34)), u(-0.6, -0.3))
    img = img + u(35.0, 50.0) * _thickness(heart)
    label = np.where(heart <= 1, 3, label)
    img = img * u(0.85, 1.1) + rng.normal(0.0, u(2.0, 5.0), shape)
    spacing = (u(2.6, 3.0),) * 2
    return np.clip(img, 0, 255).astype(np.float32), label, spacing, (u(-180, -160), u(-180, -160))


@dataclass(frozen=True)
class _Task:
    """How to draw and describe one demo task."""

    name: str
    prefix: str
    modality: str
    channel: str
    ending: str
    labels: Dict[str, int]
    description: str
    draw: Callable[[np.random.Generator], _Case]


_TASKS = (
    _Task(DEMO_TASK_NAMES[0], "abdct", "CT", "CT", ".nii.gz",
          {"spleen": 1, "liver": 2, "aorta": 3, "left_kidney": 4},
          "3D abdominal CT, int16 HU, 96x96x(12-16), spacing ~(0.8, 0.8, 3.0) mm", _abdomen_ct),
    _Task(DEMO_TASK_NAMES[1], "brainmr", "MR", "T1", ".nrrd",
          {"brain": 1, "white_matter": 2, "ventricles": 3},
          "3D T1-like brain MR with bias field, 80x80x10, spacing ~(1, 1, 4) mm", _brain_mr),
    _Task(DEMO_TASK_NAMES[2], "kneexr", "XR", "XR", ".nii.gz",
          {"femur": 1, "tibia": 2, "patella": 3, "fibula": 4},
          "2D lateral knee radiograph, 128x96, 0.3 mm pixels", _knee_xr),
    _Task(DEMO_TASK_NAMES[3], "chestxr", "XR", "XR", ".mha",
          {"left_lung": 1, "right_lung": 2, "heart": 3},
          "2D PA chest radiograph, 128x128, ~2.8 mm pixels", _chest_xr),
)


# ----------------------------------------------------------------------------- writing


def _draw_case(task: _Task, rng: np.random.Generator, attempts: int = 10) -> _Case:
    """Draw cases from ``rng`` until every declared label occurs (deterministic for a seed)."""
    wanted = set(task.labels.values())
    for _ in range(attempts):
        image, label, spacing, origin = task.draw(rng)
        if wanted <= set(np.unique(label).tolist()):
            return image, label.astype(np.uint8), spacing, origin
    raise RuntimeError(f"{task.name}: no case with every label after {attempts} attempts (generator bug)")


def _prepare_folder(folder: Path) -> None:
    """Remove an earlier demo task folder; refuse to touch any other non-empty folder."""
    if folder.is_dir() and any(folder.iterdir()):
        try:
            ours = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))["description"].startswith(_MARKER)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            ours = False
        if not ours:
            raise LabelSharingError(
                f"{folder} already exists and does not hold LabelSharingSeg demo data; "
                "choose an empty output folder or remove it first."
            )
        shutil.rmtree(folder)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)


def _write(array: np.ndarray, spacing: Sequence[float], origin: Sequence[float], path: Path,
           reference: sitk.Image | None = None) -> sitk.Image:
    """Write ``array`` ((z, y, x) or (y, x)) with spacing/origin in (x, y[, z]) order, compressed."""
    image = sitk.GetImageFromArray(array)
    if reference is not None:
        image.CopyInformation(reference)
    else:
        image.SetSpacing([float(s) for s in spacing])
        image.SetOrigin([float(o) for o in origin])
    sitk.WriteImage(image, str(path), useCompression=True)
    return image
