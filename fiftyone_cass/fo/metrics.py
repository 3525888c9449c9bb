"""Semantic-segmentation metrics with the semantics of mmsegmentation's ``IoUMetric`` (pure numpy).

This is the metric the open-vocabulary segmentation papers report (CASS, CDAM, SCLIP, ...):

* For every image, the pixels whose ground-truth label is ``ignore_index`` (255) are dropped.
* Over the **whole dataset**, per class ``c`` the areas are accumulated:
  ``intersect[c]`` (GT = c and prediction = c), ``area_label[c]`` (GT = c) and
  ``area_pred[c]`` (prediction = c); ``union = area_label + area_pred - intersect``.
* ``IoU[c] = intersect / union`` and ``Acc[c] = intersect / area_label``. A class with
  ``union == 0`` (absent from GT and predictions everywhere) has IoU NaN and is left out of the mean
  (``np.nanmean``); a class absent from the GT but predicted somewhere has IoU 0 and **counts**.
* ``mIoU = nanmean(IoU)``, ``mAcc = nanmean(Acc)``, ``aAcc = sum(intersect) / sum(area_label)``
  (pixel accuracy over the non-ignored pixels).

mmseg computes these from dataset-level sums, not as a mean of per-image scores; so does
:class:`IoUAccumulator`. Per-image scores (:func:`sample_scores`) are extra, for sorting samples.

Labels are class **indices** ``0..C-1``. :class:`LabelMapper` turns arbitrary pixel values (e.g. the
keys of a FiftyOne ``mask_targets`` dict) into indices. Edge cases, decided explicitly:

* A prediction value that is not a class (e.g. 255 in a prediction) counts as a miss: it adds to
  ``area_label`` of the GT class but to no ``area_pred`` (this is what mmseg's ``histc`` does).
* A GT value that is neither a class nor ``ignore_index`` raises :class:`ValueError` naming the
  sample (mmseg would silently drop it from ``area_label`` only); ``strict=False`` treats such
  pixels as ignored instead.
* **Size mismatch** between prediction and GT raises :class:`ValueError` naming the sample and both
  shapes (default, ``resize=None``). With ``resize="nearest"`` the prediction is resized to the GT
  size by nearest neighbour with pixel-centre alignment: GT pixel ``(i, j)`` takes prediction pixel
  ``(floor((i + 0.5) * h / H), floor((j + 0.5) * w / W))`` (as ``cv2.INTER_NEAREST_EXACT`` and
  Pillow's ``NEAREST``). The GT is never resized (the protocols evaluate at GT resolution).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from fiftyone_cass.errors import InvalidInputError, kw, use
# names that mark an id as "not evaluated" (e.g. ``{255: "ignore"}``), compared normalised; the
# vocabulary never makes them classes either
from fiftyone_cass.models.vocabulary import IGNORE_NAMES  # noqa: F401 - re-exported

IGNORE_INDEX = 255

__all__ = [
    "IGNORE_INDEX",
    "LabelMapper",
    "IoUMetrics",
    "IoUAccumulator",
    "confusion_histogram",
    "metrics_from_histogram",
    "class_ious",
    "sample_scores",
    "resize_nearest",
    "align_prediction",
    "format_table",
    "normalize_class_name",
    "ClassMatch",
    "match_classes_by_name",
    "check_ignore_collision",
]


def _name(sample) -> str:
    return f"sample {sample}" if sample is not None else "mask"


def _as_label_array(mask, what: str, sample=None) -> np.ndarray:
    a = np.asarray(mask)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim != 2:
        raise InvalidInputError(
            f"{_name(sample)}: {what} must be a 2-D label map (H, W) of integer class ids, got shape {a.shape}"
            + (" (RGB masks are not supported; store class ids, not colours)" if a.ndim == 3 else "")
        )
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if a.dtype.kind not in "ui":
        if a.dtype.kind == "f" and a.size and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise InvalidInputError(f"{_name(sample)}: {what} must hold integer class ids, got dtype {a.dtype}")
    return a


def normalize_class_name(name) -> str:
    """The form in which two class names are the same class: Unicode NFC, case-folded, runs of
    white space as one space, no leading/trailing space ("Traffic  Light" = "traffic light",
    "café" in NFC = in NFD)."""
    return " ".join(unicodedata.normalize("NFC", str(name)).casefold().split())


def _is_ignore_name(name, ignore_index) -> bool:
    n = normalize_class_name(name)
    return n in IGNORE_NAMES or (ignore_index is not None and n == str(ignore_index))


def check_ignore_collision(targets: Optional[Mapping[int, str]], ignore_index: Optional[int], what: str) -> None:
    """Raises :class:`InvalidInputError` when ``targets`` name a real class (not ``ignore``,
    ``void``, ...) at ``ignore_index``: its pixels would silently not be evaluated."""
    if not targets or ignore_index is None or ignore_index not in targets:
        return
    name = targets[ignore_index]
    if not _is_ignore_name(name, ignore_index):
        raise InvalidInputError(
            f"{what} class {name!r} has id {ignore_index}, the ignore value: its pixels would not be "
            f"evaluated. Pass another {kw('ignore_index')} (or None), or give the class another id"
        )


@dataclass
class ClassMatch:
    """How predicted ids were matched to ground-truth ids (:func:`match_classes_by_name`).

    ``pred_to_gt``: predicted id -> ground-truth id for every predicted class whose name the
    ground truth has; ``unmatched_pred``: names of predicted classes absent from the ground truth
    (their pixels count as misses); ``unmatched_gt``: ground-truth classes no predicted class
    names (never predicted); ``identity``: the ids are compared as they are."""

    pred_to_gt: Dict[int, int]
    unmatched_pred: List[str]
    unmatched_gt: List[str]
    identity: bool

    def lookup(self, miss_value: int) -> np.ndarray:
        """A table ``t`` with ``t[pred] = gt id`` (``miss_value`` for unmatched or unnamed ids)."""
        top = max(list(self.pred_to_gt) + [0])
        t = np.full(max(top + 1, 65536), miss_value, dtype=np.int64)
        for p, g in self.pred_to_gt.items():
            t[p] = g
        return t

    def apply(self, pred: np.ndarray, table: np.ndarray, miss_value: int) -> np.ndarray:
        """``pred`` in ground-truth ids (int64); identity when the ids already agree."""
        if self.identity:
            return pred
        a = np.asarray(pred)
        if a.dtype.kind in "ui" and a.size and int(a.min()) >= 0 and int(a.max()) < len(table):
            return table[a]
        uniq, inv = np.unique(a, return_inverse=True)
        vals = np.array([self.pred_to_gt.get(int(u), miss_value) for u in uniq], dtype=np.int64)
        return vals[inv].reshape(a.shape)


def _names_by_key(targets: Mapping[int, str], ignore_index, what: str) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for v in sorted(targets):
        name = targets[v]
        if v == ignore_index and _is_ignore_name(name, ignore_index):
            continue
        k = normalize_class_name(name)
        if k in out:
            raise InvalidInputError(
                f"{what} mask_targets name class {name!r} twice (ids {out[k]} and {v}, compared case-, space- "
                "and Unicode-insensitively): classes cannot be matched by name"
            )
        out[k] = int(v)
    return out


def match_classes_by_name(
    gt_targets: Mapping[int, str], pred_targets: Mapping[int, str], ignore_index: Optional[int] = IGNORE_INDEX
) -> ClassMatch:
    """Maps predicted ids to ground-truth ids through their class names (compared with
    :func:`normalize_class_name`). When every id names the same class on both sides the ids are
    compared as they are (``identity``)."""
    gt = _names_by_key(gt_targets, ignore_index, "ground-truth")
    pred = _names_by_key(pred_targets, ignore_index, "prediction")
    pred_to_gt = {pv: gt[k] for k, pv in pred.items() if k in gt}
    names_gt = {normalize_class_name(n): n for n in gt_targets.values()}
    names_pred = {normalize_class_name(n): n for n in pred_targets.values()}
    unmatched_pred = [names_pred[k] for k in pred if k not in gt]
    unmatched_gt = [names_gt[k] for k in gt if k not in pred]
    identity = all(p == g for p, g in pred_to_gt.items()) and not unmatched_pred
    return ClassMatch(pred_to_gt, unmatched_pred, unmatched_gt, identity)


def resize_nearest(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D label map to ``shape = (H, W)``, pixel-centre aligned."""
    mask = np.asarray(mask)
    h, w = mask.shape[:2]
    H, W = int(shape[0]), int(shape[1])
    if (h, w) == (H, W):
        return mask
    if h == 0 or w == 0:
        raise InvalidInputError(f"cannot resize an empty mask of shape {mask.shape}")
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return mask[rows[:, None], cols[None, :]]


