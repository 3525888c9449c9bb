"""mIoU evaluation as a FiftyOne segmentation evaluation backend.

``evaluate_iou(view, "predictions", "ground_truth", eval_key="eval")`` runs
``view.evaluate_segmentations(..., method=IoUEvaluationConfig)``: a custom backend (FiftyOne's
documented extension point) that computes the mmseg ``IoUMetric`` numbers of
:mod:`fiftyone_cass.fo.metrics` in one pass over the masks and stores them as a normal
FiftyOne evaluation run:

* ``dataset.load_evaluation_results(eval_key)`` returns an :class:`IoUSegmentationResults`
  (a :class:`fiftyone.utils.eval.segmentation.SegmentationResults`) whose ``metrics()`` include
  ``mIoU``, ``mAcc`` and ``aAcc`` next to FiftyOne's accuracy/precision/recall, plus
  ``iou_metrics()`` / ``per_class_iou()`` / ``print_iou_table()``;
* the ``@fiftyone-cass/cass/mean_iou`` custom metric (when the plugin is installed) puts mIoU in the
  Summary table of the App's Model Evaluation panel;
* per-sample fields ``<eval_key>_iou`` (the image's nan-mean IoU) and ``<eval_key>_pixel_acc``, to
  sort by the worst samples.

The class list comes from ``mask_targets`` (argument, else ``dataset.mask_targets[gt_field]``, else
``dataset.default_mask_targets``, else the values observed in the masks); the ``ignore_index``
(255) is never a class: ``mask_targets`` may name it ``ignore``/``void``/..., and naming a real
class at that id is refused. When the prediction field's ``mask_targets`` differ from the
ground truth's, predicted ids are mapped to ground-truth ids by class name
(:func:`prediction_class_match`).
"""

from __future__ import annotations

import logging
import uuid
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

import fiftyone as fo
import fiftyone.core.fields as fof
import fiftyone.utils.eval.segmentation as fous

from fiftyone_cass.errors import InvalidInputError, kw, use
from fiftyone_cass.fo.metrics import (
    IGNORE_INDEX,
    ClassMatch,
    IoUAccumulator,
    IoUMetrics,
    LabelMapper,
    check_ignore_collision,
    class_ious,
    format_table,
    match_classes_by_name,
    metrics_from_histogram,
    sample_scores,
)

logger = logging.getLogger(__name__)

PLUGIN_NAME = "@fiftyone-cass/cass"
MEAN_IOU_METRIC = f"{PLUGIN_NAME}/mean_iou"
METHOD = "mmseg_iou"


def _sample_name(sample) -> str:
    return f"{sample.filepath} (id {sample.id})"


def resolve_mask_targets(samples, gt_field: str, mask_targets=None) -> Optional[Dict[int, str]]:
    """``mask_targets`` argument, else the dataset's for ``gt_field``, else its default; None if none."""
    if mask_targets is None:
        ds = samples._dataset
        mask_targets = ds.mask_targets.get(gt_field) or ds.default_mask_targets or None
    if not mask_targets:
        return None
    if fof.is_rgb_mask_targets(mask_targets):
        raise InvalidInputError("RGB mask targets are not supported by the mIoU evaluation; use integer class ids")
    return {int(k): str(v) for k, v in mask_targets.items()}


def _observed_values(samples, fields: Sequence[str], ignore_index) -> List[int]:
    values = set()
    for sample in samples.select_fields(list(fields)).iter_samples():
        for f in fields:
            seg = sample[f]
            if seg is not None and seg.has_mask:
                m = seg.get_mask()
                if m.ndim == 3:
                    raise InvalidInputError(f"sample {_sample_name(sample)}: field {f!r} holds an RGB mask; integer class ids are required")
                values.update(int(v) for v in np.unique(m))
    values.discard(ignore_index)
    return sorted(values)


def _unique_names(values: Sequence[int], targets: Dict[int, str]) -> List[str]:
    names = [targets.get(v, str(v)) for v in values]
    seen: Dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    # FiftyOne keys confusion matrices by class name: make repeated names unique
    return [f"{n} ({v})" if seen[n] > 1 else n for n, v in zip(names, values)]


