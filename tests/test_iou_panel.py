"""The cass_iou panel: its numbers (per-class IoU/accuracy, worst-class samples, presence scores)
against hand-made masks, and its events run through FiftyOne's executor (what the App calls)."""

import numpy as np
import pytest
from PIL import Image

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.plugins as fop

from _label_helpers import CLASSES, OPTS, add_samples, make_images
from fiftyone_cass.fo.apply import apply
from fiftyone_cass.fo.metrics import IoUAccumulator, LabelMapper
from fiftyone_cass.fo.evaluation import evaluate_iou
from fiftyone_cass.app.iou_panel import (
    class_rows,
    per_sample_class_iou,
    presence_scores,
    sort_rows,
    summary,
    worst_class_samples,
)

PANEL = "@fiftyone-cass/cass/cass_iou"
TARGETS = {0: "road", 1: "car", 2: "tree"}
# sample A: car perfect, road and tree 0.5 (tied worst); sample B: car 0.25 (worst), road 4/7
GTS = [np.array([[0, 1, 1, 2], [0, 2, 2, 2]], np.uint8), np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.uint8)]
PREDS = [np.array([[0, 1, 1, 0], [0, 2, 0, 2]], np.uint8), np.array([[1, 0, 0, 0], [0, 0, 0, 0]], np.uint8)]


def _png(path, arr):
    Image.fromarray(arr).save(path)
    return str(path)


@pytest.fixture
def evaluated(fo_dataset, tmp_path):
    ds = fo_dataset("panel")
    ds.add_samples([
        fo.Sample(filepath=_png(tmp_path / f"i{i}.png", np.zeros((2, 4, 3), np.uint8)),
                  ground_truth=fo.Segmentation(mask=g), predictions=fo.Segmentation(mask=p))
        for i, (g, p) in enumerate(zip(GTS, PREDS))
    ])
    ds.mask_targets = {"ground_truth": TARGETS, "predictions": TARGETS}
    ds.save()
    evaluate_iou(ds, "predictions", eval_key="ev")
    return ds


def _sample_iou(h, c):
    tp = h[c, c]
    return tp / (h[c, :].sum() + h[:, c].sum() - tp)


def test_numbers_match_a_hand_computation(evaluated):
    ds = evaluated
    results = ds.load_evaluation_results("ev")
    acc = IoUAccumulator(mapper=LabelMapper([0, 1, 2]), class_names=list(TARGETS.values()))
    hists = [acc.update(p, g) for p, g in zip(PREDS, GTS)]
    m = acc.compute()
    rows = class_rows(ds, results)
    assert [r["class"] for r in rows] == ["road", "car", "tree"]
    for r, iou, a, g in zip(rows, m.iou, m.acc, m.area_label):
        assert r["iou"] == pytest.approx(100 * iou, abs=0.05) and r["acc"] == pytest.approx(100 * a, abs=0.05)
        assert r["gt_pixels"] == g
    s = summary(ds, results)
    assert s["mIoU"] == pytest.approx(100 * m.mIoU, abs=0.05) and s["num_classes"] == 3

    ids = ds.values("id")
    per = per_sample_class_iou(ds, results)
    for sid, h in zip(ids, hists):
        for c, name in TARGETS.items():
            if h[c, :3].sum() + h[:, c].sum() == 0:
                assert name not in per[sid]  # absent from both: no IoU
            else:
                assert per[sid][name] == pytest.approx(_sample_iou(h[:, :3], c))
    # tree is the worst class of sample A only, car of sample B only
    assert [sid for sid, _ in worst_class_samples(ds, results, "tree")] == [ids[0]]
    assert [sid for sid, _ in worst_class_samples(ds, results, "car")] == [ids[1]]
    # in sample A road ties with tree (both 0.5): a tie counts for both; B's worst is car (0.25)
    assert worst_class_samples(ds, results, "road") == [(ids[0], 0.5)]

    by_iou = sort_rows(rows, "iou")
    assert [r["iou"] for r in by_iou] == sorted(r["iou"] for r in rows)
    assert [r["class"] for r in sort_rows(rows, "class", descending=True)] == ["tree", "road", "car"]
    assert sort_rows([{"iou": None}, {"iou": 3.0}], "iou")[-1]["iou"] is None  # undefined last


def _panel(ds, method, state=None, **params):
    """Runs a panel event as the App does; returns (result, {operator_uri: [params, ...]})."""
    res = foo.execute_operator(PANEL, ctx={"dataset": ds, "params": dict(
        __method__=method, panel_id="p1", panel_state=state or {}, **params)})
    calls = {}
    for r in res.executor._requests if res.executor else []:
        calls.setdefault(r.operator_uri, []).append(r.params)
    return res, calls


