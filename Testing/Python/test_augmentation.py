"""Batched training augmentation: seeded, label-preserving, image and labels warped together."""

from __future__ import annotations

import numpy as np
import torch

from labelsharing.train.augmentation import augment_batch


def _batch(n: int = 64, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices whose image is its label map (a 3-valued square pattern) as floats."""
    labels = torch.zeros((n, 1, size, size), dtype=torch.int64)
    labels[:, :, 8:24, 8:24] = 1
    labels[:, :, 12:20, 12:20] = 3
    return labels.float(), labels


def test_the_same_seed_draws_the_same_batch():
    images, labels = _batch()
    first = augment_batch(images, labels, torch.Generator().manual_seed(5))
    again = augment_batch(images, labels, torch.Generator().manual_seed(5))
    other = augment_batch(images, labels, torch.Generator().manual_seed(6))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_labels_keep_their_values_and_move_with_the_image():
    images, labels = _batch(n=200)
    original = images.clone()
    out_images, out_labels = augment_batch(images, labels, torch.Generator().manual_seed(0))
    assert torch.equal(images, original)  # the input is not modified
    assert out_images.shape == images.shape and out_images.dtype == torch.float32
    assert out_labels.shape == labels.shape and out_labels.dtype == torch.int64
    assert set(out_labels.unique().tolist()) <= {0, 1, 3}  # nearest neighbour: never a blend such as 2
    warped = (out_labels != labels).flatten(1).any(dim=1)
    assert 0.35 < warped.float().mean() < 0.65  # about half the slices are warped (probability 0.5)
    # Intensity changes are at most a 10 % scale, a 0.1 shift and light noise, so where the image
    # is near a label value after the warp, the warped labels agree: image and labels moved together.
    inside = (out_labels == 3) & (out_images - 3).abs().lt(0.5)
    near_three = (out_images - 3).abs().lt(0.5)
    assert inside.sum() > 0.95 * near_three.sum()


def test_unwarped_slices_keep_their_pixels_in_place():
    images, labels = _batch(n=100)
    out_images, out_labels = augment_batch(images, labels, torch.Generator().manual_seed(1))
    kept = ~(out_labels != labels).flatten(1).any(dim=1)
    assert kept.sum() > 20
    # An unwarped slice is at most scaled, shifted and noised: its ranking of pixels is unchanged
    # where the pattern differs by whole label steps.
    for index in np.flatnonzero(kept.numpy())[:10]:
        image = out_images[index, 0]
        assert image[16, 16] > image[10, 10] > image[2, 2]
