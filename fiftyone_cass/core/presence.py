"""Object-presence prior: text clustering, text adjustment and the logit blend (SPEC E.2-E.5)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform


def cosine_distance_matrix(text: np.ndarray) -> np.ndarray:
    """sklearn's ``cosine_distances``: 1 - cos, clipped to [0, 2], symmetrised, zero diagonal."""
    t = np.asarray(text, dtype=np.float64)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    d = np.clip(1.0 - t @ t.T, 0.0, 2.0)
    d = (d + d.T) / 2.0
    np.fill_diagonal(d, 0.0)
    return d


def cluster_text(text, threshold: float) -> np.ndarray:
    """E.2: Ward clustering of the query embeddings on cosine distance, cut at ``threshold``.

    Returns zero-based cluster ids ``(Q,)`` (``fcluster(...) - 1``). A single query is its own cluster.
    """
    t = text.detach().cpu().numpy() if isinstance(text, torch.Tensor) else np.asarray(text)
    if t.shape[0] < 2:
        return np.zeros(t.shape[0], dtype=np.int64)
    z = linkage(squareform(cosine_distance_matrix(t), checks=False), method="ward")
    return (fcluster(z, t=threshold, criterion="distance") - 1).astype(np.int64)


def cluster_leaders(global_similarity: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """E.3: for each cluster, the query with the highest global similarity. Returns a boolean
    mask ``(B, Q)`` that is True for exactly one query per cluster (first one on ties)."""
    b, q = global_similarity.shape
    k = int(clusters.max()) + 1 if clusters.numel() else 0
    member = F.one_hot(clusters, k).T.bool()  # (K, Q)
    g = global_similarity.unsqueeze(1).masked_fill(~member.unsqueeze(0), float("-inf"))  # (B, K, Q)
    best = g.argmax(-1)  # (B, K)
    mask = torch.zeros(b, q, dtype=torch.bool, device=global_similarity.device)
    mask.scatter_(1, best, True)
    return mask


def adjust_text(
    text: torch.Tensor,
    patch_features: torch.Tensor,
    leaders: torch.Tensor,
    alpha: float,
    top_k: int = 2,
) -> torch.Tensor:
    """E.3: t'_i = normalize((1 - alpha) t_i + alpha normalize(mean of the top-k patches by
    cos(F_p, t_i))) for the cluster leaders; every other query keeps t_i.

    ``text``: ``(Q, E)`` unit; ``patch_features``: ``(B, N, E)`` unit; ``leaders``: ``(B, Q)`` bool.
    Returns ``(B, Q, E)``.
    """
    sims = patch_features @ text.T  # (B, N, Q)
    k = min(top_k, sims.shape[1])
    idx = sims.topk(k, dim=1).indices  # (B, k, Q)
    b, _, q = idx.shape
    e = patch_features.shape[-1]
    picked = patch_features.gather(1, idx.permute(0, 2, 1).reshape(b, q * k, 1).expand(b, q * k, e))
    mean = F.normalize(picked.reshape(b, q, k, e).mean(2), dim=-1)
    adjusted = F.normalize((1 - alpha) * text.unsqueeze(0) + alpha * mean, dim=-1)
    return torch.where(leaders.unsqueeze(-1), adjusted, text.unsqueeze(0).expand_as(adjusted))


def blend_logits(
    patch_features: torch.Tensor, text: torch.Tensor, global_similarity: torch.Tensor, gamma: float
) -> torch.Tensor:
    """E.4: l_{p,i} = (1 - gamma) <F_p, t'_i> + gamma g_i. ``text`` is ``(B, Q, E)`` or ``(Q, E)``;
    returns ``(B, N, Q)``."""
    t = text if text.dim() == 3 else text.unsqueeze(0)
    return (1 - gamma) * patch_features @ t.transpose(-1, -2) + gamma * global_similarity.unsqueeze(1)


def merge_synonyms(query_scores: torch.Tensor, query_to_class: torch.Tensor, num_classes: int, dim: int = 0) -> torch.Tensor:
    """E.5: per class, the max over its synonym queries along ``dim``."""
    x = query_scores.movedim(dim, -1)
    out = x.new_full((*x.shape[:-1], num_classes), float("-inf"))
    out = out.scatter_reduce(-1, query_to_class.expand_as(x), x, reduce="amax", include_self=True)
    return out.movedim(-1, dim)


def labels_from_probabilities(class_probs: torch.Tensor, threshold: float, background: int = 0, dim: int = 0) -> torch.Tensor:
    """E.5 / G.8: argmax over classes; pixels whose top probability is below ``threshold`` get
    ``background``."""
    top, label = class_probs.max(dim)
    if threshold > 0:
        label = torch.where(top < threshold, torch.full_like(label, background), label)
    return label
