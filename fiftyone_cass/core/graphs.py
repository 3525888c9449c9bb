"""Key graphs and range normalisation (SPEC B.4, B.6, D.4)."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def key_graph(keys: torch.Tensor, scale: float) -> torch.Tensor:
    """C_h = tau * K_h K_h^T for keys ``(..., H, N, d)`` -> ``(..., H, N, N)``."""
    return scale * keys @ keys.transpose(-1, -2)


def _flat_extrema(x: torch.Tensor, keep: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """min / max over all but the first ``keep`` dims, shaped to broadcast against ``x``."""
    flat = x.reshape(*x.shape[:keep], -1)
    shape = (*x.shape[:keep],) + (1,) * (x.dim() - keep)
    return flat.amin(-1).reshape(shape), flat.amax(-1).reshape(shape)


def range_normalize(x: torch.Tensor, ref: torch.Tensor, batch_dims: int = 0) -> torch.Tensor:
    """(x - min x) / (max x - min x) * (max ref - min ref) + min ref, with scalar extrema taken
    over everything except the leading ``batch_dims`` dims (one scalar pair per batch item)."""
    xmin, xmax = _flat_extrema(x, batch_dims)
    rmin, rmax = _flat_extrema(ref, batch_dims)
    return (x - xmin) / (xmax - xmin) * (rmax - rmin) + rmin


def resample_dino_keys(keys: torch.Tensor, dino_grid: Tuple[int, int], grid: Tuple[int, int]) -> torch.Tensor:
    """SPEC B.6: DINO keys ``(B, H, N', d)`` on ``dino_grid`` -> ``(B, H, N, d)`` on the CLIP ``grid``.

    Reshape to ``[H, d, gh', gw']`` and bilinearly interpolate (align_corners=False, no antialias).
    """
    b, h, n, d = keys.shape
    dh, dw = dino_grid
    if n != dh * dw:
        raise ValueError(f"DINO keys have {n} patches, grid {dh}x{dw} needs {dh * dw}")
    x = keys.permute(0, 1, 3, 2).reshape(b, h * d, dh, dw)
    if (dh, dw) != tuple(grid):
        x = F.interpolate(x, size=tuple(grid), mode="bilinear", align_corners=False)
    return x.reshape(b, h, d, -1).permute(0, 1, 3, 2)
