"""PAMR: pixel-adaptive mask refinement (SPEC K.1-K.3), as both seed repositories ship it.

Pure torch, batched over a leading batch dimension, no I/O. :func:`pamr` is the reference
module's computation; :func:`pamr_weights` and :func:`pamr_propagate` are its two halves for a
band of rows cut out of a taller image, so that row bands with the halo of :func:`pamr_halo`
give the whole image's values bit for bit:

* every value is computed by element-wise operations (a product or a sum of shifted views, in
  a fixed order) that round the same wherever a pixel sits in a tensor; the softmax over the
  neighbours, the one transcendental step, runs one image row at a time on a contiguous
  ``(B, P, W)`` copy, so it meets the same data in the same shape in a band as in the image;
* replicate padding is applied only at a real image border (``top_real`` / ``bottom_real``); at
  a cut, the rows beyond it are part of the input and each step's output shrinks by the largest
  dilation there, so the rows that come out never saw a padded value.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

#: values in one row tile of pamr_propagate on a CPU (one channel; 1 MiB of float32): a tile's products,
#: sums and the source rows they read stay in the CPU's cache (7-8x faster than whole-tensor
#: operations on a 2-core EPYC, benchmarks/RESULTS.md)
TILE_ELEMENTS = 2**18


def neighbour_offsets(dilations: Sequence[int]) -> List[Tuple[int, int]]:
    """The P = 8 x len(dilations) neighbour offsets ``(dy, dx)``: for each dilation d the
    positions {-d, 0, d}^2 without the centre, in the reference kernel's order."""
    out = []
    for d in dilations:
        out.extend((dy, dx) for dy in (-d, 0, d) for dx in (-d, 0, d) if (dy, dx) != (0, 0))
    return out


def pamr_halo(steps: int, dilations: Sequence[int]) -> int:
    """Rows of input needed beyond a band on each side (SPEC K.3): each step reads max(d) rows
    away, and the weights read max(d) more: ``steps * max(d) + max(d)`` (0 when off)."""
    if steps <= 0:
        return 0
    d = max(int(x) for x in dilations)
    return steps * d + d


def _check(dilations: Sequence[int]) -> int:
    dil = [int(d) for d in dilations]
    if not dil or min(dil) < 1:
        raise ValueError(f"PAMR dilations must be positive integers, got {tuple(dilations)}")
    return max(dil)


def _pad(x: torch.Tensor, reach: int, top_real: bool, bottom_real: bool) -> torch.Tensor:
    """Replicate padding of ``(B, C, R, W)``: ``reach`` columns on both sides, ``reach`` rows at
    a real border only."""
    return F.pad(x, (reach, reach, reach if top_real else 0, reach if bottom_real else 0), mode="replicate")


def _rows_out(rows: int, reach: int, top_real: bool, bottom_real: bool) -> Tuple[int, int]:
    """``(first, stop)`` of the rows one pass over ``rows`` input rows produces, in input
    coordinates: a cut edge loses ``reach`` rows, a real border none."""
    first = 0 if top_real else reach
    stop = rows if bottom_real else rows - reach
    if stop <= first:
        raise ValueError(f"a band of {rows} rows is too thin for PAMR's reach of {reach} rows at a cut")
    return first, stop