def prediction_class_match(samples, gt_field, pred_field, gt_targets, mask_targets, ignore_index) -> Optional[ClassMatch]:
    """How the prediction's ids become ground-truth ids (None: compared as they are).

    Both fields have ``mask_targets`` (in ``dataset.mask_targets``) and they differ: predicted ids
    are mapped to the ground-truth ids of the same class name (case, space and Unicode form
    ignored); unmatched names are reported with a warning. One side without ``mask_targets``:
    ids are compared, with a warning saying so. A class named at ``ignore_index`` is refused
    where ids are compared (its pixels would silently not count)."""
    check_ignore_collision(gt_targets, ignore_index, f"ground-truth field {gt_field!r}:")
    if mask_targets is not None:  # given for the evaluation: both fields use them
        return None
    ds = samples._dataset
    pred_targets = ds.mask_targets.get(pred_field) or ds.default_mask_targets or None
    pred_targets = {int(k): str(v) for k, v in pred_targets.items()} if pred_targets else None
    if not gt_targets or not pred_targets:
        if gt_targets or pred_targets:
            has, lacks = (gt_field, pred_field) if gt_targets else (pred_field, gt_field)
            msg = (f"{lacks!r} has no mask_targets (class names) but {has!r} has: comparing pixel values "
                   f"of {pred_field!r} with those of {gt_field!r} as class ids, unchecked")
            logger.warning(msg)
        check_ignore_collision(pred_targets, ignore_index, f"prediction field {pred_field!r}:")
        return None
    match = match_classes_by_name(gt_targets, pred_targets, ignore_index)
    if match.unmatched_pred:
        msg = (f"{len(match.unmatched_pred)} predicted class(es) of {pred_field!r} have no class of that name in "
               f"{gt_field!r} (their pixels count as misses): {match.unmatched_pred[:20]}")
        logger.warning(msg)
    if match.identity:
        return match
    logger.info("%r and %r name their classes with other ids: predictions mapped to ground-truth ids by name",
                pred_field, gt_field)
    return match


#: why this plugin's aAcc and FiftyOne's "Accuracy" differ (the operator's result and the README)
ACCURACY_NOTE = (
    "aAcc (mmsegmentation) = correct pixels / all evaluated ground-truth pixels; pixels predicted as a class "
    "that the ground truth lacks count as wrong. FiftyOne's Model Evaluation panel computes its Accuracy "
    "from the confusion matrix of the ground-truth classes, which leaves those pixels out: with unmatched "
    "predicted classes it reads higher than aAcc")


def class_match_notice(results) -> Optional[str]:
    """One sentence on the classes that could not be compared (None when every predicted class
    has a ground-truth class of its name): predicted classes that the ground truth lacks (their
    pixels count as misses), and ground-truth classes no predicted class names."""
    cm = getattr(results, "class_match", None) or {}
    pred, gt = list(cm.get("unmatched_pred_classes") or []), list(cm.get("unmatched_gt_classes") or [])
    if not pred:
        return None
    cfg = results.config

    def names(xs):
        return ", ".join(repr(x) for x in xs[:20]) + (f" and {len(xs) - 20} more" if len(xs) > 20 else "")

    msg = (f"{len(pred)} predicted class(es) of '{cfg.pred_field}' have no class of that name in "
           f"'{cfg.gt_field}': {names(pred)}; their pixels count as misses (aAcc, IoU)")
    if gt:
        msg += f". Ground-truth classes no predicted class names: {names(gt)}"
    return msg


def evaluation_fields(eval_key: str) -> List[str]:
    """The per-sample fields an evaluation ``eval_key`` writes (and deletes with it)."""
    return [f"{eval_key}_iou", f"{eval_key}_pixel_acc"]


class EvaluationFieldsExistError(InvalidInputError):
    """A per-sample field of the evaluation exists and is not the evaluation's own."""

    def __init__(self, dataset_name: str, field: str, eval_key: str):
        self.field, self.eval_key = field, eval_key
        super().__init__(
            f"field {field!r} of dataset {dataset_name!r} exists and was not written by an evaluation {eval_key!r}: "
            f"the evaluation would write {' and '.join(evaluation_fields(eval_key))} and delete them if it is deleted "
            f"or fails; choose another {kw('eval_key')} (nothing was changed)"
        )


