"""FiftyOne plugin operators for evaluation (thin shells over :mod:`.fo_evaluation`).

* ``@fiftyone-cass/cass/evaluate_iou`` (:class:`EvaluateIoU`): evaluates a predicted/GT
  ``Segmentation`` field pair over the dataset, current view or selection with mmseg ``IoUMetric``
  semantics and saves a FiftyOne evaluation run (shown in the Model Evaluation panel; loadable with
  ``dataset.load_evaluation_results(eval_key)``).
* ``@fiftyone-cass/cass/mean_iou`` (:class:`MeanIoU`): a custom evaluation metric for
  ``evaluate_segmentations(..., custom_metrics=["@fiftyone-cass/cass/mean_iou"])`` that adds mIoU to
  the Summary table of the Model Evaluation panel, also for evaluations run by FiftyOne's own
  ``"simple"`` backend (then it also writes the per-sample field ``<eval_key>_iou``).
"""

from __future__ import annotations

import logging

import fiftyone as fo
import fiftyone.operators as foo
from fiftyone.operators import types

from fiftyone_cass.app.support import EVALUATE_FIELDS, FormError, add_target, form_message
from fiftyone_cass.fo.metrics import IGNORE_INDEX, metrics_from_histogram
from fiftyone_cass.fo.evaluation import (
    ACCURACY_NOTE,
    METHOD,
    class_match_notice,
    IoUSegmentationResults,
    evaluate_iou,
    histogram_from_results,
    mean_iou_metric_available,
    per_sample_iou_from_matches,
)

logger = logging.getLogger(__name__)


def _segmentation_fields(collection):
    schema = collection.get_field_schema(embedded_doc_type=fo.Segmentation)
    return sorted(schema.keys())