def align_prediction(pred: np.ndarray, gt_shape: Sequence[int], resize: Optional[str] = None, sample=None) -> np.ndarray:
    """Returns ``pred`` at the GT size, or raises (``resize=None``) if the sizes differ."""
    if tuple(pred.shape[:2]) == tuple(gt_shape[:2]):
        return pred
    if resize is None:
        raise InvalidInputError(
            f"{_name(sample)}: prediction mask is {pred.shape[0]}x{pred.shape[1]} (HxW) but the ground truth is "
            f"{gt_shape[0]}x{gt_shape[1]}; predict at the original image size, or {use('resize', 'nearest')} to "
            "resize the prediction to the ground-truth size (nearest neighbour)"
        )
    if resize != "nearest":
        raise InvalidInputError(f"resize must be None or 'nearest', got {resize!r}")
    return resize_nearest(pred, gt_shape)


class LabelMapper:
    """Maps pixel values to class indices ``0..C-1`` for a fixed, ordered list of class values.

    Args:
        values: the pixel value of each class, in class-index order (e.g. ``range(150)``, or the sorted
            keys of a ``mask_targets`` dict without the ignore value)
        ignore_index: the GT value whose pixels are not evaluated (None: no such value)
    """

    UNKNOWN = -1
    IGNORED = -2

    def __init__(self, values: Iterable[int], ignore_index: Optional[int] = IGNORE_INDEX):
        self.values = [int(v) for v in values]
        if len(set(self.values)) != len(self.values):
            raise InvalidInputError(f"class values must be unique, got {self.values}")
        if ignore_index is not None and int(ignore_index) in self.values:
            raise InvalidInputError(f"{kw('ignore_index')} {ignore_index} is also a class value")
        if any(v < 0 for v in self.values):
            raise InvalidInputError("class values must be non-negative integers")
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.index = {v: i for i, v in enumerate(self.values)}
        top = max(self.values + [self.ignore_index or 0])
        self._lut = None
        if top < 65536:
            lut = np.full(65536, self.UNKNOWN, dtype=np.int32)
            lut[np.asarray(self.values, dtype=np.int64)] = np.arange(len(self.values), dtype=np.int32)
            if self.ignore_index is not None:
                lut[self.ignore_index] = self.IGNORED
            self._lut = lut

    @classmethod
    def contiguous(cls, num_classes: int, ignore_index: Optional[int] = IGNORE_INDEX) -> "LabelMapper":
        return cls(range(int(num_classes)), ignore_index=ignore_index)

    @property
    def num_classes(self) -> int:
        return len(self.values)

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        """int32 array of class indices; ``UNKNOWN`` (-1) for other values, ``IGNORED`` (-2) for ignore."""
        a = np.asarray(mask)
        if a.size == 0:
            return np.zeros(a.shape, dtype=np.int32)
        if self._lut is not None and a.dtype.kind in "ui":
            if a.dtype.kind == "u" and a.dtype.itemsize <= 2:
                return self._lut[a]
            if a.min() >= 0 and a.max() < 65536:
                return self._lut[a]
        return self._map_unique(a)

    def _map_unique(self, a: np.ndarray) -> np.ndarray:
        uniq, inv = np.unique(a, return_inverse=True)
        table = np.array(
            [
                self.IGNORED if (self.ignore_index is not None and int(u) == self.ignore_index)
                else self.index.get(int(u), self.UNKNOWN)
                for u in uniq
            ],
            dtype=np.int32,
        )
        return table[inv].reshape(a.shape)


