"""mIoU evaluation on real FiftyOne datasets (real MongoDB, plugin discovered from the repo root)."""

import math

import numpy as np
import pytest
from PIL import Image

import fiftyone as fo
import fiftyone.operators as foo

from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.integrations.evaluation import IoUAccumulator, LabelMapper
from fiftyone_cass.integrations.fo_evaluation import (
    MEAN_IOU_METRIC,
    IoUSegmentationResults,
    evaluate_iou,
)

EVALUATE_URI = "@fiftyone-cass/cass/evaluate_iou"

# 3 classes (+255 ignore) over three images; ids as in a reduce_zero_label protocol
GTS = [
    np.array([[0, 0, 1, 255], [1, 1, 1, 255], [0, 2, 2, 2]], np.uint8),
    np.array([[2, 2], [2, 0]], np.uint8),
    np.array([[1, 1, 1], [255, 0, 0]], np.uint8),
]
PREDS = [
    np.array([[0, 1, 1, 0], [1, 1, 0, 2], [0, 2, 1, 2]], np.uint8),
    np.array([[2, 2], [0, 0]], np.uint8),
    np.array([[1, 1, 1], [1, 1, 1]], np.uint8),  # image 3 is the worst on its own
]
TARGETS = {0: "wall", 1: "building", 2: "sky"}


def _expected():
    acc = IoUAccumulator(mapper=LabelMapper([0, 1, 2]), class_names=list(TARGETS.values()))
    hs = [acc.update(p, g) for p, g in zip(PREDS, GTS)]
    return acc.compute(), hs


def _write(path, arr):
    Image.fromarray(arr).save(path)
    return str(path)


@pytest.fixture
def seg_dataset(fo_dataset, tmp_path):
    ds = fo_dataset("iou")
    samples = []
    for i, (g, p) in enumerate(zip(GTS, PREDS)):
        img = _write(tmp_path / f"img{i}.png", np.zeros(g.shape + (3,), np.uint8))
        samples.append(
            fo.Sample(
                filepath=img,
                ground_truth=fo.Segmentation(mask_path=_write(tmp_path / f"gt{i}.png", g)),
                predictions=fo.Segmentation(mask_path=_write(tmp_path / f"pred{i}.png", p)),
            )
        )
    ds.add_samples(samples)
    ds.mask_targets = {"ground_truth": TARGETS, "predictions": TARGETS}
    ds.save()
    return ds


def test_plugin_operators_are_discovered():
    assert foo.get_operator(EVALUATE_URI).config.name == "evaluate_iou"
    metric = foo.get_operator(MEAN_IOU_METRIC)
    assert isinstance(metric, foo.EvaluationMetric)
    assert metric.config.eval_types == ["segmentation"]


def test_evaluate_iou_operator_stores_loadable_results(seg_dataset):
    expected, hists = _expected()
    res = foo.execute_operator(
        EVALUATE_URI,
        ctx={
            "dataset": seg_dataset,
            "params": {"pred_field": "predictions", "gt_field": "ground_truth", "eval_key": "ev", "target": "DATASET"},
        },
    )
    assert res.result["mIoU"] == pytest.approx(expected.mIoU)

    assert "ev" in seg_dataset.list_evaluations()
    loaded = seg_dataset.load_evaluation_results("ev")
    assert isinstance(loaded, IoUSegmentationResults)
    assert loaded.mean_iou() == pytest.approx(expected.mIoU)
    np.testing.assert_array_equal(loaded.pixel_confusion_matrix, sum(h[:, :3] for h in hists))
    metrics = loaded.metrics()
    assert metrics["mIoU"] == pytest.approx(expected.mIoU)
    assert metrics["aAcc"] == pytest.approx(expected.aAcc)
    assert metrics["mAcc"] == pytest.approx(expected.mAcc)
    # the custom metric is attached, so the Model Evaluation panel's summary shows mIoU
    assert loaded.custom_metrics[MEAN_IOU_METRIC]["value"] == pytest.approx(expected.mIoU)
    assert loaded.custom_metrics[MEAN_IOU_METRIC]["lower_is_better"] is False
    per_class = loaded.per_class_iou()
    assert set(per_class) == {"wall", "building", "sky"}
    assert per_class["sky"] == pytest.approx(float(expected.iou[2]))

    # per-sample fields, sortable: the worst sample first
    assert seg_dataset.has_sample_field("ev_iou") and seg_dataset.has_sample_field("ev_pixel_acc")
    worst = seg_dataset.sort_by("ev_iou").first()
    assert worst.filepath.endswith("img2.png")
    from fiftyone_cass.integrations.evaluation import sample_scores

    for s, h in zip(seg_dataset, hists):
        assert s["ev_iou"] == pytest.approx(sample_scores(h)["iou"])
    assert seg_dataset.get_evaluation_info("ev").config.method == "mmseg_iou"

    # deleting the run removes its fields
    seg_dataset.delete_evaluation("ev")
    assert not seg_dataset.has_sample_field("ev_iou")