class EvaluateIoU(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="evaluate_iou",
            label="Evaluate segmentations (mIoU)",
            description=(
                "Semantic-segmentation mIoU / pixel accuracy with the mmsegmentation protocol "
                "(dataset-level IoU, label 255 ignored, nan-mean over classes)"
            ),
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        add_target(inputs, ctx, "Evaluate")
        fields = _segmentation_fields(ctx.dataset)
        if len(fields) < 2:
            inputs.view(
                "msg",
                types.Warning(
                    label="Two Segmentation fields are needed",
                    description="This dataset needs a ground-truth and a prediction Segmentation field",
                ),
            )
            return types.Property(inputs, view=types.View(label="Evaluate segmentations (mIoU)"))

        choices = types.DropdownView()
        for f in fields:
            choices.add_choice(f, label=f)
        default_gt = "ground_truth" if "ground_truth" in fields else fields[0]
        default_pred = next((f for f in fields if f != default_gt), fields[0])
        inputs.enum("pred_field", choices.values(), default=default_pred, required=True,
                    label="Predictions", description="Predicted Segmentation field", view=choices)
        inputs.enum("gt_field", choices.values(), default=default_gt, required=True,
                    label="Ground truth", description="Ground-truth Segmentation field", view=choices)

        pred = ctx.params.get("pred_field") or default_pred
        key_default = default_eval_key(pred)
        eval_key = ctx.params.get("eval_key") or key_default
        prop = inputs.str("eval_key", default=key_default, required=True, label="Evaluation key",
                          description=(f"Name of the evaluation run; samples get {eval_key}_iou and "
                                       f"{eval_key}_pixel_acc (fractions 0-1)"))
        if not eval_key.isidentifier():
            prop.invalid = True
            prop.error_message = "The evaluation key must be a valid identifier"
        elif eval_key in ctx.dataset.list_evaluations():
            inputs.bool("overwrite", default=False, label=f"Overwrite the existing evaluation '{eval_key}'")
            if not ctx.params.get("overwrite", False):
                prop.invalid = True
                prop.error_message = (f"An evaluation with key '{eval_key}' exists: tick “Overwrite the existing "
                                      "evaluation” or choose another key")

        inputs.int("ignore_index", default=IGNORE_INDEX, label="Ignore index",
                   description="Ground-truth value that is not evaluated")
        inputs.bool("resize_nearest", default=False, label="Resize mismatched predictions",
                    description=("Resize predictions whose size differs from the ground truth "
                                 "(nearest neighbour). Off: such samples raise an error"))
        inputs.bool("skip_missing", default=False, label="Skip samples without predictions",
                    description="Off: a sample with ground truth but no prediction raises an error")
        return types.Property(inputs, view=types.View(label="Evaluate segmentations (mIoU)"))

    def execute(self, ctx):
        """Errors reach the App user as a notification and an error summary in the form's words
        (delegated runs raise them, in the same words); nothing of a failed run is kept."""
        try:
            return self._evaluate(ctx)
        except Exception as exc:
            msg = form_message(exc, EVALUATE_FIELDS)
            if ctx.delegated or ctx.params.get("raise_errors"):
                raise FormError(msg) from exc
            logger.warning("evaluate_iou failed: %s", msg, exc_info=not isinstance(exc, ValueError))
            ctx.ops.notify(f"Evaluation failed: {msg}", variant="error")
            return {"error": msg}

    def _evaluate(self, ctx):
        view = ctx.target_view(param_name="target", require_flat=True)
        pred_field = ctx.params.get("pred_field")
        gt_field = ctx.params.get("gt_field")
        if not pred_field or not gt_field:
            raise FormError("Choose a “Predictions” and a “Ground truth” Segmentation field")
        if pred_field == gt_field:
            raise FormError(f"“Predictions” and “Ground truth” are the same field ({pred_field!r}): choose two fields")
        eval_key = ctx.params.get("eval_key") or default_eval_key(pred_field)
        overwrite = bool(ctx.params.get("overwrite", False))
        if eval_key in ctx.dataset.list_evaluations() and not overwrite:
            raise FormError(f"An evaluation with key '{eval_key}' exists: tick “Overwrite the existing evaluation” "
                            "or choose another “Evaluation key”")
        ignore_index = ctx.params.get("ignore_index", IGNORE_INDEX)
        results = evaluate_iou(
            view,
            pred_field,
            gt_field=gt_field,
            eval_key=eval_key,
            ignore_index=None if ignore_index is None else int(ignore_index),
            resize="nearest" if ctx.params.get("resize_nearest", False) else None,
            skip_missing=bool(ctx.params.get("skip_missing", False)),
            progress=False,
            overwrite=overwrite,
        )
        m = results.iou_metrics()
        if not ctx.delegated:
            ctx.trigger("reload_dataset")
        out = {
            "eval_key": eval_key,
            "mIoU": _percent(m.mIoU),
            "mAcc": _percent(m.mAcc),
            "aAcc": _percent(m.aAcc),
            "num_classes": len(m.iou),
            "num_samples": results.num_evaluated,
            "accuracy_note": ACCURACY_NOTE,
        }
        notice = class_match_notice(results)
        if notice:
            out["class_mismatch"] = notice
            out["unmatched_pred_classes"] = list(results.class_match.get("unmatched_pred_classes") or [])
        if results.skipped:
            out["skipped"] = [f"{name}: {why}" for name, why in results.skipped[:50]]
        return out

    def resolve_output(self, ctx):
        outputs = types.Object()
        if (ctx.results or {}).get("error"):
            outputs.view("error_notice", types.Error(label="Evaluation failed", description=ctx.results["error"]))
            return types.Property(outputs, view=types.View(label="Evaluation failed"))
        results = ctx.results or {}
        if results.get("class_mismatch"):
            outputs.view("class_mismatch_notice", types.Warning(label="Classes without a ground-truth match",
                                                                description=results["class_mismatch"]))
        outputs.str("eval_key", label="Evaluation key")
        outputs.float("mIoU", label="mIoU (%)")
        outputs.float("mAcc", label="mAcc (%)")
        outputs.float("aAcc", label="Pixel accuracy aAcc (%)")
        outputs.int("num_classes", label="Classes")
        outputs.int("num_samples", label="Samples evaluated")
        if results.get("skipped"):
            outputs.list("skipped", types.String(), label="Skipped samples")
        outputs.str("accuracy_note", label="aAcc vs FiftyOne's Accuracy", view=types.MarkdownView())
        return types.Property(outputs, view=types.View(label="mIoU evaluation"))


def default_eval_key(pred_field: str) -> str:
    """``eval_<pred_field>`` (as the CLI's ``eval``), so per-sample fields read ``eval_cass_iou``."""
    return f"eval_{pred_field}" if pred_field else "eval"


def _percent(x):
    return None if x is None or x != x else round(100.0 * float(x), 2)


def _finite(x):
    return float(x) if x is not None and x == x else None


class MeanIoU(foo.EvaluationMetric):
    @property
    def config(self):
        cfg = foo.EvaluationMetricConfig(
            name="mean_iou",
            label="mIoU (0-1)",
            description="Mean IoU as a fraction 0-1 over classes (mmsegmentation protocol: dataset-level IoU, 255 ignored, nan-mean)",
            eval_types=["segmentation"],
            aggregate_key="mIoU",
            lower_is_better=False,
            unlisted=True,
        )
        # FiftyOne 1.x reads the panel's "lower is better" flag from config.kwargs
        cfg.kwargs["lower_is_better"] = False
        return cfg

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.int("ignore_index", default=IGNORE_INDEX, label="Ignore index",
                    description="Ground-truth value that is not evaluated")
        return types.Property(inputs)

    def compute(self, samples, results, ignore_index=IGNORE_INDEX):
        if isinstance(results, IoUSegmentationResults):
            value = results.mean_iou()  # per-sample fields are written by the backend itself
        else:
            hist, names = histogram_from_results(samples, results, ignore_index=ignore_index)
            value = metrics_from_histogram(hist, names).mIoU
            eval_key = results.key
            if eval_key is not None:
                per_sample = per_sample_iou_from_matches(samples, results, ignore_index=ignore_index)
                field = f"{eval_key}_iou"
                samples._dataset.add_sample_field(field, fo.FloatField)
                samples.set_values(field, per_sample, key_field="id")
        return _finite(value)

    def get_fields(self, samples, config, eval_key):
        if getattr(config, "method", None) == METHOD:
            return []  # the mmseg_iou backend owns <eval_key>_iou
        return [f"{eval_key}_iou"]


OPERATORS = [EvaluateIoU, MeanIoU]

__all__ = ["EvaluateIoU", "MeanIoU", "OPERATORS", "mean_iou_metric_available"]