def check_evaluation_fields(dataset, eval_key: str) -> None:
    """Refuses (:class:`EvaluationFieldsExistError`, before anything is written) an evaluation
    whose per-sample fields exist while ``eval_key`` is not an evaluation of ``dataset``: those
    fields are the user's, and FiftyOne deletes an evaluation's fields when it fails or is deleted."""
    if eval_key in dataset.list_evaluations():
        return  # its fields are its own (overwrite replaces them)
    for f in evaluation_fields(eval_key):
        if dataset.has_sample_field(f):
            raise EvaluationFieldsExistError(dataset.name, f, eval_key)


class IoUEvaluationConfig(fous.SegmentationEvaluationConfig):
    """Config of the mmseg-IoU segmentation backend (``method="mmseg_iou"``).

    Args:
        pred_field: predicted :class:`fiftyone.core.labels.Segmentation` field
        gt_field: ground-truth :class:`fiftyone.core.labels.Segmentation` field
        ignore_index (255): GT value that is not evaluated (None: every value is evaluated)
        resize (None): None raises on a prediction/GT size mismatch; ``"nearest"`` resizes the
            prediction to the GT size (nearest neighbour, pixel-centre aligned)
        strict (True): raise on GT values that are neither classes nor ``ignore_index``
            (False: treat them as ignored)
        skip_missing (False): skip samples whose prediction mask is missing (default: raise).
            Samples without a GT mask are always skipped, with a warning, as FiftyOne does.
    """

    def __init__(
        self,
        pred_field,
        gt_field,
        ignore_index=IGNORE_INDEX,
        resize=None,
        strict=True,
        skip_missing=False,
        compute_dice=False,
        custom_metrics=None,
        **kwargs,
    ):
        if resize not in (None, "nearest"):
            raise InvalidInputError(f"resize must be None or 'nearest', got {resize!r}")
        super().__init__(pred_field, gt_field, compute_dice=compute_dice, custom_metrics=custom_metrics, **kwargs)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.resize = resize
        self.strict = bool(strict)
        self.skip_missing = bool(skip_missing)

    @property
    def method(self):
        return METHOD