def test_panel_is_registered_and_its_events_work(evaluated):
    assert "cass_iou" in fop.get_plugin("@fiftyone-cass/cass").operators  # operators + panels of fiftyone.yml
    assert isinstance(foo.get_operator(PANEL), foo.Panel)
    ds = evaluated
    _, calls = _panel(ds, "on_load")
    state = {}
    for p in calls.get("patch_panel_state", []):
        state.update(p.get("state", p))
    data = {}
    for p in calls.get("patch_panel_data", []):
        data.update(p.get("data", p))
    assert state["eval_key"] == "ev" and state["scores"]["mIoU"] is not None
    table = data["class_table"]
    assert [r["class"] for r in table] == state["rows_shown"]
    assert [r["iou"] for r in table] == sorted(r["iou"] for r in table)  # worst first by default
    chart = data["iou_chart"]
    assert chart[0]["name"] == "IoU (%)" and chart[0]["x"] == state["rows_shown"]
    rendered = calls["show_panel_output"][0]["output"]["type"]["properties"]
    assert {"eval_key", "summary_md", "class_table", "iou_chart"} <= set(rendered)
    assert not set(rendered) & set(state) - {"eval_key", "presence_field"}  # the App binds state keys to properties
    assert "%" in str(rendered["summary_md"]) and "mIoU" in str(rendered["summary_md"])  # units shown

    # a click on the header "Class" sorts by class name
    _, calls = _panel(ds, "on_click_cell", state=state, row=-1, column=0)
    new = {}
    for p in calls.get("patch_panel_state", []):
        new.update(p.get("state", p))
    assert new["sort_by"] == "class" and new["rows_shown"] == ["car", "road", "tree"]

    # a click on the bar "tree" shows the samples where tree is the worst class
    _, calls = _panel(ds, "on_click_bar", state=state, x="tree")
    (view_params,) = calls["set_view"]
    view = fo.DatasetView._build(ds, view_params["view"])
    assert view.values("id") == [ds.first().id]
    assert any("'tree' is the worst class" in p["message"] for p in calls["notify"])


def test_presence_histograms_of_a_labelled_field(fo_dataset, tmp_path):
    ds = add_samples(fo_dataset("presence"), make_images(tmp_path, 3))
    apply(ds, CLASSES, masks="database", batch_size=3, **OPTS)
    scores = presence_scores(ds, "cass_presence")
    assert set(scores) == set(CLASSES) and all(len(v) == 3 for v in scores.values())
    first = ds.first().cass_presence  # the full vector, not only the classes shown (>= threshold)
    full = [(c, v) for c, v in zip(first.all_labels, first.all_scores) if v is not None]  # background: no score
    assert [c for c, _ in full] == CLASSES
    assert [scores[c][0] for c, _ in full] == pytest.approx([v for _, v in full])
    assert len(first.classifications) <= len(CLASSES)
    _, calls = _panel(ds, "on_load")
    data = {}
    for p in calls.get("patch_panel_data", []):
        data.update(p.get("data", p))
    traces = data["presence_chart"]
    assert {t["name"] for t in traces} == set(CLASSES) and all(t["type"] == "histogram" for t in traces)


def test_panel_sample_iou_equals_the_backend_when_classes_are_matched_by_name_with_a_missed_class(fo_dataset, tmp_path):
    """Issue 19: the prediction names its classes in other ids, and one of them ("lawn") is not a
    ground-truth class: its pixels are misses. GT all road; prediction half road, half lawn: the
    backend's road IoU is 2 / (4 + 2 - 2) = 0.5; the panel used to drop the missed pixels (1.0)."""
    ds = fo_dataset("panel_by_name")
    gts = [np.zeros((2, 2), np.uint8), np.ones((2, 2), np.uint8)]  # A: all road, B: all car
    preds = [np.array([[1, 1], [0, 0]], np.uint8), np.full((2, 2), 2, np.uint8)]  # A: road, lawn; B: car
    ds.add_samples([
        fo.Sample(filepath=_png(tmp_path / f"m{i}.png", np.zeros((2, 2, 3), np.uint8)),
                  ground_truth=fo.Segmentation(mask=g), predictions=fo.Segmentation(mask=p))
        for i, (g, p) in enumerate(zip(gts, preds))
    ])
    ds.mask_targets = {"ground_truth": {0: "road", 1: "car"}, "predictions": {0: "lawn", 1: "road", 2: "car"}}
    ds.save()
    r = evaluate_iou(ds, "predictions", eval_key="ev")
    assert r.class_match["mapped_by_name"] is True and r.class_match["unmatched_pred_classes"] == ["lawn"]
    assert r.per_class_iou()["road"] == pytest.approx(0.5)
    a, b = ds.values("id")
    per = per_sample_class_iou(ds, ds.load_evaluation_results("ev"))
    assert per[a] == {"road": pytest.approx(0.5)} and per[b] == {"car": pytest.approx(1.0)}
    # the same number as the backend's per-sample IoU field
    assert ds[a]["ev_iou"] == pytest.approx(per[a]["road"])
    assert worst_class_samples(ds, ds.load_evaluation_results("ev"), "road") == [(a, pytest.approx(0.5))]


