"""Anatomical slicing (issue 9, defect 6): a volume is cut in the task's plane whatever its stored
orientation, slices are resampled to the task's in-plane target spacing before the square fit,
and predictions land exactly on the input's own grid. Older models (``axis``) behave as before."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from conftest import write_image
from tiny_model import IntensityNetwork, make_config

from labelsharing.data import read_task_dataset
from labelsharing.data.orientation import Slicing, lps_view, orientation_code, plan_slicing
from labelsharing.errors import LabelSharingError
from labelsharing.infer import Predictor
from labelsharing.model import SegmentationModel
from labelsharing.model.schema import validate_model_config
from labelsharing.plan import LabelStats, SharedLabelPlan
from labelsharing.train import prepare_task

SPACING = (0.8, 0.8, 2.0)
ORIGIN = (-10.0, 5.0, 20.0)
IDENTITY = {"scheme": "ct", "clip": [-1e6, 1e6], "mean": 0.0, "std": 1.0}


class GradientNetwork(torch.nn.Module):
    """A plane-sensitive fake: shared label 1 where the intensity rises along the slice's columns,
    2 where it rises along its rows, else background. (A pixel-wise fake such as
    :class:`IntensityNetwork` gives the same labels in any plane and would hide the defect.)"""

    def __init__(self, n_outputs: int, scale: float = 50.0, threshold: float = 0.02):
        super().__init__()
        self.n_outputs, self.scale, self.threshold = n_outputs, scale, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        along_columns = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
        along_rows = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
        unused = torch.full((x.shape[0], self.n_outputs - 3, *x.shape[2:]), -1e3)
        return self.scale * torch.cat([torch.full_like(x, self.threshold), along_columns, along_rows, unused], dim=1)


def _blob(size=(20, 16, 6), spacing=SPACING) -> sitk.Image:
    """An LPS-stored volume (identity direction), size (i, j, k): a smooth blob off the centre."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    x, y, z = i * spacing[0], j * spacing[1], k * spacing[2]
    blob = 3.0 * np.exp(-((x - 7.0) ** 2 + (y - 5.0) ** 2 + (z - 5.0) ** 2) / (2 * 4.0 ** 2))
    image = sitk.GetImageFromArray(blob.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(ORIGIN)
    return image


def _stored_as(image: sitk.Image, code: str) -> sitk.Image:
    """``image`` stored with orientation ``code`` (axes permuted and flipped): physically the same image."""
    stored = sitk.DICOMOrient(image, code)
    assert orientation_code(stored) == code
    back = sitk.Resample(stored, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    return stored


def _oriented_model(network: torch.nn.Module, target_spacing=(0.8, 0.8)) -> SegmentationModel:
    """TaskA sliced axially (the model.json of this version) with the identity normalisation."""
    config = make_config(input_size=32)
    entry = config["tasks"]["TaskA"]
    del entry["axis"]
    entry.update(plane="axial", target_spacing=list(target_spacing))
    return SegmentationModel(config=config, network=network.eval())


def _on_grid(labels: np.ndarray, source: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """A label array on ``source``'s grid, resampled (nearest neighbour) onto ``reference``'s grid."""
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(source)
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


@pytest.mark.parametrize("code", ["LPS", "RAS", "PLS", "SAR", "ARI"])
def test_same_volume_in_any_stored_orientation_gives_the_same_segmentation_in_physical_space(code):
    predictor = Predictor(_oriented_model(GradientNetwork(4)), "cpu")
    reference = _blob()
    expected = predictor.predict_image(reference, "TaskA")
    assert set(np.unique(expected)) == {0, 1, 2}  # the fake sees both in-plane directions

    stored = _stored_as(reference, code)
    labels = predictor.predict_image(stored, "TaskA")
    assert labels.shape == sitk.GetArrayViewFromImage(stored).shape
    np.testing.assert_array_equal(_on_grid(labels, stored, reference), expected)


@pytest.mark.parametrize("code", ["RAS", "SAR"])
def test_probabilities_follow_the_input_grid_too(code):
    predictor = Predictor(_oriented_model(GradientNetwork(4)), "cpu")
    reference, stored = _blob(), _stored_as(_blob(), code)
    _, expected = predictor.predict_probabilities(reference, "TaskA")
    labels, probabilities = predictor.predict_probabilities(stored, "TaskA")
    for channel, expected_channel in zip(probabilities, expected):
        image = sitk.GetImageFromArray(channel.astype(np.float32))
        image.CopyInformation(stored)
        back = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), expected_channel.astype(np.float32))


def test_lps_view_is_dicom_orient_for_all_48_axis_orientations():
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.random((2, 3, 4)))
    for code in ("".join(p) for p in itertools.permutations("LPS")):
        for flips in itertools.product((False, True), repeat=3):
            letters = "".join({"L": "LR", "P": "PA", "S": "SI"}[c][f] for c, f in zip(code, flips))
            stored = sitk.DICOMOrient(image, letters)
            view = lps_view(sitk.GetArrayFromImage(stored), orientation_code(stored))
            np.testing.assert_array_equal(view, sitk.GetArrayFromImage(sitk.DICOMOrient(stored, "LPS")))