def confusion_histogram(
    pred: np.ndarray,
    gt: np.ndarray,
    mapper: LabelMapper,
    *,
    resize: Optional[str] = None,
    strict: bool = True,
    sample=None,
) -> np.ndarray:
    """Pixel counts of one image as an int64 array of shape ``(C, C + 1)``.

    Row = GT class index, column = predicted class index; column ``C`` counts pixels whose predicted
    value is not a class. Pixels with GT ``ignore_index`` are not counted.
    """
    gt = _as_label_array(gt, "ground truth", sample)
    pred = _as_label_array(pred, "prediction", sample)
    pred = align_prediction(pred, gt.shape, resize=resize, sample=sample)
    C = mapper.num_classes
    g = mapper(gt).ravel()
    p = mapper(pred).ravel()
    unknown = g == LabelMapper.UNKNOWN
    if strict and unknown.any():
        bad = np.unique(np.asarray(gt).ravel()[unknown])[:10].tolist()
        raise InvalidInputError(
            f"{_name(sample)}: ground truth holds values {bad} that are neither classes "
            f"({mapper.values[:5]}{'...' if C > 5 else ''}) nor the ignore index {mapper.ignore_index}; "
            f"check the mask_targets / protocol, or {use('strict', False)} to ignore such pixels"
        )
    valid = g >= 0
    g = g[valid].astype(np.int64)
    p = p[valid].astype(np.int64)
    p[p < 0] = C  # predicted value that is not a class: a miss for the GT class
    return np.bincount(g * (C + 1) + p, minlength=C * (C + 1)).reshape(C, C + 1)


