"""Draw the Sample Data thumbnails of the demo cases: ``LabelSharingSeg/Resources/Icons/Demo<task>.png``.

Each thumbnail is the middle slice of the task's first test case, the case the Sample Data button
loads (``LabelSharingSegLib/DemoData.py``), written by the engine's own generator
(``labelsharing.demo.data.make_demo_datasets``; a test case does not depend on the number of
training cases), windowed to its 1-99 % intensity percentiles, with the reference labels tinted on
top. Run from the repository root with the project's environment::

    PYTHONPATH=LabelSharingSeg python Resources/Scripts/make_demo_thumbnails.py
"""

from __future__ import annotations

import colorsys
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "LabelSharingSeg"))

from labelsharing.demo.data import make_demo_datasets  # noqa: E402

SIZE = 256  # longer side, pixels (Sample Data shows its buttons' icons at about this size)
CASES = 8  # DemoData.DEMO_CASES: the first test case is <prefix>_008


def thumbnail(image: np.ndarray, label: np.ndarray) -> Image.Image:
    """Greyscale middle slice with each label tinted in a distinct colour; ``image``/``label`` (z, y, x) or (y, x)."""
    if image.ndim == 3:
        image, label = image[image.shape[0] // 2], label[label.shape[0] // 2]
    low, high = np.percentile(image, [1, 99])
    grey = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for value in np.unique(label[label > 0]):
        color = np.array(colorsys.hsv_to_rgb((value * 0.618033988749895) % 1.0, 0.75, 0.9))
        mask = label == value
        rgb[mask] = 0.6 * rgb[mask] + 0.4 * color
    picture = Image.fromarray((rgb * 255).astype(np.uint8))
    scale = SIZE / max(picture.size)
    return picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.BILINEAR)


def main() -> int:
    icons = REPO / "LabelSharingSeg" / "Resources" / "Icons"
    with tempfile.TemporaryDirectory() as work:
        for folder in make_demo_datasets(Path(work) / "data", cases=CASES, seed=0):
            task = folder.name.split("_", 1)[1]
            imageFile = sorted((folder / "imagesTs").iterdir())[0]
            labelFile = folder / "labelsTs" / imageFile.name.replace("_0000", "")
            image = sitk.GetArrayFromImage(sitk.ReadImage(str(imageFile))).astype(np.float32)
            label = sitk.GetArrayFromImage(sitk.ReadImage(str(labelFile)))
            out = icons / f"Demo{task}.png"
            thumbnail(image, label).save(out, optimize=True)
            print(f"{out.relative_to(REPO)}: from {imageFile.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