def pamr_weights(guide: torch.Tensor, dilations: Sequence[int], top_real: bool = True,
                 bottom_real: bool = True) -> torch.Tensor:
    """The neighbour weights ``(B, P, R', W)`` of a guide image ``(B, K, R, W)`` (SPEC K.2):
    a_k(p, n) = -|x_k(p) - x_k(n)| / (1e-8 + 0.1 sigma_k(p)), with sigma_k the unbiased std of
    channel k over the samples {-d, 0, d}^2 of all dilations (centre once per dilation),
    averaged over the channels and soft-maxed over the P neighbours. R' = R at real borders,
    minus max(d) at each cut."""
    reach = _check(dilations)
    b, k, rows, width = guide.shape
    first, stop = _rows_out(rows, reach, top_real, bottom_real)
    xp = _pad(guide, reach, top_real, bottom_real)
    r0 = reach  # output row `first` in padded rows (a real border is padded by reach rows, a cut loses them)
    n_out = stop - first

    def view(dy: int, dx: int) -> torch.Tensor:
        return xp[:, :, r0 + dy : r0 + dy + n_out, reach + dx : reach + dx + width]

    centre = view(0, 0)
    samples = [(dy, dx) for d in dilations for dy in (-d, 0, d) for dx in (-d, 0, d)]
    total = torch.zeros_like(centre)
    for dy, dx in samples:
        total += view(dy, dx)
    mean = total / len(samples)
    var = torch.zeros_like(centre)
    for dy, dx in samples:
        diff = view(dy, dx) - mean
        var += diff * diff
    del total, mean, diff
    denom = var.div_(len(samples) - 1).sqrt_().mul_(0.1).add_(1e-8)
    offsets = neighbour_offsets(dilations)
    w = guide.new_empty((b, len(offsets), n_out, width))
    for n, (dy, dx) in enumerate(offsets):
        acc = torch.zeros((b, n_out, width), dtype=guide.dtype, device=guide.device)
        for c in range(k):  # the mean over channels, in channel order
            acc -= (centre[:, c] - view(dy, dx)[:, c]).abs_().div_(denom[:, c])
        w[:, n] = acc.div_(k)
    del denom, xp, centre
    for r in range(n_out):  # softmax over the neighbours, one row at a time (see the module doc)
        row = w[:, :, r, :].contiguous()
        w[:, :, r, :] = torch.softmax(row, dim=1)
    return w


