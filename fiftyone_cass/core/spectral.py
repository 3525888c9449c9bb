"""Spectral head matching (SPEC C)."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from fiftyone_cass.core.eigensolver import symmetric_eigh


def graph_eigh(
    keys: torch.Tensor,
    scale: float,
    dtype: torch.dtype = torch.float64,
    vectors: bool = True,
    top: Optional[int] = None,
    placement: str = "auto",
):
    """Eigen-decomposition of the key graph G = scale * K K^T (``keys`` ``(..., N, d)``) without
    forming it when d < N: G and the Gram matrix scale * K^T K share their non-zero eigenvalues,
    and a Gram eigenvector u maps to the unit graph eigenvector K u sqrt(scale / lambda).

    Exact up to round-off, and (d/N)^3 cheaper (64x64 instead of 196x196 or 784x784).
    Returns eigenvalues ascending ``(..., m)`` with m = min(N, d) (the graph's remaining N - m
    eigenvalues are 0) and, with ``vectors``, eigenvectors ``(..., N, m)``, or only the last
    (largest) ``top`` of them ``(..., N, top)``. Without ``vectors``, the eigenvalues alone
    (``eigvalsh``: about half the work). ``placement``: where the small decompositions run
    (:mod:`.eigensolver`).
    """
    k = keys.to(dtype)
    n, d = k.shape[-2:]
    if d >= n:
        out = symmetric_eigh(scale * k @ k.transpose(-1, -2), vectors, placement)
        if vectors and top is not None:
            return out[0], out[1][..., -min(top, n):]
        return out
    gram = scale * k.transpose(-1, -2) @ k
    if not vectors:
        return symmetric_eigh(gram, False, placement)
    vals, u = symmetric_eigh(gram, True, placement)
    if top is not None:
        top = min(top, d)
        sel_vals, u = vals[..., -top:], u[..., -top:]
    else:
        sel_vals = vals
    norm = torch.sqrt(sel_vals.clamp_min(torch.finfo(dtype).tiny) / scale)
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


TIE_TOLERANCE = 1e-6


def assignment_duals(cost: np.ndarray, sigma: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Optimal dual potentials ``(u, v)`` of the linear assignment problem ``cost`` ``(B, H, H)``
    given an optimal assignment ``sigma`` ``(B, H)`` (row i -> column sigma[i]).

    They satisfy u_i + v_j <= cost_ij, with equality on the assignment. Found as shortest-path
    distances (Bellman-Ford, vectorised over the batch) in the graph of the difference
    constraints v_j - v_sigma(i) <= cost_ij - cost_i,sigma(i); it has no negative cycle because
    sigma is optimal.
    """
    b, h, _ = cost.shape
    on = np.take_along_axis(cost, sigma[..., None], -1)[..., 0]  # cost_i,sigma(i)
    owner = np.argsort(sigma, -1)  # the row assigned to each column
    # edge from column k to column j: cost[owner k, j] - cost[owner k, k]
    weight = np.take_along_axis(cost, np.repeat(owner[..., None], h, -1), 1) - np.take_along_axis(on, owner, -1)[..., None]
    v = np.zeros((b, h))
    for _ in range(h):
        v = np.minimum(v, (v[..., :, None] + weight).min(-2))
    u = on - np.take_along_axis(v, sigma, -1)
    return u, v


def canonical_assignment(cost: np.ndarray, tolerance: float = TIE_TOLERANCE) -> np.ndarray:
    """Minimum-cost assignment ``(B, H)`` of each ``(H, H)`` cost matrix, with ties broken the
    same way wherever the costs were computed: among all optimal assignments, the
    lexicographically smallest (row 0's column as small as possible, then row 1's, ...).

    Ties are common and structural: where every DINO spectrum entry dominates the CLIP one, W(i, j)
    separates into a_i - b_j on that block and any permutation inside it costs exactly the same.
    A solver left alone picks among them by round-off, which differs with batch layout and with
    precision (bf16 vs fp32 backbones), and each pick gives different fused attention. Here one
    solve finds an optimum and its dual potentials; the edges whose reduced cost is within
    ``tolerance`` are exactly those of the optimal assignments (complementary slackness), and a
    second solve over those edges with base-H positional weights returns the smallest one.
    """
    b, h, _ = cost.shape
    sigma = np.empty((b, h), dtype=np.int64)
    for i in range(b):
        rows, cols = linear_sum_assignment(cost[i])
        sigma[i, rows] = cols
    u, v = assignment_duals(cost, sigma)
    tight = cost - u[..., :, None] - v[..., None, :] <= tolerance
    # column j in row i weighs j * H^(H-1-i): the total is sigma read as a base-H number, so its
    # minimum is the lexicographically smallest permutation. Up to 12 heads (ViT-B) every sum the
    # solver forms, barred entries included (< 2^48), is exact in float64.
    if h <= 12:
        lex = np.arange(h, dtype=np.float64)[None, :] * float(h) ** (h - 1 - np.arange(h, dtype=np.float64))[:, None]
        barred = lex.max() * h * 2.0 + 1.0
        for i in np.nonzero(tight.sum((-1, -2)) > h)[0]:  # more tight edges than the assignment: a tie
            rows, cols = linear_sum_assignment(np.where(tight[i], lex, barred))
            sigma[i, rows] = cols
    else:  # beyond that: the same choice made row by row
        for i in np.nonzero(tight.sum((-1, -2)) > h)[0]:
            sigma[i] = _lexicographic_matching(tight[i])
    return sigma


def _lexicographic_matching(allowed: np.ndarray) -> np.ndarray:
    """Lexicographically smallest perfect matching of a boolean ``(H, H)`` bipartite graph that
    has one (row by row, the smallest column that still leaves a perfect matching)."""
    h = allowed.shape[0]
    barred = float(h + 1)
    chosen = np.full(h, -1, dtype=np.int64)
    mask = allowed.copy()
    for r in range(h):
        for c in np.nonzero(mask[r])[0]:
            trial = mask.copy()
            trial[r, :] = False
            trial[:, c] = False
            trial[r, c] = True
            rows, cols = linear_sum_assignment(np.where(trial, 0.0, barred))
            if np.all(trial[rows, cols]):
                chosen[r] = c
                mask = trial
                break
    return chosen


def match_heads(distance: torch.Tensor, paper_matching: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """C.4-C.6: the DINO head and the fusion weight used by each CLIP head.

    ``distance``: ``(B, H, H)`` = W with rows DINO heads, columns CLIP heads. The cost
    M = 1 - W is minimised with ``linear_sum_assignment`` (small CPU calls per window), ties
    broken canonically (:func:`canonical_assignment`).

    Reference convention (default, SPEC C.6): CLIP head h uses DINO head sigma(h) with weight
    W[h, sigma(h)]. Paper convention: CLIP head j uses DINO head sigma^-1(j) with weight
    W[sigma^-1(j), j].

    Returns ``(dino_index (B, H) long, weight (B, H))`` on ``distance``'s device/dtype.
    """
    cost = (1.0 - distance).detach().to("cpu", torch.float64).numpy()
    sigma_t = torch.from_numpy(canonical_assignment(cost)).to(distance.device)
    if paper_matching:
        inverse = torch.argsort(sigma_t, dim=-1)  # sigma^-1(j)
        dino = inverse
        weight = distance.gather(-2, inverse.unsqueeze(-2)).squeeze(-2)  # W[sigma^-1(j), j]
    else:
        dino = sigma_t
        weight = distance.gather(-1, sigma_t.unsqueeze(-1)).squeeze(-1)  # W[h, sigma(h)]
    return dino, weight
