"""Label maps on the slice's own grid without resampling every probability channel.

The network predicts on the ``S x S`` square; labels are wanted on the slice's grid (e.g.
512 x 512). The reference way, as nnU-Net does it, resamples all C probability channels
bilinearly to that grid and takes the argmax there: C full-resolution images per slice, which
on a CPU costs as much as a good part of the network. It is only needed near label boundaries.
Bilinear interpolation (``align_corners=False``) mixes, with non-negative weights, the 2 x 2
low-resolution pixels around an output pixel. Where those four pixels share their first
maximum c (``p_i(c) > p_i(k)`` for k < c and ``>=`` for k > c), every weighted mixture keeps
that order, so its first maximum is c as well. :func:`resampled_argmax` therefore

1. takes the argmax at low resolution (4 x fewer pixels at a 2:1 scale; on the logits: the
   softmax keeps their order) and maps it to labels;
2. copies it to every output pixel (one gather of the output's bytes);
3. recomputes the output pixels of the 2 x 2 blocks whose argmax differ (next to a boundary:
   about 1 % of the blocks of a trained model's slice): the softmax of their four corners is
   blended with PyTorch's taps and weights, and the first maximum taken.

The labels equal the reference's except where two interpolated probabilities tie to within
float32 rounding (the order of the roundings differs from PyTorch's kernel, so values can differ
in their last bits). When most blocks hold a boundary (an untrained network's salt-and-pepper
output), the reference is run instead: it is then the cheaper of the two.

Shapes: logits (B, C, h, w); labels (B, H, W) on the slice grid.
"""

from __future__ import annotations

import numpy as np

__all__ = ["resampled_argmax", "MAX_BOUNDARY_FRACTION"]

#: Above this fraction of low-resolution 2 x 2 blocks holding a boundary, :func:`resampled_argmax`
#: resamples every channel (the reference) instead, measured as cheap there on a CPU.
MAX_BOUNDARY_FRACTION = 0.25


def resampled_argmax(logits, size: tuple[int, int], lookup):
    """``lookup[argmax over C of F.interpolate(logits.softmax(1), size, "bilinear")]``, computed cheaply.

    Args:
        logits: (B, C, h, w) float32 tensor on the CPU; the softmax is taken only where needed.
        size: (H, W), the slice grid.
        lookup: (C,) integer tensor mapping each channel to an output label (e.g. shared label
            -> task value, unused shared labels -> 0).

    Returns:
        (B, H, W) tensor of ``lookup``'s dtype. Ties between channels go to the first, as with
        ``max(dim=1).indices``.
    """
    import torch
    import torch.nn.functional as F

    batch, channels, h, w = logits.shape
    low = logits.max(dim=1).indices  # (B, h, w): the softmax keeps the order of the logits
    if (h, w) == tuple(size):
        return lookup[low]
    # blocks (b, r, c) whose corners (r or r + 1, c or c + 1; the last row and column clamped, as
    # in PyTorch's kernel) do not share one argmax; judged by channel, not by label: two channels
    # mapped to one label (e.g. background) can have a third channel win between them
    low = low.to(torch.uint8 if channels <= 256 else torch.int64)
    padded = torch.cat([low, low[:, -1:]], 1)
    padded = torch.cat([padded, padded[:, :, -1:]], 2)
    across = padded[:, :, :-1] != padded[:, :, 1:]
    mixed = across[:, :-1] | across[:, 1:] | (padded[:, :-1, :-1] != padded[:, 1:, :-1])
    b, r, c = mixed.nonzero(as_tuple=True)
    if b.numel() > MAX_BOUNDARY_FRACTION * mixed.numel():
        full = F.interpolate(logits.softmax(dim=1), size=tuple(size), mode="bilinear", align_corners=False)
        return lookup[full.max(dim=1).indices]

    rows, cols = _Taps(h, size[0]), _Taps(w, size[1])
    coarse = np.take(lookup.numpy(), low.numpy())
    labels = torch.from_numpy(np.take(np.take(coarse, rows.lower.numpy(), axis=1), cols.lower.numpy(), axis=2))

    flat = logits.reshape(-1)
    offsets = (b * (channels * h * w))[:, None] + torch.arange(channels) * (h * w)  # (blocks, C)
    below, right = (r + 1).clamp(max=h - 1), (c + 1).clamp(max=w - 1)
    corners = torch.stack([flat[offsets + (row * w + col)[:, None]]
                           for row, col in ((r, c), (r, right), (below, c), (below, right))])  # (4, blocks, C)
    corners = (corners - corners.amax(dim=2, keepdim=True)).exp_()  # the softmax, of the corners only
    corners /= corners.sum(dim=2, keepdim=True)
    block, y, x = _block_pixels(r, c, rows, cols)
    weights = (torch.stack([rows.weight_lower[y], rows.weight_upper[y]])[:, None]
               * torch.stack([cols.weight_lower[x], cols.weight_upper[x]])[None]).reshape(4, -1, 1)
    values = (corners.index_select(1, block) * weights).sum(dim=0)  # (pixels, C)
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
