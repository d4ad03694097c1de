"""Training augmentation of a whole batch at once, as tensors on the training device.

Per slice, independently (the settings of the MONAI ``RandAffined``, ``RandScaleIntensityd``,
``RandShiftIntensityd`` and ``RandGaussianNoised`` used before):

* with probability 0.5 an affine warp: rotation within +-10 degrees, scaling by 0.9-1.1 along
  each axis, shift within +-5 % of the side; the image is resampled bilinearly (border pixels
  extend outwards), the labels by nearest neighbour (background outside);
* with probability 0.3 intensities are scaled by ``1 + U(-0.1, 0.1)``;
* with probability 0.3 they are shifted by ``U(-0.1, 0.1)``;
* with probability 0.2 Gaussian noise of standard deviation ``U(0, 0.03)`` is added.

No flips: laterality matters (left vs right kidney or lung).

Why batched: MONAI's transforms handle one slice at a time on the main thread, 61 ms for a
batch of 16 slices of 96 x 96 on a 2-core CPU, a fifth of a training step; one ``grid_sample``
over the batch takes 4 ms (``benchmarks/training_throughput.py``), and runs on the GPU when
training does. All random numbers come from the ``generator`` the caller seeds every epoch
(:func:`~labelsharing.train.checkpoint.epoch_seed`), so a resumed run draws what the uninterrupted
one drew.
"""

from __future__ import annotations

import math

__all__ = ["augment_batch"]

_AFFINE_PROBABILITY, _MAX_ROTATION, _MAX_SCALING, _MAX_SHIFT = 0.5, math.pi / 18, 0.1, 0.05
_SCALE_PROBABILITY, _MAX_FACTOR = 0.3, 0.1
_SHIFT_PROBABILITY, _MAX_OFFSET = 0.3, 0.1
_NOISE_PROBABILITY, _MAX_NOISE_STD = 0.2, 0.03


def augment_batch(images, labels, generator):
    """Augment a batch of slices (see the module docstring).

    Args:
        images: (B, 1, S, S) float32 tensor of normalised slices, on any device.
        labels: (B, 1, S, S) int64 tensor of shared labels, on the same device.
        generator: CPU ``torch.Generator``: every random number is drawn from it (the noise
            from a generator on the batch's device seeded from it).

    Returns:
        (images, labels), new tensors of the same shapes, dtypes and device.
    """
    import torch
    import torch.nn.functional as F

    batch, device = images.shape[0], images.device
    draws = torch.rand((batch, 12), generator=generator, dtype=torch.float64)
    noise_seed = int(torch.randint(2**62, (1,), generator=generator))
    symmetric = (2 * draws - 1).float()  # U(-1, 1)

    warped = (draws[:, 0] < _AFFINE_PROBABILITY).nonzero()[:, 0]
    images, labels = images.clone(), labels.clone()
    if len(warped):
        angle = symmetric[warped, 1] * _MAX_ROTATION
        scale_rows, scale_columns = 1 + symmetric[warped, 2] * _MAX_SCALING, 1 + symmetric[warped, 3] * _MAX_SCALING
        shift = symmetric[warped][:, 4:6] * 2 * _MAX_SHIFT  # normalised coordinates span 2 per side
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos * scale_columns, -sin * scale_rows, shift[:, 0]], 1),
                             torch.stack([sin * scale_columns, cos * scale_rows, shift[:, 1]], 1)], 1).to(device)
        index = warped.to(device)
        grid = F.affine_grid(theta, [len(warped), *images.shape[1:]], align_corners=False)
        images[index] = F.grid_sample(images[index], grid, mode="bilinear", padding_mode="border",
                                      align_corners=False)
        labels[index] = F.grid_sample(labels[index].float(), grid, mode="nearest", padding_mode="zeros",
                                      align_corners=False).round().long()

    factor = torch.where(draws[:, 6] < _SCALE_PROBABILITY, 1 + symmetric[:, 7] * _MAX_FACTOR, torch.ones(()))
    offset = torch.where(draws[:, 8] < _SHIFT_PROBABILITY, symmetric[:, 9] * _MAX_OFFSET, torch.zeros(()))
    images = images * factor.to(device).view(-1, 1, 1, 1) + offset.to(device).view(-1, 1, 1, 1)

    noisy = (draws[:, 10] < _NOISE_PROBABILITY).nonzero()[:, 0]
    if len(noisy):
        std = (draws[noisy, 11] * _MAX_NOISE_STD).float().to(device).view(-1, 1, 1, 1)
        noise_generator = torch.Generator(device=device).manual_seed(noise_seed)
        noise = torch.randn((len(noisy), *images.shape[1:]), generator=noise_generator, device=device)
        index = noisy.to(device)
        images[index] = images[index] + std * noise
    return images, labels