def pamr_propagate(mask: torch.Tensor, weights: torch.Tensor, steps: int, dilations: Sequence[int],
                   top_real: bool = True, bottom_real: bool = True) -> torch.Tensor:
    """``steps`` times m(p) <- sum_n w(p, n) m(n) on a mask ``(B, C, R, W)`` with the weights of
    :func:`pamr_weights` on the same rows (``(B, P, R', W)``). Returns ``(B, C, R'', W)``: R'' = R
    at real borders, minus ``steps * max(d)`` at each cut."""
    reach = _check(dilations)
    offsets = neighbour_offsets(dilations)
    if weights.shape[1] != len(offsets):
        raise ValueError(f"{weights.shape[1]} weights per pixel for {len(offsets)} neighbours")
    rows = mask.shape[-2]
    w_first, w_stop = _rows_out(rows, reach, top_real, bottom_real)
    if weights.shape[-2] != w_stop - w_first:
        raise ValueError(f"weights of {weights.shape[-2]} rows for a mask of {rows} rows")
    if steps <= 0 or mask.shape[1] == 0:
        return mask
    if not tiled(mask.device):  # all channels and rows per operation: a GPU is bound by launches, not caches
        return _propagate_rows(mask, weights, steps, reach, offsets, w_first, top_real, bottom_real, None)
    out = None
    for c in range(mask.shape[1]):  # one channel at a time (PAMR treats channels independently)
        part = _propagate_rows(mask[:, c : c + 1], weights, steps, reach, offsets, w_first, top_real, bottom_real,
                               max(1, TILE_ELEMENTS // max(1, mask.shape[-1])))
        if out is None:
            out = part.new_empty((mask.shape[0], mask.shape[1], *part.shape[-2:]))
        out[:, c : c + 1] = part
        del part
    return out


def tiled(device) -> bool:
    """Whether :func:`pamr_propagate` works one channel at a time in row tiles (on a CPU, where
    the cache is what bounds it) rather than all channels and rows per operation."""
    return torch.device(device).type == "cpu"


def _propagate_rows(m: torch.Tensor, weights: torch.Tensor, steps: int, reach: int, offsets, w_first: int,
                    top_real: bool, bottom_real: bool, tile) -> torch.Tensor:
    """:func:`pamr_propagate` of ``(B, C, R, W)`` in row tiles of ``tile`` rows (None: all rows at
    once). Every output value is the first neighbour's product plus the others' in neighbour
    order, each a separate IEEE multiply and add (no fused multiply-add), wherever the tiles fall
    and whatever the channels per operation."""
    first = 0  # row 0 of m in input coordinates
    width = m.shape[-1]
    for _ in range(steps):
        f, s = _rows_out(m.shape[-2], reach, top_real, bottom_real)
        n_out = s - f
        rows = n_out if tile is None else min(tile, n_out)
        mp = _pad(m, reach, top_real, bottom_real)
        wr = first + f - w_first  # this step's first output row in the weights' rows
        out = m.new_empty((m.shape[0], m.shape[1], n_out, width))
        tmp = m.new_empty((m.shape[0], m.shape[1], rows, width))
        for t0 in range(0, n_out, rows):
            t1 = min(t0 + rows, n_out)
            o, part = out[:, :, t0:t1], tmp[:, :, : t1 - t0]
            for n, (dy, dx) in enumerate(offsets):
                src = mp[:, :, reach + dy + t0 : reach + dy + t1, reach + dx : reach + dx + width]
                wn = weights[:, n : n + 1, wr + t0 : wr + t1]
                if n == 0:
                    torch.mul(src, wn, out=o)
                else:
                    torch.mul(src, wn, out=part)
                    o.add_(part)
        del mp, tmp
        m, first = out, first + f
    return m


def pamr(image: torch.Tensor, mask: torch.Tensor, steps: int = 10, dilations: Sequence[int] = (8, 16)) -> torch.Tensor:
    """The reference PAMR (SPEC K.2) of a mask ``(B, C, h, w)`` guided by an image ``(B, K, H, W)``:
    the mask is resized to ``(H, W)`` bilinearly with align_corners=True (a no-op when equal),
    then refined ``steps`` times. Returns ``(B, C, H, W)`` in the mask's dtype."""
    if image.dim() != 4 or mask.dim() != 4 or image.shape[0] != mask.shape[0]:
        raise ValueError(f"PAMR takes image (B, K, H, W) and mask (B, C, h, w), got {tuple(image.shape)} and {tuple(mask.shape)}")
    size = tuple(image.shape[-2:])
    if tuple(mask.shape[-2:]) != size:
        mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=True)
    if steps <= 0:
        return mask
    weights = pamr_weights(image.to(mask.dtype), dilations)
    return pamr_propagate(mask, weights, steps, dilations)


def refine_rows(read_guide, read_mask, num_channels: int, height: int, start: int, stop: int, steps: int,
                dilations: Sequence[int], channel_chunk: int) -> torch.Tensor:
    """Rows ``[start, stop)`` of :func:`pamr` over an image of ``height`` rows, reading only the
    rows within :func:`pamr_halo` of the band: ``read_guide(e0, e1)`` -> guide rows ``(B, K,
    e1 - e0, W)``, ``read_mask(c0, c1, e0, e1)`` -> mask channels ``[c0, c1)`` of those rows at the
    guide's size. The weights are computed once; the mask channels are refined
    ``channel_chunk`` at a time (PAMR treats channels independently). Returns ``(B, C, stop -
    start, W)``, equal bit for bit to those rows of the whole image's :func:`pamr`."""
    reach = _check(dilations)
    halo = pamr_halo(steps, dilations)
    e0, e1 = max(start - halo, 0), min(stop + halo, height)
    top, bottom = e0 == 0, e1 == height
    weights = pamr_weights(read_guide(e0, e1), dilations, top, bottom)
    keep = start - e0 - (0 if top else steps * reach)  # the band's first row in the output's rows
    out = None
    for c0 in range(0, num_channels, max(1, channel_chunk)):
        c1 = min(c0 + max(1, channel_chunk), num_channels)
        part = pamr_propagate(read_mask(c0, c1, e0, e1), weights, steps, dilations, top, bottom)
        part = part[:, :, keep : keep + stop - start]
        if out is None:
            out = part.new_empty((part.shape[0], num_channels, stop - start, part.shape[-1]))
        out[:, c0:c1] = part
        del part
    return out
