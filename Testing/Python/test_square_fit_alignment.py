"""Images and labels stay on the same pixels through the square fit (training) and back (inference).

Training fits image slices with bilinear interpolation and label slices with a nearest mode; the
two must use one geometry (pixel centres mapped alike), or every label sits off its image. For a
one-pixel line the bilinear image is >= 0.5 exactly on the output pixels whose centres fall
nearest to the line's input pixel, which is what an aligned nearest mode must label.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelsharing.data import SquareFit
from labelsharing.train.task_data import _fit_slices

# (height, width, network input size): down- and up-scaling, square and not.
SIZES = [(512, 512, 256), (100, 100, 256), (200, 200, 128), (37, 37, 64), (37, 50, 64), (50, 37, 64), (300, 120, 128)]


def _lines(height: int, width: int, axis: int) -> np.ndarray:
    """(n, H, W) stack: slice i holds a one-pixel line at row i (axis 0) or column i (axis 1)."""
    n = height if axis == 0 else width
    lines = np.zeros((n, height, width), np.float32)
    for i in range(n):
        if axis == 0:
            lines[i, i, :] = 1
        else:
            lines[i, :, i] = 1
    return lines


@pytest.mark.parametrize("height, width, size", SIZES)
@pytest.mark.parametrize("axis", [0, 1])
def test_one_pixel_line_lands_on_the_same_pixels_in_image_and_label(height, width, size, axis):
    lines = _lines(height, width, axis)
    fitted_images, fitted_labels = _fit_slices(lines, lines.astype(np.uint8), size)
    image = fitted_images.astype(np.float32)
    # Exactly 0.5 is a tie (an exact factor-2 downscale puts output centres between two input
    # pixels); any other value says on which side of the line the output pixel's centre lies.
    assert np.all(fitted_labels[image > 0.5 + 1e-3] == 1), "a pixel mostly on the line is not labelled"
    assert np.all(fitted_labels[image < 0.5 - 1e-3] == 0), "a pixel mostly off the line is labelled"


@pytest.mark.parametrize("height, width, size", SIZES)
def test_fitted_labels_keep_their_values(height, width, size):
    label = np.ones((1, height, width), np.uint8)
    label[0, height // 4 : height // 2, width // 4 : width // 2] = 3
    _, fitted = _fit_slices(label.astype(np.float32), label, size)
    fit = SquareFit(height, width, size)
    top, left = fit.offset
    h, w = fit.scaled
    assert set(np.unique(fitted[0, top : top + h, left : left + w])) == {1, 3}  # never a blend such as 2
    assert fitted.sum() - fitted[0, top : top + h, left : left + w].sum() == 0  # padding is background


def _round_trip(label: np.ndarray, size: int, n_labels: int) -> np.ndarray:
    """Labels (n, H, W) -> fitted as in training -> one-hot 'probabilities' -> back as in inference -> labels."""
    _, fitted = _fit_slices(label.astype(np.float32), label.astype(np.uint8), size)
    probabilities = F.one_hot(torch.from_numpy(fitted).long(), n_labels).permute(0, 3, 1, 2).float()
    return SquareFit(label.shape[1], label.shape[2], size).backward(probabilities).max(dim=1).indices.numpy()


@pytest.mark.parametrize("height, width, size", [(100, 100, 256), (37, 37, 64), (37, 50, 64), (50, 37, 64)])
def test_upscaled_labels_come_back_on_their_own_pixels(height, width, size):
    labels = np.zeros((8, height, width), np.int64)
    for shift, label in enumerate(labels):  # squares of 4-6 pixels at every phase of the scaling
        label[height // 3 + shift : height // 3 + shift + 4 + shift % 3, width // 4 + shift : width // 2 + shift] = 1
        label[5 : 5 + 2 * height // 5, 5 + shift : 13 + shift] = 2
    np.testing.assert_array_equal(_round_trip(labels, size, 3), labels)


@pytest.mark.parametrize("height, width, size", SIZES)
def test_labels_come_back_without_a_shift(height, width, size):
    """Downscaling loses detail at the edges, but averaged over positions a square must not move."""
    labels = np.zeros((24, height, width), np.int64)
    for shift, label in enumerate(labels):
        label[height // 3 + shift : height // 3 + shift + 7, width // 3 + shift : width // 3 + shift + 7] = 1
    back = _round_trip(labels, size, 2)
    shifts = [np.mean(np.nonzero(b), axis=1) - np.mean(np.nonzero(a), axis=1) for a, b in zip(labels, back)]
    assert np.all(np.abs(np.mean(shifts, axis=0)) < 0.1), f"mean shift (rows, columns): {np.mean(shifts, axis=0)}"


def test_forward_labels_keeps_dtype_and_pads_with_background():
    labels = torch.full((2, 1, 20, 40), 7, dtype=torch.uint8)
    square = SquareFit(20, 40, 32).forward_labels(labels)
    assert square.dtype == torch.uint8 and square.shape == (2, 1, 32, 32)
    assert square[0, 0, :8].sum() == 0 and square[0, 0, 24:].sum() == 0 and bool((square[:, :, 8:24] == 7).all())
    same_size = SquareFit(32, 16, 32).forward_labels(torch.ones((1, 1, 32, 16), dtype=torch.int64))
    assert same_size[0, 0, 0].tolist() == [0] * 8 + [1] * 16 + [0] * 8