class IoUEvaluation(fous.SegmentationEvaluation):
    """mmseg ``IoUMetric`` semantics (dataset-level intersections/unions, 255 ignored, nan-mean)."""

    def _fields(self, eval_key) -> List[str]:
        return evaluation_fields(eval_key)

    def register_samples(self, samples, eval_key):
        if eval_key is None:
            return
        if samples._is_frame_field(self.config.gt_field):
            raise InvalidInputError("video (frame-level) segmentations are not supported by the mIoU evaluation")
        for f in self._fields(eval_key):
            samples._dataset.add_sample_field(f, fof.FloatField)

    def get_fields(self, samples, eval_key, include_custom_metrics=True):
        fields = self._fields(eval_key)
        if include_custom_metrics:
            fields.extend(self.get_custom_metric_fields(samples, eval_key))
        return fields

    def cleanup(self, samples, eval_key):
        samples._dataset.delete_sample_fields(self._fields(eval_key), error_level=1)
        self.cleanup_custom_metrics(samples, eval_key)
        samples._delete_empty_sidebar_group(eval_key)

    def evaluate_samples(self, samples, eval_key=None, mask_targets=None, progress=None):
        cfg = self.config
        pred_field, gt_field = cfg.pred_field, cfg.gt_field
        if samples._is_frame_field(gt_field):
            raise InvalidInputError("video (frame-level) segmentations are not supported by the mIoU evaluation")

        targets = resolve_mask_targets(samples, gt_field, mask_targets)
        if targets is None:
            logger.info("No mask_targets for %r: using the observed mask values as classes", gt_field)
            values = _observed_values(samples, (gt_field, pred_field), cfg.ignore_index)
            targets = {}
        else:
            values = sorted(v for v in targets if v != cfg.ignore_index)
        if not values:
            raise InvalidInputError(f"no classes to evaluate for field {gt_field!r}")
        classes = _unique_names(values, targets)
        # predictions in ground-truth ids, matched by class name where both fields name them
        match = prediction_class_match(samples, gt_field, pred_field, targets or None, mask_targets, cfg.ignore_index)
        miss_value = max(values + [cfg.ignore_index or 0]) + 1  # neither a class nor ignored: a miss
        table = match.lookup(miss_value) if match is not None and not match.identity else None

        mapper = LabelMapper(values, ignore_index=cfg.ignore_index)
        acc = IoUAccumulator(mapper=mapper, class_names=classes, resize=cfg.resize, strict=cfg.strict)
        C = mapper.num_classes
        matches, missed = [], []
        save = eval_key is not None
        if save:
            iou_field, pacc_field = self._fields(eval_key)

        view = samples.select_fields([gt_field, pred_field])
        skipped = []  # [sample name, reason]: what the CLI and the App list in their own words
        for sample in view.iter_samples(progress=progress, autosave=save):
            gt_seg = sample[gt_field]
            if gt_seg is None or not gt_seg.has_mask:
                skipped.append([_sample_name(sample), f"no ground-truth mask in {gt_field!r}"])
                warnings.warn(f"Skipping sample {_sample_name(sample)}: no ground-truth mask in {gt_field!r}")
                continue
            pred_seg = sample[pred_field]
            if pred_seg is None or not pred_seg.has_mask:
                if cfg.skip_missing:
                    skipped.append([_sample_name(sample), f"no prediction mask in {pred_field!r}"])
                    warnings.warn(f"Skipping sample {_sample_name(sample)}: no prediction mask in {pred_field!r}")
                    continue
                raise InvalidInputError(
                    f"sample {_sample_name(sample)} has a ground-truth mask but no prediction mask in "
                    f"{pred_field!r}; predict every sample of the view, or {use('skip_missing', True)}"
                )
            try:
                gt = gt_seg.get_mask()
                pred = pred_seg.get_mask()
            except Exception as e:
                raise InvalidInputError(f"sample {_sample_name(sample)}: could not read a mask: {e}") from e
            if table is not None:
                pred = match.apply(pred, table, miss_value)
            h = acc.update(pred, gt, sample=_sample_name(sample))
            for i, j in zip(*np.nonzero(h[:, :C])):
                matches.append((classes[i], classes[j], int(h[i, j]), gt_seg.id, pred_seg.id))
            for i in np.nonzero(h[:, C])[0]:  # FiftyOne's matches have no "miss" class: kept aside
                missed.append([classes[i], int(h[i, C]), gt_seg.id])
            if save:
                s = sample_scores(h)
                sample[iou_field] = s["iou"]
                sample[pacc_field] = s["pixel_acc"]

        return IoUSegmentationResults(
            samples,
            cfg,
            eval_key,
            acc.hist[:, :C],
            classes,
            matches=matches,
            missing=None,
            missed_pixels=acc.hist[:, C],
            missed_matches=missed,
            class_values=values,
            class_match=None if match is None else {
                "pred_to_gt": sorted([int(p), int(g)] for p, g in match.pred_to_gt.items()),
                "unmatched_pred_classes": list(match.unmatched_pred),
                "unmatched_gt_classes": list(match.unmatched_gt),
                "mapped_by_name": not match.identity,
            },
            skipped=skipped,
            num_evaluated=len(view) - len(skipped),
            backend=self,
        )


