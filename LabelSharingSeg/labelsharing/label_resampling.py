"""Label maps on the slice's own grid without resampling every probability channel.

The network predicts on the ``S x S`` square; labels are wanted on the slice's grid (e.g.
512 x 512). The reference way, as nnU-Net does it, resamples all C probability channels
bilinearly to that grid and takes the argmax there: C full-resolution images per slice, which
on a CPU costs about as much as a small network. It is only needed near label boundaries.
Bilinear interpolation (``align_corners=False``) mixes, with non-negative weights, the 2 x 2
low-resolution pixels around an output pixel. Where those four pixels share their first
maximum c (``p_i(c) > p_i(k)`` for k < c and ``>=`` for k > c), every weighted mixture keeps
that order, so its first maximum is c as well. :func:`resampled_argmax` therefore

1. takes the argmax at low resolution (C x fewer values than the reference, and 4 x fewer pixels
   at a 2:1 scale) and maps it to the task's labels,
2. copies it to every output pixel whose four low-resolution pixels agree (one gather of the
   output's bytes),
3. interpolates the probabilities only at the other output pixels (those next to a boundary,
   a few percent of a trained model's slice), with the taps, weights and rounding of PyTorch's CPU
   kernel (its index arithmetic and blends are fused multiply-adds, emulated here in float64).

The labels equal the reference's, except where two interpolated probabilities tie to within
float rounding (the reference's own result there depends on its kernel). When most blocks hold
a boundary (an untrained network's salt-and-pepper output), the reference is run instead: it is
then the faster of the two.

Shapes: probabilities (B, C, h, w); labels (B, H, W) on the slice grid.
"""

from __future__ import annotations

__all__ = ["first_argmax", "resampled_argmax", "MAX_BOUNDARY_FRACTION"]

#: Above this fraction of low-resolution 2 x 2 blocks holding a boundary, :func:`resampled_argmax`
#: resamples all channels (the reference) instead: measured cheaper there on the CPU.
MAX_BOUNDARY_FRACTION = 0.25


def first_argmax(probabilities):
    """(B, C, h, w) -> (B, h, w) int64 index of the first maximum over C (as ``max(dim=1).indices``).

    A loop over the channels' contiguous planes: several times faster on the CPU than a
    reduction across the channel dimension, whose elements lie ``h * w`` apart.
    """
    import torch

    best = probabilities[:, 0].clone()
    index = torch.zeros(best.shape, dtype=torch.int64, device=best.device)
    for channel in range(1, probabilities.shape[1]):
        plane = probabilities[:, channel]
        index.masked_fill_(plane > best, channel)
        torch.maximum(best, plane, out=best)
    return index


def resampled_argmax(probabilities, size: tuple[int, int], lookup):
    """``lookup[argmax over C of F.interpolate(probabilities, size, "bilinear")]``, computed cheaply.

    Args:
        probabilities: (B, C, h, w) float32 tensor (e.g. a softmax), on the CPU.
        size: (H, W), the slice grid.
        lookup: (C,) integer tensor mapping each channel to an output label (e.g. shared label
            -> task value; unused channels -> 0).

    Returns:
        (B, H, W) tensor of ``lookup``'s dtype.
    """
    import torch
    import torch.nn.functional as F

    height, width = size
    batch, channels, h, w = probabilities.shape
    low = first_argmax(probabilities)
    if (h, w) == (height, width):
        return lookup[low]
    padded = F.pad(low[:, None].to(torch.float32), (0, 1, 0, 1), mode="replicate")[:, 0]  # the kernel's edge clamp
    across = padded[:, :, :-1] != padded[:, :, 1:]
    mixed = across[:, :-1] | across[:, 1:] | (padded[:, :-1, :-1] != padded[:, 1:, :-1])  # (B, h, w) blocks
    blocks = mixed.nonzero(as_tuple=True)
    if blocks[0].numel() > MAX_BOUNDARY_FRACTION * mixed.numel():
        full = F.interpolate(probabilities, size=size, mode="bilinear", align_corners=False)
        return lookup[first_argmax(full)]
    rows, cols = _Taps(h, height), _Taps(w, width)
    labels = lookup[low].index_select(1, rows.lower).index_select(2, cols.lower)
    b, y, x = _output_pixels(blocks, rows, cols)
    flat = probabilities.reshape(-1)
    planes = (b * (channels * h * w))[:, None] + torch.arange(channels) * (h * w)  # (K, C) offsets

    def corner(row, col):
        return flat[planes + (row * w + col)[:, None]]

    top, bottom = rows.lower[y], rows.upper[y]
    left, right = cols.lower[x], cols.upper[x]
    w_left, w_right = cols.weight_lower[x, None], cols.weight_upper[x, None]
    upper_row = _fused_blend(corner(top, left), w_left, corner(top, right), w_right)
    lower_row = _fused_blend(corner(bottom, left), w_left, corner(bottom, right), w_right)
    values = _fused_blend(upper_row, rows.weight_lower[y, None], lower_row, rows.weight_upper[y, None])
    labels[b, y, x] = lookup[values.max(dim=1).indices]
    return labels


class _Taps:
    """PyTorch's bilinear taps (``align_corners=False``) from ``n_in`` to ``n_out`` pixels along one axis.

    For output pixel i: the source coordinate ``scale * (i + 0.5) - 0.5`` (scale = n_in / n_out in
    float32, one rounding as a fused multiply-add), clamped at 0; ``lower`` = its floor, ``upper`` =
    the next pixel (clamped at the edge), weights ``1 - f`` and ``f`` for its fraction f.
    """

    def __init__(self, n_in: int, n_out: int):
        import torch

        scale = (torch.tensor(float(n_in)) / n_out).double()
        centre = (torch.arange(n_out, dtype=torch.float32) + 0.5).double()
        real = (scale * centre - 0.5).float().clamp(min=0)
        self.lower = real.floor().long().clamp(max=n_in - 1)
        self.upper = (self.lower + 1).clamp(max=n_in - 1)
        self.weight_upper = (real - self.lower).clamp(0, 1)
        self.weight_lower = 1 - self.weight_upper
        counts = torch.bincount(self.lower, minlength=n_in)
        self.count = counts  # output pixels whose lower tap is each input pixel (a contiguous run)
        self.start = torch.cumsum(counts, 0) - counts


def _output_pixels(blocks, rows: _Taps, cols: _Taps):
    """(batch, y, x) of every output pixel whose lower taps fall on one of ``blocks`` (b, r, c)."""
    import torch

    b, r, c = blocks
    n_rows, n_cols = rows.count[r], cols.count[c]
    per_block = n_rows * n_cols
    owner = torch.repeat_interleave(torch.arange(len(per_block)), per_block)
    within = torch.arange(len(owner)) - (torch.cumsum(per_block, 0) - per_block)[owner]
    n_cols = n_cols[owner]
    return b[owner], rows.start[r[owner]] + within // n_cols, cols.start[c[owner]] + within % n_cols


def _fused_blend(a, weight_a, b, weight_b):
    """``a * weight_a + b * weight_b`` in float32 as ``fma(a, weight_a, b * weight_b)``, PyTorch's kernel's order."""
    return (a.double() * weight_a.double() + (b * weight_b).double()).float()
