"""Build small real-data task folders (real CT and MR volumes with real label maps) from packages.

Nothing here is synthetic and nothing is fetched from a data hub: every image and label map ships
inside a package from PyPI or Debian (see ``docs/REAL_DATA.md`` for what each holds, licences and
why these were chosen). The tasks are written in the engine's nnU-Net-like layout, one folder each:

==============  ======  =========================================================  ===============
task            kind    labels                                                     source
==============  ======  =========================================================  ===============
ct_abdomen      CT      liver, spleen, kidney, urinary_bladder, vertebrae, aorta   TotalSegmentator
ct_chest        CT      heart, pulmonary_artery, aorta                             TotalSegmentator
mr_brain_aal    MR T1   7 lobes/groups of the AAL atlas on Colin27                 mricron-data
mr_brain_icbm   MR T1   gray_matter, white_matter of the ICBM152 2009a template    nilearn
mr_abdomen      MR      liver, spleen, kidney, stomach, vertebrae, aorta           TotalSegmentator
==============  ======  =========================================================  ===============

Each task is ONE subject (one patient, one atlas brain), brought to LPS, resampled to ``--spacing``
(3 mm for CT and abdominal MR, 2 mm for brain MR by default) and cut into axial slabs; each slab is a
case. Slabs ``1, 4, 7, ...`` go to ``imagesTs``/``labelsTs``, the rest to ``imagesTr``/``labelsTr``.
Adjacent slabs of one subject are strongly correlated, so test Dice is optimistic compared with a
test on new subjects; the sets are for comparing methods with each other, not for absolute figures.

The two CT tasks overlap in anatomy (aorta), the two brain MR tasks are look-alikes from different
sources labelled differently (lobes vs tissue classes), and ct_abdomen/mr_abdomen share label names.

Where the data come from (the script looks for them and says what to install if one is missing):

* TotalSegmentator's source distribution (``tests/reference_files``; not in the wheel)::

      python -m pip download --no-deps --no-binary :all: TotalSegmentator==2.18.0 -d CACHE

* nilearn (installed, or its wheel in CACHE): ``pip install nilearn``
* Debian's ``mricron-data``: ``apt-get install mricron-data`` (``/usr/share/mricron/templates``)

``--download`` runs the ``pip download`` commands itself (PyPI only) for what CACHE lacks.

Example::

    python benchmarks/real_data.py --out /tmp/realdata --cache ~/.cache/labelsharing-realdata --download
    labelsharing plan /tmp/realdata/ct_abdomen /tmp/realdata/ct_chest /tmp/realdata/mr_brain_aal
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from labelsharing.errors import LabelSharingError

TOTALSEG_VERSION = "2.18.0"
TOTALSEG_SDIST = f"totalsegmentator-{TOTALSEG_VERSION}.tar.gz"
TOTALSEG_DOWNLOAD = ["--no-binary", ":all:", f"TotalSegmentator=={TOTALSEG_VERSION}"]
MRICRON_DIR = Path("/usr/share/mricron/templates")
NILEARN_DATA = "nilearn/datasets/data"

# AAL region name prefix -> group label (every one of the 116 AAL regions falls in one group).
AAL_GROUPS = {
    "frontal_lobe": ("Precentral", "Frontal_", "Rolandic_Oper", "Supp_Motor_Area", "Olfactory", "Rectus", "Paracentral"),
    "parietal_lobe": ("Postcentral", "Parietal_", "SupraMarginal", "Angular", "Precuneus"),
    "temporal_lobe": ("Heschl", "Temporal_"),
    "occipital_lobe": ("Calcarine", "Cuneus", "Lingual", "Occipital_", "Fusiform"),
    "limbic_insula": ("Insula", "Cingulum_", "Hippocampus", "ParaHippocampal", "Amygdala"),
    "deep_gray_nuclei": ("Caudate", "Putamen", "Pallidum", "Thalamus"),
    "cerebellum": ("Cerebelum_", "Vermis_"),
}
# TotalSegmentator class names -> group label (prefix match), per task.
CT_ABDOMEN_GROUPS = {
    "liver": ("liver",),
    "spleen": ("spleen",),
    "kidney": ("kidney_left", "kidney_right"),
    "urinary_bladder": ("urinary_bladder",),
    "vertebrae": ("vertebrae_", "sacrum"),
    "aorta": ("aorta",),
}
MR_ABDOMEN_GROUPS = {
    "liver": ("liver",),
    "spleen": ("spleen",),
    "kidney": ("kidney_left", "kidney_right"),
    "stomach": ("stomach",),
    "vertebrae": ("vertebrae",),
    "aorta": ("aorta",),
}


@dataclass(frozen=True)
class Volume:
    """One subject: image and label map on one grid (LPS), label names -> values, and provenance."""

    image: sitk.Image
    label: sitk.Image
    labels: dict[str, int]
    modality: str
    channel: str
    description: str


class Sources:
    """Finds the packaged files: TotalSegmentator's sdist, nilearn's data folder, mricron's templates.

    Args:
        cache: folder holding downloaded archives and their extracted files.
        download: whether missing PyPI archives may be fetched with ``pip download``.
        mricron_dir: folder of Debian's ``mricron-data`` templates.
    """

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """``--cache``, ``--download``, ``--mricron-dir``: where :meth:`from_arguments` finds the packages."""
        parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "labelsharing-realdata",
                            help="[OPTIONAL] folder for the PyPI archives (TotalSegmentator sdist, nilearn wheel) "
                                 "and their extracted files")
        parser.add_argument("--download", action="store_true",
                            help="[OPTIONAL] fetch missing PyPI archives with 'pip download' into --cache")
        parser.add_argument("--mricron-dir", type=Path, default=MRICRON_DIR,
                            help="[OPTIONAL] templates folder of Debian's mricron-data")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Sources:
        """The sources named by :meth:`add_arguments`' options."""
        return cls(args.cache, args.download, args.mricron_dir)

    def __init__(self, cache: Path, download: bool, mricron_dir: Path) -> None:
        self.cache = cache
        self.download = download
        self.mricron_dir = mricron_dir

    def _pip_download(self, args: list[str], hint: str) -> None:
        if not self.download:
            raise LabelSharingError(f"{hint} is not in {self.cache}. Run: python -m pip download --no-deps "
                                    f"{' '.join(args)} -d {self.cache}   (or rerun with --download).")
        self.cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(self.cache), *args]
        if subprocess.run(command, check=False).returncode != 0:
            raise LabelSharingError(f"'{' '.join(command)}' failed: PyPI must be reachable to fetch {hint}.")

    def totalseg(self, member: str) -> Path:
        """Path of ``tests/reference_files/<member>`` (or another sdist file) of TotalSegmentator."""
        root = self.cache / f"totalsegmentator-{TOTALSEG_VERSION}"
        if not root.is_dir():
            archive = next(iter(sorted(self.cache.glob(f"[Tt]otal[Ss]egmentator-{TOTALSEG_VERSION}.tar.gz"))), None)
            if archive is None:
                self._pip_download(TOTALSEG_DOWNLOAD, f"TotalSegmentator's source distribution {TOTALSEG_SDIST}")
                archive = next(iter(sorted(self.cache.glob(f"[Tt]otal[Ss]egmentator-{TOTALSEG_VERSION}.tar.gz"))))
            with tarfile.open(archive) as tar:
                wanted = [m for m in tar.getmembers() if m.isfile() and ("/tests/reference_files/" in m.name
                          or m.name.endswith("/totalsegmentator/map_to_binary.py") or m.name.endswith("/LICENSE"))]
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(self.cache, members=wanted, **safe)
        path = root / member
        if not path.is_file():
            raise LabelSharingError(f"{path} is missing from TotalSegmentator {TOTALSEG_VERSION}'s sdist.")
        return path

    def totalseg_classes(self, task: str) -> dict[int, str]:
        """TotalSegmentator's class map for ``task`` (e.g. ``total``), read from the sdist's source."""
        tree = ast.parse(self.totalseg("totalsegmentator/map_to_binary.py").read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "class_map":
                return ast.literal_eval(node.value)[task]
        raise LabelSharingError("TotalSegmentator's map_to_binary.py has no class_map.")

    def nilearn(self, name: str) -> Path:
        """Path of ``nilearn/datasets/data/<name>`` from the installed nilearn, else its wheel in the cache."""
        spec = importlib.util.find_spec("nilearn")  # locates the package without importing it
        if spec is not None and spec.submodule_search_locations:
            path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
            if path.is_file():
                return path
        extracted = self.cache / NILEARN_DATA / name
        if not extracted.is_file():
            wheels = sorted(self.cache.glob("nilearn-*.whl"))
            if not wheels:
                self._pip_download(["--only-binary", ":all:", "nilearn"], "nilearn (pip install nilearn) or its wheel")
                wheels = sorted(self.cache.glob("nilearn-*.whl"))
            with zipfile.ZipFile(wheels[-1]) as wheel:
                wheel.extract(f"{NILEARN_DATA}/{name}", self.cache)
        return extracted

    def mricron(self, name: str) -> Path:
        """Path of a template of Debian's ``mricron-data``."""
        path = self.mricron_dir / name
        if not path.is_file():
            raise LabelSharingError(f"{path} not found: install Debian's mricron-data (apt-get install mricron-data) "
                                    "or pass --mricron-dir to the folder holding its templates.")
        return path


def _read(path: Path, pixel: int = sitk.sitkFloat32) -> sitk.Image:
    return sitk.DICOMOrient(sitk.Cast(sitk.ReadImage(str(path)), pixel), "LPS")


def _group(label_array: np.ndarray, names: dict[int, str], groups: dict[str, tuple[str, ...]]) -> tuple[np.ndarray, dict[str, int]]:
    """Map source label values to group values 1..len(groups) by name prefix; other values become 0."""
    out = np.zeros(label_array.shape, np.uint8)
    for value, (group, prefixes) in enumerate(groups.items(), start=1):
        members = [v for v, n in names.items() if n.startswith(prefixes)]
        out[np.isin(label_array, members)] = value
    return out, {group: value for value, group in enumerate(groups, start=1)}


def _label_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    label = sitk.GetImageFromArray(array.astype(np.uint8))
    label.CopyInformation(reference)
    return label


def _totalseg_volume(sources: Sources, image: str, seg: str, class_task: str, groups: dict[str, tuple[str, ...]],
                     modality: str, channel: str, description: str) -> Volume:
    img = _read(sources.totalseg(f"tests/reference_files/{image}"))
    seg_array = sitk.GetArrayFromImage(_read(sources.totalseg(f"tests/reference_files/{seg}"), sitk.sitkUInt8))
    grouped, labels = _group(seg_array, sources.totalseg_classes(class_task), groups)
    return Volume(img, _label_like(grouped, img), labels, modality, channel, description)


def ct_abdomen(sources: Sources) -> Volume:
    """Abdomen-pelvis CT, 3 mm, TotalSegmentator's labels of it grouped into 6 structures."""
    return _totalseg_volume(sources, "example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", "total",
                            CT_ABDOMEN_GROUPS, "CT", "CT",
                            f"TotalSegmentator {TOTALSEG_VERSION} sdist tests/reference_files/example_ct.nii.gz with "
                            "example_seg_fast_force_split.nii.gz (TotalSegmentator 'fast' output, not manual). Apache-2.0.")


def mr_abdomen(sources: Sources) -> Volume:
    """Abdominal MR, 3 mm, 20 slices, TotalSegmentator-MR labels grouped into 6 structures."""
    return _totalseg_volume(sources, "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "total_mr",
                            MR_ABDOMEN_GROUPS, "MR", "MR",
                            f"TotalSegmentator {TOTALSEG_VERSION} sdist tests/reference_files/example_mr_sm.nii.gz with "
                            "example_seg_mr.nii.gz (TotalSegmentator MR output, not manual). Apache-2.0.")


def ct_chest(sources: Sources) -> Volume:
    """Chest CT (aortic dissection case), 1.5 mm; heart, pulmonary artery and aorta masks painted in that order."""
    img = _read(sources.totalseg("tests/reference_files/aorta_report/example_ct.nii.gz"))
    masks = {"heart": "pulmonary_report/models/heart.nii.gz",
             "pulmonary_artery": "pulmonary_report/models/pulmonary_artery.nii.gz",
             "aorta": "aorta_report/test_result/models/aorta.nii.gz"}
    out = np.zeros(sitk.GetArrayFromImage(img).shape, np.uint8)
    for value, member in enumerate(masks.values(), start=1):
        mask = sitk.Resample(_read(sources.totalseg(f"tests/reference_files/{member}"), sitk.sitkUInt8), img,
                             sitk.Transform(), sitk.sitkNearestNeighbor, 0)  # cropped masks onto the full grid
        out[sitk.GetArrayFromImage(mask) > 0] = value
    labels = {name: value for value, name in enumerate(masks, start=1)}
    description = (f"TotalSegmentator {TOTALSEG_VERSION} sdist tests/reference_files/aorta_report/example_ct.nii.gz with "
                   "the aorta/pulmonary report's heart, pulmonary_artery and aorta masks (model output, not manual). Apache-2.0.")
    return Volume(img, _label_like(out, img), labels, "CT", "CT", description)


def mr_brain_aal(sources: Sources) -> Volume:
    """Colin27 T1 (MNI single subject, 1 mm) with the AAL atlas (drawn on this brain) in 7 groups."""
    img = _read(sources.mricron("ch2.nii.gz"))
    names = {}
    for line in sources.mricron("aal.nii.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            names[int(parts[0])] = parts[1]
    aal = sitk.GetArrayFromImage(_read(sources.mricron("aal.nii.gz"), sitk.sitkUInt8))
    grouped, labels = _group(aal, names, AAL_GROUPS)
    description = ("Debian mricron-data: ch2.nii.gz (Colin27) and aal.nii.gz (AAL, Tzourio-Mazoyer 2002) grouped "
                   "into lobes. MRIcron BSD-2/3; Colin27 (c) MNI, free use; AAL: free for research, cite the paper.")
    return Volume(img, _label_like(grouped, img), labels, "MR", "T1", description)


def mr_brain_icbm(sources: Sources) -> Volume:
    """ICBM152 2009a symmetric T1 template (1 mm) labelled gray/white matter from its own tissue maps (p >= 0.5)."""
    stem = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
    img = _read(sources.nilearn(stem.format("t1")))
    gm = sitk.GetArrayFromImage(_read(sources.nilearn(stem.format("gm")))) / 255.0
    wm = sitk.GetArrayFromImage(_read(sources.nilearn(stem.format("wm")))) / 255.0
    out = np.zeros(gm.shape, np.uint8)
    out[(gm >= 0.5) & (gm >= wm)] = 1
    out[(wm >= 0.5) & (wm > gm)] = 2
    description = ("nilearn datasets/data: ICBM152 2009a nonlinear symmetric T1 template and its gray/white matter "
                   "probability maps (Fonov 2011), thresholded at 0.5. nilearn BSD-3; ICBM 2009a (c) MNI, free use.")
    return Volume(img, _label_like(out, img), {"gray_matter": 1, "white_matter": 2}, "MR", "T1", description)


TASKS: dict[str, tuple[Callable[[Sources], Volume], float, int]] = {
    # name: (builder, spacing in mm, number of axial slabs)
    "ct_abdomen": (ct_abdomen, 3.0, 8),
    "ct_chest": (ct_chest, 3.0, 8),
    "mr_brain_aal": (mr_brain_aal, 2.0, 8),
    "mr_brain_icbm": (mr_brain_icbm, 2.0, 8),
    "mr_abdomen": (mr_abdomen, 3.0, 5),
}


def resample(volume: Volume, spacing: float) -> Volume:
    """Resample image (linear) and label (nearest) to isotropic ``spacing`` mm over the same extent."""
    size = [max(1, int(round(n * s / spacing))) for n, s in zip(volume.image.GetSize(), volume.image.GetSpacing())]
    out = []
    for image, interpolator in ((volume.image, sitk.sitkLinear), (volume.label, sitk.sitkNearestNeighbor)):
        out.append(sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), [spacing] * 3,
                                 image.GetDirection(), 0, image.GetPixelID()))
    return Volume(out[0], out[1], volume.labels, volume.modality, volume.channel, volume.description)


