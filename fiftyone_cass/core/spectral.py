"""Spectral head matching (SPEC C)."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def graph_eigh(keys: torch.Tensor, scale: float, dtype: torch.dtype = torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of the key graph G = scale * K K^T (``keys`` ``(..., N, d)``) without
    forming it when d < N: G and the Gram matrix scale * K^T K share their non-zero eigenvalues,
    and a Gram eigenvector u maps to the unit graph eigenvector K u sqrt(scale / lambda).

    Exact up to round-off, and (d/N)^3 cheaper (64x64 instead of 196x196 or 784x784).
    Returns eigenvalues ascending ``(..., m)`` and eigenvectors ``(..., N, m)`` with m = min(N, d);
    the graph's remaining N - m eigenvalues are 0.
    """
    k = keys.to(dtype)
    n, d = k.shape[-2:]
    if d >= n:
        return torch.linalg.eigh(scale * k @ k.transpose(-1, -2))
    vals, u = torch.linalg.eigh(scale * k.transpose(-1, -2) @ k)
    norm = torch.sqrt(vals.clamp_min(torch.finfo(dtype).tiny) / scale)
    return vals, (k @ u) / norm.unsqueeze(-2)


def spectrum_with_zeros(eigvals_ascending: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Top-k eigenvalues (descending) of an ``n x n`` graph from its m <= n non-zero-eigenvalue
    part (``graph_eigh``), padding with the graph's zero eigenvalues when m < k."""
    top = top_eigenvalues(eigvals_ascending, k)
    want = min(k, n)
    if top.shape[-1] < want:
        top = torch.cat([top, top.new_zeros(*top.shape[:-1], want - top.shape[-1])], -1)
    return top


def top_eigenvalues(eigvals_ascending: torch.Tensor, k: int = 20) -> torch.Tensor:
    """C.1: the top-k eigenvalues, sorted descending, from ``eigvalsh``/``eigh`` output
    (ascending along the last dim)."""
    k = min(k, eigvals_ascending.shape[-1])
    return eigvals_ascending[..., -k:].flip(-1)


def normalize_spectrum(eigvals: torch.Tensor) -> torch.Tensor:
    """C.2: p = lambda / sum |lambda| (the reference's preceding L2 step is a no-op)."""
    return eigvals / eigvals.abs().sum(-1, keepdim=True)


def spectral_distance(p_dino: torch.Tensor, p_clip: torch.Tensor) -> torch.Tensor:
    """C.3: W(i, j) = sum_r |sort_asc(p^D_i)_r - sort_asc(p^C_j)_r| for ``(..., H, k)`` spectra.

    Returns ``(..., H_dino, H_clip)``.
    """
    a = p_dino.sort(-1).values
    b = p_clip.sort(-1).values
    return (a.unsqueeze(-2) - b.unsqueeze(-3)).abs().sum(-1)


def match_heads(distance: torch.Tensor, paper_matching: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """C.4-C.6: the DINO head and the fusion weight used by each CLIP head.

    ``distance``: ``(B, H, H)`` = W with rows DINO heads, columns CLIP heads. The cost
    M = 1 - W is minimised with ``linear_sum_assignment`` (one small CPU call per window).

    Reference convention (default, SPEC C.6): CLIP head h uses DINO head sigma(h) with weight
    W[h, sigma(h)]. Paper convention: CLIP head j uses DINO head sigma^-1(j) with weight
    W[sigma^-1(j), j].

    Returns ``(dino_index (B, H) long, weight (B, H))`` on ``distance``'s device/dtype.
    """
    # Exact ties between assignments are common: when every DINO spectrum dominates every CLIP
    # spectrum entry-wise, W(i, j) separates into a_i - b_j and all assignments cost the same.
    # The solver then follows round-off, which differs with batch size and memory layout.
    # Costs are rounded to 1e-6 (far below any real difference in W, far above fp32 noise),
    # so ties are broken the same way (lowest column index) wherever they are computed.
    cost = np.round((1.0 - distance).detach().to("cpu", torch.float64).numpy(), 6)
    b, h, _ = cost.shape
    sigma = np.empty((b, h), dtype=np.int64)
    for i in range(b):
        rows, cols = linear_sum_assignment(cost[i])
        sigma[i, rows] = cols
    sigma_t = torch.from_numpy(sigma).to(distance.device)
    if paper_matching:
        inverse = torch.argsort(sigma_t, dim=-1)  # sigma^-1(j)
        dino = inverse
        weight = distance.gather(-2, inverse.unsqueeze(-2)).squeeze(-2)  # W[sigma^-1(j), j]
    else:
        dino = sigma_t
        weight = distance.gather(-1, sigma_t.unsqueeze(-1)).squeeze(-1)  # W[h, sigma(h)]
    return dino, weight
