"""The lean prediction pipeline (issue 11) gives the label maps of the full computation.

Prediction now normalises batch by batch and takes labels without resampling every probability
channel (:mod:`labelsharing.data.label_resampling`). The reference here is the pipeline as it was
before (commit b4c3b64): the whole volume normalised at once, every channel's softmax resampled
bilinearly to the slice grid, the first maximum taken there and mapped to task values. The two
must agree on every voxel, except where the reference's two largest probabilities tie to within
float rounding (there the reference's answer depends on its kernel's rounding, not on the
image); such voxels are counted and must be rare.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from tiny_model import IntensityNetwork, make_config

from labelsharing.data import Slicing, intensity_normalizer, normalize_intensities
from labelsharing.data.label_resampling import MAX_BOUNDARY_FRACTION, resampled_argmax
from labelsharing.infer import Predictor
from labelsharing.model import SegmentationModel, build_network

#: probabilities closer than this are a tie of rounding: kernels may order them either way
TIE = 1e-5
NORMALIZATIONS = {
    "ct": {"scheme": "ct", "clip": [-0.5, 3.2], "mean": 0.1, "std": 1.3},
    "zscore_foreground": {"scheme": "zscore_foreground"},
    "percentile": {"scheme": "percentile"},
}


def _old_normalize(x: np.ndarray, normalization: dict) -> np.ndarray:
    """``normalize_intensities`` as it was at commit b4c3b64 (whole image at once)."""
    x = np.asarray(x, dtype=np.float32)
    scheme = normalization["scheme"]
    if scheme == "ct":
        lo, hi = normalization["clip"]
        return ((np.clip(x, lo, hi) - normalization["mean"]) / normalization["std"]).astype(np.float32)
    if scheme == "zscore_foreground":
        lo, hi = float(x.min()), float(np.percentile(x, 99))
        mask = x > lo + 0.05 * (hi - lo)
        values = x[mask] if mask.sum() > 0.05 * x.size else x.ravel()
        return ((x - values.mean()) / max(float(values.std()), 1e-6)).astype(np.float32)
    lo, hi = np.percentile(x, [1, 99])
    return np.clip((x - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)


def _reference(predictor: Predictor, image: sitk.Image, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, tied) as the pipeline of commit b4c3b64 computed them; ``tied`` marks rounding ties."""
    config = predictor.model.task(task)
    array = _old_normalize(sitk.GetArrayFromImage(image), config["normalization"])
    slicing = Slicing.from_config(config)
    slices = slicing.slices(array, image)
    fit = slicing.square_fit(image, predictor.model.input_size)
    labels, tied = np.zeros(array.shape, np.int64), np.zeros(array.shape, bool)
    out_labels, out_tied = slicing.slices(labels, image), slicing.slices(tied, image)
    with torch.inference_mode():
        for start in range(0, len(slices), 3):
            batch = torch.from_numpy(np.ascontiguousarray(slices[start : start + 3]))[:, None]
            soft = fit.backward(predictor.network(fit.forward(batch)).float().softmax(dim=1))
            top2 = soft.topk(2, dim=1).values
            out_labels[start : start + 3] = predictor.plan.from_shared(task, soft.max(dim=1).indices.numpy())
            out_tied[start : start + 3] = (top2[:, 0] - top2[:, 1] < TIE).numpy()
    return labels, tied


def _assert_same_labels(labels: np.ndarray, expected: np.ndarray, tied: np.ndarray) -> None:
    assert labels.shape == expected.shape
    different = labels != expected
    assert not np.any(different & ~tied), f"{int((different & ~tied).sum())} voxels differ outside rounding ties"
    assert tied.mean() < 1e-3, "the comparison is dominated by ties: the test volume is unfit"


