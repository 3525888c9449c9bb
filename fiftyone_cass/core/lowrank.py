"""Low-rank DINO graph with dynamic eigenscaling (SPEC D.1-D.3)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def top_eigenpairs(
    eigvals_ascending: torch.Tensor, eigvecs: torch.Tensor, rank: int = 10
) -> Tuple[torch.Tensor, torch.Tensor]:
    """D.1 [rec]: the exact top-``rank`` eigenpairs of a symmetric PSD graph, from ``eigh``
    output. Returns ``(values (..., r) descending, vectors (..., N, r))``.

    For a symmetric PSD matrix these equal its top singular triplets (U = V), i.e. the
    reference's ``svd_lowrank(q=10)`` without the randomness.
    """
    rank = min(rank, eigvals_ascending.shape[-1])
    return eigvals_ascending[..., -rank:].flip(-1), eigvecs[..., -rank:].flip(-1)


def energy_rank(eigvals_ascending: torch.Tensor, energy: float = 0.95) -> torch.Tensor:
    """D.1 [paper] option: the smallest rank whose leading eigenvalues reach ``energy`` of the
    whole spectrum's sum (negative round-off clamped to 0). Returns ``(...)`` long ranks."""
    vals = eigvals_ascending.flip(-1).clamp_min(0)
    cum = vals.cumsum(-1)
    total = cum[..., -1:].clamp_min(torch.finfo(vals.dtype).tiny)
    return ((cum / total) < energy).sum(-1) + 1


def eigenscale(values: torch.Tensor, low: float = 0.5, high: float = 1.5) -> torch.Tensor:
    """D.2 dynamic eigenscaling: map [s_min, s_max] linearly onto [low s_min, high s_max]:

    s' = (s - s_min) / (s_max - s_min) * (high s_max - low s_min) + low s_min
    """
    smax = values.amax(-1, keepdim=True)
    smin = values.amin(-1, keepdim=True)
    return (values - smin) / (smax - smin) * (high * smax - low * smin) + low * smin


def lowrank_graph(values: torch.Tensor, vectors: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """D.3: D_hat = U diag(s') U^T with its diagonal set to 0. ``mask`` ``(..., r)`` (0/1)
    drops components beyond a per-graph rank (the paper's energy rule)."""
    if mask is not None:
        values = values * mask
    g = (vectors * values.unsqueeze(-2)) @ vectors.transpose(-1, -2)
    return g - torch.diag_embed(torch.diagonal(g, dim1=-2, dim2=-1))
