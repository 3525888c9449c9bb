"""CDAM math (ICLR'25), pure torch: one function per step of SPEC section G (steps 3-7) and H.4.

Every function is device- and dtype-agnostic (it computes in the dtype of its input, so pass
float64 for reference-grade checks) and batched over an optional leading batch dimension B of
windows (crops): a similarity map is ``(B, K, h, w)`` or ``(K, h, w)``; patch-pair matrices are
``(B, N, N)`` or ``(N, N)`` with ``N = h * w`` patches flattened row-major (``r * w + c``).
Nothing here calls ``.item()`` or otherwise synchronises with the device.

Pipeline (SPEC G)::

    S (K, h, w) --class_distribution--> P (N, K) --js_divergence--> JS (N, N)
    JS --js_to_attention--> A_orig;  same per scale s on a bilinearly resized S,
    with the JS matrix upsampled back to (h, w) (upsample_pair_matrix)
    CDAM = (sum_s A_s + A_orig) / (number of maps)          <- multiscale_cdam
    logits --entropy_threshold--> background threshold      <- G.7
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from fiftyone_cass.core.entropy import entropy_range, threshold_from_entropy
from fiftyone_cass.core.windows import upsample_logits  # noqa: F401  (G.6 bilinear up-sampling, shared)

__all__ = [
    "CDAM_SCALES",
    "DEFAULT_JS_MEMORY_BUDGET",
    "class_distribution",
    "js_divergence",
    "bilinear_upsample_operator",
    "upsample_pair_matrix",
    "js_to_attention",
    "cdam_grid_sizes",
    "multiscale_cdam",
    "upsample_logits",
    "entropy_threshold",
    "reprediction_weights",
    "row_normalize",
    "mix_attention",
]

#: The released CDAM scale list (SPEC G.5).
CDAM_SCALES: tuple[float, ...] = (0.25, 0.37, 0.5, 0.63, 0.75, 0.87)

#: Default bound (bytes) on the temporaries of one block of :func:`js_divergence`.
DEFAULT_JS_MEMORY_BUDGET: int = 256 * 2**20


def _batched(x: torch.Tensor, unbatched_dim: int, name: str) -> tuple[torch.Tensor, bool]:
    """Return ``x`` with a leading batch dim and whether one was added."""
    if x.dim() == unbatched_dim:
        return x.unsqueeze(0), True
    if x.dim() == unbatched_dim + 1:
        return x, False
    raise ValueError(
        f"{name} must have {unbatched_dim} (unbatched) or {unbatched_dim + 1} (batched) "
        f"dimensions, got shape {tuple(x.shape)}"
    )


def _row_minmax(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Row-wise (last dim) ``(x - min) / (max - min + eps)``."""
    lo = x.amin(dim=-1, keepdim=True)
    hi = x.amax(dim=-1, keepdim=True)
    return (x - lo) / (hi - lo + eps)


# --------------------------------------------------------------------------- G.3


