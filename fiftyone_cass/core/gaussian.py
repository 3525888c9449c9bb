"""Gaussian neighbourhood term Omega (SPEC B.5, from NACLIP)."""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch


@lru_cache(maxsize=64)
def _gaussian_window_cpu(h: int, w: int, std: float) -> torch.Tensor:
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.float64).repeat(h)
    d2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    return torch.exp(-d2 / (2.0 * std * std))


def gaussian_window(
    h: int,
    w: int,
    std: float = 5.0,
    device: Optional[torch.device] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Omega[p, p'] = exp(-((r-r')^2 + (c-c')^2) / (2 std^2)) over row-major patches, ``(N, N)``.

    Equal to 1 on the diagonal, identical for all heads, no CLS row/column. Cached per grid.
    """
    return _gaussian_window_cpu(int(h), int(w), float(std)).to(device=device, dtype=dtype)
