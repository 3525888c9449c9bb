"""How sure the engine is of each pixel's label, from the full-resolution query logits it already
has (SPEC E.5 / G.8), without materialising the class probabilities.

Class probabilities are the reference's: softmax over the Q queries of the scaled logits, then, per
class, the max over its synonym queries (E.5). So the top-1 class probability is the softmax's
value at the top query, and the top-2 class probability is the largest softmax value among the
queries of *other* classes. Everything here works on one row band ``(Q, h, W)`` at a time and
returns sums that add up over bands, so an image's figures do not depend on its band height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import torch


@dataclass
class PixelConfidence:
    """Per-pixel figures of one band, each ``(h, w)``."""

    query: torch.Tensor  # the top query (its class is the label before the background rule)
    p1: torch.Tensor  # top-1 class probability
    p2: torch.Tensor  # top-2 class probability (0 when every query belongs to the top class)
    entropy: Optional[torch.Tensor]  # Shannon entropy (nats) of the softmax over queries (None: not asked for)
    class_maps: Dict[int, torch.Tensor] = field(default_factory=dict)  # label -> class probability

    @property
    def margin(self) -> torch.Tensor:
        return self.p1 - self.p2

    def normalized_entropy(self, num_queries: int) -> torch.Tensor:
        """Entropy divided by its maximum ``log Q`` (0 for a single query): in [0, 1]."""
        if self.entropy is None:
            raise ValueError("the entropy was not computed (pixel_confidence(..., entropy=True))")
        if num_queries <= 1:
            return torch.zeros_like(self.entropy)
        return (self.entropy / math.log(num_queries)).clamp_(0.0, 1.0)


def pixel_confidence(scaled: torch.Tensor, query_to_class: torch.Tensor, inplace: bool = False,
                     classes: Sequence[int] = (), entropy: bool = True) -> PixelConfidence:
    """Top-1 / top-2 class probabilities and query entropy of scaled logits ``(Q, h, w)``
    (already multiplied by the logit scale); ``query_to_class`` ``(Q,)`` maps queries to classes.
    ``classes``: labels whose class probability map is also returned (``PixelConfidence.class_maps``).
    ``entropy``: compute the entropy (False: ``PixelConfidence.entropy`` is None; two passes over
    the Q x h x w values fewer). ``inplace``: ``scaled`` may be overwritten. Besides it, one
    ``Q x h x w`` tensor of the same dtype and (when a class's queries are not one run) one
    boolean ``Q x h x w`` mask are held at a time."""
    top, query = scaled.max(0)
    shifted = scaled.sub_(top) if inplace else scaled - top  # <= 0, 0 at the top query
    ex = torch.exp(shifted) if entropy else shifted.exp_()  # without the entropy: no second Q x h x w tensor
    z = ex.sum(0)  # >= 1
    ent = None
    if entropy:  # H = -sum_q p_q log p_q = log Z - sum_q p_q (x_q - top)
        ent = (torch.log(z) - shifted.mul_(ex).sum(0) / z).clamp_(min=0.0)
    del shifted
    maps = {}
    for c in classes:
        own = (query_to_class == int(c)).nonzero().flatten()
        maps[int(c)] = ex[own].amax(0) / z if own.numel() else torch.zeros_like(z)
    if torch.unique_consecutive(query_to_class).numel() == torch.unique(query_to_class).numel():
        # each class's queries one run (the engine's order; one query per class included)
        p2 = _runs_second_class(ex, query, query_to_class) / z
    else:  # synonyms in any order: every query of the top class is left out by a Q x h x w mask
        top_class = query_to_class[query]
        same = query_to_class.view(-1, *([1] * top_class.dim())) == top_class.unsqueeze(0)
        p2 = ex.masked_fill_(same, 0.0).amax(0) / z
    return PixelConfidence(query, 1.0 / z, p2, ent, maps)


def _runs_second_class(ex: torch.Tensor, query: torch.Tensor, query_to_class: torch.Tensor) -> torch.Tensor:
    """The largest of ``ex`` ``(Q, h, w)`` over the queries of every class but the top query's,
    when each class's queries are one run of rows: the top query is zeroed (one scatter; with one
    query per class that is all), the maxima of the runs of one-query classes are taken over
    contiguous slices (views), and each
    synonym run's maximum is zeroed where its class is the top one. The same values as masking
    the top class's queries (maxima are exact), with one pass over ``ex`` instead of a Q x h x w
    comparison, fill and max. ``ex`` is modified."""
    ex.scatter_(0, query.unsqueeze(0), 0.0)
    top_class = query_to_class[query]
    classes, counts = torch.unique_consecutive(query_to_class, return_counts=True)
    best = None

    def fold(m):
        nonlocal best
        best = m if best is None else torch.maximum(best, m, out=best)

    start = singles = 0  # the run being read; the first query of the pending one-query classes
    for c, n in zip(classes.tolist(), counts.tolist()):
        if n > 1:
            if start > singles:
                fold(ex[singles:start].amax(0))
            fold(ex[start:start + n].amax(0).masked_fill_(top_class == c, 0.0))
            singles = start + n
        start += n
    if start > singles:
        fold(ex[singles:start].amax(0))
    return best


@dataclass
class ConfidenceSums:
    """Sums over the pixels of an image (band by band): add two with ``+``; ``summary()`` gives
    the per-image means. ``class_*`` are indexed by the final label (after the background rule)."""

    pixels: int
    top1: float  # sum of the top-1 class probability
    margin: float  # sum of top-1 minus top-2
    removed: int  # pixels the background rule turned into background
    class_pixels: torch.Tensor  # (L,) int64: pixels given each label
    class_top1: torch.Tensor  # (L,) float64: sum of their top-1 class probability

    def __add__(self, other: "ConfidenceSums") -> "ConfidenceSums":
        return ConfidenceSums(
            self.pixels + other.pixels,
            self.top1 + other.top1,
            self.margin + other.margin,
            self.removed + other.removed,
            self.class_pixels + other.class_pixels,
            self.class_top1 + other.class_top1,
        )

    @staticmethod
    def empty(num_labels: int) -> "ConfidenceSums":
        return ConfidenceSums(0, 0.0, 0.0, 0, torch.zeros(num_labels, dtype=torch.int64),
                              torch.zeros(num_labels, dtype=torch.float64))

    def summary(self):
        """``(confidence, margin, removed_share, per_class)``: the means over pixels of the top-1
        probability and of the margin, the share of pixels the background rule removed (each in
        [0, 1]), and per label the mean top-1 probability of its pixels (NaN: no pixel)."""
        n = max(self.pixels, 1)
        counts = self.class_pixels.to(torch.float64)
        per_class = torch.where(counts > 0, self.class_top1 / counts.clamp_min(1.0),
                                torch.full_like(counts, float("nan")))
        return self.top1 / n, self.margin / n, self.removed / n, per_class


def band_sums(conf: PixelConfidence, labels: torch.Tensor, removed: torch.Tensor, num_labels: int) -> ConfidenceSums:
    """The :class:`ConfidenceSums` of one band: ``labels`` ``(h, w)`` final labels, ``removed``
    ``(h, w)`` bool, the pixels the background rule relabelled."""
    flat = labels.reshape(-1).to(torch.int64)
    p1 = conf.p1.reshape(-1).to(torch.float64)
    return ConfidenceSums(
        pixels=flat.numel(),
        top1=float(p1.sum()),
        margin=float(conf.margin.to(torch.float64).sum()),
        removed=int(removed.sum()),
        class_pixels=torch.bincount(flat, minlength=num_labels).cpu(),
        class_top1=torch.bincount(flat, weights=p1, minlength=num_labels).cpu(),
    )