def class_distribution(similarity: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SPEC G.3 (first bullet): per-patch class distribution ``P = softmax_c(S / T)``.

    Args:
        similarity: ``S``, raw patch-vs-name scores, ``(B, K, h, w)`` or ``(K, h, w)`` (K = class
            + augmentation channels).
        temperature: ``T`` (0.1 for every dataset in the reference).

    Returns:
        ``P`` of shape ``(B, N, K)`` (or ``(N, K)``), rows summing to 1, patches row-major.
    """
    s, squeeze = _batched(similarity, 3, "similarity")
    p = torch.softmax(s / temperature, dim=1).flatten(2).transpose(1, 2)
    return p.squeeze(0) if squeeze else p


def js_divergence(
    P: torch.Tensor,
    eps: float = 1e-8,
    chunk_size: int | None = None,
    *,
    memory_budget: int = DEFAULT_JS_MEMORY_BUDGET,
) -> torch.Tensor:
    """SPEC G.3 (second bullet): pairwise Jensen-Shannon divergence between patch distributions.

    With ``m = (P_i + P_j) / 2``::

        JS(i, j) = 1/2 [ sum_c P_i (ln(P_i + eps) - ln(m + eps))
                       + sum_c P_j (ln(P_j + eps) - ln(m + eps)) ]

    computed in the algebraically identical form ``1/2 (a_i + a_j) - sum_c m ln(m + eps)`` with
    the per-row term ``a_i = sum_c P_i ln(P_i + eps)``. Only the cross term needs the pair; it
    is evaluated in blocks of query rows, ``(b, rows, N, K)`` at a time, so the extra memory is
    bounded by ``memory_budget`` (two block-sized temporaries) instead of the ``B*N*N*K``
    tensors of the naive form. E.g. N=784, K=250 in fp32 uses ~256 MiB with the default budget.

    Args:
        P: distributions ``(B, N, K)`` or ``(N, K)`` (rows summing to 1).
        eps: the ``1e-8`` inside the logs (natural log).
        chunk_size: query rows per block; ``None`` derives it from ``memory_budget``.
        memory_budget: bytes allowed for the block temporaries when ``chunk_size`` is None.

    Returns:
        ``JS`` of shape ``(B, N, N)`` (or ``(N, N)``), symmetric, zero diagonal, in ``[0, ln 2]``
        up to rounding.

    Inference only: the block loop works in place, so run it under ``torch.no_grad()`` /
    ``torch.inference_mode()`` (a backward pass through it is not supported).
    """
    p, squeeze = _batched(P, 2, "P")
    B, N, K = p.shape
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    # Per-row term a_i = sum_c P_i ln(P_i + eps).
    a = (p * torch.log(p + eps)).sum(-1)  # (B, N)
    out = 0.5 * (a.unsqueeze(-1) + a.unsqueeze(-2))  # (B, N, N)

    if chunk_size is not None:
        rows = min(chunk_size, N)
    else:
        per_row = 2 * max(N * K, 1) * p.element_size()  # two (N, K) temporaries per query row
        rows = min(N, max(1, memory_budget // per_row))

    # One window at a time with a row split that depends only on (N, K): every window is computed
    # by the same kernels in the same order whatever batch it arrives in (bit-identical results;
    # CDAM's sharp temperatures would otherwise amplify reduction-order round-off).
    for b0 in range(B):
        pb = p[b0 : b0 + 1]  # (1, N, K)
        for r0 in range(0, N, rows):
            r1 = min(r0 + rows, N)
            # the cross term is symmetric: only columns >= r0 are computed, then mirrored
            m = pb[:, r0:r1, None, :] + pb[:, None, r0:, :]  # (1, r, N - r0, K)
            m.mul_(0.5)
            lg = m + eps
            lg.log_().mul_(m)
            cross = lg.sum(-1)  # (1, r, N - r0)
            out[b0 : b0 + 1, r0:r1, r0:] -= cross
            out[b0 : b0 + 1, r1:, r0:r1] -= cross[:, :, r1 - r0 :].transpose(1, 2)
            del m, lg, cross
    return out.squeeze(0) if squeeze else out


# --------------------------------------------------------------------------- G.5 upsampling


def bilinear_upsample_operator(
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """SPEC G.5: the matrix ``R`` (``N_out x N_in``) of bilinear upsampling between grids.

    ``R @ x.flatten()`` equals ``F.interpolate(x[None, None], out_size, mode="bilinear",
    align_corners=False)`` (no antialias) for any ``x`` on the ``in_size`` grid. Meant for
    documentation and tests (``R JS R^T``); :func:`upsample_pair_matrix` is the fast path.
    """
    n_in = in_size[0] * in_size[1]
    basis = torch.eye(n_in, dtype=dtype, device=device).reshape(n_in, 1, *in_size)
    cols = F.interpolate(basis, size=tuple(out_size), mode="bilinear", align_corners=False)
    return cols.reshape(n_in, -1).T.contiguous()


def upsample_pair_matrix(
    mat: torch.Tensor, in_size: tuple[int, int], out_size: tuple[int, int]
) -> torch.Tensor:
    """SPEC G.5: bilinearly upsample a patch-pair matrix in both index dims (keys, then queries).

    Equals ``R @ mat @ R.T`` with ``R = bilinear_upsample_operator(in_size, out_size)``.

    Args:
        mat: ``(B, n, n)`` or ``(n, n)`` with ``n = in_size[0] * in_size[1]`` (query, key).
        in_size: the grid ``(h', w')`` of both index dims of ``mat``.
        out_size: the target grid ``(h, w)``.

    Returns:
        ``(B, N, N)`` (or ``(N, N)``) with ``N = h * w``.
    """
    m, squeeze = _batched(mat, 2, "mat")
    B, n, n2 = m.shape
    hi, wi = in_size
    if n != n2 or n != hi * wi:
        raise ValueError(f"pair matrix of shape {tuple(mat.shape)} does not match grid {in_size}")
    size = tuple(out_size)
    # keys: each query row is an image on the (h', w') grid
    x = F.interpolate(m.reshape(B, n, hi, wi), size=size, mode="bilinear", align_corners=False)
    x = x.reshape(B, n, -1).transpose(1, 2)  # (B, N_key, n_query)
    # queries
    x = F.interpolate(x.reshape(B, -1, hi, wi), size=size, mode="bilinear", align_corners=False)
    x = x.reshape(B, x.shape[1], -1).transpose(1, 2)  # (B, N_query, N_key)
    return x.squeeze(0) if squeeze else x


# --------------------------------------------------------------------------- G.4


def js_to_attention(
    js: torch.Tensor, attn_temperature: float = 0.1, eps: float = 1e-8
) -> torch.Tensor:
    """SPEC G.4: turn a JS matrix into one attention map.

    ``G = 1 - JS``; row-wise min-max ``(x - min) / (max - min + eps)``; ``softmax_row(. / P)``;
    the same row-wise min-max again. Rows of the result span ``[0, 1]`` (they are not
    renormalised to sum 1). Rows are queries, the last dim is keys.
    """
    g = _row_minmax(1.0 - js, eps)
    return _row_minmax(torch.softmax(g / attn_temperature, dim=-1), eps)


# --------------------------------------------------------------------------- G.5


def cdam_grid_sizes(
    h: int, w: int, scales: Sequence[float] = CDAM_SCALES
) -> list[tuple[float, tuple[int, int]]]:
    """SPEC G.5 grids ``(int(h*s), int(w*s))`` (per axis) of the scales that are used.

    A scale whose grid has a zero side (small crops, e.g. ``h=2, s=0.25``) is **skipped**: it
    has no patches to compare, and clamping it to 1 would only add a constant-JS map (all zeros
    after G.4) that dilutes the average. Returns ``[(s, (h_s, w_s)), ...]`` for kept scales.
    """
    out = []
    for s in scales:
        hs, ws = int(h * s), int(w * s)
        if hs >= 1 and ws >= 1:
            out.append((s, (hs, ws)))
    return out


def multiscale_cdam(
    similarity: torch.Tensor,
    scales: Sequence[float] = CDAM_SCALES,
    temperature: float = 0.1,
    attn_temperature: float = 0.1,
    *,
    eps: float = 1e-8,
    minmax_eps: float = 1e-8,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_JS_MEMORY_BUDGET,
) -> torch.Tensor:
    """SPEC G.3-G.5: the multi-scale class distribution attention map.

    For every kept scale ``s`` (see :func:`cdam_grid_sizes`): bilinearly resize the *raw* S to
    ``(int(h*s), int(w*s))`` (align_corners=False, no antialias), compute ``JS_s`` there
    (:func:`class_distribution`, :func:`js_divergence`), upsample it in both index dims back to
    ``(h, w)`` (:func:`upsample_pair_matrix`) and apply :func:`js_to_attention`. The full-size
    map ``A_orig`` is always included. Returns ``(A_orig + sum_s A_s) / (1 + #kept scales)``,
    i.e. ``/7`` for the default scales on any grid of at least 4x4 patches.

    Args:
        similarity: ``S``, ``(B, K, h, w)`` or ``(K, h, w)``.
        scales: the scale list (default: the released one).
        temperature: ``T`` of :func:`class_distribution`.
        attn_temperature: ``P`` of :func:`js_to_attention`.
        eps: the epsilon inside the JS logs.
        minmax_eps: the epsilon of the row min-max normalisations.
        chunk_size, memory_budget: see :func:`js_divergence`.

    Returns:
        CDAM of shape ``(B, N, N)`` (or ``(N, N)``), query rows, key columns.
    """
    s, squeeze = _batched(similarity, 3, "similarity")
    h, w = s.shape[-2:]
    if h < 1 or w < 1:
        raise ValueError(f"similarity map has an empty grid: shape {tuple(similarity.shape)}")

    def _js(x: torch.Tensor) -> torch.Tensor:
        return js_divergence(
            class_distribution(x, temperature), eps, chunk_size, memory_budget=memory_budget
        )

    total = js_to_attention(_js(s), attn_temperature, minmax_eps)
    grids = cdam_grid_sizes(h, w, scales)
    for _, grid in grids:
        s_s = F.interpolate(s, size=grid, mode="bilinear", align_corners=False)
        js_s = upsample_pair_matrix(_js(s_s), grid, (h, w))
        total = total + js_to_attention(js_s, attn_temperature, minmax_eps)
    total = total / (1 + len(grids))
    return total.squeeze(0) if squeeze else total


# --------------------------------------------------------------------------- G.6 / G.7


def entropy_threshold(
    logits: torch.Tensor,
    logit_scale: float = 50.0,
    thr_default: float = 0.5,
    alpha: float = 2.5,
    eps: float = 1e-12,
) -> torch.Tensor:
    """SPEC G.7: CDAM's entropy-based background threshold, one value per image.

    ``Pi = softmax_c(logit_scale * logits)`` (clamped to ``>= eps`` so ``log2`` never sees 0,
    fixing J.10), ``H_p = -sum_c Pi log2 Pi`` per patch, and
    ``thr = thr_default * alpha / ((min_p H + max_p H) / 2)`` with min/max over the patches of
    one image.

    Zero denominator: this happens exactly when every patch has zero entropy, i.e. with a single
    class (C=1; with C >= 2 the clamp keeps H > 0). The formula would give ``+inf`` and label
    the whole image background, so we return ``thr = 0`` instead (nothing is thresholded: the
    only class is predicted everywhere). Note that with C >= 2 and extremely confident logits
    the threshold is still very large, as in the reference.

    Args:
        logits: ``(..., C, h, w)`` (classes at dim -3), e.g. ``(C, h, w)`` or ``(B, C, h, w)``.

    Returns:
        thresholds of shape ``logits.shape[:-3]`` (a 0-d tensor for one image).
    """
    if logits.dim() < 3:
        raise ValueError(f"logits must be (..., C, h, w), got shape {tuple(logits.shape)}")
    hmin, hmax = entropy_range(logits, logit_scale, eps)
    return threshold_from_entropy(hmin, hmax, thr_default, alpha)


# --------------------------------------------------------------------------- G.6 / H.4


def reprediction_weights(cdam: torch.Tensor) -> torch.Tensor:
    """SPEC G.6: pad ``(..., N, N)`` CDAM to ``(..., N+1, N+1)`` with a zero CLS row and column
    (index 0), the attention used for every head by the MaskCLIP-style re-prediction."""
    return F.pad(cdam, (1, 0, 1, 0))


def row_normalize(attn: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """SPEC H.4 ``rownorm``: divide every row (last dim) by its sum (clamped to ``>= eps``, so an
    all-zero row stays zero)."""
    return attn / attn.sum(dim=-1, keepdim=True).clamp_min(eps)


_rownorm = row_normalize


def mix_attention(
    base_attn: torch.Tensor | None,
    cdam: torch.Tensor,
    lam: float = 1.0,
    row_normalize: bool = False,
) -> torch.Tensor:
    """SPEC H.4: the attention used by the re-prediction block.

    * ``lam == 1`` (default, full replacement): ``cdam`` itself, or ``rownorm(cdam)`` when
      ``row_normalize`` (flag ``cdam_row_normalize``); ``base_attn`` is not needed.
    * ``0 <= lam < 1`` (flag ``cdam_mix``): ``(1 - lam) * base_attn + lam * rownorm(cdam)`` —
      the CDAM part is always row-normalised here, so the blend of a row-stochastic base and
      CDAM stays row-stochastic.

    ``cdam`` (``(B, N, N)`` or ``(N, N)``) is shared by all heads: if it has one dim fewer than
    ``base_attn`` (``(B, heads, N, N)`` / ``(heads, N, N)``) it is broadcast over the head dim.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"cdam mix weight must be in [0, 1], got {lam}")
    if lam == 1.0:
        return _rownorm(cdam) if row_normalize else cdam
    if base_attn is None:
        raise ValueError(f"cdam mix weight {lam} < 1 needs the base attention")
    c = _rownorm(cdam)
    if c.dim() == base_attn.dim() - 1:
        c = c.unsqueeze(-3)
    return (1.0 - lam) * base_attn + lam * c
