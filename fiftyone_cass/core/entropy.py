"""CDAM's entropy-based background threshold split into its two steps (SPEC G.7), so the
threshold can be taken once per image over all of its windows."""

from __future__ import annotations

from typing import Tuple

import torch


def patch_entropy(logits: torch.Tensor, logit_scale: float = 50.0, eps: float = 1e-12) -> torch.Tensor:
    """H_p = -sum_c Pi log2 Pi with Pi = softmax_c(scale * logits), Pi clamped to >= eps (J.10).
    ``logits``: ``(..., C, h, w)`` -> ``(..., h, w)``."""
    pi = torch.softmax(logit_scale * logits, dim=-3).clamp_min(eps)
    return -(pi * torch.log2(pi)).sum(dim=-3)


def entropy_range(logits: torch.Tensor, logit_scale: float = 50.0, eps: float = 1e-12) -> Tuple[torch.Tensor, torch.Tensor]:
    """(min_p H, max_p H) over the patches of each ``(C, h, w)`` map; shapes ``logits.shape[:-3]``."""
    ent = patch_entropy(logits, logit_scale, eps).flatten(-2)
    return ent.amin(-1), ent.amax(-1)


def threshold_from_entropy(hmin: torch.Tensor, hmax: torch.Tensor, thr_default: float = 0.5, alpha: float = 2.5) -> torch.Tensor:
    """thr = thr_default * alpha / ((H_min + H_max) / 2).

    A zero denominator happens only when every patch has zero entropy (a single class): the
    formula would give +inf and wipe the image to background, so 0 (no threshold) is returned.
    """
    denom = 0.5 * (hmin + hmax)
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, (thr_default * alpha) / safe, torch.zeros_like(denom))