def write_task(name: str, volume: Volume, n_slabs: int, out: Path) -> dict:
    """Cut ``volume`` into ``n_slabs`` axial slabs and write them as a task folder; returns its dataset.json."""
    root = out / name
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, volume.image.GetSize()[2], n_slabs + 1).round().astype(int)
    n_train = 0
    image = sitk.Cast(volume.image, sitk.sitkInt16 if volume.modality == "CT" else sitk.sitkFloat32)
    for k, (z0, z1) in enumerate(zip(bounds[:-1], bounds[1:])):
        split = "Ts" if k % 3 == 1 else "Tr"
        n_train += split == "Tr"
        case = f"{name}_slab{k}"
        sitk.WriteImage(image[:, :, int(z0):int(z1)], str(root / f"images{split}" / f"{case}_0000.nii.gz"), True)
        sitk.WriteImage(volume.label[:, :, int(z0):int(z1)], str(root / f"labels{split}" / f"{case}.nii.gz"), True)
    meta = {"name": name, "channel_names": {"0": volume.channel}, "modality": volume.modality,
            "labels": {"background": 0, **volume.labels}, "numTraining": n_train, "file_ending": ".nii.gz",
            "description": volume.description,
            "subjects": 1, "cases": f"{n_slabs} axial slabs of one subject; slabs 1, 4, 7 are the test split"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write one task folder per task into")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(TASKS), help="tasks to build (default: all)")
    Sources.add_arguments(parser)
    parser.add_argument("--spacing", type=float, default=None, help="override every task's isotropic spacing in mm")
    args = parser.parse_args(argv)
    sources = Sources.from_arguments(args)
    try:
        for name in args.tasks:
            builder, spacing, n_slabs = TASKS[name]
            volume = resample(builder(sources), args.spacing or spacing)
            write_task(name, volume, n_slabs, args.out)
            counts = np.bincount(sitk.GetArrayFromImage(volume.label).ravel(), minlength=len(volume.labels) + 1)
            sizes = ", ".join(f"{label} {counts[value] / counts[1:].sum():.3f}" for label, value in volume.labels.items())
            print(f"{name}: {volume.modality} {volume.image.GetSize()} at {args.spacing or spacing} mm, "
                  f"{n_slabs} slabs -> {args.out / name}; label share: {sizes}")
    except LabelSharingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