@dataclass
class IoUMetrics:
    """Areas and scores; per-class arrays have one entry per class index. Scores are fractions (0..1)."""

    intersect: np.ndarray
    area_label: np.ndarray
    area_pred: np.ndarray
    union: np.ndarray
    iou: np.ndarray
    acc: np.ndarray
    mIoU: float
    mAcc: float
    aAcc: float
    class_names: Optional[List[str]] = field(default=None)

    def summary(self) -> Dict[str, float]:
        return {"mIoU": self.mIoU, "mAcc": self.mAcc, "aAcc": self.aAcc}

    def to_json(self) -> Dict[str, object]:
        """The summary figures and each class's IoU (``--summary-json`` of ``eval``)."""
        names = self.class_names or [str(i) for i in range(len(self.iou))]
        return dict(self.summary(), iou={str(n): float(v) for n, v in zip(names, self.iou)})

    def per_class(self) -> Dict[str, Dict[str, float]]:
        names = self.class_names or [str(i) for i in range(len(self.iou))]
        return {n: {"IoU": float(i), "Acc": float(a)} for n, i, a in zip(names, self.iou, self.acc)}


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def metrics_from_histogram(hist: np.ndarray, class_names: Optional[Sequence[str]] = None) -> IoUMetrics:
    """mmseg ``IoUMetric`` scores from a ``(C, C)`` or ``(C, C + 1)`` histogram (rows = GT)."""
    hist = np.asarray(hist, dtype=np.int64)
    C = hist.shape[0]
    if hist.ndim != 2 or hist.shape[1] not in (C, C + 1):
        raise InvalidInputError(f"histogram must have shape (C, C) or (C, C+1), got {hist.shape}")
    square = hist[:, :C]
    intersect = np.diag(square).copy()
    area_label = hist.sum(axis=1)
    area_pred = square.sum(axis=0)
    union = area_label + area_pred - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union.astype(np.float64)
        acc = intersect / area_label.astype(np.float64)
        total = area_label.sum()
        aAcc = float(intersect.sum() / total) if total > 0 else float("nan")
    return IoUMetrics(
        intersect=intersect,
        area_label=area_label,
        area_pred=area_pred,
        union=union,
        iou=iou,
        acc=acc,
        mIoU=_nanmean(iou),
        mAcc=_nanmean(acc),
        aAcc=aAcc,
        class_names=list(class_names) if class_names is not None else None,
    )


