"""Fusion of the DINO and CLIP graphs and the final attention (SPEC D.4-D.6)."""

from __future__ import annotations

import torch

from fiftyone_cass.core.graphs import range_normalize


def range_match(graph: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """D.4: range-match each ``(N, N)`` graph to its reference with scalar min/max over the
    whole matrix (diagonals included). Leading dims are batch dims."""
    return range_normalize(graph, ref, batch_dims=graph.dim() - 2)


def fuse_graphs(dino_graph: torch.Tensor, clip_graph: torch.Tensor, weight: torch.Tensor, beta: float = 10.0) -> torch.Tensor:
    """D.5: L_h = (beta w_h D~ + C_h) / (beta w_h + 1). ``weight`` is ``(...,)`` per graph."""
    bw = (beta * weight)[..., None, None]
    return (bw * dino_graph + clip_graph) / (bw + 1.0)


def neighbourhood_attention(logits: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """D.6: A_h = softmax_row(L_h + Omega)."""
    return torch.softmax(logits + omega, dim=-1)
