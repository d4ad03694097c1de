"""Normalisation, slicing and square fitting: the steps between an image and the network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelsharing.data.preprocessing import SquareFit, choose_input_size, choose_slice_axis, fit_ct_normalization, \
    from_slices, normalize_intensities, to_slices
from labelsharing.errors import LabelSharingError


def test_ct_normalization_uses_foreground_window_and_is_repeatable():
    rng = np.random.default_rng(0)
    image = rng.normal(-1000, 5, (4, 16, 16))  # air
    label = np.zeros(image.shape, np.uint8)
    label[:, 4:12, 4:12] = 1
    image[label == 1] = rng.normal(60, 10, int(label.sum()))  # an organ
    image[0, 0, 0] = 3000  # metal outside the foreground: must not widen the window
    norm = fit_ct_normalization([(image, label)])
    assert norm["scheme"] == "ct" and 20 < norm["clip"][0] < 60 < norm["clip"][1] < 100
    out = normalize_intensities(image, norm)
    assert out.dtype == np.float32
    assert abs(out[label == 1].mean()) < 0.1 and abs(out[label == 1].std() - 1) < 0.1
    np.testing.assert_array_equal(normalize_intensities(image, dict(norm)), out)  # stored dict -> same result
    with pytest.raises(LabelSharingError, match="foreground"):
        fit_ct_normalization([(image, np.zeros_like(label))])


def test_mr_zscore_ignores_the_dark_background():
    image = np.zeros((2, 20, 20), np.float32)
    image[:, 5:15, 5:15] = np.random.default_rng(1).normal(500, 50, (2, 10, 10))
    out = normalize_intensities(image, {"scheme": "zscore_foreground"})
    assert abs(out[:, 5:15, 5:15].mean()) < 0.05 and abs(out[:, 5:15, 5:15].std() - 1) < 0.05
    assert out[0, 0, 0] < -5  # background far below the tissue


def test_xray_percentile_scaling_is_exposure_invariant():
    image = np.random.default_rng(2).uniform(0, 1000, (32, 32)).astype(np.float32)
    a = normalize_intensities(image, {"scheme": "percentile"})
    b = normalize_intensities(image * 3 + 200, {"scheme": "percentile"})
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert a.min() == 0.0 and a.max() == 1.0


def test_unknown_scheme_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize_intensities(np.zeros(3), {"scheme": "magic"})


@pytest.mark.parametrize(
    "spacing, size, expected",
    [
        ((0.8, 0.8, 3.0), (96, 96, 14), 2),  # thick axial slices -> cut along k
        ((3.0, 0.8, 0.8), (14, 96, 96), 0),  # sagittal acquisition -> along i
        ((1.0, 1.0, 1.0), (64, 64, 64), 2),  # isotropic: ties go to the last axis
        ((1.0, 2.0, 2.0), (64, 32, 32), 2),  # tie between j and k -> k
        ((0.5, 0.5, 1.0), (64, 64, 1), 2),  # a 2D image stored as 3D: its singleton axis
        ((0.3, 0.3), (128, 96), None),  # 2D
    ],
)
def test_choose_slice_axis(spacing, size, expected):
    assert choose_slice_axis(spacing, size) == expected


@pytest.mark.parametrize("axis", [0, 1, 2, None])
def test_slices_round_trip(axis):
    volume = np.arange(3 * 4 * 5).reshape(3, 4, 5) if axis is not None else np.arange(20).reshape(4, 5)
    slices = to_slices(volume, axis)
    assert slices.ndim == 3
    if axis is not None:
        assert slices.shape[0] == volume.shape[2 - axis]
    np.testing.assert_array_equal(from_slices(slices, axis), volume)


@pytest.mark.parametrize("height, width", [(64, 64), (40, 64), (64, 20), (100, 70)])
def test_square_fit_round_trip_keeps_aspect(height, width):
    fit = SquareFit(height, width, 64)
    h, w = fit.scaled
    assert max(h, w) == 64 and abs(h / w - height / width) < 0.05
    y, x = np.mgrid[:height, :width]
    smooth = torch.from_numpy((np.sin(y / 9.0) + np.cos(x / 7.0)).astype(np.float32))[None, None]
    square = fit.forward(smooth)
    assert square.shape == (1, 1, 64, 64)
    back = fit.backward(square)
    assert back.shape == (1, 1, height, width)
    assert float((back - smooth).abs().mean()) < 0.05  # only interpolation error


def test_square_fit_pads_labels_with_background():
    labels = torch.ones(1, 1, 20, 40, dtype=torch.uint8)
    square = SquareFit(20, 40, 32).forward_labels(labels)
    assert square[0, 0, 0].sum() == 0 and square[0, 0, 16].sum() == 32


def test_choose_input_size():
    assert choose_input_size([(96, 96), (80, 80), (128, 96)]) == 96
    assert choose_input_size([(90, 90)]) == 96  # rounded up to a multiple of 16
    assert choose_input_size([(512, 512)]) == 256  # capped
    assert choose_input_size([(5, 5)]) == 16