def test_panel_computes_once_per_evaluation_and_reuses_it_on_clicks(evaluated, monkeypatch):
    import fiftyone_cass.app.iou_panel as panel

    loads = []
    real = panel.per_sample_class_iou
    monkeypatch.setattr(panel, "per_sample_class_iou", lambda ds, r: loads.append(r.key) or real(ds, r))
    ds = evaluated
    _, calls = _panel(ds, "on_load")
    state = {}
    for p in calls.get("patch_panel_state", []):
        state.update(p.get("state", p))
    assert loads == ["ev"]
    for name in ("tree", "car"):  # clicks on bars, a header, a row: no new computation
        _, calls = _panel(ds, "on_click_bar", state=state, x=name)
        assert calls["set_view"]
    _panel(ds, "on_click_cell", state=state, row=-1, column=1)
    _panel(ds, "on_click_cell", state=state, row=0, column=0)
    assert loads == ["ev"]
    # a new run under the same key is another evaluation: computed again, with its own numbers
    ds.delete_evaluation("ev")
    evaluate_iou(ds, "ground_truth", gt_field="ground_truth", eval_key="ev")
    assert state["scores"]["mIoU"] < 100
    _, calls = _panel(ds, "on_load", state=state)
    assert loads == ["ev", "ev"]
    new = {}
    for p in calls.get("patch_panel_state", []):
        new.update(p.get("state", p))
    assert new["scores"]["mIoU"] == pytest.approx(100.0)


def test_panel_shows_unmatched_predicted_classes(fo_dataset, tmp_path):
    """Issue 21 item 4: the CLI warned about predicted classes the ground truth lacks; the panel
    showed nothing. It now names them above the table."""
    ds = fo_dataset("panel_unmatched")
    ds.add_samples([
        fo.Sample(filepath=_png(tmp_path / f"u{i}.png", np.zeros((2, 4, 3), np.uint8)),
                  ground_truth=fo.Segmentation(mask=g), predictions=fo.Segmentation(mask=p))
        for i, (g, p) in enumerate(zip(GTS, PREDS))
    ])
    ds.mask_targets = {"ground_truth": TARGETS, "predictions": {0: "road", 1: "car", 2: "bush"}}
    ds.save()
    evaluate_iou(ds, "predictions", eval_key="ev")
    _, calls = _panel(ds, "on_load")
    rendered = calls["show_panel_output"][0]["output"]["type"]["properties"]
    notice = str(rendered["class_mismatch_md"])
    assert "'bush'" in notice and "count as misses" in notice and "'tree'" in notice
    assert "Model Evaluation panel" in notice
    # an evaluation whose classes all match shows no notice
    ds.mask_targets = {"ground_truth": TARGETS, "predictions": TARGETS}
    ds.save()
    evaluate_iou(ds, "predictions", eval_key="ev", overwrite=True)
    _, calls = _panel(ds, "on_load")
    assert "class_mismatch_md" not in calls["show_panel_output"][0]["output"]["type"]["properties"]


def test_panel_shows_per_class_confidence_and_opens_the_review_queue(evaluated):
    """Issue 22: beside each class's IoU, the mean per-class confidence auto_label stored with the
    evaluated predictions (``<pred>_confidence_per_class``); a button opens the review queue on
    that confidence field (and the class last clicked)."""
    ds = evaluated
    a, b = ds.values("id")
    per_class = {a: [("car", 0.9), ("road", 0.5)], b: [("car", 0.7)]}  # tree: no per-class confidence
    ds.set_values("predictions_confidence_per_class", {
        sid: fo.Classifications(classifications=[fo.Classification(label=c, confidence=v) for c, v in rows])
        for sid, rows in per_class.items()}, key_field="id")
    ds.set_values("predictions_confidence", {a: 0.7, b: 0.7}, key_field="id")
    rows = {r["class"]: r for r in class_rows(ds, ds.load_evaluation_results("ev"))}
    assert rows["car"]["confidence"] == pytest.approx(80.0) and rows["road"]["confidence"] == pytest.approx(50.0)
    assert rows["tree"]["confidence"] is None
    _, calls = _panel(ds, "on_load")
    state, data = {}, {}
    for p in calls.get("patch_panel_state", []):
        state.update(p.get("state", p))
    for p in calls.get("patch_panel_data", []):
        data.update(p.get("data", p))
    assert {r["class"]: r["confidence"] for r in data["class_table"]} == {"car": 80.0, "road": 50.0, "tree": "–"}
    rendered = calls["show_panel_output"][0]["output"]["type"]["properties"]
    assert "review_queue" in rendered and state["confidence_field"] == "predictions_confidence"
    _, calls = _panel(ds, "on_click_bar", state=state, x="car")
    for p in calls.get("patch_panel_state", []):
        state.update(p.get("state", p))
    _, calls = _panel(ds, "on_review_queue", state=state)
    (prompt,) = calls["prompt_user_for_operation"]
    assert prompt["operator_uri"] == "@fiftyone-cass/cass/review_queue"
    assert prompt["params"] == {"confidence_field": "predictions_confidence", "class_name": "car"}


def test_panel_without_confidence_shows_no_confidence_and_no_review_button(evaluated):
    _, calls = _panel(evaluated, "on_load")
    data = {}
    for p in calls.get("patch_panel_data", []):
        data.update(p.get("data", p))
    assert all(r["confidence"] == "–" for r in data["class_table"])
    assert "review_queue" not in calls["show_panel_output"][0]["output"]["type"]["properties"]
