"""Resize rule, sliding windows and stitching (SPEC A.1, A.3, A.4).

Pure functions: sizes in, sizes / tensors out. No image I/O here.
"""

from __future__ import annotations

from typing import List, Tuple

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
    window_logits: torch.Tensor, windows: List[Window], size: Tuple[int, int]
) -> torch.Tensor:
    """SPEC A.3: add per-window logits ``(M, C, h, w)`` (at any resolution) into a canvas of
    ``size`` after up-sampling each to its window size, then divide by the per-pixel count."""
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
        up = upsample_logits(window_logits[idx], wsize)
        for j, i in enumerate(idx):
            y1, y2, x1, x2 = windows[i]
            canvas[:, y1:y2, x1:x2] += up[j]
            count[:, y1:y2, x1:x2] += 1
    return canvas / count
