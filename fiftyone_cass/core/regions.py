"""Region voting (SPEC K.5): every region of a label map gets the label its pixels vote for.

Pure numpy/torch, no I/O. A region is a boolean mask over a box of the image
(:class:`Region`); regions come from wherever the caller has them (SAM / SAM2 instance masks, a
map of region ids: :func:`regions_from_id_map`). Given the final label map:

* ``majority``: a region's label is the most frequent label among its pixels (ties: the smallest
  id); the background label votes like any other;
* ``mean``: the argmax of the mean class probabilities of its pixels (ties: the smallest id),
  from per-region sums that :class:`RegionSums` collects band by band while the label map is
  computed (the probabilities of a whole image are never held at once); with a background
  threshold the region is background when its mean top probability is under it, as a pixel is;
* regions smaller than ``min_area`` pixels (and empty ones) are ignored;
* overlapping regions: every vote is taken on the label map *before* any region is painted, then
  larger regions are painted first and smaller ones after (they win). Regions of equal area are
  ordered by their content (position, then mask bytes), never by their place in the input, so
  the result does not depend on the order of the regions;
* pixels outside every (kept) region keep their label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

VOTES = ("majority", "mean")


@dataclass(frozen=True)
class Region:
    """A region: ``mask`` (bool ``(h, w)``) placed with its top-left pixel at ``(y0, x0)``."""

    y0: int
    x0: int
    mask: np.ndarray

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def box(self) -> Tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` in image pixels."""
        h, w = self.mask.shape
        return self.y0, self.y0 + h, self.x0, self.x0 + w

    def key(self) -> tuple:
        """The order of regions of equal area: by content only."""
        h, w = self.mask.shape
        return (self.y0, self.x0, h, w, np.packbits(self.mask, axis=None).tobytes())


def region(y0: int, x0: int, mask, size: Tuple[int, int], name: str = "region") -> Region:
    """A checked :class:`Region` inside an image of ``size`` ``(H, W)``: a 2-D mask, inside the
    image. Raises ``ValueError`` naming ``name`` and the problem."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{name}: its mask has {m.ndim} dimensions, not 2")
    m = m.astype(bool, copy=False)
    h, w = m.shape
    H, W = size
    if y0 < 0 or x0 < 0 or y0 + h > H or x0 + w > W:
        raise ValueError(f"{name}: its mask ({w}x{h} at x={x0}, y={y0}) lies outside the {W}x{H} image")
    return Region(int(y0), int(x0), np.ascontiguousarray(m))


def regions_from_id_map(ids: np.ndarray, background: int = 0) -> List[Region]:
    """One region per value of a map of region ids ``(H, W)`` other than ``background`` (pixels
    outside every region), each cropped to its bounding box, in increasing id order."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"a map of region ids has 2 dimensions, not {ids.ndim}")
    flat = ids.ravel()
    values = np.unique(flat)
    out = []
    for v in values:
        if v == background:
            continue
        ys, xs = np.nonzero(ids == v)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        out.append(Region(int(y0), int(x0), ids[y0:y1, x0:x1] == v))
    return out


def paint_order(regions: Sequence[Region], min_area: int = 0) -> List[int]:
    """Indices of the regions to paint, in painting order: area at least ``max(min_area, 1)``,
    larger first, equal areas by :meth:`Region.key`."""
    keep = [(r.area, r.key(), i) for i, r in enumerate(regions)]
    keep = [k for k in keep if k[0] >= max(int(min_area), 1)]
    keep.sort(key=lambda k: (-k[0], k[1]))
    return [i for _, _, i in keep]


def majority_label(label_map: np.ndarray, r: Region) -> int:
    """The most frequent label of the region's pixels (ties: the smallest id)."""
    y0, y1, x0, x1 = r.box
    counts = np.bincount(label_map[y0:y1, x0:x1][r.mask].astype(np.int64, copy=False))
    return int(np.argmax(counts))