def class_ious(hist: np.ndarray, class_names: Sequence[str]) -> Dict[str, float]:
    """``{class: IoU}`` of one image's ``(C, C + 1)`` histogram, for the classes present in its GT
    or prediction (missed pixels, column ``C``, count in the GT class's union): the per-sample
    class IoU of the evaluation backend (:func:`sample_scores` is their mean) and of the App panel."""
    m = metrics_from_histogram(hist, class_names)
    return {str(n): float(v) for n, v in zip(class_names, m.iou) if np.isfinite(v)}


def sample_scores(hist: np.ndarray) -> Dict[str, Optional[float]]:
    """Per-image ``iou`` (nan-mean IoU over the classes present in its GT or prediction, the mean of
    :func:`class_ious`) and ``pixel_acc``; None where undefined (no evaluated pixel)."""
    m = metrics_from_histogram(hist)
    out = {"iou": m.mIoU, "pixel_acc": m.aAcc}
    return {k: (None if v is None or not np.isfinite(v) else float(v)) for k, v in out.items()}


class IoUAccumulator:
    """Accumulates the dataset-level histogram image by image.

    Example::

        acc = IoUAccumulator(num_classes=150)
        for pred, gt in pairs:
            acc.update(pred, gt)
        print(acc.compute().mIoU)
    """

    def __init__(
        self,
        num_classes: Optional[int] = None,
        *,
        mapper: Optional[LabelMapper] = None,
        ignore_index: Optional[int] = IGNORE_INDEX,
        class_names: Optional[Sequence[str]] = None,
        resize: Optional[str] = None,
        strict: bool = True,
    ):
        if mapper is None:
            if num_classes is None:
                raise InvalidInputError("pass num_classes or a LabelMapper")
            mapper = LabelMapper.contiguous(num_classes, ignore_index=ignore_index)
        elif num_classes is not None and num_classes != mapper.num_classes:
            raise InvalidInputError(f"num_classes={num_classes} but the mapper has {mapper.num_classes} classes")
        if resize not in (None, "nearest"):
            raise InvalidInputError(f"resize must be None or 'nearest', got {resize!r}")
        if class_names is not None and len(class_names) != mapper.num_classes:
            raise InvalidInputError(f"{len(class_names)} class names for {mapper.num_classes} classes")
        self.mapper = mapper
        self.class_names = list(class_names) if class_names is not None else None
        self.resize = resize
        self.strict = strict
        C = mapper.num_classes
        self.hist = np.zeros((C, C + 1), dtype=np.int64)
        self.num_images = 0

    @property
    def num_classes(self) -> int:
        return self.mapper.num_classes

    def update(self, pred: np.ndarray, gt: np.ndarray, sample=None) -> np.ndarray:
        """Adds one image; returns its own ``(C, C + 1)`` histogram."""
        h = confusion_histogram(pred, gt, self.mapper, resize=self.resize, strict=self.strict, sample=sample)
        self.hist += h
        self.num_images += 1
        return h

    def compute(self) -> IoUMetrics:
        return metrics_from_histogram(self.hist, self.class_names)


def format_table(
    metrics: IoUMetrics,
    title: Optional[str] = None,
    reference: Optional[Mapping[str, float]] = None,
    per_class: bool = True,
) -> str:
    """An mmseg-style text table, percentages with 2 decimals (NaN classes shown as ``nan``).

    ``reference`` maps a label (e.g. "paper CASS") to a published mIoU in percent, shown for comparison.
    """
    lines = []
    if title:
        lines.append(title)
    if per_class:
        names = metrics.class_names or [str(i) for i in range(len(metrics.iou))]
        w = max([5] + [len(n) for n in names])
        lines.append(f"{'Class':<{w}} | {'IoU':>6} | {'Acc':>6}")
        lines.append("-" * (w + 18))
        for n, i, a in zip(names, metrics.iou, metrics.acc):
            lines.append(f"{n:<{w}} | {i * 100:6.2f} | {a * 100:6.2f}")
        lines.append("")
    lines.append(f"{'aAcc':>7} | {'mIoU':>7} | {'mAcc':>7}")
    lines.append(f"{metrics.aAcc * 100:7.2f} | {metrics.mIoU * 100:7.2f} | {metrics.mAcc * 100:7.2f}")
    if reference:
        for k, v in reference.items():
            lines.append(f"{k}: mIoU {v:.2f}")
    return "\n".join(lines)