class IoUSegmentationResults(fous.SegmentationResults):
    """:class:`SegmentationResults` plus the mmseg IoU numbers.

    Extra attributes: ``missed_pixels`` (per GT class, pixels predicted with a value that is not a
    class), ``missed_matches`` (``[GT class, pixels, GT label id]`` of those pixels per sample: the
    per-sample IoU counts them, :func:`sample_histograms`), ``class_values`` (the pixel value of
    each class) and ``class_match`` (None when ids
    were compared as they are; else ``pred_to_gt`` pairs, ``unmatched_pred_classes``,
    ``unmatched_gt_classes`` and ``mapped_by_name``), ``skipped`` ([sample, reason] of the samples
    left out: no ground truth, or no prediction with ``skip_missing``) and ``num_evaluated``.
    """

    def __init__(
        self,
        samples,
        config,
        eval_key,
        pixel_confusion_matrix,
        classes,
        matches=None,
        missing=None,
        custom_metrics=None,
        missed_pixels=None,
        class_values=None,
        class_match=None,
        skipped=None,
        num_evaluated=None,
        backend=None,
        missed_matches=None,
    ):
        super().__init__(
            samples,
            config,
            eval_key,
            pixel_confusion_matrix,
            classes,
            matches=matches,
            missing=missing,
            custom_metrics=custom_metrics,
            backend=backend,
        )
        n = len(self.pixel_confusion_matrix)
        self.missed_pixels = np.zeros(n, dtype=np.int64) if missed_pixels is None else np.asarray(missed_pixels, dtype=np.int64)
        self.class_values = list(range(n)) if class_values is None else [int(v) for v in class_values]
        self.missed_matches = [[str(c), int(w), str(g)] for c, w, g in (missed_matches or [])]
        self.class_match = class_match
        self.skipped = [list(x) for x in skipped or []]  # [sample name, reason] of skipped samples
        self.num_evaluated = None if num_evaluated is None else int(num_evaluated)

    def skipped_lines(self, limit: int = 20) -> List[str]:
        """``SKIPPED <sample>: <reason>`` per sample left out (at most ``limit``, then a count)."""
        skipped = self.skipped or []
        lines = [f"SKIPPED {name}: {why}" for name, why in skipped[:limit]]
        return lines + ([f"... and {len(skipped) - limit} more"] if len(skipped) > limit else [])

    @classmethod
    def _from_dict(cls, d, samples, config, eval_key, **kwargs):
        return super()._from_dict(
            d,
            samples,
            config,
            eval_key,
            missed_pixels=d.get("missed_pixels"),
            missed_matches=d.get("missed_matches"),
            class_values=d.get("class_values"),
            class_match=d.get("class_match"),
            skipped=d.get("skipped"),
            num_evaluated=d.get("num_evaluated"),
            **kwargs,
        )

    def histogram(self) -> np.ndarray:
        """``(C, C + 1)`` histogram: confusion matrix plus the missed-pixel column."""
        cm = np.asarray(self.pixel_confusion_matrix, dtype=np.int64)
        return np.concatenate([cm, self.missed_pixels.reshape(-1, 1)], axis=1)

    def iou_metrics(self) -> IoUMetrics:
        return metrics_from_histogram(self.histogram(), [str(c) for c in self.classes])

    def mean_iou(self) -> float:
        return self.iou_metrics().mIoU

    def per_class_iou(self) -> Dict[str, Optional[float]]:
        """Class name -> IoU (None for classes absent from both GT and predictions)."""
        m = self.iou_metrics()
        return {n: (float(v) if np.isfinite(v) else None) for n, v in zip(m.class_names, m.iou)}

    def metrics(self, *args, **kwargs):
        out = super().metrics(*args, **kwargs)
        m = self.iou_metrics()
        out.update({"mIoU": m.mIoU, "mAcc": m.mAcc, "aAcc": m.aAcc})
        return out

    def print_iou_table(self, title=None, per_class=True):
        print(format_table(self.iou_metrics(), title=title, per_class=per_class))


def register_backend():
    """Makes ``evaluate_segmentations(..., method="mmseg_iou")`` available in this process."""
    backends = fo.evaluation_config.segmentation_backends
    if METHOD not in backends:
        backends[METHOD] = {"config_cls": f"{IoUEvaluationConfig.__module__}.{IoUEvaluationConfig.__name__}"}


register_backend()


def mean_iou_metric_available() -> bool:
    """Whether FiftyOne can find the ``mean_iou`` custom metric (plugin installed and enabled)."""
    try:
        import fiftyone.operators as foo

        foo.get_operator(MEAN_IOU_METRIC)
        return True
    except Exception:
        return False