class SmoothNetwork(torch.nn.Module):
    """A fixed random 2-layer convolution with wide smoothing: blobs of every shared label with
    soft, overlapping probabilities (a third channel can win between two others), as a trained
    network's boundaries have; the untrained UNet's salt-and-pepper output is covered apart."""

    def __init__(self, n_outputs: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(n_outputs, 1, 5, 5, generator=generator), requires_grad=False)
        self.bias = torch.nn.Parameter(torch.randn(n_outputs, generator=generator), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = F.conv2d(x, self.weight, self.bias, padding=2)
        return F.avg_pool2d(logits, 5, stride=1, padding=2, count_include_pad=False) * 3


def _model(network: str, normalization: str, input_size: int = 32, target_spacing=(0.8, 0.8)) -> SegmentationModel:
    """TaskA sliced axially (plane + target spacing), TaskB a 2D task (shared label 3 unused)."""
    config = make_config(input_size=input_size)
    for name, entry in config["tasks"].items():
        entry["normalization"] = NORMALIZATIONS[normalization]
        if name == "TaskA":
            del entry["axis"]
            entry.update(plane="axial", target_spacing=list(target_spacing))
    n_outputs = config["plan"]["n_shared"] + 1
    torch.manual_seed(0)
    module = {"smooth": lambda: SmoothNetwork(n_outputs), "intensity": lambda: IntensityNetwork(n_outputs, scale=4.0),
              "unet": lambda: build_network(config["architecture"])}[network]()
    return SegmentationModel(config=config, network=module.eval())


def _phantom(shape=(7, 40, 50), spacing=(0.8, 0.8, 2.5), code="LPS", seed=0) -> sitk.Image:
    """Smooth blobs of intensity 0..3 plus noise, (z, y, x) ``shape``, stored with orientation ``code``."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    field = np.zeros(shape)
    for _ in range(6):
        centre, width = rng.random(3), 0.15 + 0.2 * rng.random()
        field += rng.uniform(1, 3) * np.exp(-((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
                                            / (2 * width**2))
    image = sitk.GetImageFromArray((field + rng.normal(0, 0.05, shape)).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((-3.0, 4.0, 10.0))
    return sitk.DICOMOrient(image, code) if code != "LPS" else image


# ----------------------------------------------------------------------------- whole pipeline
@pytest.mark.parametrize("code", ["LPS", "RAS", "PIR", "SAR"])
@pytest.mark.parametrize("network", ["smooth", "intensity", "unet"])
def test_labels_unchanged_in_any_orientation(code, network):
    predictor = Predictor(_model(network, "ct"), "cpu", batch_size=4)
    image = _phantom(code=code)
    for task in ("TaskA", "TaskB"):
        expected, tied = _reference(predictor, image, task)
        assert len(np.unique(expected)) >= 3, "too few labels for a meaningful comparison"
        _assert_same_labels(predictor.predict_image(image, task), expected, tied)


@pytest.mark.parametrize("shape, spacing, target_spacing, input_size", [
    ((5, 40, 50), (0.8, 0.8, 2.5), (0.8, 0.8), 32),  # slices larger than the input: labels are upsampled
    ((4, 20, 26), (0.8, 0.8, 2.5), (0.8, 0.8), 48),  # smaller: labels are downsampled
    ((5, 30, 44), (0.5, 1.1, 3.0), (0.7, 0.7), 32),  # anisotropic pixels resampled to the target spacing
    ((3, 32, 32), (1.0, 1.0, 3.0), (1.0, 1.0), 32),  # the slice is the input: no resampling at all
    ((4, 31, 17), (0.9, 0.6, 2.0), (0.8, 0.8), 64),  # odd sizes, non-integer scales both ways
])
@pytest.mark.parametrize("normalization", sorted(NORMALIZATIONS))
def test_labels_unchanged_for_sizes_spacings_and_normalisations(shape, spacing, target_spacing, input_size,
                                                                normalization):
    model = _model("smooth", normalization, input_size, target_spacing)
    image = _phantom(shape, spacing, seed=1)
    for batch_size in (1, 3):
        predictor = Predictor(model, "cpu", batch_size=batch_size)
        expected, tied = _reference(predictor, image, "TaskA")
        _assert_same_labels(predictor.predict_image(image, "TaskA"), expected, tied)


def test_2d_image_and_probabilities_unchanged():
    predictor = Predictor(_model("smooth", "percentile"), "cpu", batch_size=2)
    image = _phantom((1, 45, 37))[:, :, 0]
    expected, tied = _reference(predictor, image, "TaskB")
    _assert_same_labels(predictor.predict_image(image, "TaskB"), expected, tied)
    labels, probabilities = predictor.predict_probabilities(image, "TaskB")
    _assert_same_labels(labels, expected, tied)
    assert probabilities.shape == (3, 45, 37)


# ----------------------------------------------------------------------------- the pieces
@pytest.mark.parametrize("normalization", sorted(NORMALIZATIONS))
def test_normalising_parts_equals_normalising_the_whole(normalization):
    volume = np.random.default_rng(0).normal(100, 40, (6, 9, 11)).astype(np.int16)
    whole = _old_normalize(volume, NORMALIZATIONS[normalization])
    np.testing.assert_array_equal(normalize_intensities(volume, NORMALIZATIONS[normalization]), whole)
    normalize = intensity_normalizer(volume, NORMALIZATIONS[normalization])
    view = np.flip(volume.transpose(2, 0, 1), 1)  # parts are strided views of the stored array
    parts = np.concatenate([normalize(view[i : i + 4]) for i in range(0, len(view), 4)])
    np.testing.assert_array_equal(parts, np.flip(whole.transpose(2, 0, 1), 1))
    assert volume.dtype == np.int16 and parts.dtype == np.float32


@pytest.mark.parametrize("smoothness", [4, 16, 64])
@pytest.mark.parametrize("size", [(128, 128), (100, 140), (48, 48), (30, 90), (17, 200)])
@pytest.mark.parametrize("values", [(0, 7, 5, 0, 9), (0, 700, 5, 0, 65535)])  # uint8, and int32 for uint16 maps
def test_resampled_argmax_equals_resampling_every_channel(smoothness, size, values):
    """Smooth random probabilities (blobs of ``smoothness`` pixels): boundary pixels are
    interpolated with PyTorch's taps, the rest copied; channels 0 and 3 share label 0."""
    torch.manual_seed(smoothness)
    logits = F.interpolate(torch.randn(3, 5, 64 // smoothness + 1, 64 // smoothness + 1) * 3, size=(48, 48),
                           mode="bilinear", align_corners=False)
    lookup = torch.tensor(values, dtype=torch.uint8 if max(values) < 256 else torch.int32)
    full = F.interpolate(logits.softmax(dim=1), size=size, mode="bilinear", align_corners=False)
    expected = lookup[full.max(dim=1).indices]
    top2 = full.topk(2, dim=1).values
    tied = (top2[:, 0] - top2[:, 1] < TIE).numpy()
    _assert_same_labels(resampled_argmax(logits, size, lookup).numpy(), expected.numpy(), tied)


def test_a_label_between_two_channels_of_one_task_label_is_kept():
    """Shared labels 0 and 3 both mean background here; halfway between a pixel won by 0 and one won
    by 3, shared label 2 wins. Blocks must be judged by shared label, not by task value."""
    background_0, background_3 = [0.50, 0.0, 0.45, 0.05], [0.05, 0.0, 0.45, 0.50]
    probabilities = torch.tensor([[background_0, background_3]] * 2).permute(2, 0, 1)[None]  # (1, 4, 2, 2)
    lookup = torch.tensor([0, 7, 5, 0], dtype=torch.uint8)
    labels = resampled_argmax(probabilities.log(), (2, 4), lookup)  # logits whose softmax is ``probabilities``
    expected = lookup[F.interpolate(probabilities, size=(2, 4), mode="bilinear", align_corners=False).max(1).indices]
    assert expected[0].tolist() == [[0, 5, 5, 0]] * 2
    torch.testing.assert_close(labels, expected)


def test_resampled_argmax_falls_back_to_every_channel_on_salt_and_pepper(monkeypatch):
    """Random per-pixel labels: nearly every block holds a boundary, so the reference is run."""
    logits = torch.randn(2, 4, 24, 24)
    lookup = torch.arange(4, dtype=torch.uint8)
    calls, interpolate = [], F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda *args, **kwargs: calls.append(kwargs) or interpolate(*args, **kwargs))
    labels = resampled_argmax(logits, (50, 50), lookup)
    assert len(calls) == 1 and MAX_BOUNDARY_FRACTION < 1
    monkeypatch.undo()
    expected = F.interpolate(logits.softmax(1), size=(50, 50), mode="bilinear", align_corners=False).max(dim=1).indices
    torch.testing.assert_close(labels.long(), expected)


# ----------------------------------------------------------------------------- files, with I/O in a thread
def test_predict_files_overlaps_io_yet_stops_at_an_unreadable_image(tmp_path):
    """Reading image i + 1 and writing result i - 1 run beside the prediction of image i: the
    results are those of predicting one file at a time, and a damaged input stops the run at that
    input with the results before it written (and nothing after it)."""
    import io

    from labelsharing.errors import LabelSharingError
    from labelsharing.utils import ProgressReporter

    predictor = Predictor(_model("smooth", "ct"), "cpu", batch_size=4)
    inputs = []
    for index in range(4):
        inputs.append(tmp_path / "in" / f"case{index}_0000.nii.gz")
        inputs[-1].parent.mkdir(exist_ok=True)
        sitk.WriteImage(_phantom((4, 30, 20), seed=index), str(inputs[-1]))
    written = predictor.predict_files(inputs[:3], "TaskA", tmp_path / "out")
    for path, output in zip(inputs, written):
        expected = predictor.predict_image(sitk.ReadImage(str(path)), "TaskA")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(output))), expected)

    inputs[2].write_bytes(inputs[2].read_bytes()[:-100])  # cut short: refused when read
    stream = io.StringIO()
    with pytest.raises(LabelSharingError, match="case2_0000.nii.gz"):
        predictor.predict_files(inputs, "TaskA", tmp_path / "again", progress=ProgressReporter("lines", stream))
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["case0.nii.gz", "case1.nii.gz"]
    assert "predicting 2/4" in stream.getvalue() and "predicting 3/4" not in stream.getvalue()