def test_operator_on_a_view_evaluates_only_the_view(seg_dataset):
    view = seg_dataset.limit(2)
    foo.execute_operator(
        EVALUATE_URI,
        ctx={
            "view": view,
            "params": {"pred_field": "predictions", "gt_field": "ground_truth", "eval_key": "ev2", "target": "CURRENT_VIEW"},
        },
    )
    acc = IoUAccumulator(num_classes=3)
    for p, g in zip(PREDS[:2], GTS[:2]):
        acc.update(p, g)
    assert seg_dataset.load_evaluation_results("ev2").mean_iou() == pytest.approx(acc.compute().mIoU)


def test_size_mismatch_is_an_error_unless_resize(seg_dataset, tmp_path):
    s = seg_dataset.last()
    s["predictions"] = fo.Segmentation(mask_path=_write(tmp_path / "small.png", np.ones((1, 1), np.uint8)))
    s.save()
    with pytest.raises(InvalidInputError, match=r"img2\.png.*1x1.*2x3"):
        evaluate_iou(seg_dataset, "predictions", eval_key=None)
    r = evaluate_iou(seg_dataset, "predictions", resize="nearest")
    acc = IoUAccumulator(num_classes=3)
    for p, g in zip(PREDS[:2] + [np.ones((2, 3), np.uint8)], GTS):
        acc.update(p, g)
    assert r.mean_iou() == pytest.approx(acc.compute().mIoU)


def test_missing_prediction_is_an_error_unless_skipped(seg_dataset):
    s = seg_dataset.first()
    s["predictions"] = None
    s.save()
    with pytest.raises(InvalidInputError, match="no prediction mask"):
        evaluate_iou(seg_dataset, "predictions")
    with pytest.warns(UserWarning, match="Skipping"):
        r = evaluate_iou(seg_dataset, "predictions", skip_missing=True)
    acc = IoUAccumulator(num_classes=3)
    for p, g in zip(PREDS[1:], GTS[1:]):
        acc.update(p, g)
    assert r.mean_iou() == pytest.approx(acc.compute().mIoU)


def test_mean_iou_custom_metric_on_fiftyone_simple_backend(seg_dataset):
    expected, hists = _expected()
    # FiftyOne's own backend: 255 is dropped because it is not in mask_targets
    results = seg_dataset.evaluate_segmentations(
        "predictions",
        gt_field="ground_truth",
        eval_key="simple",
        mask_targets=TARGETS,
        custom_metrics=[MEAN_IOU_METRIC],
    )
    assert results.metrics()["mIoU"] == pytest.approx(expected.mIoU)
    loaded = seg_dataset.load_evaluation_results("simple")
    assert loaded.custom_metrics[MEAN_IOU_METRIC]["value"] == pytest.approx(expected.mIoU)
    from fiftyone_cass.integrations.evaluation import sample_scores

    for s, h in zip(seg_dataset, hists):
        assert s["simple_iou"] == pytest.approx(sample_scores(h)["iou"])
    seg_dataset.delete_evaluation("simple")
    assert not seg_dataset.has_sample_field("simple_iou")


def test_mean_iou_custom_metric_drops_255_when_observed_as_a_class(seg_dataset):
    expected, _ = _expected()
    # no mask_targets: FiftyOne uses the observed values, so 255 becomes a "class" "255"
    seg_dataset.mask_targets = {}
    seg_dataset.save()
    results = seg_dataset.evaluate_segmentations("predictions", gt_field="ground_truth", custom_metrics=[MEAN_IOU_METRIC])
    assert "255" in list(results.classes)
    assert results.metrics()["mIoU"] == pytest.approx(expected.mIoU)


def test_evaluate_iou_without_mask_targets_uses_observed_values(seg_dataset):
    expected, _ = _expected()
    seg_dataset.mask_targets = {}
    seg_dataset.save()
    r = evaluate_iou(seg_dataset, "predictions", eval_key="obs")
    assert list(r.classes) == ["0", "1", "2"]
    assert r.mean_iou() == pytest.approx(expected.mIoU)
    assert math.isfinite(seg_dataset.first()["obs_iou"])
