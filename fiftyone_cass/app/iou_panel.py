"""The plugin's App panel: per-class IoU of a segmentation evaluation, and presence scores.

``@fiftyone-cass/cass/cass_iou`` (:class:`IoUPanel`, "Segmentation IoU (CASS)"):

* an evaluation key (any segmentation evaluation: this plugin's ``mmseg_iou`` runs, or FiftyOne's
  own, whose confusion matrix gives the same numbers);
* mIoU / aAcc / mAcc in percent;
* a per-class table (IoU %, accuracy %, ground-truth pixels): click a column header to sort by it
  (again to reverse), click a class's row to show the samples where that class is the worst;
* a bar chart of per-class IoU and accuracy: clicking a bar does the same;
* for a field labelled by ``auto_label``, per-class histograms of the presence scores
  (``<field>_presence``).

"The samples where a class is the worst": each sample's per-class IoU is rebuilt from the
evaluation's pixel matches; a sample is shown for class *c* when *c* is present in its ground
truth or prediction and no other present class has a lower IoU. The grid is sorted by that IoU,
worst first. The helpers (:func:`class_rows`, :func:`worst_class_samples`,
:func:`presence_scores`) are plain functions, usable and tested without the App.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

import fiftyone as fo
import fiftyone.operators as foo
from fiftyone.operators import execution_cache, types

from fiftyone_cass.fo.metrics import metrics_from_histogram
from fiftyone_cass.fo.review import class_confidence, confidence_field_of, per_class_field
from fiftyone_cass.fo.model import stored_scores
from fiftyone_cass.fo.evaluation import IoUSegmentationResults, class_match_notice, histogram_from_results, per_sample_class_iou  # noqa: F401 - re-exported

PANEL_NAME = "cass_iou"
COLUMNS = [("class", "Class"), ("iou", "IoU (%)"), ("acc", "Accuracy (%)"), ("confidence", "Confidence (%)"),
           ("gt_pixels", "GT pixels")]
REVIEW_QUEUE_URI = "@fiftyone-cass/cass/review_queue"


# ------------------------------------------------------------------------------------------------
# Helpers (no App needed)
# ------------------------------------------------------------------------------------------------
def segmentation_eval_keys(dataset) -> List[str]:
    keys = []
    for k in dataset.list_evaluations():
        try:
            if dataset.get_evaluation_info(k).config.type == "segmentation":
                keys.append(k)
        except Exception:  # noqa: BLE001 - a broken record is not offered
            continue
    return keys


def _metrics(dataset, results):
    if isinstance(results, IoUSegmentationResults):
        return results.iou_metrics()
    hist, names = histogram_from_results(dataset, results)
    return metrics_from_histogram(hist, names)


def _pct(x) -> Optional[float]:
    return None if x is None or not math.isfinite(float(x)) else round(100.0 * float(x), 1)


def summary(dataset, results) -> Dict[str, Optional[float]]:
    """mIoU, aAcc, mAcc in percent, and the number of classes."""
    m = _metrics(dataset, results)
    return {"mIoU": _pct(m.mIoU), "aAcc": _pct(m.aAcc), "mAcc": _pct(m.mAcc), "num_classes": len(m.iou)}


def class_rows(dataset, results) -> List[Dict]:
    """One row per class: ``class``, ``iou`` and ``acc`` in percent (None where undefined: the
    class is in neither the ground truth nor the predictions), ``confidence`` (the mean over the
    samples containing the class of its per-class confidence, in percent: what ``auto_label``
    stored in ``<pred_field>_confidence_per_class``; None without it), ``gt_pixels``."""
    m = _metrics(dataset, results)
    conf = prediction_confidence(dataset, results)
    return [
        {"class": str(n), "iou": _pct(i), "acc": _pct(a),
         "confidence": _pct(conf[str(n)]["confidence"]) if str(n) in conf else None, "gt_pixels": int(g)}
        for n, i, a, g in zip(m.class_names, m.iou, m.acc, m.area_label)
    ]


def confidence_field_of_evaluation(dataset, results) -> Optional[str]:
    """The confidence field ``auto_label`` wrote with the evaluated predictions (None if none)."""
    pred = getattr(results.config, "pred_field", None)
    if not pred:
        return None
    field = confidence_field_of(pred)
    return field if dataset.has_sample_field(per_class_field(field)) else None


def prediction_confidence(dataset, results) -> Dict[str, Dict[str, float]]:
    """Per class name, the predictions' confidence (:func:`fiftyone_cass.fo.review.class_confidence`)."""
    field = confidence_field_of_evaluation(dataset, results)
    return class_confidence(dataset, field) if field else {}