def test_label_values_above_255_come_out_as_uint16():
    """A task whose values do not fit a byte: the lookup travels as int32, the map is uint16."""
    from labelsharing.model import build_model_config
    from labelsharing.plan import LabelStats, SharedLabelPlan

    values = {"big": 1000, "mid": 2, "small": 300}
    plan = SharedLabelPlan.build({"TaskA": {name: LabelStats(value, 0.4 / (i + 1), 1.0)
                                            for i, (name, value) in enumerate(values.items())}})
    task = {"modality": "CT", "plane": "axial", "target_spacing": [0.8, 0.8], "normalization": NORMALIZATIONS["ct"],
            "labels": {name: {"value": value, "shared": plan.labels("TaskA")[name].shared, "color": [1, 0, 0]}
                       for name, value in values.items()}}
    config = build_model_config(make_config()["architecture"], 32, plan, {"TaskA": task})
    predictor = Predictor(SegmentationModel(config=config, network=SmoothNetwork(4).eval()), "cpu", batch_size=4)
    image = _phantom()
    labels = predictor.predict_image(image, "TaskA")
    expected, tied = _reference(predictor, image, "TaskA")
    assert labels.dtype == np.uint16 and set(np.unique(labels)) <= {0, 2, 300, 1000} and labels.max() > 255
    _assert_same_labels(labels, expected, tied)
