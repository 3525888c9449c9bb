"""CASS's last-block attention, composed from the per-equation functions (SPEC B.3-D.6).

Everything is batched over a leading window dimension ``B`` and over heads ``H``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from fiftyone_cass.core.fusion import fuse_graphs, neighbourhood_attention, range_match
from fiftyone_cass.core.gaussian import gaussian_window
from fiftyone_cass.core.graphs import key_graph, range_normalize
from fiftyone_cass.core.lowrank import eigenscale, energy_rank, lowrank_graph, top_eigenpairs
from fiftyone_cass.core.spectral import graph_eigh, match_heads, normalize_spectrum, spectral_distance, spectrum_with_zeros


@dataclass(frozen=True)
class CassOptions:
    """Constants of SPEC C/D. Defaults are the reference code's behaviour."""

    gaussian_std: float = 5.0
    k_eigen: int = 20
    rank: int = 10
    eigenscale: bool = True
    eigenscale_low: float = 0.5
    eigenscale_high: float = 1.5
    beta: float = 10.0
    paper_matching: bool = False
    energy_rank: Optional[float] = None  # e.g. 0.95 for the paper's rule; None = fixed rank
    spectral_dtype: torch.dtype = torch.float64
    eigh_placement: str = "auto"  # where the 64x64 eigen-decompositions run (core.eigensolver)


@dataclass
class CassAttention:
    fused_logits: torch.Tensor  # (B, H, N, N): L_h
    attn: torch.Tensor  # (B, H, N, N): softmax(L_h + Omega)
    dino_index: torch.Tensor  # (B, H): DINO head used by each CLIP head
    weight: torch.Tensor  # (B, H): w_h


def normalize_dino_keys(dino_keys: torch.Tensor, clip_keys: torch.Tensor) -> torch.Tensor:
    """B.6 range normalisation of DINO keys ``(B, H, N, d)`` onto the CLIP key range, with
    global scalar min/max per window (over heads, patches and channels)."""
    return range_normalize(dino_keys, clip_keys, batch_dims=1)


def cass_attention(
    clip_keys: torch.Tensor,
    dino_keys: torch.Tensor,
    grid: Tuple[int, int],
    scale: float,
    options: CassOptions = CassOptions(),
) -> CassAttention:
    """SPEC B.4-D.6 for a batch of windows.

    ``clip_keys``: ``(B, H, N, d)`` CLIP last-block keys, CLS dropped. ``dino_keys``: ``(B, H, N, d)``
    DINO last-block keys already resampled to the CLIP grid (``graphs.resample_dino_keys``), not
    yet range-normalised. ``scale`` = tau = d^-1/2.
    """
    if clip_keys.shape[:2] != dino_keys.shape[:2] or clip_keys.shape[-2] != dino_keys.shape[-2]:
        raise ValueError(
            f"CLIP keys {tuple(clip_keys.shape)} and DINO keys {tuple(dino_keys.shape)} must share "
            "batch, head and patch dimensions"
        )
    b, h, n, _ = clip_keys.shape
    sd = options.spectral_dtype
    # contiguous inputs: the same window gives bit-identical graphs whatever batch it came in
    clip_keys, dino_keys = clip_keys.contiguous(), dino_keys.contiguous()
    clip_graph = key_graph(clip_keys, scale)  # C_h
    dino_norm = normalize_dino_keys(dino_keys, clip_keys)  # D_h = scale * K~ K~^T

    # C.1-C.3 spectra; one eigen-decomposition of every DINO graph serves both the spectrum and
    # the low rank. Both graphs are decomposed through their d x d Gram matrices (exact).
    # only the top ``rank`` DINO eigenvectors are used; CLIP's spectrum needs no vectors
    d_vals, d_vecs = graph_eigh(dino_norm, scale, sd, top=options.rank, placement=options.eigh_placement)
    c_vals = graph_eigh(clip_keys, scale, sd, vectors=False, placement=options.eigh_placement)
    p_d = normalize_spectrum(spectrum_with_zeros(d_vals, n, options.k_eigen))
    p_c = normalize_spectrum(spectrum_with_zeros(c_vals, n, options.k_eigen))
    dino_index, weight = match_heads(spectral_distance(p_d, p_c), options.paper_matching)

    # D.1-D.3 low-rank graph of the matched DINO head.
    values, vectors = top_eigenpairs(d_vals, d_vecs, options.rank)
    mask = None
    if options.energy_rank is not None:
        ranks = energy_rank(d_vals, options.energy_rank)  # (B, H)
        mask = (torch.arange(values.shape[-1], device=values.device) < ranks.unsqueeze(-1)).to(values.dtype)
    if options.eigenscale:
        values = eigenscale(values, options.eigenscale_low, options.eigenscale_high)
    d_hat = lowrank_graph(values, vectors, mask)
    idx = dino_index[..., None, None].expand(b, h, n, n)
    d_hat = d_hat.gather(1, idx)  # CLIP head h <- DINO head dino_index[h]

    # D.4-D.6
    d_tilde = range_match(d_hat, clip_graph.to(sd)).to(clip_graph.dtype)
    fused = fuse_graphs(d_tilde, clip_graph, weight.to(clip_graph.dtype), options.beta)
    omega = gaussian_window(grid[0], grid[1], options.gaussian_std, clip_graph.device, clip_graph.dtype)
    attn = neighbourhood_attention(fused, omega)
    return CassAttention(fused, attn, dino_index, weight)


def naclip_attention(clip_keys: torch.Tensor, grid: Tuple[int, int], scale: float, gaussian_std: float = 5.0) -> torch.Tensor:
    """SPEC B without DINO: softmax_row(C_h + Omega) (the ``naclip`` base)."""
    clip_graph = key_graph(clip_keys, scale)
    omega = gaussian_window(grid[0], grid[1], gaussian_std, clip_graph.device, clip_graph.dtype)
    return neighbourhood_attention(clip_graph, omega)


def attend_values(attn: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """concat_h(A_h V_h): ``(B, H, N, N) x (B, H, N, d) -> (B, N, H*d)``."""
    out = attn @ values
    b, h, n, d = out.shape
    return out.permute(0, 2, 1, 3).reshape(b, n, h * d)