def sort_rows(rows: Sequence[Dict], key: str = "iou", descending: bool = False) -> List[Dict]:
    """Rows sorted by ``key``; undefined values (None) always last."""
    have = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]
    return sorted(have, key=lambda r: r[key], reverse=descending) + missing


def worst_class_samples(dataset, results, class_name: str) -> List[Tuple[str, float]]:
    """``(sample id, IoU of class_name)`` for the samples where ``class_name`` is present and has
    the lowest IoU of the sample's classes, worst first."""
    return worst_of(per_sample_class_iou(dataset, results), class_name)


def worst_of(per_sample: Dict[str, Dict[str, float]], class_name: str) -> List[Tuple[str, float]]:
    """:func:`worst_class_samples` from already computed per-sample class IoUs."""
    out = []
    for sid, ious in per_sample.items():
        if class_name in ious and ious[class_name] <= min(ious.values()):
            out.append((sid, ious[class_name]))
    return sorted(out, key=lambda t: (t[1], t[0]))


@execution_cache(residency="ephemeral", max_size=16)
def evaluation_numbers(ctx, eval_key: str, timestamp: str) -> Dict:
    """The panel's numbers of one evaluation, computed once per evaluation run (FiftyOne's
    execution cache, keyed on the dataset, the key and the run's timestamp: a rerun under the same
    key is a new entry) and reused by every click: ``summary``, ``rows`` (:func:`class_rows`) and
    ``per_sample`` (:func:`per_sample_class_iou`), ``unmatched_notice``. Not to be modified by callers."""
    results = ctx.dataset.load_evaluation_results(eval_key)
    return {
        "summary": summary(ctx.dataset, results),
        "rows": class_rows(ctx.dataset, results),
        "per_sample": per_sample_class_iou(ctx.dataset, results),
        "unmatched_notice": class_match_notice(results),
        "confidence_field": confidence_field_of_evaluation(ctx.dataset, results),
    }


def _numbers(ctx, eval_key):
    info = ctx.dataset.get_evaluation_info(eval_key)
    return evaluation_numbers(ctx, eval_key, str(info.timestamp))


def presence_fields(dataset) -> List[str]:
    return sorted(f for f in dataset.get_field_schema(embedded_doc_type=fo.Classifications) if f.endswith("_presence"))


def presence_scores(samples, presence_field: str) -> Dict[str, List[float]]:
    """Class -> the presence scores of every sample: the full score vector stored with each label
    (``all_labels``/``all_scores``; the visible classifications hold only the classes at or above
    the threshold), else the classifications of labels written before it was stored."""
    out: Dict[str, List[float]] = {}
    for label in samples.values(presence_field):
        for lab, conf in stored_scores(label):
            if conf is not None and math.isfinite(conf):
                out.setdefault(lab, []).append(float(conf))
    return out