def evaluate_iou(
    samples,
    pred_field: str,
    gt_field: str = "ground_truth",
    eval_key: Optional[str] = None,
    mask_targets=None,
    ignore_index: Optional[int] = IGNORE_INDEX,
    resize: Optional[str] = None,
    strict: bool = True,
    skip_missing: bool = False,
    custom_metric: Optional[bool] = None,
    progress=None,
    overwrite: bool = False,
) -> IoUSegmentationResults:
    """Evaluates ``pred_field`` against ``gt_field`` with mmseg ``IoUMetric`` semantics.

    With an ``eval_key`` the run is saved (``load_evaluation_results(eval_key)``) and the per-sample
    fields ``<eval_key>_iou`` / ``<eval_key>_pixel_acc`` are written. ``custom_metric``: attach the
    plugin's ``mean_iou`` metric for the Model Evaluation panel (None = when the plugin is found).

    All or nothing: a run that fails leaves no evaluation record and none of the fields it
    created. It never touches fields it does not own: when ``<eval_key>_iou`` or
    ``<eval_key>_pixel_acc`` exist and ``eval_key`` is not an evaluation of the dataset, it is
    refused up front (:class:`EvaluationFieldsExistError`). ``overwrite=True`` replaces an existing evaluation of that key only once the new one
    has succeeded (it is computed under a temporary key, then renamed); without it an existing
    key is an error, as in FiftyOne.
    """
    if eval_key is not None and not (isinstance(eval_key, str) and eval_key.isidentifier()):
        # FiftyOne's rule for run keys (they also name the per-sample fields)
        raise InvalidInputError(f"{kw('eval_key')} {eval_key!r} is not a valid evaluation key: use letters, digits and _, "
                                "not starting with a digit")
    if not len(samples):  # a result of NaNs would replace whatever was stored under eval_key
        raise InvalidInputError(f"no samples to evaluate: the view selects none of dataset {samples._dataset.name!r}")
    if custom_metric is None:
        custom_metric = eval_key is not None and mean_iou_metric_available()
    custom_metrics = [MEAN_IOU_METRIC] if custom_metric else None

    def run(key):
        return samples.evaluate_segmentations(
            pred_field,
            gt_field=gt_field,
            eval_key=key,
            mask_targets=mask_targets,
            method=IoUEvaluationConfig,
            custom_metrics=custom_metrics,
            progress=progress,
            ignore_index=ignore_index,
            resize=resize,
            strict=strict,
            skip_missing=skip_missing,
        )

    if eval_key is None:
        return run(None)
    ds = samples._dataset
    check_evaluation_fields(ds, eval_key)
    if not (overwrite and eval_key in ds.list_evaluations()):
        return _all_or_nothing(ds, eval_key, lambda: run(eval_key))
    tmp = f"{eval_key}_new_{uuid.uuid4().hex[:8]}"
    _all_or_nothing(ds, tmp, lambda: run(tmp))
    ds.delete_evaluation(eval_key)
    ds.rename_evaluation(tmp, eval_key)
    return ds.load_evaluation_results(eval_key)


def _all_or_nothing(dataset, eval_key: str, fn):
    """Runs ``fn()``; if it raises, deletes the evaluation ``eval_key`` it registered and the
    ``<eval_key>_*`` fields it created (an evaluation of that key that existed before is kept)."""
    existed = eval_key in dataset.list_evaluations()
    fields_before = set(dataset.get_field_schema())
    try:
        return fn()
    except BaseException:
        try:
            dataset.reload()
            if not existed and eval_key in dataset.list_evaluations():
                dataset.delete_evaluation(eval_key)
            created = [
                f for f in dataset.get_field_schema()
                if f not in fields_before and (f == eval_key or f.startswith(eval_key + "_"))
            ]
            if created:
                dataset.delete_sample_fields(created, error_level=1)
            if not existed:
                dataset._delete_empty_sidebar_group(eval_key)
        except Exception as cleanup_error:  # noqa: BLE001 - the original error matters more
            logger.warning("could not clean up the failed evaluation %r: %s", eval_key, cleanup_error)
        raise


# ------------------------------------------------------------------------------------------------
# Helpers of the `mean_iou` custom metric for evaluations run by other backends (e.g. "simple")
# ------------------------------------------------------------------------------------------------
def _class_partition(samples, results, ignore_index) -> Tuple[np.ndarray, np.ndarray]:
    """Indices of real classes and of the ignore class in ``results.classes``."""
    classes = [str(c) for c in results.classes]
    ignore_names = set()
    if ignore_index is not None:
        ignore_names.add(str(ignore_index))
        try:
            targets = resolve_mask_targets(samples, results.config.gt_field) or {}
        except Exception:
            targets = {}
        if ignore_index in targets:
            ignore_names.add(str(targets[ignore_index]))
    ign = np.array([c in ignore_names for c in classes], dtype=bool)
    return np.nonzero(~ign)[0], np.nonzero(ign)[0]


