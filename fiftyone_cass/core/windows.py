"""Resize rule, sliding windows and stitching (SPEC A.1, A.3, A.4).

Pure functions: sizes in, sizes / tensors out. No image I/O here.
"""

from __future__ import annotations

import math

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

Window = Tuple[int, int, int, int]  # (y1, y2, x1, x2)


def keep_ratio_size(height: int, width: int, long_side: int, short_side: int) -> Tuple[int, int]:
    """SPEC A.1 (mmseg ``Resize`` with keep_ratio): returns the new ``(height, width)``.

    f = min(L / long_side, S / short_side); new size = (int(W0 f + 0.5), int(H0 f + 0.5)).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    f = min(long_side / max(height, width), short_side / min(height, width))
    return max(int(height * f + 0.5), 1), max(int(width * f + 0.5), 1)


def window_starts(length: int, crop: int, stride: int) -> List[Tuple[int, int]]:
    """SPEC A.3: the ``(start, end)`` of the windows along one axis.

    n = max(L - crop + stride - 1, 0) // stride + 1; the last window is flush with the border.
    """
    n = max(length - crop + stride - 1, 0) // stride + 1
    out = []
    for i in range(n):
        y1 = i * stride
        y2 = min(y1 + crop, length)
        y1 = max(y2 - crop, 0)
        out.append((y1, y2))
    return out


def sliding_windows(height: int, width: int, crop: int, stride: int) -> List[Window]:
    """All windows of an image in row-major order (mmseg's ``h_idx`` outer, ``w_idx`` inner)."""
    return [
        (y1, y2, x1, x2)
        for (y1, y2) in window_starts(height, crop, stride)
        for (x1, x2) in window_starts(width, crop, stride)
    ]


def upsample_logits(logits: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear up-sampling (align_corners=False, no antialias) of ``(..., C, h, w)`` logits."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    lead = logits.shape[:-2]
    x = logits.reshape(-1, 1, *logits.shape[-2:])
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return y.reshape(*lead, *size)


def stitch_windows(
    window_logits: torch.Tensor, windows: List[Window], size: Tuple[int, int], max_bytes: Optional[int] = None
) -> torch.Tensor:
    """SPEC A.3: add per-window logits ``(M, C, h, w)`` (at any resolution) into a canvas of
    ``size`` after up-sampling each to its window size, then divide by the per-pixel count.

    ``max_bytes`` bounds the up-sampled windows held at once (at least one window); the sums
    are the same, as windows are added in the same order."""
    m, c = window_logits.shape[:2]
    if m != len(windows):
        raise ValueError(f"{m} window logits for {len(windows)} windows")
    canvas = window_logits.new_zeros((c, *size))
    count = window_logits.new_zeros((1, *size))
    # windows of one size are up-sampled together
    by_size = {}
    for i, (y1, y2, x1, x2) in enumerate(windows):
        by_size.setdefault((y2 - y1, x2 - x1), []).append(i)
    for wsize, idx in by_size.items():
        per_window = c * wsize[0] * wsize[1] * window_logits.element_size()
        step = len(idx) if max_bytes is None else max(1, max_bytes // max(1, per_window))
        for s in range(0, len(idx), step):
            part = idx[s : s + step]
            up = upsample_logits(window_logits[part], wsize)
            for j, i in enumerate(part):
                y1, y2, x1, x2 = windows[i]
                canvas[:, y1:y2, x1:x2] += up[j]
                count[:, y1:y2, x1:x2] += 1
            del up
    return canvas / count


# ----------------------------------------------------------------------------------------------
# Full-resolution up-sampling in row bands (bounded memory, the same values as upsample_logits)
# ----------------------------------------------------------------------------------------------
# PyTorch's bilinear kernel (CPU ``upsample_generic_Nd_kernel_impl``, used when the output's
# height + width > 128) computes each output value as rows-of-columns: per source row
# t = w0 * x[i, j0] + w1 * x[i, j1], then w0' * t[i0] + w1' * t[i1], each multiply-add fused or
# not depending on the build and device. The column step is exactly ``upsample_logits`` on the
# source rows at their own height (the row weights are then 1 and 0); the row step is redone
# here with the kernel's weights and one of these roundings, whichever reproduces the kernel on
# this device bit for bit (:func:`bilinear_variant`):
#   addcmul / addcmul_swapped: ``torch.addcmul`` (fused on x86 CPUs with FMA) of
#       ``w0 * t0`` onto ``round(w1 * t1)``, or the reverse;
#   plain: every product and sum rounded;
#   fma / fma_swapped: an exactly emulated fused multiply-add (slow; builds whose addcmul is not
#       fused although their interpolation kernel is).
# Source positions follow the kernel: src = max(scale * (d + 0.5) - 0.5, 0), scale = in / out in
# float32, fused into one rounding for every variant but ``plain``.
BILINEAR_VARIANTS = ("addcmul", "addcmul_swapped", "plain", "fma", "fma_swapped")
#: PyTorch's CPU kernel switches to another (channels-last) implementation at or below this
#: output height + width; bands are only used above it
SMALL_OUTPUT = 128


def _fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a * b + c`` for float32 tensors with one rounding (a fused multiply-add), exactly.

    The product of two float32 is exact in float64; the float64 sum is rounded once more, which
    differs from one rounding only when that sum lands exactly half-way between two float32
    while the exact sum does not (rare): those elements are moved toward the exact sum."""
    p = a.double() * b.double()
    cd = c.double()
    s = p + cd
    r = s.float()
    mant, _ = torch.frexp(s)  # s = mant * 2**e, |mant| in [0.5, 1)
    scaled = mant * 2.0**25  # an integer for every float32 and every half-way point between two
    midway = (scaled == scaled.trunc()) & (torch.remainder(scaled, 2) == 1)
    if bool(midway.any()):
        idx = midway.nonzero(as_tuple=True)
        ps, cs, ss = p[idx], cd[idx], s[idx]
        bv = ss - ps
        err = (ps - (ss - bv)) + (cs - bv)  # exact (p + c) - s (Knuth's TwoSum)
        up = torch.nextafter(ss, torch.full_like(ss, float("inf")))
        down = torch.nextafter(ss, torch.full_like(ss, float("-inf")))
        r[idx] = torch.where(err > 0, up, torch.where(err < 0, down, ss)).float()
    return r


def bilinear_source(in_size: int, out_size: int, start: int, stop: int, fused: bool = True, device=None):
    """Source indices and weights of output positions ``[start, stop)`` of a bilinear resize
    from ``in_size`` to ``out_size`` along one axis (align_corners=False), as PyTorch's kernels
    compute them in float32: ``src = max(scale * (d + 0.5) - 0.5, 0)`` with ``scale = in / out``
    (one rounding when ``fused``), ``i0 = floor(src)``, ``i1 = i0 + 1`` (``i0`` at the last
    row), ``w1 = src - i0``, ``w0 = 1 - w1``. Returns ``(i0, i1, w0, w1)``."""
    f32 = torch.float32
    scale = torch.tensor(in_size, dtype=f32) / torch.tensor(out_size, dtype=f32)
    d = torch.arange(start, stop, dtype=f32, device=device) + 0.5  # exact below 2**23
    if fused:  # the product is exact in float64, and so is subtracting 0.5 wherever src >= 0
        src = (scale.double().to(d.device) * d.double() - 0.5).float()
    else:
        src = scale.to(d.device) * d - 0.5
    src = src.clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    w1 = (src - i0.to(f32)).clamp(0, 1)
    w0 = 1 - w1
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, w0, w1


def _columns(logits: torch.Tensor, lo: int, hi: int, out_w: int) -> torch.Tensor:
    """``upsample_logits`` of source rows ``[lo, hi)`` to width ``out_w`` at their own height,
    through the same kernel as a whole-image call: rows are added (and dropped again) while
    height + width would stay at or below :data:`SMALL_OUTPUT`."""
    h, w = logits.shape[-2:]
    if w == out_w:
        return logits[..., lo:hi, :]
    a, b = lo, hi
    while (b - a) + out_w <= SMALL_OUTPUT and (a > 0 or b < h):
        a, b = max(a - SMALL_OUTPUT, 0), min(b + SMALL_OUTPUT, h)
    if (b - a) + out_w <= SMALL_OUTPUT:
        raise ValueError("output too small for banded up-sampling; use upsample_logits")
    return upsample_logits(logits[..., a:b, :], (b - a, out_w))[..., lo - a : hi - a, :]


def upsample_rows(logits: torch.Tensor, size: Tuple[int, int], start: int, stop: int, variant: str = "addcmul") -> torch.Tensor:
    """Rows ``[start, stop)`` of ``upsample_logits(logits, size)`` for ``(..., h, w)`` logits,
    computed from the source rows they need only: the same values, bit for bit, when
    ``variant`` is this device's (:func:`bilinear_variant`) and height + width of ``size``
    exceeds :data:`SMALL_OUTPUT`."""
    h, w = logits.shape[-2:]
    out_h, out_w = size
    if h == out_h:
        return _columns(logits, start, stop, out_w).contiguous()
    if variant not in BILINEAR_VARIANTS:
        raise ValueError(f"unknown bilinear variant {variant!r}; choose one of {', '.join(BILINEAR_VARIANTS)}")
    i0, i1, w0, w1 = bilinear_source(h, out_h, start, stop, variant != "plain", logits.device)
    lo, hi = int(i0.min()), int(i1.max()) + 1
    cols = _columns(logits, lo, hi, out_w)
    t0 = cols[..., i0 - lo, :]
    t1 = cols[..., i1 - lo, :]
    del cols
    w0, w1 = w0[:, None], w1[:, None]
    if variant == "addcmul":
        return t1.mul_(w1).addcmul_(t0, w0)
    if variant == "addcmul_swapped":
        return t0.mul_(w0).addcmul_(t1, w1)
    if variant == "plain":
        return t0.mul_(w0).add_(t1.mul_(w1))
    if variant == "fma":
        return _fma32(t0, w0.expand_as(t0), t1 * w1)
    return _fma32(t1, w1.expand_as(t1), t0 * w0)  # fma_swapped


_VARIANTS: Dict[str, Optional[str]] = {}
# (h, w) -> (out_h, out_w) pairs of the probe: up- and down-sampling, odd sizes, both kernels' sides
_PROBE_SIZES = ((14, 14, 224, 224), (21, 28, 300, 400), (37, 5, 123, 4567), (336, 448, 337, 449),
                (336, 448, 1500, 2000), (300, 17, 1001, 77), (448, 336, 300, 100), (336, 504, 20, 300))


def bilinear_variant(device) -> Optional[str]:
    """The :data:`BILINEAR_VARIANTS` entry with which :func:`upsample_rows` reproduces
    ``upsample_logits`` on ``device`` bit for bit (tried once per device on random logits of
    several sizes, each in several bands), or None when none does."""
    key = str(torch.device(device))
    if key not in _VARIANTS:
        gen = torch.Generator().manual_seed(0)
        cases = []
        for h, w, oh, ow in _PROBE_SIZES:
            x = (torch.randn(1, h, w, generator=gen) * 4).to(device)
            cases.append((x, (oh, ow), upsample_logits(x, (oh, ow))))

        def same(x, size, ref, v):
            cut = [0, size[0] // 3, size[0] // 3 + 1, size[0]]
            return all(torch.equal(upsample_rows(x, size, a, b, v), ref[..., a:b, :]) for a, b in zip(cut, cut[1:]) if b > a)

        _VARIANTS[key] = next((v for v in BILINEAR_VARIANTS if all(same(x, s, ref, v) for x, s, ref in cases)), None)
    return _VARIANTS[key]


def row_bands(height: int, width: int, bytes_per_pixel: int, budget: int, align: int = 32) -> List[Tuple[int, int]]:
    """Row bands ``[(start, stop), ...]`` covering ``height`` rows of ``width`` pixels such that
    a band holds at most ``budget`` bytes at ``bytes_per_pixel``, but at least the fewest rows
    whose pixel count is a multiple of ``align`` (so that PyTorch's vectorised loops and
    reductions meet every pixel at the same position of a vector as over the whole image)."""
    unit = align // math.gcd(align, width)
    rows = max(unit, (budget // max(1, bytes_per_pixel * width)) // unit * unit)
    return [(a, min(a + rows, height)) for a in range(0, height, rows)]