# ------------------------------------------------------------------------------------------------
# The panel
# ------------------------------------------------------------------------------------------------
class IoUPanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name=PANEL_NAME,
            label="Segmentation IoU (CASS)",
            icon="bar_chart",
            help_markdown=(
                "Per-class IoU and accuracy of a segmentation evaluation (percent). Click a column "
                "header to sort, a class (row or bar) to show the samples where it is the worst. "
                "Presence-score histograms of a field labelled by auto_label."
            ),
            surfaces="grid",
        )

    # -------------------------------------------------------------- events
    def on_load(self, ctx):
        keys = segmentation_eval_keys(ctx.dataset)
        ctx.panel.state.eval_key = ctx.panel.state.eval_key if ctx.panel.state.eval_key in keys else (keys[-1] if keys else None)
        pf = presence_fields(ctx.dataset)
        ctx.panel.state.presence_field = (
            ctx.panel.state.presence_field if ctx.panel.state.presence_field in pf else (pf[0] if pf else None)
        )
        ctx.panel.state.sort_by = ctx.panel.state.sort_by or "iou"
        ctx.panel.state.descending = bool(ctx.panel.state.descending)
        self._refresh(ctx)

    def on_change_dataset(self, ctx):
        self.on_load(ctx)

    def on_change_eval(self, ctx):
        ctx.panel.state.eval_key = ctx.params.get("value")
        self._refresh(ctx)

    def on_change_presence(self, ctx):
        ctx.panel.state.presence_field = ctx.params.get("value")
        self._refresh(ctx)

    def on_reload(self, ctx):
        self.on_load(ctx)

    def on_click_cell(self, ctx):
        row, column = ctx.params.get("row"), ctx.params.get("column")
        if row is None or column is None:
            return
        if int(row) < 0:  # a header: sort by that column, again to reverse
            key = COLUMNS[int(column)][0]
            if ctx.panel.state.sort_by == key:
                ctx.panel.state.descending = not ctx.panel.state.descending
            else:
                ctx.panel.state.sort_by, ctx.panel.state.descending = key, key == "gt_pixels"
            self._refresh(ctx)
            return
        rows = ctx.panel.state.rows_shown or []
        if int(row) < len(rows):
            self._show_worst(ctx, rows[int(row)])

    def on_review_queue(self, ctx):
        """Opens the review queue operator on the evaluated predictions' confidence field (and
        the class last clicked, if any)."""
        params = {"confidence_field": ctx.panel.state.confidence_field}
        if ctx.panel.state.selected_class:
            params["class_name"] = ctx.panel.state.selected_class
        ctx.prompt(REVIEW_QUEUE_URI, params=params)

    def on_click_bar(self, ctx):
        name = ctx.params.get("x")
        if name is not None:
            self._show_worst(ctx, str(name))

    def _show_worst(self, ctx, class_name):
        key = ctx.panel.state.eval_key
        if not key:
            return
        hits = worst_of(_numbers(ctx, key)["per_sample"], class_name)
        ctx.panel.state.selected_class = class_name
        ctx.panel.state.selected_count = len(hits)
        ctx.ops.set_view(ctx.dataset.select([sid for sid, _ in hits], ordered=True))
        ctx.ops.notify(f"{len(hits)} samples where '{class_name}' is the worst class ({key}), worst first",
                       variant="info")

    # -------------------------------------------------------------- data
    def _refresh(self, ctx):
        ds = ctx.dataset
        key = ctx.panel.state.eval_key
        if key and key in ds.list_evaluations():
            numbers = _numbers(ctx, key)
            s = numbers["summary"]
            rows = sort_rows(numbers["rows"], ctx.panel.state.sort_by or "iou", bool(ctx.panel.state.descending))
            ctx.panel.state.scores = s
            ctx.panel.state.unmatched_notice = numbers["unmatched_notice"]
            ctx.panel.state.confidence_field = numbers["confidence_field"]
            ctx.panel.state.rows_shown = [r["class"] for r in rows]
            ctx.panel.set_data("class_table", [{k: ("–" if v is None else v) for k, v in r.items()} for r in rows])
            names = [r["class"] for r in rows]
            ctx.panel.set_data("iou_chart", [
                {"type": "bar", "name": "IoU (%)", "x": names, "y": [r["iou"] for r in rows]},
                {"type": "bar", "name": "Accuracy (%)", "x": names, "y": [r["acc"] for r in rows]},
            ])
        else:
            ctx.panel.state.scores = None
            ctx.panel.state.unmatched_notice = None
            ctx.panel.state.confidence_field = None
            ctx.panel.state.rows_shown = []
        pf = ctx.panel.state.presence_field
        if pf and ds.has_sample_field(pf):
            scores = presence_scores(ds, pf)
            ctx.panel.set_data("presence_chart", [
                {"type": "histogram", "name": c, "x": v, "opacity": 0.6, "xbins": {"start": 0, "end": 1.0001, "size": 0.05}}
                for c, v in scores.items()
            ])

    def render(self, ctx):
        panel = types.Object()
        ds = ctx.dataset
        keys = segmentation_eval_keys(ds)
        if keys:
            view = types.DropdownView()
            for k in keys:
                view.add_choice(k, label=k)
            panel.enum("eval_key", view.values(), label="Evaluation", default=ctx.panel.state.eval_key,
                       view=view, on_change=self.on_change_eval)
        else:
            panel.md("No segmentation evaluation yet: run **Evaluate segmentations (mIoU)** "
                     "(`@fiftyone-cass/cass/evaluate_iou`).", name="no_eval")
        panel.btn("reload", label="Reload", icon="refresh", on_click=self.on_reload)
        s = ctx.panel.state.scores  # (a state key named like a property would be its value)
        if s:
            def fmt(v):
                return "–" if v is None else f"{v:.1f} %"

            panel.md(
                f"**mIoU** {fmt(s['mIoU'])} · **aAcc** {fmt(s['aAcc'])} · **mAcc** {fmt(s['mAcc'])} "
                f"— {s['num_classes']} classes, percent, dataset-level IoU (mmsegmentation protocol)",
                name="summary_md",
            )
            _render_class_mismatch(panel, ctx.panel.state.unmatched_notice)
            sort_by = ctx.panel.state.sort_by or "iou"
            arrow = "descending" if ctx.panel.state.descending else "ascending"
            table = types.TableView(on_click_cell=self.on_click_cell)
            for k, label in COLUMNS:
                table.add_column(k, label=label + (" ▼" if k == sort_by and ctx.panel.state.descending else
                                                   " ▲" if k == sort_by else ""))
            panel.md(f"Per-class scores, sorted by {dict(COLUMNS)[sort_by]} ({arrow}). Click a header to sort, "
                     "a class to show the samples where it is the worst.", name="table_help")
            panel.list("class_table", types.Object(), view=table)
            if ctx.panel.state.confidence_field:
                panel.btn("review_queue", label="Review the least confident samples", icon="fact_check",
                          on_click=self.on_review_queue)
            panel.plot(
                "iou_chart",
                layout={"title": {"text": "Per-class IoU and accuracy (%)"}, "barmode": "group", "showlegend": True,
                        "margin": {"t": 60},
                        "yaxis": {"title": "%", "range": [0, 100]}, "height": 360},
                config={"displayModeBar": False},
                on_click=self.on_click_bar,
            )
        pfs = presence_fields(ds)
        if pfs:
            view = types.DropdownView()
            for f in pfs:
                view.add_choice(f, label=f)
            panel.enum("presence_field", view.values(), label="Presence scores", default=ctx.panel.state.presence_field,
                       view=view, on_change=self.on_change_presence)
            panel.plot(
                "presence_chart",
                layout={"title": {"text": "Presence scores per class (samples per bin)"}, "barmode": "overlay",
                        "showlegend": True, "margin": {"t": 60},
                        "xaxis": {"title": "presence score", "range": [0, 1]}, "yaxis": {"title": "samples"},
                        "height": 320},
                config={"displayModeBar": False},
            )
        return types.Property(panel, view=types.GridView(align_x="left", align_y="top", gap=1, px=2, py=2))


def _render_class_mismatch(panel, notice: Optional[str]) -> None:
    """The evaluation's predicted classes that the ground truth lacks (issue 21 item 4): they count
    as misses here, and FiftyOne's Model Evaluation panel leaves their pixels out of its Accuracy."""
    if notice:
        panel.md(f"**⚠ Classes without a ground-truth match.** {notice}. FiftyOne's Model Evaluation panel "
                 "leaves their pixels out of its Accuracy, so it reads higher than aAcc here.",
                 name="class_mismatch_md")


PANELS = [IoUPanel]

__all__ = ["IoUPanel", "PANELS", "class_rows", "per_sample_class_iou", "presence_scores", "sort_rows",
           "summary", "worst_class_samples"]