def mean_label(class_sums: np.ndarray, area: int, threshold: float = 0.0, background: Optional[int] = None) -> int:
    """The argmax of a region's mean class probabilities (``class_sums`` ``(L,)`` over its
    ``area`` pixels; ties: the smallest id); background when a threshold applies and the mean
    top probability is under it."""
    mean = np.asarray(class_sums, np.float64) / max(int(area), 1)
    label = int(np.argmax(mean))
    if threshold > 0 and mean[label] < threshold:
        return int(background or 0)
    return label


def vote(label_map: np.ndarray, regions: Sequence[Region], mode: str = "majority", min_area: int = 0,
         class_sums: Optional[np.ndarray] = None, threshold: float = 0.0,
         background: Optional[int] = None) -> Tuple[np.ndarray, int]:
    """The label map after region voting (module doc), and the number of regions painted.
    ``class_sums`` ``(len(regions), L)``: each region's sum of class probabilities (``mean``
    only, see :class:`RegionSums`). ``label_map`` is not modified."""
    if mode not in VOTES:
        raise ValueError(f"region vote {mode!r} is not allowed: one of {', '.join(VOTES)}")
    if mode == "mean":
        if class_sums is None or len(class_sums) != len(regions):
            raise ValueError("the mean vote needs the class-probability sums of every region")
    order = paint_order(regions, min_area)
    labels = {}
    for i in order:  # every vote on the label map before any painting
        r = regions[i]
        labels[i] = majority_label(label_map, r) if mode == "majority" else mean_label(
            class_sums[i], r.area, threshold, background)
    out = label_map.copy()
    for i in order:
        r = regions[i]
        y0, y1, x0, x1 = r.box
        out[y0:y1, x0:x1][r.mask] = labels[i]
    return out, len(order)


class RegionSums:
    """Per-region sums of class probabilities ``(R, L)`` (float64), collected one row band of
    probabilities ``(L, b - a, W)`` (torch or numpy) at a time: the same sums (up to float64
    rounding) whatever the bands.

    Per band and region, one matrix-vector product of the region's box in the band ``(L, pixels)``
    with its mask (float32, made once per region), accumulated in float64 on the probabilities'
    device: labels x the regions' boxes of work, in BLAS. (A one-pass form, summing every band
    once per cell of pixels covered by the same regions, was measured slower on the CPU for 50 to
    200 regions: benchmarks/RESULTS.md, "Region voting".)"""

    def __init__(self, regions: Sequence[Region], num_labels: int):
        self.regions = list(regions)
        self.num_labels = int(num_labels)
        self._sums = None  # (R, L) float64 torch tensor on the probabilities' device
        self._masks = {}  # (region, dtype, device) -> its mask as (h, w) floats

    def _mask(self, i: int, like):
        key = (i, like.dtype, like.device)
        m = self._masks.get(key)
        if m is None:
            import torch

            m = self._masks[key] = torch.as_tensor(self.regions[i].mask, device=like.device).to(like.dtype)
        return m

    def add(self, probs, rows: Tuple[int, int]) -> None:
        import torch

        a, b = rows
        t = probs if isinstance(probs, torch.Tensor) else torch.from_numpy(np.asarray(probs))
        if self._sums is None:
            self._sums = torch.zeros((len(self.regions), t.shape[0]), dtype=torch.float64, device=t.device)
        for i, r in enumerate(self.regions):
            y0, y1, x0, x1 = r.box
            s, e = max(y0, a), min(y1, b)
            if s >= e or not r.mask[s - y0 : e - y0].any():
                continue
            part = t[:, s - a : e - a, x0:x1].reshape(t.shape[0], -1)  # a copy of the box's rows
            self._sums[i] += part @ self._mask(i, part)[s - y0 : e - y0].reshape(-1)

    @property
    def sums(self) -> np.ndarray:
        """``(R, L)`` float64: each region's sum of class probabilities over the bands added."""
        if self._sums is None:
            return np.zeros((len(self.regions), self.num_labels), np.float64)
        return self._sums.to("cpu").numpy()