def test_plane_is_the_axis_of_largest_spacing_after_orienting():
    """A volume stored with its thick-slice axis first (i) is still cut axially."""
    thick_first = _stored_as(_blob(), "SPL")
    assert thick_first.GetSpacing()[0] == 2.0
    assert plan_slicing([thick_first]) == Slicing("axial", (0.8, 0.8))
    assert plan_slicing([_stored_as(_blob(spacing=(0.8, 3.0, 0.8)), "RAS")]).plane == "coronal"
    assert plan_slicing([thick_first], axis=0).plane == "sagittal"  # --axis counts LPS axes
    assert plan_slicing([sitk.Image(8, 6, sitk.sitkFloat32)]) == Slicing(None, (1.0, 1.0))


def _disk_task(root, spacings) -> None:
    """One case per in-plane spacing (i, j): the same 16 mm x 16 mm slab with a centred 10 mm
    square label, sampled on each case's own grid (three axial slices, 4 mm apart)."""
    for index, (si, sj) in enumerate(spacings):
        ni, nj = round(16 / si), round(16 / sj)
        y, x = np.meshgrid((np.arange(nj) + 0.5) * sj, (np.arange(ni) + 0.5) * si, indexing="ij")
        inside = (np.abs(x - 8) < 5) & (np.abs(y - 8) < 5)
        label = np.repeat(inside[None], 3, axis=0).astype(np.uint8)
        write_image(label.astype(np.float32) * 100, root / "imagesTr" / f"c{index}_0000.nii.gz", spacing=[si, sj, 4.0])
        write_image(label, root / "labelsTr" / f"c{index}.nii.gz", spacing=[si, sj, 4.0])
    (root / "dataset.json").write_text(json.dumps({"name": root.name, "channel_names": {"0": "CT"},
                                                   "file_ending": ".nii.gz", "labels": {"background": 0, "a": 1},
                                                   "numTraining": len(spacings)}))


def test_anisotropic_pixels_are_resampled_to_the_target_spacing_before_the_square_fit(tmp_path):
    """Two cases with square 1 mm pixels and one with 0.5 x 1 mm pixels (twice as many columns):
    the target spacing is the median, and all three fitted label squares cover the same pixels."""
    _disk_task(tmp_path / "T", [(1.0, 1.0), (0.5, 1.0), (1.0, 1.0)])
    plan = SharedLabelPlan.build({"T": {"a": LabelStats(1, 0.4, 1.0)}})
    task = prepare_task(read_task_dataset(tmp_path / "T"), plan, 32, val_fraction=0.0, normalization=IDENTITY)
    assert task.slicing == Slicing("axial", (1.0, 1.0))
    assert task.model_entry(plan)["target_spacing"] == [1.0, 1.0]
    assert task.labels.shape == (9, 32, 32)
    square = task.labels[0]
    assert 0.35 < square.mean() < 0.45  # 10 x 10 mm of a 16 x 16 mm slice
    for fitted in task.labels:
        np.testing.assert_array_equal(fitted, square)


def test_fitted_slice_shape_follows_the_physical_shape():
    image = sitk.Image(40, 10, 3, sitk.sitkFloat32)  # 20 mm x 20 mm at 0.5 x 2 mm pixels
    image.SetSpacing((0.5, 2.0, 4.0))
    assert Slicing("axial", (1.0, 1.0)).square_fit(image, 32).scaled == (32, 32)
    assert Slicing("axial", (2.0, 0.5)).square_fit(image, 32).scaled == (8, 32)  # the task's own pixels
    assert Slicing("axial", None).square_fit(image, 32).scaled == (8, 32)
    x_ray = sitk.Image(40, 10, sitk.sitkFloat32)  # 2D images: no plane, the same in-plane resampling
    x_ray.SetSpacing((0.5, 2.0))
    assert Slicing(None, (1.0, 1.0)).square_fit(x_ray, 32).scaled == (32, 32)
    assert Slicing(None, (1.0, 1.0)).slices(np.zeros((10, 40)), x_ray).shape == (1, 10, 40)


