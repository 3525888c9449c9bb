"""Position-table interpolation shared by CLIP (SPEC A.5) and DINO (A.6)."""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F


def interpolate_position_table(patch_pos: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """A square patch position table ``(g0*g0, D)`` -> ``(h*w, D)``: bicubic, align_corners=False,
    no antialias, ``scale_factor=((h+0.1)/g0, (w+0.1)/g0)`` with recompute_scale_factor=False (the
    reference's rule; the +0.1 makes the floor land on h, w)."""
    g0 = int(math.isqrt(patch_pos.shape[0]))
    h, w = grid
    x = patch_pos.reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    x = F.interpolate(
        x.float(),
        scale_factor=((h + 0.1) / g0, (w + 0.1) / g0),
        mode="bicubic",
        align_corners=False,
        recompute_scale_factor=False,
    ).to(patch_pos.dtype)
    if x.shape[-2:] != (h, w):  # float round-off in the size computation
        raise RuntimeError(f"position interpolation gave {tuple(x.shape[-2:])}, expected {(h, w)}")
    return x.permute(0, 2, 3, 1).reshape(h * w, -1)
