"""Label maps on the slice's own grid without resampling every probability channel.

The network predicts on the ``S x S`` square; labels are wanted on the slice's grid (e.g.
512 x 512). The reference way, as nnU-Net does it, resamples all C probability channels
bilinearly to that grid and takes the argmax there: C full-resolution images per slice, which
on a CPU costs as much as a good part of the network. It is only needed near label boundaries.
Bilinear interpolation (``align_corners=False``) mixes, with non-negative weights, the 2 x 2
low-resolution pixels around an output pixel. Where those four pixels share their first
maximum c (``p_i(c) > p_i(k)`` for k < c and ``>=`` for k > c), every weighted mixture keeps
that order, so its first maximum is c as well. :func:`resampled_argmax` therefore

1. takes the argmax at low resolution (4 x fewer pixels at a 2:1 scale) and maps it to labels;
2. copies it to every output pixel (one gather of the output's bytes);
3. recomputes the output pixels of the 2 x 2 blocks whose argmax differ (next to a boundary:
   a few percent of a trained model's slice): their four corners' probabilities, gathered once
   per block, are blended with PyTorch's taps and weights, and the first maximum taken.

The labels equal the reference's except where two interpolated probabilities tie to within
float32 rounding (PyTorch's kernel rounds through fused multiply-adds, this module does not:
values can differ in their last bit). When most blocks hold a boundary (an untrained network's
salt-and-pepper output), the reference is run instead: it is then the cheaper of the two.

Shapes: probabilities (B, C, h, w); labels (B, H, W) on the slice grid.
"""

from __future__ import annotations

import numpy as np

__all__ = ["resampled_argmax", "MAX_BOUNDARY_FRACTION"]

#: Above this fraction of low-resolution 2 x 2 blocks holding a boundary, :func:`resampled_argmax`
#: resamples every channel (the reference) instead, measured as cheap there on a CPU.
MAX_BOUNDARY_FRACTION = 0.25


def resampled_argmax(probabilities, size: tuple[int, int], lookup):
    """``lookup[argmax over C of F.interpolate(probabilities, size, "bilinear")]``, computed cheaply.

    Args:
        probabilities: (B, C, h, w) float32 tensor (e.g. a softmax) on the CPU.
        size: (H, W), the slice grid.
        lookup: (C,) integer tensor mapping each channel to an output label (e.g. shared label
            -> task value, unused shared labels -> 0).

    Returns:
        (B, H, W) tensor of ``lookup``'s dtype. Ties between channels go to the first, as with
        ``max(dim=1).indices``.
    """
    import torch
    import torch.nn.functional as F

    batch, channels, h, w = probabilities.shape
    low = probabilities.max(dim=1).indices  # (B, h, w), the first maximum
    if (h, w) == tuple(size):
        return lookup[low]
    # blocks (b, r, c) whose corners (r or r + 1, c or c + 1; the last row and column clamped, as
    # in PyTorch's kernel) do not share one argmax; judged by channel, not by label: two channels
    # mapped to one label (e.g. background) can have a third channel win between them
    padded = F.pad(low[:, None].to(torch.float32), (0, 1, 0, 1), mode="replicate")[:, 0]
    across = padded[:, :, :-1] != padded[:, :, 1:]
    mixed = across[:, :-1] | across[:, 1:] | (padded[:, :-1, :-1] != padded[:, 1:, :-1])
    b, r, c = mixed.nonzero(as_tuple=True)
    if b.numel() > MAX_BOUNDARY_FRACTION * mixed.numel():
        full = F.interpolate(probabilities, size=tuple(size), mode="bilinear", align_corners=False)
        return lookup[full.max(dim=1).indices]

    rows, cols = _Taps(h, size[0]), _Taps(w, size[1])
    coarse = lookup[low].numpy()
    labels = torch.from_numpy(np.take(np.take(coarse, rows.lower.numpy(), axis=1), cols.lower.numpy(), axis=2))

    flat = probabilities.reshape(-1)
    offsets = (b * (channels * h * w))[:, None] + torch.arange(channels) * (h * w)  # (blocks, C)
    below, right = (r + 1).clamp(max=h - 1), (c + 1).clamp(max=w - 1)
    corners = [flat[offsets + (row * w + col)[:, None]] for row, col in ((r, c), (r, right), (below, c), (below, right))]
    block, y, x = _block_pixels(r, c, rows, cols)
    top_left, top_right, bottom_left, bottom_right = (corner.index_select(0, block) for corner in corners)
    left, right = cols.weight_lower[x, None], cols.weight_upper[x, None]
    values = ((top_left * left + top_right * right) * rows.weight_lower[y, None]
              + (bottom_left * left + bottom_right * right) * rows.weight_upper[y, None])
    pixels = (b[block] * size[0] + y) * size[1] + x
    labels.view(-1)[pixels] = lookup[values.max(dim=1).indices]
    return labels


class _Taps:
    """PyTorch's bilinear taps (``align_corners=False``) from ``n_in`` to ``n_out`` pixels along one axis.

    For output pixel i: the source coordinate ``scale * (i + 0.5) - 0.5`` (scale = n_in / n_out in
    float32, rounded once as PyTorch's fused multiply-add does), clamped at 0; ``lower`` = its
    floor (the upper tap is the next pixel, clamped at the edge), weights ``1 - f`` and ``f`` of
    its fraction f. ``start``/``count``: the run of output pixels whose lower tap is each input pixel.
    """

    def __init__(self, n_in: int, n_out: int):
        import torch

        scale = (torch.tensor(float(n_in)) / n_out).double()
        centre = (torch.arange(n_out, dtype=torch.float32) + 0.5).double()
        real = (scale * centre - 0.5).float().clamp(min=0)
        self.lower = real.floor().long().clamp(max=n_in - 1)
        self.weight_upper = (real - self.lower).clamp(0, 1)
        self.weight_lower = 1 - self.weight_upper
        self.count = torch.bincount(self.lower, minlength=n_in)
        self.start = torch.cumsum(self.count, 0) - self.count


def _block_pixels(r, c, rows: _Taps, cols: _Taps):
    """For blocks at low-resolution (r, c): (block index, y, x) of each output pixel whose lower
    taps are (r, c), i.e. each pixel interpolated from that block's four corners."""
    import torch

    n_rows, n_cols = rows.count[r], cols.count[c]
    per_block = n_rows * n_cols
    block = torch.repeat_interleave(torch.arange(len(per_block)), per_block)
    within = torch.arange(len(block)) - (torch.cumsum(per_block, 0) - per_block)[block]
    n_cols = n_cols[block]
    return block, rows.start[r[block]] + within // n_cols, cols.start[c[block]] + within % n_cols