def test_training_slices_of_a_volume_do_not_depend_on_its_stored_orientation(tmp_path):
    """The same case stored LPS or RAS or with permuted axes gives the same training slices."""
    reference = _blob()
    label = sitk.Cast(reference > 1.0, sitk.sitkUInt8) + sitk.Cast(reference > 2.0, sitk.sitkUInt8)
    plan = SharedLabelPlan.build({"T": {"a": LabelStats(1, 0.3, 1.0), "b": LabelStats(2, 0.1, 1.0)}})
    prepared = {}
    for code in ("LPS", "RAS", "SAR"):
        root = tmp_path / code / "T"
        for folder, name, image in (("imagesTr", "c0_0000", reference), ("labelsTr", "c0", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(_stored_as(image, code), str(root / folder / f"{name}.nii.gz"))
        (root / "dataset.json").write_text(json.dumps({"name": "T", "channel_names": {"0": "CT"},
                                                       "file_ending": ".nii.gz", "numTraining": 1,
                                                       "labels": {"background": 0, "a": 1, "b": 2}}))
        prepared[code] = prepare_task(read_task_dataset(root), plan, 32, val_fraction=0.0, normalization=IDENTITY)
    assert prepared["LPS"].slicing.plane == "axial" and len(prepared["LPS"].images) == 6
    for code in ("RAS", "SAR"):
        assert prepared[code].slicing == prepared["LPS"].slicing
        np.testing.assert_array_equal(prepared[code].images, prepared["LPS"].images)
        np.testing.assert_array_equal(prepared[code].labels, prepared["LPS"].labels)


def test_training_to_prediction_round_trip_on_an_oriented_volume_lands_labels_on_their_voxels(tmp_path):
    """Prepared and predicted through the stored slicing of a task trained on RAS-stored data, a
    permuted, flipped volume whose intensity is its label comes back exactly as its label map
    (slices fit the input without resizing, so any misplacement would show)."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (6, 24, 32)).astype(np.uint8)  # (k, j, i): axial slices 24 x 32
    lps = sitk.GetImageFromArray(truth)
    lps.SetSpacing(SPACING)
    root = tmp_path / "TaskA"
    for folder, name, image in (("imagesTr", "c0_0000", sitk.Cast(lps, sitk.sitkFloat32)), ("labelsTr", "c0", lps)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(_stored_as(image, "RAS"), str(root / folder / f"{name}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"name": "TaskA", "channel_names": {"0": "CT"},
                                                   "file_ending": ".nii.gz", "numTraining": 1,
                                                   "labels": {"background": 0, "big": 1, "mid": 2, "small": 3}}))
    config = make_config(input_size=32)
    plan = SharedLabelPlan.from_dict(config["plan"])
    task = prepare_task(read_task_dataset(root), plan, 32, val_fraction=0.0, normalization=IDENTITY)
    config["tasks"]["TaskA"] = {**task.model_entry(plan), "normalization": IDENTITY}
    validate_model_config(config)
    predictor = Predictor(SegmentationModel(config=config, network=IntensityNetwork(4).eval()), "cpu")

    stored = _stored_as(sitk.Cast(lps, sitk.sitkFloat32), "ILA")
    labels = predictor.predict_image(stored, "TaskA")
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(_stored_as(lps, "ILA")))
    np.testing.assert_array_equal(_on_grid(labels, stored, lps), truth)
    # the training slices are the axial slices of the LPS volume, labels on the same pixels as images
    np.testing.assert_array_equal(task.labels[:, 4:28, :], truth)
    np.testing.assert_array_equal(task.images[:, 4:28, :].astype(np.float32), truth.astype(np.float32))


def test_older_models_keep_cutting_the_stored_array_axis():
    """``axis`` in an older model.json means that image axis of the stored file, not reoriented:
    such a model gives on a RAS-stored file exactly what it gave before this version."""
    config = make_config(input_size=32, axis_a=2)
    predictor = Predictor(SegmentationModel(config=config, network=GradientNetwork(4).eval()), "cpu")
    stored = _stored_as(_blob(), "RAS")
    as_lps = sitk.GetImageFromArray(sitk.GetArrayFromImage(stored))  # same array, identity direction
    as_lps.SetSpacing(stored.GetSpacing())
    np.testing.assert_array_equal(predictor.predict_image(stored, "TaskA"), predictor.predict_image(as_lps, "TaskA"))
    assert Slicing.from_config(config["tasks"]["TaskA"]) == Slicing(stored_axis=2, oriented=False)


@pytest.mark.parametrize("changes, drop_axis, message", [
    ({"plane": "oblique"}, True, "tasks.TaskA.plane"),
    ({"plane": "axial"}, False, "either 'plane' or 'axis'"),
    ({}, True, "either 'plane' or 'axis'"),
    ({"target_spacing": [1.0, 1.0]}, False, "tasks.TaskA.target_spacing"),
    ({"plane": "axial", "target_spacing": [0.0, 1.0]}, True, r"tasks.TaskA.target_spacing\[0\]"),
])
def test_schema_refuses_inconsistent_slicing_fields(changes, drop_axis, message):
    config = make_config()
    task = config["tasks"]["TaskA"]
    task.update(changes)
    if drop_axis:
        del task["axis"]
    with pytest.raises(LabelSharingError, match=message):
        validate_model_config(config)


def test_schema_accepts_plane_and_target_spacing():
    config = make_config()
    for task in config["tasks"].values():
        del task["axis"]
    config["tasks"]["TaskA"].update(plane="coronal", target_spacing=[0.7, 0.7])
    config["tasks"]["TaskB"].update(plane=None, target_spacing=[0.14, 0.14])
    assert validate_model_config(config) is config
