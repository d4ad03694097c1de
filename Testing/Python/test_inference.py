"""Prediction: shapes, label mapping, geometry of written files, batching, devices, model folders.

Where exact outputs are needed without training, the UNet is replaced by ``IntensityNetwork``
(see ``tiny_model.py``): a pixel of intensity about k is predicted as shared label k, so the
shared -> task mapping inside ``Predictor`` can be checked exactly.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tiny_model import COLORS, TASK_LABELS, make_model

from labelsharing.data import read_label
from labelsharing.errors import LabelSharingError
from labelsharing.infer import Predictor
from labelsharing.utils import ProgressReporter, describe_device, select_device


def _image(array: np.ndarray, spacing=None, origin=None, direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    if spacing is not None:
        image.SetSpacing(spacing)
    if origin is not None:
        image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _oblique(dim: int) -> list[float]:
    c, s = math.cos(0.5), math.sin(0.5)
    if dim == 2:
        return [c, -s, s, c]
    rot_z = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, math.cos(0.3), -math.sin(0.3)], [0, math.sin(0.3), math.cos(0.3)]])
    return [float(v) for v in (rot_z @ rot_x).ravel()]


def _stripes(shape: tuple[int, ...], values=(0, 1, 2, 3)) -> np.ndarray:
    """Bands of constant intensity along the last axis (exact when no resizing happens)."""
    array = np.zeros(shape, dtype=np.float32)
    width = shape[-1] // len(values)
    for i, value in enumerate(values):
        array[..., i * width : (i + 1) * width] = value
    return array


@pytest.fixture
def fake() -> Predictor:
    return Predictor(make_model(fake=True), "cpu", batch_size=4)


@pytest.fixture
def unet() -> Predictor:
    return Predictor(make_model(fake=False), "cpu", batch_size=4)


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    "task, shape",
    [("TaskA", (5, 32, 32)), ("TaskA", (3, 20, 28)), ("TaskB", (24, 40)), ("TaskB", (1, 24, 40)),
     ("TaskB", (6, 16, 16)), ("TaskA", (18, 30))],
)
def test_predict_image_shape(unet: Predictor, task: str, shape):
    image = _image(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    labels, probs = unet.predict_probabilities(image, task)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0} | set(TASK_LABELS[task].values())
    assert probs.shape == (len(TASK_LABELS[task]) + 1,) + shape and probs.dtype == np.float16
    np.testing.assert_allclose(probs.astype(np.float32).sum(axis=0), 1.0, atol=5e-3)


# ----------------------------------------------------------------------------- plan mapping
def test_shared_labels_map_to_task_values(fake: Predictor):
    image = _image(_stripes((3, 32, 32)), spacing=[1.0, 1.0, 3.0])
    shared = _stripes((3, 32, 32)).astype(np.int64)
    # TaskA: shared 1, 2, 3 are big=1, mid=2, small=3.
    np.testing.assert_array_equal(fake.predict_image(image, "TaskA"), shared)
    # TaskB: shared 1 = large (value 2), shared 2 = tiny (value 1), shared 3 unused -> background.
    expected_b = np.array([0, 2, 1, 0])[shared]
    np.testing.assert_array_equal(fake.predict_image(image, "TaskB"), expected_b)


def test_probabilities_follow_task_labels(fake: Predictor):
    image = _image(_stripes((32, 32)))
    labels, probs = fake.predict_probabilities(image, "TaskB")
    # Channels: background, then task labels by value (tiny=1, large=2): channel c <-> value c.
    assert [label.name for label in fake.task_labels("TaskB")] == ["tiny", "large"]
    np.testing.assert_array_equal(probs.argmax(axis=0), labels)
    assert probs[0][:, 24:].min() > 0.99  # shared label 3 (unused by TaskB) counts as background


def test_unknown_task_suggests_closest_name(fake: Predictor, tmp_path: Path):
    image = _image(_stripes((32, 32)))
    with pytest.raises(LabelSharingError, match="Did you mean 'TaskA'"):
        fake.predict_image(image, "TaskAA")
    with pytest.raises(LabelSharingError, match="Unknown task"):
        fake.predict_files([tmp_path / "missing.nii.gz"], "Tsk B", tmp_path / "out")


def test_batch_size_does_not_change_results(tmp_path: Path):
    model = make_model(fake=False, seed=3)
    image = _image(np.random.default_rng(1).normal(size=(9, 20, 28)).astype(np.float32), spacing=[1, 1, 4])
    one = Predictor(model, "cpu", batch_size=1).predict_probabilities(image, "TaskA")
    seven = Predictor(model, "cpu", batch_size=7).predict_probabilities(image, "TaskA")
    np.testing.assert_array_equal(one[0], seven[0])
    np.testing.assert_allclose(one[1].astype(np.float32), seven[1].astype(np.float32), atol=1e-3)


# ----------------------------------------------------------------------------- files and geometry
GEOMETRIES = {
    2: dict(spacing=[0.3, 0.7], origin=[12.5, -40.25], direction=_oblique(2)),
    3: dict(spacing=[0.8, 0.6, 2.5], origin=[-120.0, 33.3, 7.75], direction=_oblique(3)),
}


@pytest.mark.parametrize("file_format", ["nii.gz", "nrrd", "seg.nrrd"])
@pytest.mark.parametrize("dim, task", [(2, "TaskB"), (3, "TaskA")])
def test_predict_files_keeps_geometry(fake: Predictor, tmp_path: Path, file_format: str, dim: int, task: str):
    shape = (24, 40) if dim == 2 else (5, 24, 40)
    image = _image((_stripes(shape) * 1000).astype(np.int16), **GEOMETRIES[dim])
    fake.model.config["tasks"][task]["normalization"] = {"scheme": "ct", "clip": [-1e4, 1e4], "mean": 0.0,
                                                        "std": 1000.0}
    source = tmp_path / "in" / "case7_0000.nrrd"
    source.parent.mkdir()
    sitk.WriteImage(image, str(source))

    (written,) = fake.predict_files([source], task, tmp_path / "out", file_format=file_format)
    assert written == tmp_path / "out" / f"case7.{file_format}"
    expected = fake.predict_image(sitk.ReadImage(str(source)), task)
    assert set(np.unique(expected)) == {0} | set(TASK_LABELS[task].values())

    result = read_label(written, TASK_LABELS[task], reference=image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), expected)
    if file_format == "seg.nrrd":
        import slicerio

        segmentation = slicerio.read_segmentation(str(written))
        names = {s["name"]: s["color"] for s in segmentation["segments"]}
        assert names.keys() == TASK_LABELS[task].keys()
        for name, color in names.items():
            np.testing.assert_allclose(color, COLORS[name], atol=1e-6)
        ijk_to_lps = np.asarray(segmentation["ijkToLPS"])
        direction = np.eye(3)
        direction[:dim, :dim] = np.reshape(GEOMETRIES[dim]["direction"], (dim, dim))
        spacing = (GEOMETRIES[dim]["spacing"] + [1.0])[:3]
        origin = (GEOMETRIES[dim]["origin"] + [0.0])[:3]
        np.testing.assert_allclose(ijk_to_lps[:3, :3], direction * spacing, atol=1e-9)
        np.testing.assert_allclose(ijk_to_lps[:3, 3], origin, atol=1e-9)
    else:
        tolerance = 1e-5 if file_format == "nii.gz" else 1e-12  # NIfTI stores geometry in float32
        assert result.GetSize() == image.GetSize()
        np.testing.assert_allclose(result.GetSpacing(), image.GetSpacing(), atol=tolerance)
        np.testing.assert_allclose(result.GetOrigin(), image.GetOrigin(), atol=tolerance * 100)
        np.testing.assert_allclose(result.GetDirection(), image.GetDirection(), atol=tolerance)


LIVER_TERM = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
              "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^")


def test_seg_nrrd_output_tags_segments_with_the_task_terminology(fake: Predictor, tmp_path: Path):
    """Each segment of a predicted .seg.nrrd carries its label's terminology as Slicer writes it:
    ``SegmentN_Tags:=...|TerminologyEntry:<entry>|`` (vtkMRMLSegmentationStorageNode.cxx,
    GetSegmentTagsAsString); a label without terminology gets no TerminologyEntry tag."""
    import nrrd
    import slicerio

    fake.model.config["tasks"]["TaskB"]["labels"]["large"]["terminology"] = LIVER_TERM
    source = tmp_path / "case_0000.nii.gz"
    sitk.WriteImage(_image(_stripes((24, 40))), str(source))
    (written,) = fake.predict_files([source], "TaskB", tmp_path / "out", file_format="seg.nrrd")

    header = nrrd.read_header(str(written))
    tags = {header[f"Segment{i}_Name"]: header[f"Segment{i}_Tags"] for i in range(2)}
    assert f"TerminologyEntry:{LIVER_TERM}|" in tags["large"]
    assert "TerminologyEntry" not in tags["tiny"]
    segments = {s["name"]: s for s in slicerio.read_segmentation(str(written), skip_voxels=True)["segments"]}
    assert slicerio.segmentation.terminology_entry_to_string(segments["large"]["terminology"]) == LIVER_TERM
    assert "terminology" not in segments["tiny"]


def test_predict_files_names_progress_and_probabilities(fake: Predictor, tmp_path: Path):
    image = _image(_stripes((32, 32)), spacing=[0.5, 0.5], origin=[3.0, 4.0], direction=_oblique(2))
    inputs = []
    for name in ("case_0000.nii.gz", "other.nii.gz"):
        inputs.append(tmp_path / name)
        sitk.WriteImage(image, str(inputs[-1]))
    stream = io.StringIO()
    written = fake.predict_files(inputs, "TaskB", tmp_path / "out", probabilities=True,
                                 progress=ProgressReporter("lines", stream))
    assert [p.name for p in written] == ["case.nii.gz", "other.nii.gz"]
    assert "PROGRESS 100.0 predicting 2/2" in stream.getvalue()
    probs = sitk.ReadImage(str(tmp_path / "out" / "case_probabilities.nii.gz"))
    assert probs.GetNumberOfComponentsPerPixel() == 3 and probs.GetSize() == image.GetSize()
    assert probs.GetPixelID() == sitk.sitkVectorFloat32
    np.testing.assert_allclose(probs.GetDirection(), image.GetDirection(), atol=1e-5)
    array = sitk.GetArrayFromImage(probs)  # (y, x, C)
    np.testing.assert_array_equal(array.argmax(axis=-1), sitk.GetArrayFromImage(sitk.ReadImage(str(written[0]))))


def test_predict_files_invalid_inputs(fake: Predictor, tmp_path: Path):
    image_path = tmp_path / "a_0000.nii.gz"
    sitk.WriteImage(_image(_stripes((32, 32))), str(image_path))
    with pytest.raises(LabelSharingError, match="not found"):
        fake.predict_files([tmp_path / "nope.nii.gz"], "TaskA", tmp_path / "out")
    with pytest.raises(LabelSharingError, match="Unknown output format"):
        fake.predict_files([image_path], "TaskA", tmp_path / "out", file_format="png")
    with pytest.raises(LabelSharingError, match="same output"):
        fake.predict_files([image_path, tmp_path / "a_0000.nii.gz"], "TaskA", tmp_path / "out")


# ----------------------------------------------------------------------------- devices and model folders
def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    assert describe_device(torch.device("cpu")).startswith("cpu (")
    with pytest.raises(LabelSharingError, match="Unknown device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LabelSharingError, match="--device cpu"):
            select_device("cuda")
        with pytest.raises(LabelSharingError, match="CUDA"):
            Predictor.from_model_dir("unused", device="cuda")


def test_model_folder_round_trip(unet: Predictor, tmp_path: Path):
    folder = unet.model.save(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]
    loaded = Predictor.from_model_dir(folder, device="cpu", batch_size=4, backend="torch")  # bit-equal: same backend
    image = _image(np.random.default_rng(2).normal(size=(4, 20, 28)).astype(np.float32), spacing=[1, 1, 3])
    for task in ("TaskA", "TaskB"):
        before, probs_before = unet.predict_probabilities(image, task)
        after, probs_after = loaded.predict_probabilities(image, task)
        np.testing.assert_array_equal(before, after)
        np.testing.assert_array_equal(probs_before, probs_after)
