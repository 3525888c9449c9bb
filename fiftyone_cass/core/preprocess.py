"""Pixel normalisation constants and tensor-level preprocessing (SPEC A.2)."""

from __future__ import annotations

import torch

# SPEC A.2: CLIP mean/std on the 0-255 scale (RGB).
CLIP_MEAN_255 = (122.771, 116.746, 104.094)
CLIP_STD_255 = (68.501, 66.632, 70.323)


def clip_normalize(pixels: torch.Tensor) -> torch.Tensor:
    """RGB pixels on the 0-255 scale ``(..., 3, H, W)`` -> CLIP-normalised float."""
    x = pixels.float()
    mean = torch.tensor(CLIP_MEAN_255, device=x.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD_255, device=x.device).view(3, 1, 1)
    return (x - mean) / std