def histogram_from_results(samples, results, ignore_index=IGNORE_INDEX) -> Tuple[np.ndarray, List[str]]:
    """``(C, C + 1)`` mmseg histogram from any FiftyOne ``SegmentationResults``: the ignore class
    (named ``str(ignore_index)`` or ``mask_targets[ignore_index]``) loses its GT row, and its
    prediction column becomes the missed-pixel column."""
    cm = np.asarray(results.pixel_confusion_matrix, dtype=np.int64)
    keep, ign = _class_partition(samples, results, ignore_index)
    hist = np.concatenate([cm[np.ix_(keep, keep)], cm[np.ix_(keep, ign)].sum(axis=1, keepdims=True)], axis=1)
    return hist, [str(results.classes[i]) for i in keep]


def sample_histograms(samples, results, ignore_index=IGNORE_INDEX) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Each sample's ``(C, C + 1)`` histogram rebuilt from an evaluation's pixel matches (any
    FiftyOne ``SegmentationResults`` with GT label ids), and the class names: the ignore class
    loses its GT rows; a predicted value that is not a class (the ignore class, an unmatched
    name, this backend's ``missed_matches``) is a miss, column ``C``. The one per-sample source of
    the backend's custom metric and of the App panel; :func:`~fiftyone_cass.fo.metrics.class_ious`
    and :func:`~fiftyone_cass.fo.metrics.sample_scores` turn a histogram into scores."""
    keep, ign = _class_partition(samples, results, ignore_index)
    classes = [str(c) for c in results.classes]
    names = [classes[k] for k in keep]
    if results.ytrue_ids is None or len(results.ytrue) == 0:
        return {}, names
    index = {classes[k]: i for i, k in enumerate(keep)}
    ignored = {classes[k] for k in ign}
    C = len(keep)
    gt_field = results.config.gt_field
    ids, gt_ids = samples.values(["id", f"{gt_field}._id"])
    to_sample = {str(s): str(s) for s in ids}  # matches may hold sample ids
    to_sample.update({str(g): str(s) for s, g in zip(ids, gt_ids) if g is not None})
    rows = zip(results.ytrue, results.ypred, results.weights, results.ytrue_ids)
    missed = ((c, None, w, g) for c, w, g in getattr(results, "missed_matches", None) or ())
    hists: Dict[str, np.ndarray] = {}
    for source in (rows, missed):
        for yt, yp, w, gid in source:
            yt = str(yt)
            sid = to_sample.get(str(gid))
            if yt in ignored or yt not in index or sid is None:
                continue
            h = hists.setdefault(sid, np.zeros((C, C + 1), dtype=np.int64))
            h[index[yt], index.get(None if yp is None else str(yp), C)] += int(w)
    return hists, names


def per_sample_iou_from_matches(samples, results, ignore_index=IGNORE_INDEX) -> Dict[str, Optional[float]]:
    """Sample id -> the image's nan-mean IoU, rebuilt from ``results`` matches (needs GT label ids)."""
    hists, _ = sample_histograms(samples, results, ignore_index)
    return {sid: sample_scores(h)["iou"] for sid, h in hists.items()}


def per_sample_class_iou(samples, results, ignore_index=IGNORE_INDEX) -> Dict[str, Dict[str, float]]:
    """Sample id -> {class: IoU} for the classes present in the sample's GT or prediction (the
    numbers whose mean is the backend's ``<eval_key>_iou``)."""
    hists, names = sample_histograms(samples, results, ignore_index)
    return {sid: class_ious(h, names) for sid, h in hists.items()}


def check_segmentation_fields(dataset, *fields: str) -> None:
    """Raises :class:`~fiftyone_cass.errors.InvalidInputError` unless each of ``fields`` is a
    Segmentation field of ``dataset`` (in that order: the first bad one is named)."""
    for f in fields:
        if not dataset.has_sample_field(f):
            raise InvalidInputError(f"dataset {dataset.name!r} has no field {f!r}")
        if getattr(dataset.get_field(f), "document_type", None) is not fo.Segmentation:
            raise InvalidInputError(f"field {f!r} of dataset {dataset.name!r} is not a Segmentation field")
